//! A registry's Protobuf schema compiled into descriptors: what a
//! Protobuf job's decoder reads messages by, and what a job whose fields
//! come from a Protobuf subject takes them from. No I/O: the text comes
//! from the caller.

use prost_reflect::{DescriptorPool, MessageDescriptor};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

/// A registry's Protobuf schema, compiled.
#[derive(Debug)]
pub struct ProtoSchema {
    pool: DescriptorPool,
    file: String,
}

/// The name a schema given as `.proto` text is compiled under.
const TEXT_FILE: &str = "registered.proto";

/// One schema the registry holds, as text or as Confluent's Python client
/// registers it (a base64 `FileDescriptorProto`); imports of Google's
/// well-known types resolve, other references do not.
struct Registered(File);

impl FileResolver for Registered {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match name == self.0.name() {
            true => Ok(self.0.clone()),
            false => Err(protox::Error::file_not_found(name)),
        }
    }
}

impl ProtoSchema {
    pub fn compile(text: &str) -> Result<Self, String> {
        use base64::Engine as _;
        let descriptor = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()
            .and_then(|bytes| File::decode_file_descriptor_proto(bytes.as_slice()).ok());
        let file = match descriptor {
            Some(file) => file,
            None => File::from_source(TEXT_FILE, text).map_err(|e| e.to_string())?,
        };
        let name = file.name().to_owned();
        let mut resolver = ChainFileResolver::new();
        resolver.add(Registered(file));
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true);
        compiler.open_file(&name).map_err(|e| e.to_string())?;
        Ok(Self {
            pool: compiler.descriptor_pool(),
            file: name,
        })
    }

    /// The message type `indexes` name: the top-level type, then nested ones.
    pub fn message(&self, indexes: &[i32]) -> Option<MessageDescriptor> {
        let file = self.pool.get_file_by_name(&self.file)?;
        let (first, nested) = indexes.split_first()?;
        let mut message = file.messages().nth(usize::try_from(*first).ok()?)?;
        for &i in nested {
            let child = message.child_messages().nth(usize::try_from(i).ok()?)?;
            message = child;
        }
        Some(message)
    }
}
