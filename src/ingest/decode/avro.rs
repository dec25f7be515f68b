//! Avro in the Confluent wire format → the contract's columns.
//!
//! Messages are grouped by the writer schema their frame names, and each
//! group is decoded by arrow-avro into one Arrow batch of that schema's
//! shape, then conformed to the contract by field name: a field the writer
//! added is ignored, one it dropped is null (refused if the contract
//! requires it), a type Avro may promote is cast (int → long → double,
//! timestamp units, enums and bytes → string). A writer schema the contract
//! cannot take refuses its messages, naming the schema ID, and only those.
//!
//! arrow-avro's decoder is a stream: a body that fails halfway leaves a
//! partial row in its builders. So a failed message is refused alone and
//! the decoder rebuilt, the good messages since the last failure decoded
//! again: each good message costs at most two decodes however hostile the
//! batch.

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListArray, RecordBatch, StructArray, new_null_array};
use arrow::compute::{CastOptions, cast_with_options, concat_batches};
use arrow::datatypes::{DataType, TimeUnit};
use arrow_avro::reader::{Decoder as StreamDecoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};

use super::Rejection;
use super::framed::{WriterSchema, WriterSchemas, unframe};
use crate::config::{Contract, FieldDef};

/// One writer schema's messages, decoded and conformed to the contract.
pub(super) struct Group {
    /// Indices in the micro-batch, in order; one per row of `columns`.
    pub(super) rows: Vec<usize>,
    /// The contract's columns, in contract order.
    pub(super) columns: Vec<ArrayRef>,
    /// Per row, the first value that did not fit its contract type.
    pub(super) unfit: Vec<Option<String>>,
}

/// Messages of one writer schema: micro-batch index and framed bytes.
type Framed<'m> = Vec<(usize, &'m [u8])>;

