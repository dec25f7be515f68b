//! `weir produce`: generated events, with the mix of bad ones asked for, to any broker.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use weir::config::{Format as SourceFormat, KeyFormat, Overrides};
use weir::ingest::source::framing::Framing;
use weir::ingest::source::generator::{self, Generator, Limits, Mix};

use super::{Usage, load_job, parse_property, positive, stop_on_signal};

#[derive(Args)]
pub struct ProduceArgs {
    /// Kafka bootstrap list (host:port,…).
    #[arg(long, value_name = "BROKERS")]
    brokers: String,
    /// Topic to send to.
    #[arg(long, value_name = "TOPIC")]
    topic: String,
    /// Job spec whose schema shapes the events [default: the built-in clickstream job].
    #[arg(long, value_name = "PATH")]
    job: Option<PathBuf>,
    /// Events per second [default: as fast as the broker takes them].
    #[arg(long, value_name = "EVENTS_PER_S")]
    rate: Option<f64>,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "N")]
    seconds: Option<u64>,
    /// Share of messages that break the schema contract (0–1).
    #[arg(long, default_value_t = 0.005, value_name = "X")]
    malformed_ratio: f64,
    /// Share of messages that re-send an earlier event (0–1).
    #[arg(long, default_value_t = 0.01, value_name = "Y")]
    duplicate_ratio: f64,
    /// Share of events 10–60 minutes behind the clock, so behind the watermark (0–1).
    #[arg(long, default_value_t = 0.005, value_name = "Z")]
    late_ratio: f64,
    /// Random seed, for a reproducible stream.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Spread event times evenly over this span before now (e.g. "3days"),
    /// oldest first, instead of following the clock; needs --count.
    #[arg(long, value_name = "SPAN", value_parser = humantime::parse_duration, requires = "count")]
    backfill: Option<Duration>,
    /// Write one CSV line per delivered message to FILE: partition, offset,
    /// kind, and the payload (quoted; invalid UTF-8 replaced by U+FFFD).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Extra librdkafka producer property, KEY=VALUE (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    property: Vec<(String, String)>,
    /// How to encode messages [default: the job's source.format]. `avro`,
    /// `protobuf` and `json_schema` register the job's contract in that
    /// format in its source.registry and send the Confluent wire format;
    /// --report still shows each event as JSON.
    #[arg(long, value_parser = ["json", "avro", "protobuf", "json_schema"], value_name = "FORMAT")]
    format: Option<String>,
}

pub async fn produce_command(args: ProduceArgs) -> anyhow::Result<()> {
    let ratios = [args.malformed_ratio, args.duplicate_ratio, args.late_ratio];
    let ratios_ok =
        ratios.iter().all(|r| (0.0..=1.0).contains(r)) && ratios.iter().sum::<f64>() <= 1.0;
    if !ratios_ok || args.rate.is_some_and(|r| !positive(r)) {
        bail!(Usage(
            "--malformed-ratio, --duplicate-ratio and --late-ratio must be in 0–1 (sum at most 1), \
             --rate above 0"
                .into()
        ));
    }
    let job = load_job(args.job.as_deref(), &Overrides::default())?;
    let mix = Mix {
        malformed_ratio: args.malformed_ratio,
        duplicate_ratio: args.duplicate_ratio,
        late_ratio: args.late_ratio,
    };
    let format = match (args.format.as_deref(), job.source.format.registry()) {
        (None, _) => job.source.format.clone(),
        (Some("json"), _) => SourceFormat::Json,
        (Some(format), None) => bail!(Usage(format!(
            "--format {format} needs a job whose source.registry says where to register its \
             schema (pass --job)"
        ))),
        (Some("avro"), Some(registry)) => SourceFormat::Avro(registry.clone()),
        (Some("protobuf"), Some(registry)) => SourceFormat::Protobuf(registry.clone()),
        (Some(_), Some(registry)) => SourceFormat::JsonSchema(registry.clone()),
    };
    if let (Some(from), Some(_)) = (&job.contract_from, format.registry()) {
        bail!(Usage(format!(
            "the job's fields come from subject `{}` (schema ID {}), and weir produce registers \
             a schema made from a spec's fields, which would replace it: produce with your own \
             serializer, or pass --format json",
            from.subject, from.schema_id
        )));
    }
    if matches!(job.contract.kafka.key, Some(KeyFormat::Avro(_))) {
        bail!(Usage(
            "the job reads Avro keys (source.key_format = \"avro\"), and weir produce sends \
             text keys, which it would refuse: produce with your own key serializer"
                .into()
        ));
    }
    let mut framing = Framing::for_job(&job.contract, &format).await?;
    let mut generator = Generator::new(job.contract, mix, args.seed.unwrap_or_else(rand::random));
    if let (Some(span), Some(count)) = (args.backfill, args.count) {
        generator = generator.backfill(span, count);
    }
    let limits = Limits {
        rate: args.rate,
        count: args.count,
        duration: args.seconds.map(Duration::from_secs),
    };
    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn(stop_on_signal(stop.clone()));
    let delivered = generator::produce(
        &args.brokers,
        &args.topic,
        &mut generator,
        framing.as_mut(),
        limits,
        &stop,
        &args.property,
    )
    .await?;
    if let Some(path) = &args.report {
        let mut csv = String::from("partition,offset,kind,payload\n");
        for d in &delivered {
            let payload = String::from_utf8_lossy(&d.payload).replace('"', "\"\"");
            csv.push_str(&format!(
                "{},{},{},\"{payload}\"\n",
                d.partition,
                d.offset,
                d.kind.label()
            ));
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    let malformed = delivered.iter().filter(|d| !d.kind.is_valid()).count();
    println!(
        "produced {} messages to {} ({} malformed)",
        delivered.len(),
        args.topic,
        malformed
    );
    Ok(())
}
