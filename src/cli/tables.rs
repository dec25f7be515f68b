//! The commands that read or keep a job's tables: `weir query`, `weir views`, `weir maintain`, `weir status`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;

use weir::cmd::query::{self, Format};
use weir::cmd::views::{self, Dialect};
use weir::config::Overrides;
use weir::upkeep::maintain;

use super::{JobArgs, Usage, choice, faults_from_env, load_with_registry, stop_on_signal};

#[derive(Args)]
pub struct QueryArgs {
    /// The job spec whose tables to query.
    #[arg(long, value_name = "PATH")]
    job: PathBuf,
    /// Override the job's storage root (a path or s3://bucket/prefix).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Output format (json: an array of objects).
    #[arg(long, value_parser = choice::<Format>(), default_value = "table")]
    format: Format,
    /// The SQL, e.g. "SELECT _event_date, count(*) FROM raw GROUP BY 1".
    #[arg(value_name = "SQL")]
    sql: String,
}

#[derive(Args)]
pub struct ViewsArgs {
    /// The job spec whose outputs to describe.
    #[arg(long, value_name = "PATH")]
    job: PathBuf,
    /// Override the job's storage root (table paths in the SQL follow it).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The engine the SQL is for.
    #[arg(long, value_parser = choice::<Dialect>())]
    dialect: Dialect,
}

#[derive(Args)]
pub struct MaintainArgs {
    /// The job spec whose tables to maintain.
    #[arg(long, value_name = "PATH")]
    job: PathBuf,
    /// Override the job's storage root (a path or s3://bucket/prefix).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// One round, then exit.
    #[arg(long)]
    once: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    /// The job spec to report on.
    #[arg(long, value_name = "PATH", required_unless_present = "from")]
    job: Option<PathBuf>,
    /// Ask a running `weir run` instead (its metrics address, e.g.
    /// http://127.0.0.1:9898): the tables' view plus its live figures, for
    /// every job it runs, or only `--job`'s.
    #[arg(long, value_name = "URL")]
    from: Option<String>,
    #[command(flatten)]
    job_args: JobArgs,
}

pub async fn query_command(args: QueryArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        data: args.data,
        ..Overrides::default()
    };
    let job = load_with_registry(&args.job, &overrides)?;
    let (schema, batches) = query::run(&job, &args.sql).await.map_err(|e| {
        if let (true, query::QueryError::Sql(sql)) = (e.is_usage(), &e) {
            anyhow::Error::new(Usage(sql.find_root().to_string()))
        } else {
            anyhow::Error::new(e)
        }
    })?;
    print!("{}", query::render(&schema, &batches, args.format)?);
    Ok(())
}

pub fn views_command(args: ViewsArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        data: args.data,
        ..Overrides::default()
    };
    let job = load_with_registry(&args.job, &overrides)?;
    print!("{}", views::render(&job, args.dialect));
    Ok(())
}

pub async fn maintain_command(args: MaintainArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        data: args.data,
        ..Overrides::default()
    };
    let job = load_with_registry(&args.job, &overrides)?;
    let faults = faults_from_env()?;
    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn(stop_on_signal(stop.clone()));
    loop {
        println!("{}", maintain::run_once(&job, &faults).await?);
        if args.once {
            return Ok(());
        }
        let next = tokio::time::Instant::now() + job.maintenance.every;
        while tokio::time::Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub async fn status_command(args: StatusArgs) -> anyhow::Result<()> {
    let job = match &args.job {
        Some(path) => Some(load_with_registry(path, &args.job_args.overrides())?),
        None => None,
    };
    match (args.from, job) {
        (Some(url), job) => {
            let mut snapshot = weir::cmd::console::fetch(&url).await?;
            if let Some(job) = job {
                snapshot = snapshot.only(&job.name)?;
            }
            println!("{snapshot}");
        }
        (None, Some(job)) => println!("{}", weir::cmd::status::status(&job).await?),
        (None, None) => unreachable!("clap requires --job without --from"),
    }
    Ok(())
}