/// Framed messages (micro-batch index, bytes) grouped by the Avro writer
/// schema each names, and those that name none.
fn by_writer_schema<'m, 's>(
    messages: Vec<(usize, &'m [u8])>,
    schemas: &'s WriterSchemas,
) -> (BTreeMap<u32, (&'s str, Framed<'m>)>, Vec<Rejection>) {
    let mut rejected = Vec::new();
    let mut by_id: BTreeMap<u32, (&str, Framed)> = BTreeMap::new();
    for (i, bytes) in messages {
        match unframe(bytes, schemas) {
            Ok((id, WriterSchema::Avro(schema), _)) => {
                let entry = by_id.entry(id).or_insert_with(|| (schema, Vec::new()));
                entry.1.push((i, bytes));
            }
            Ok((id, _, _)) => rejected.push((i, format!("schema ID {id} is not Avro"))),
            Err(why) => rejected.push((i, why)),
        }
    }
    (by_id, rejected)
}

/// Framed Avro keys (micro-batch index, bytes) as stored type `ty`: each
/// key's one-row array by index, and the keys refused, with why. A key's
/// writer schema may be any Avro type: its body is decoded as the one field
/// of a record around it (a record's encoding is its fields').
pub(super) fn keys(
    keys: Vec<(usize, &[u8])>,
    ty: &DataType,
    schemas: &WriterSchemas,
) -> (HashMap<usize, ArrayRef>, Vec<Rejection>) {
    let (by_id, mut rejected) = by_writer_schema(keys, schemas);
    let mut decoded = HashMap::new();
    for (id, (schema, group)) in by_id {
        let record = format!(
            r#"{{"type":"record","name":"weir_key","fields":[{{"name":"key","type":{schema}}}]}}"#
        );
        let keyed = decode_group(id, &record, &group).and_then(|(rows, batch, bad)| {
            let mut unfit = vec![None; rows.len()];
            let column = reshaped_rows(batch.column(0), ty, "key", &mut unfit)
                .map_err(|why| format!("schema ID {id}: {why}"))?;
            Ok((rows, column, unfit, bad))
        });
        match keyed {
            Err(why) => rejected.extend(group.iter().map(|(i, _)| (*i, why.clone()))),
            Ok((rows, column, unfit, bad)) => {
                rejected.extend(bad);
                for (r, (i, unfit)) in rows.into_iter().zip(unfit).enumerate() {
                    match unfit {
                        Some(why) => rejected.push((i, why)),
                        None => drop(decoded.insert(i, column.slice(r, 1))),
                    }
                }
            }
        }
    }
    let named = rejected
        .into_iter()
        .map(|(i, why)| (i, format!("the Kafka key: {why}")));
    (decoded, named.collect())
}

/// Splits `messages` (micro-batch index, bytes that passed the precheck)
/// into groups by writer schema and refusals.
pub(super) fn decode(
    contract: &Contract,
    messages: Vec<(usize, &[u8])>,
    schemas: &WriterSchemas,
) -> Result<(Vec<Group>, Vec<Rejection>), arrow::error::ArrowError> {
    let (by_id, mut rejected) = by_writer_schema(messages, schemas);
    let mut groups = Vec::new();
    for (id, (schema, group)) in by_id {
        let refuse_all = |why: String| group.iter().map(move |(i, _)| (*i, why.clone()));
        match decode_group(id, schema, &group) {
            Err(why) => rejected.extend(refuse_all(why)),
            Ok((rows, batch, bad)) => {
                rejected.extend(bad);
                match conform(contract, &batch) {
                    Ok((columns, unfit)) => groups.push(Group {
                        rows,
                        columns,
                        unfit,
                    }),
                    Err(why) => {
                        let why = format!("schema ID {id}: {why}");
                        rejected.extend(rows.iter().map(|i| (*i, why.clone())));
                    }
                }
            }
        }
    }
    Ok((groups, rejected))
}

/// The messages of one writer schema as one batch of its shape: the
/// indices of the rows, the rows, and the messages refused. Errors when
/// the schema itself cannot be read.
fn decode_group(
    id: u32,
    schema: &str,
    messages: &[(usize, &[u8])],
) -> Result<(Vec<usize>, RecordBatch, Vec<Rejection>), String> {
    let build = || -> Result<StreamDecoder, String> {
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        let unreadable = |e: &dyn std::fmt::Display| format!("schema ID {id} cannot be read: {e}");
        store
            .set(Fingerprint::Id(id), AvroSchema::new(schema.to_owned()))
            .map_err(|e| unreadable(&e))?;
        ReaderBuilder::new()
            .with_batch_size(messages.len().max(1))
            .with_writer_schema_store(store)
            .build_decoder()
            .map_err(|e| unreadable(&e))
    };
    let flush =
        |decoder: &mut StreamDecoder| decoder.flush().map_err(|e| format!("schema ID {id}: {e}"));
    let mut decoder = build()?;
    let arrow_schema = decoder.schema();
    let (mut rows, mut parts, mut rejected) = (Vec::new(), Vec::new(), Vec::new());
    let mut segment: Vec<(usize, &[u8])> = Vec::new();
    for &(i, bytes) in messages {
        match feed(&mut decoder, bytes) {
            Ok(()) => segment.push((i, bytes)),
            Err(why) => {
                rejected.push((i, format!("schema ID {id}: {why}")));
                // The failed body may have left a partial row: decode the
                // good ones again into a fresh decoder.
                decoder = build()?;
                for (_, good) in &segment {
                    feed(&mut decoder, good).expect("a body that decoded once decodes again");
                }
                parts.extend(flush(&mut decoder)?);
                rows.extend(segment.drain(..).map(|(i, _)| i));
                decoder = build()?;
            }
        }
    }
    parts.extend(flush(&mut decoder)?);
    rows.extend(segment.into_iter().map(|(i, _)| i));
    let batch = concat_batches(&arrow_schema, &parts).map_err(|e| e.to_string())?;
    Ok((rows, batch, rejected))
}

/// Feeds one framed message; Ok when it became exactly one row.
fn feed(decoder: &mut StreamDecoder, bytes: &[u8]) -> Result<(), String> {
    let room = decoder.capacity();
    let consumed = catch_unwind(AssertUnwindSafe(|| decoder.decode(bytes)))
        .map_err(|_| "the Avro decoder failed on this body".to_owned())?;
    let rows = room - decoder.capacity();
    match (consumed, rows) {
        (Ok(n), 1) if n == bytes.len() => Ok(()),
        // Past a whole record the decoder looks for the next frame.
        (_, 1..) => Err("bytes follow the Avro record".into()),
        (Err(e), 0) => Err(format!("malformed Avro body: {e}")),
        (Ok(_), 0) => Err("the Avro body ends before its record does".into()),
    }
}

/// `batch` (a writer schema's shape) as the contract's columns, and per
/// row the first value that did not fit its column's type (never stored
/// as a null in its place).
fn conform(
    contract: &Contract,
    batch: &RecordBatch,
) -> Result<(Vec<ArrayRef>, Vec<Option<String>>), String> {
    let mut unfit = vec![None; batch.num_rows()];
    let mut columns = Vec::with_capacity(contract.fields.len());
    for field in &contract.fields {
        let target = field.ty.stored_type();
        let column = match batch.column_by_name(&field.name) {
            None if field.nullable => new_null_array(&target, batch.num_rows()),
            None => {
                return Err(format!(
                    "the writer schema has no field `{}`, which the contract requires",
                    field.name
                ));
            }
            Some(column) => {
                let promoted = promote(field, column, &target)?;
                for row in (0..column.len()).filter(|&r| column.is_valid(r) && promoted.is_null(r))
                {
                    unfit[row].get_or_insert_with(|| {
                        format!(
                            "field `{}`: a value out of range for {}",
                            field.name,
                            field.ty.name()
                        )
                    });
                }
                promoted
            }
        };
        columns.push(column);
    }
    for structured in &contract.structured {
        let column = match batch.column_by_name(&structured.name) {
            None => new_null_array(&structured.ty, batch.num_rows()),
            Some(column) => reshaped_rows(column, &structured.ty, &structured.name, &mut unfit)?,
        };
        columns.push(column);
    }
    Ok((columns, unfit))
}

/// Why a writer's column cannot become a structured column.
enum Misfit {
    /// The writer schema's type cannot: every message of it is refused.
    Schema(String),
    /// A value cannot (it overflows its stored type): its row is refused.
    Value(String),
}

/// `column` [`reshape`]d; rows whose values do not fit are found one at a
/// time (only in a batch that has one), marked in `unfit` and left null.
fn reshaped_rows(
    column: &ArrayRef,
    to: &DataType,
    name: &str,
    unfit: &mut [Option<String>],
) -> Result<ArrayRef, String> {
    let field = |why: String| format!("field `{name}`: {why}");
    match reshape(column, to) {
        Ok(done) => return Ok(done),
        Err(Misfit::Schema(why)) => return Err(field(why)),
        Err(Misfit::Value(_)) => {}
    }
    let mut rows = Vec::with_capacity(column.len());
    for (r, unfit) in unfit.iter_mut().enumerate() {
        rows.push(match reshape(&column.slice(r, 1), to) {
            Ok(row) => row,
            Err(Misfit::Schema(why) | Misfit::Value(why)) => {
                unfit.get_or_insert(field(why));
                new_null_array(to, 1)
            }
        });
    }
    let rows: Vec<&dyn Array> = rows.iter().map(|r| r.as_ref()).collect();
    arrow::compute::concat(&rows).map_err(|e| e.to_string())
}

/// `column` (of a writer schema's shape) as stored type `to`: a record's
/// fields matched by name (one the writer lacks is null, one it added is
/// not kept), an array's items and each scalar as [`promote`] takes them.
fn reshape(column: &ArrayRef, to: &DataType) -> Result<ArrayRef, Misfit> {
    match (column.data_type(), to) {
        (DataType::Struct(_), DataType::Struct(fields)) => {
            let record = column.as_struct();
            let children = fields
                .iter()
                .map(|f| match record.column_by_name(f.name()) {
                    Some(child) => reshape(child, f.data_type()).map_err(|m| m.within(f.name())),
                    None => Ok(new_null_array(f.data_type(), column.len())),
                })
                .collect::<Result<Vec<_>, _>>()?;
            StructArray::try_new(fields.clone(), children, record.nulls().cloned())
                .map(|a| Arc::new(a) as ArrayRef)
                .map_err(|e| Misfit::Schema(e.to_string()))
        }
        (DataType::List(_), DataType::List(item)) => {
            let list = column.as_list::<i32>();
            let items = reshape(list.values(), item.data_type())?;
            ListArray::try_new(
                item.clone(),
                list.offsets().clone(),
                items,
                list.nulls().cloned(),
            )
            .map(|a| Arc::new(a) as ArrayRef)
            .map_err(|e| Misfit::Schema(e.to_string()))
        }
        (from, to) if promotes(from, to) => promoted(column, to, false).map_err(Misfit::Value),
        (from, to) => Err(Misfit::Schema(format!(
            "is {from} in the writer schema, which its column ({to}) cannot take"
        ))),
    }
}

impl Misfit {
    /// The misfit of a record's field `name`, said from the record.
    fn within(self, name: &str) -> Self {
        match self {
            Self::Schema(why) => Self::Schema(format!("`{name}` {why}")),
            Self::Value(why) => Self::Value(format!("`{name}`: {why}")),
        }
    }
}

/// `column` cast to the contract's type where Avro's schema resolution
/// would promote it. A value that does not fit becomes null ([`conform`]
/// refuses its row).
fn promote(field: &FieldDef, column: &ArrayRef, target: &DataType) -> Result<ArrayRef, String> {
    let from = column.data_type();
    if !promotes(from, target) {
        return Err(format!(
            "field `{}` is {from} in the writer schema, which the contract's {} cannot take",
            field.name,
            field.ty.name()
        ));
    }
    promoted(column, target, true)
}

/// Whether Avro's schema resolution promotes a writer's `from` to `to`.
fn promotes(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    from == to
        || matches!(
            (from, to),
            (Int32, Int64 | Float32 | Float64)
                | (Int64 | Float32, Float64)
                | (
                    Utf8View | LargeUtf8 | Binary | LargeBinary | BinaryView,
                    Utf8
                )
                | (Timestamp(_, _), Timestamp(_, _))
                | (Int64, Timestamp(_, _))
                | (Decimal128(..), Decimal128(..))
        )
        || matches!((from, to), (Dictionary(_, v), Utf8) if **v == Utf8)
}

/// `column` cast to `to`, which [`promotes`] takes it to; `safe`: a value
/// that does not fit becomes null, else it is an error.
fn promoted(column: &ArrayRef, to: &DataType, safe: bool) -> Result<ArrayRef, String> {
    use DataType::*;
    // A long in a timestamp field holds epoch milliseconds, as a JSON number does.
    let column = match column.data_type() {
        Int64 if matches!(to, Timestamp(_, _)) => {
            cast(column, &Timestamp(TimeUnit::Millisecond, None), safe)?
        }
        _ => column.clone(),
    };
    cast(&column, to, safe)
}

fn cast(column: &ArrayRef, to: &DataType, safe: bool) -> Result<ArrayRef, String> {
    let options = CastOptions {
        safe,
        ..Default::default()
    };
    cast_with_options(column, to, &options).map_err(|e| e.to_string())
}
