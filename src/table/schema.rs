//! Table schemas over time: what a job writes against what a table stores.
//!
//! A job's contract may grow: a field added to the spec becomes a new nullable
//! column of every table that carries it (old rows read as null, no file is
//! rewritten), and messages of the older contract, which lack the field, are
//! still accepted. Everything else would make stored rows mean something
//! different from new ones, so it is refused before anything is written, with
//! the way to migrate: a changed type, a dropped column, a changed event ID, a
//! changed partitioning.

use arrow::array::{RecordBatch, new_null_array};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::expr_fn;
use datafusion::prelude::{ident, lit};
use deltalake::kernel::{StructField, StructType};

/// The table property that records which column is a table's event ID.
pub const EVENT_ID_PROPERTY: &str = "weir.eventId";

/// Why a stored table cannot take what the job now writes, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}. {migrate}")]
pub struct Incompatible {
    pub problem: String,
    pub migrate: String,
}

/// A table's shape: its schema, partition columns and event ID column (the
/// `weir.eventId` property), as stored or as the job writes it.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    pub schema: &'a StructType,
    pub partition_columns: &'a [String],
    pub event_id: Option<&'a str>,
}

/// The columns to add so that `stored` takes `wanted` (always nullable: the
/// rows already stored have no value), or why it cannot.
pub fn evolve(stored: Shape<'_>, wanted: Shape<'_>) -> Result<Vec<StructField>, Incompatible> {
    if let (Some(was), Some(now)) = (stored.event_id, wanted.event_id)
        && was != now
    {
        return Err(Incompatible {
            problem: format!("its event ID is `{was}` but the job declares `{now}`"),
            migrate: format!(
                "Deduplication and exactly-once rest on the event ID, so it cannot change in \
                 place: keep `event_id = \"{was}\"`, or run the new contract as a new job (a new \
                 `name` or storage root) and rebuild its outputs with `weir reprocess`"
            ),
        });
    }
    if stored.partition_columns != wanted.partition_columns {
        return Err(Incompatible {
            problem: format!(
                "it is partitioned by {:?} but this weir partitions it by {:?}",
                stored.partition_columns, wanted.partition_columns
            ),
            migrate: "It was written by an earlier weir: move the table aside and rebuild it \
                      from raw with `weir reprocess`"
                .into(),
        });
    }
    for column in stored.schema.fields() {
        let name = column.name();
        let Some(field) = wanted.schema.field(name) else {
            return Err(Incompatible {
                problem: format!("column `{name}` is stored but the job no longer declares it"),
                migrate: "weir never drops a stored column: keep the field in the job (with \
                          `nullable = true` new events may omit it); to reshape an output, give \
                          it a new name and fill it with `weir reprocess`"
                    .into(),
            });
        };
        if field.data_type() != column.data_type() {
            return Err(Incompatible {
                problem: format!(
                    "column `{name}` is stored as {} but the job declares {}",
                    column.data_type(),
                    field.data_type()
                ),
                migrate: format!(
                    "weir never changes a stored column's type: declare the new type under a \
                     new name (e.g. `{name}_v2`, nullable) and run `weir reprocess` for the \
                     dates to fill (raw keeps every message as sent, in `_payload`)"
                ),
            });
        }
        if field.is_nullable() && !column.is_nullable() {
            return Err(Incompatible {
                problem: format!(
                    "column `{name}` is stored as required but the job lets it be null"
                ),
                migrate: format!(
                    "Keep `{name}` required (`nullable = false`), or declare a new nullable field"
                ),
            });
        }
    }
    Ok(wanted
        .schema
        .fields()
        .filter(|f| stored.schema.field(f.name()).is_none())
        .map(|f| StructField::new(f.name(), f.data_type().clone(), true))
        .collect())
}

/// Whether a column stored as `stored` can keep that type for a job that
/// now declares `wanted` (a registry subject whose record gained fields):
/// true when `wanted` only adds fields inside records, each added one
/// named (from `path`) in `added`. A stored type never changes, so the job
/// keeps writing `stored` and the added fields stay in `_payload`.
pub fn within(stored: &DataType, wanted: &DataType, path: &str, added: &mut Vec<String>) -> bool {
    match (stored, wanted) {
        (DataType::Struct(kept), DataType::Struct(now)) => {
            let kept_all = kept.iter().all(|k| {
                now.iter().any(|n| {
                    n.name() == k.name()
                        && within(
                            k.data_type(),
                            n.data_type(),
                            &format!("{path}.{}", k.name()),
                            added,
                        )
                })
            });
            let new = now.iter().filter(|n| kept.find(n.name()).is_none());
            added.extend(new.map(|n| format!("{path}.{}", n.name())));
            kept_all
        }
        (DataType::List(kept), DataType::List(now)) => {
            within(kept.data_type(), now.data_type(), path, added)
        }
        _ => stored == wanted,
    }
}

/// Casts query results to `schema` (a table's) by column name, as one batch. By
/// name, because a table that gained a column keeps it last whatever the
/// contract's order; a nullable column the rows lack (rows read from a tier
/// table not yet evolved) is null.
pub fn conform(
    batches: Vec<RecordBatch>,
    schema: &SchemaRef,
) -> Result<RecordBatch, DataFusionError> {
    let mut conformed = Vec::with_capacity(batches.len());
    for batch in batches {
        let columns = schema
            .fields()
            .iter()
            .map(|f| match batch.column_by_name(f.name()) {
                Some(c) => Ok(cast(c, f.data_type())?),
                None if f.is_nullable() => Ok(new_null_array(f.data_type(), batch.num_rows())),
                None => Err(required(f)),
            })
            .collect::<Result<Vec<_>, DataFusionError>>()?;
        conformed.push(RecordBatch::try_new(schema.clone(), columns)?);
    }
    Ok(concat_batches(schema, &conformed)?)
}

