//! An output's query, planned once and run over every trigger's events.
//!
//! Planning (parsing, optimising, the physical plan, a fresh session) cost
//! more than running the query on a micro-batch of a thousand events, and
//! gave the same plan every trigger. So the physical plan is made once over
//! a stand-in for `batch`, and each run swaps the trigger's events into that
//! leaf and resets the other nodes' state (a join's build side, a top-k's
//! filter). The stand-in reports unknown statistics: over an empty table with
//! exact ones the optimiser would fold the emptiness into the plan (a
//! `count(*)` answered as 0, a `LIMIT` dropped as already satisfied).

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, collect,
};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::ingest::lookup::Lookups;

/// What the events are registered as when `batch` is a view over them.
pub const EVENTS: &str = "__events";

/// A query over `batch` (rows in `input`'s schema), physically planned.
#[derive(Debug, Clone)]
pub struct PlannedQuery {
    input: SchemaRef,
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
}

impl PlannedQuery {
    /// One partition: a trigger's events are one small batch, and the cores
    /// are busy writing the other tables meanwhile.
    pub async fn new(sql: &str, input: SchemaRef) -> Result<Self> {
        Self::over(sql, input, None, &Lookups::default()).await
    }

    /// [`Self::new`] with `batch` the query `view` over the events, which it
    /// reads as [`EVENTS`] (the contract's derived columns added to them,
    /// say), and `lookups` registered under their names. The view is inlined
    /// into the plan, so its scan is still the leaf each run swaps the events
    /// into; a lookup's rows are part of the plan, so a new version of them
    /// takes a new plan.
    pub async fn over(
        sql: &str,
        input: SchemaRef,
        view: Option<&str>,
        lookups: &Lookups,
    ) -> Result<Self> {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        for lookup in lookups.tables() {
            ctx.register_table(lookup.name.as_str(), lookup.table())?;
        }
        let stand_in = Arc::new(TriggerTable {
            schema: input.clone(),
        });
        match view {
            None => ctx.register_table("batch", stand_in)?,
            Some(view) => {
                ctx.register_table(EVENTS, stand_in)?;
                let view = ctx.sql(view).await?.into_view();
                ctx.register_table("batch", view)?
            }
        };
        let plan = ctx.sql(sql).await?.create_physical_plan().await?;
        Ok(Self {
            input,
            plan,
            task: ctx.task_ctx(),
        })
    }

    pub fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    /// Runs the query with `events` as `batch`.
    pub async fn run(&self, events: &RecordBatch) -> Result<Vec<RecordBatch>> {
        if events.schema().fields() != self.input.fields() {
            return Err(DataFusionError::Internal(format!(
                "query planned over {:?} given rows of {:?}",
                self.input,
                events.schema()
            )));
        }
        let plan = Arc::clone(&self.plan)
            .transform_up(|node| match node.downcast_ref::<TriggerExec>() {
                Some(leaf) => Ok(Transformed::yes(Arc::new(leaf.over(events)) as _)),
                None => node.reset_state().map(Transformed::yes),
            })?
            .data;
        collect(plan, Arc::clone(&self.task)).await
    }
}

/// `batch` while planning: its scans become [`TriggerExec`] leaves.
#[derive(Debug)]
struct TriggerTable {
    schema: SchemaRef,
}

#[async_trait::async_trait]
impl TableProvider for TriggerTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    /// `limit` is a hint; the plan keeps its own limit above the scan.
    async fn scan(
        &self,
        _: &dyn Session,
        projection: Option<&Vec<usize>>,
        _: &[Expr],
        _: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(projected),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Arc::new(TriggerExec {
            projection: projection.cloned(),
            properties: Arc::new(properties),
            events: Vec::new(),
        }))
    }
}

/// The scan of `batch`: the events of the run it was swapped into.
#[derive(Debug)]
struct TriggerExec {
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
    events: Vec<RecordBatch>,
}

impl TriggerExec {
    fn over(&self, events: &RecordBatch) -> Self {
        Self {
            projection: self.projection.clone(),
            properties: self.properties.clone(),
            events: vec![events.clone()],
        }
    }
}

impl DisplayAs for TriggerExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TriggerExec: batch")
    }
}

impl ExecutionPlan for TriggerExec {
    fn name(&self) -> &'static str {
        "TriggerExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(&self, _: usize, _: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let stream =
            MemoryStream::try_new(self.events.clone(), self.schema(), self.projection.clone())?;
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;

    fn numbers(values: Vec<i64>) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("n", DataType::Int64, false)]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(Int64Array::from(values))]).unwrap()
    }

    /// Every value of the first column of the query's result, in order.
    async fn run(query: &PlannedQuery, values: Vec<i64>) -> Vec<i64> {
        let batches = query.run(&numbers(values)).await.unwrap();
        batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect()
    }

    async fn plan(sql: &str) -> PlannedQuery {
        PlannedQuery::new(sql, numbers(vec![]).schema())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn each_run_sees_only_its_own_events() {
        let sum = plan("SELECT sum(n) FROM batch").await;
        assert_eq!(run(&sum, vec![1, 2, 3]).await, vec![6]);
        assert_eq!(run(&sum, vec![10]).await, vec![10]);
    }

    #[tokio::test]
    async fn nothing_seen_while_planning_is_folded_into_the_plan() {
        // Over an empty table with exact statistics these become `0` and an
        // unlimited scan.
        let count = plan("SELECT count(*) FROM batch").await;
        assert_eq!(run(&count, vec![4, 5, 6]).await, vec![3]);
        let limited = plan("SELECT n FROM batch LIMIT 2").await;
        assert_eq!(run(&limited, vec![7, 8, 9]).await, vec![7, 8]);
    }

    #[tokio::test]
    async fn a_join_rebuilds_its_side_every_run() {
        let join = plan("SELECT a.n FROM batch a JOIN batch b ON a.n = b.n + 1 ORDER BY a.n").await;
        assert_eq!(run(&join, vec![1, 2, 3]).await, vec![2, 3]);
        assert_eq!(run(&join, vec![10, 11]).await, vec![11]);
    }

    #[tokio::test]
    async fn rows_of_another_shape_are_refused() {
        let sum = plan("SELECT sum(n) FROM batch").await;
        let other = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("m", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        let err = sum.run(&other).await.unwrap_err();
        assert!(err.to_string().contains("planned over"), "{err}");
    }
}
