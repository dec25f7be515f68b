//! The job spec unit tests start from, so each test module says only what
//! its tests need (its fields, a source key, an output) instead of pasting
//! a whole spec.

use std::path::Path;

use super::{Job, Overrides};

/// A job `name` reading topic `name` from `brokers`, with the event ID `id`
/// (string) and time `ts` plus `fields` (TOML inline tables), stored under
/// `root`; `source` adds lines to `[source]`, `rest` tables after `[storage]`.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    pub name: &'a str,
    pub brokers: &'a str,
    pub source: &'a str,
    pub fields: &'a [&'a str],
    pub root: &'a str,
    pub rest: &'a str,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Self {
            name: "t",
            brokers: "embedded",
            source: "",
            fields: &[],
            root: "/tmp/unused",
            rest: "",
        }
    }
}

impl Spec<'_> {
    pub fn toml(&self) -> String {
        let mut fields = vec![
            r#"{ name = "id", type = "string" }"#,
            r#"{ name = "ts", type = "timestamp" }"#,
        ];
        fields.extend(self.fields);
        let source = if self.source.is_empty() {
            String::new()
        } else {
            format!("{}\n", self.source)
        };
        format!(
            "name = \"{name}\"\n[source]\nbrokers = \"{brokers}\"\ntopic = \"{name}\"\n{source}\
             [schema]\nevent_id = \"id\"\nevent_time = \"ts\"\nfields = [\n  {fields},\n]\n\
             [storage]\nroot = \"{root}\"\n{rest}",
            name = self.name,
            brokers = self.brokers,
            fields = fields.join(",\n  "),
            root = self.root,
            rest = self.rest,
        )
    }

    pub fn job(&self) -> Job {
        Job::parse(&self.toml(), Path::new("t.toml"), &Overrides::default()).unwrap()
    }
}