/// [`conform`] as a plan, for rows read as a stream rather than held.
pub fn conform_frame(frame: DataFrame, schema: &SchemaRef) -> Result<DataFrame, DataFusionError> {
    let have = frame.schema().clone();
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let value = if have.has_column_with_unqualified_name(f.name()) {
                expr_fn::cast(ident(f.name()), f.data_type().clone())
            } else if f.is_nullable() {
                lit(ScalarValue::try_from(f.data_type())?)
            } else {
                return Err(required(f));
            };
            Ok(value.alias(f.name()))
        })
        .collect::<Result<Vec<_>, DataFusionError>>()?;
    frame.select(columns)
}

fn required(field: &Field) -> DataFusionError {
    DataFusionError::Plan(format!(
        "the rows have no column `{}`, which the table requires",
        field.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::kernel::{DataType, PrimitiveType};

    fn schema(fields: &[(&str, PrimitiveType, bool)]) -> StructType {
        StructType::try_new(
            fields
                .iter()
                .map(|(n, t, null)| StructField::new(*n, DataType::Primitive(t.clone()), *null)),
        )
        .unwrap()
    }

    fn check(
        stored: &StructType,
        wanted: &StructType,
        ids: (&str, &str),
    ) -> Result<Vec<StructField>, Incompatible> {
        let parts = ["_event_date".to_owned()];
        evolve(
            Shape {
                schema: stored,
                partition_columns: &parts,
                event_id: Some(ids.0),
            },
            Shape {
                schema: wanted,
                partition_columns: &parts,
                event_id: Some(ids.1),
            },
        )
    }

    const ID: (&str, &str) = ("id", "id");

    #[test]
    fn a_new_field_becomes_a_nullable_column() {
        let v1 = schema(&[("id", PrimitiveType::String, false)]);
        let v2 = schema(&[
            ("id", PrimitiveType::String, false),
            ("referrer", PrimitiveType::String, false),
        ]);
        let added = check(&v1, &v2, ID).unwrap();
        assert_eq!(
            added,
            vec![StructField::new(
                "referrer",
                DataType::Primitive(PrimitiveType::String),
                true
            )]
        );
        assert_eq!(check(&v2, &v2, ID).unwrap(), vec![]);
    }

    #[test]
    fn a_type_change_is_refused_with_the_way_to_migrate() {
        let v1 = schema(&[("price", PrimitiveType::Double, true)]);
        let v2 = schema(&[("price", PrimitiveType::Long, true)]);
        let e = check(&v1, &v2, ID).unwrap_err();
        assert!(e.problem.contains("`price` is stored as double"), "{e}");
        assert!(e.migrate.contains("price_v2"), "{e}");
    }

    #[test]
    fn dropping_a_column_or_changing_the_event_id_is_refused() {
        let v1 = schema(&[
            ("id", PrimitiveType::String, false),
            ("page", PrimitiveType::String, true),
        ]);
        let v2 = schema(&[("id", PrimitiveType::String, false)]);
        let e = check(&v1, &v2, ID).unwrap_err();
        assert!(e.problem.contains("`page` is stored but"), "{e}");
        let e = check(&v1, &v1, ("id", "page")).unwrap_err();
        assert!(e.problem.contains("event ID is `id`"), "{e}");
        let relaxed = schema(&[
            ("id", PrimitiveType::String, true),
            ("page", PrimitiveType::String, true),
        ]);
        assert!(check(&v1, &relaxed, ID).is_err());
    }
}

#[cfg(test)]
mod within_tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field};

    use super::within;

    fn record(fields: &[(&str, DataType)]) -> DataType {
        let fields: Vec<Field> = fields
            .iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true))
            .collect();
        DataType::Struct(fields.into())
    }

    fn list(item: DataType) -> DataType {
        DataType::List(Arc::new(Field::new("element", item, true)))
    }

    #[test]
    fn a_record_that_gained_fields_keeps_its_stored_shape_and_names_them() {
        let inner = record(&[("x", DataType::Int64)]);
        let stored = record(&[("os", DataType::Utf8), ("pts", list(inner.clone()))]);
        let grown_inner = record(&[("x", DataType::Int64), ("y", DataType::Utf8)]);
        let wanted = record(&[
            ("os", DataType::Utf8),
            ("pts", list(grown_inner)),
            ("screen", DataType::Utf8),
        ]);
        let mut added = Vec::new();
        assert!(within(&stored, &wanted, "device", &mut added));
        assert_eq!(added, ["device.pts.y", "device.screen"]);

        let retyped = record(&[("os", DataType::Int64), ("pts", list(inner))]);
        assert!(!within(&stored, &retyped, "device", &mut Vec::new()));
        let dropped = record(&[("os", DataType::Utf8)]);
        assert!(!within(&stored, &dropped, "device", &mut Vec::new()));
        assert!(!within(
            &DataType::Utf8,
            &DataType::Int64,
            "n",
            &mut Vec::new()
        ));
    }
}
