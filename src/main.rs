//! The `weir` command line: parses the arguments and hands each command to
//! its module in `cli/`, which builds a validated job and calls the library.
//! Exit codes: 0 success, 1 failure, 2 bad usage or bad spec.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::bench::{BenchArgs, TuneArgs, bench_command, tune_command};
use cli::demo::{DemoArgs, demo_command};
use cli::produce::{ProduceArgs, produce_command};
use cli::reprocess::{ReprocessArgs, VerifyArgs, reprocess_command, verify_command};
use cli::run::{RunArgs, run_command};
use cli::tables::{
    MaintainArgs, QueryArgs, StatusArgs, ViewsArgs, maintain_command, query_command,
    status_command, views_command,
};
use cli::{Usage, choice};
use weir::config::JobError;
use weir::telemetry::LogFormat;

mod cli;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Kafka topics into Delta Lake tables within seconds, exactly once.",
    long_about = "weir reads a Kafka topic in micro-batches, checks every message against the \
                  job's schema, drops re-sent events by ID, and commits valid events to a Delta \
                  table `raw`, events behind the watermark to `late` and rejected ones (with the \
                  reason) to `dlq`, and each output's rows to its own table, all in one trigger. \
                  Each commit carries the Kafka offsets it covers, so a restart never loses or \
                  duplicates an event."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines (on stderr) for people or as JSON objects.
    #[arg(long, global = true, value_parser = choice::<LogFormat>(), default_value = "text")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job on an embedded, in-process Kafka broker with generated traffic,
    /// then report where every event went. Needs no service.
    Demo(DemoArgs),
    /// Run a job against a real Kafka broker until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Send generated events (with duplicates, late events and malformed messages) to a topic.
    Produce(ProduceArgs),
    /// Run SQL (DataFusion dialect) over a job's tables: `raw`, `dlq`, `late`, and each
    /// output as final values (`<output>__partials` holds the raw partials).
    Query(QueryArgs),
    /// Print SQL views that merge each output's partials into final values, for
    /// DataFusion, DuckDB, Spark SQL or Trino.
    Views(ViewsArgs),
    /// Fold closed windows' partials, merge small files, checkpoint and clean the
    /// Delta log, vacuum: now (--once) or every `maintenance.every` until stopped.
    Maintain(MaintainArgs),
    /// Rebuild outputs for a range of event dates from `raw` (all tiers) with the
    /// job's current definition, replacing their rows in one commit per table and tier.
    Reprocess(ReprocessArgs),
    /// Reprocess a range into a scratch location and compare it with the live
    /// outputs; exits 1 on any difference.
    Verify(VerifyArgs),
    /// Where a job stands, from its tables and its broker (no running process
    /// needed): per partition the committed offset, high watermark, lag and last
    /// commit; hot partitions, the partition holding the watermark, idle ones and a
    /// stalled watermark flagged.
    Status(StatusArgs),
    /// Measure what each batch size costs in latency and buys in throughput,
    /// against the raw consume rate of the same broker; prints a table and
    /// writes a CSV and a PNG of the frontier.
    Bench(BenchArgs),
    /// Run the bench sweep at a job's event shape and input rate and recommend
    /// its batching for a p99 target.
    Tune(TuneArgs),
}

fn main() -> ExitCode {
    weir::alloc::set_up_heap();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
        .block_on(cli_main())
}

async fn cli_main() -> ExitCode {
    let cli = Cli::parse();
    weir::telemetry::init_logging(cli.log_format);
    let result = match cli.command {
        Command::Demo(args) => demo_command(args).await,
        Command::Run(args) => run_command(args).await,
        Command::Produce(args) => produce_command(args).await,
        Command::Query(args) => query_command(args).await,
        Command::Views(args) => views_command(args),
        Command::Maintain(args) => maintain_command(args).await,
        Command::Reprocess(args) => reprocess_command(args).await,
        Command::Verify(args) => verify_command(args).await,
        Command::Status(args) => status_command(args).await,
        Command::Bench(args) => bench_command(args).await,
        Command::Tune(args) => tune_command(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: error: {e:#}");
            // A bad spec may surface from inside the pipeline (an output's SQL
            // is only checked by planning it).
            let usage = e.chain().any(|c| {
                c.is::<JobError>() || c.is::<Usage>() || c.is::<weir::table::schema::Incompatible>()
            });
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
