//! A synthetic event stream shaped by a job's schema contract, and a producer
//! that sends it to any broker. It feeds `weir demo`, `weir produce` and the
//! tests, so it deliberately includes what real streams contain: skewed keys,
//! out-of-order event times, events so late the watermark has passed them,
//! events re-sent at later offsets, and malformed messages of every kind the
//! decoder must route to the DLQ.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde_json::{Value, json};

use super::framing::Framing;
use crate::config::{Contract, FieldDef, FieldType};

/// What a generated message is meant to be, so tests can check where it landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A valid event at most [`STRAGGLER_MS`] behind the wall clock.
    Valid,
    /// A valid event [`LATE_MS`] behind the wall clock: behind the watermark of
    /// any job whose allowed lateness is under 10 minutes.
    Late,
    /// The exact bytes of an earlier valid event, sent again.
    Duplicate,
    Malformed(Malformed),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Malformed {
    NotJson,
    NotAnObject,
    MissingEventId,
    WrongType,
    AbsurdEventTime,
    Empty,
    NotUtf8,
}

const MALFORMED_KINDS: [Malformed; 7] = [
    Malformed::NotJson,
    Malformed::NotAnObject,
    Malformed::MissingEventId,
    Malformed::WrongType,
    Malformed::AbsurdEventTime,
    Malformed::Empty,
    Malformed::NotUtf8,
];

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Late => "late",
            Kind::Duplicate => "duplicate",
            Kind::Malformed(m) => match m {
                Malformed::NotJson => "malformed:not_json",
                Malformed::NotAnObject => "malformed:not_an_object",
                Malformed::MissingEventId => "malformed:missing_event_id",
                Malformed::WrongType => "malformed:wrong_type",
                Malformed::AbsurdEventTime => "malformed:absurd_event_time",
                Malformed::Empty => "malformed:empty",
                Malformed::NotUtf8 => "malformed:not_utf8",
            },
        }
    }

    /// Whether the schema contract accepts this message (duplicates are valid events).
    pub fn is_valid(self) -> bool {
        !matches!(self, Kind::Malformed(_))
    }
}

/// One message to send.
#[derive(Debug, Clone)]
pub struct Generated {
    pub key: String,
    pub payload: Vec<u8>,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub malformed_ratio: f64,
    pub duplicate_ratio: f64,
    pub late_ratio: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            malformed_ratio: 0.005,
            duplicate_ratio: 0.01,
            late_ratio: 0.005,
        }
    }
}

/// How far behind the wall clock an on-time event may be (a few are this far).
pub const STRAGGLER_MS: i64 = 30_000;
/// How far behind the wall clock a late event is.
pub const LATE_MS: std::ops::Range<i64> = 600_000..3_600_000;

/// Generates messages for a contract. Deterministic for a given seed, except
/// for event times, which follow the wall clock like a real stream's.
pub struct Generator {
    /// How each of the contract's fields is made, worked out once.
    fields: Arc<[FieldGen]>,
    /// The contract's event ID and event time fields (indices into `fields`).
    id_field: usize,
    time_field: usize,
    /// Field indices in name order: the order of the JSON object's keys.
    by_name: Vec<usize>,
    mix: Mix,
    rng: StdRng,
    seq: u64,
    recent: VecDeque<(String, Vec<u8>)>,
    malformed_turn: usize,
    /// With a backfill: the first event's time and the step per event (ms).
    backfill: Option<(i64, f64)>,
}

/// One contract field as the generator makes it.
struct FieldGen {
    name: String,
    /// `"name":`, as the JSON object spells the key.
    key: Vec<u8>,
    ty: FieldType,
    nullable: bool,
}

impl FieldGen {
    fn new(field: &FieldDef) -> Self {
        let mut key = serde_json::to_vec(&field.name).expect("JSON serializes");
        key.push(b':');
        Self {
            name: field.name.clone(),
            key,
            ty: field.ty,
            nullable: field.nullable,
        }
    }
}

/// How many recent valid events a duplicate may be drawn from.
const RECENT: usize = 1000;

impl Generator {
    pub fn new(contract: Contract, mix: Mix, seed: u64) -> Self {
        let fields: Arc<[FieldGen]> = contract.fields.iter().map(FieldGen::new).collect();
        let mut by_name: Vec<usize> = (0..fields.len()).collect();
        by_name.sort_by(|&a, &b| fields[a].name.cmp(&fields[b].name));
        Self {
            fields,
            id_field: contract.event_id,
            time_field: contract.event_time,
            by_name,
            mix,
            rng: StdRng::seed_from_u64(seed),
            seq: 0,
            recent: VecDeque::with_capacity(RECENT),
            malformed_turn: 0,
            backfill: None,
        }
    }

    /// Spreads the event times of the next `messages` messages evenly over the
    /// `span` before now, oldest first: history to reprocess, in a few seconds.
    pub fn backfill(mut self, span: std::time::Duration, messages: u64) -> Self {
        let span_ms = span.as_millis() as i64;
        let start = Utc::now().timestamp_millis() - span_ms;
        self.backfill = Some((start, span_ms as f64 / messages.max(1) as f64));
        self
    }

    /// The clock event times follow: the wall clock, or the backfill's.
    fn now_ms(&self) -> i64 {
        match self.backfill {
            None => Utc::now().timestamp_millis(),
            Some((start, step)) => start + (self.seq as f64 * step) as i64,
        }
    }

    pub fn next_message(&mut self) -> Generated {
        let roll: f64 = self.rng.random();
        if roll < self.mix.malformed_ratio {
            let kind = MALFORMED_KINDS[self.malformed_turn % MALFORMED_KINDS.len()];
            self.malformed_turn += 1;
            return Generated {
                key: self.key(),
                payload: self.malformed(kind),
                kind: Kind::Malformed(kind),
            };
        }
        if roll < self.mix.malformed_ratio + self.mix.duplicate_ratio && !self.recent.is_empty() {
            let i = self.rng.random_range(0..self.recent.len());
            let (key, payload) = self.recent[i].clone();
            return Generated {
                key,
                payload,
                kind: Kind::Duplicate,
            };
        }
        // A duplicate's roll with nothing yet to re-send falls through to here
        // and makes a valid event, not a late one.
        let late_from = self.mix.malformed_ratio + self.mix.duplicate_ratio;
        let late = (late_from..late_from + self.mix.late_ratio).contains(&roll);
        let key = self.key();
        let delay_ms = if late {
            self.rng.random_range(LATE_MS)
        } else {
            self.straggle()
        };
        let event = self.event(delay_ms);
        let payload = self.to_json(&event);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((key.clone(), payload.clone()));
        Generated {
            key,
            payload,
            kind: if late { Kind::Late } else { Kind::Valid },
        }
    }

    /// An on-time event's delay: usually under 3 s, sometimes up to [`STRAGGLER_MS`].
    fn straggle(&mut self) -> i64 {
        if self.rng.random_bool(0.02) {
            self.rng.random_range(0..STRAGGLER_MS)
        } else {
            self.rng.random_range(0..3_000)
        }
    }

    /// A skewed key (about 1000 distinct, Zipf-like), so some partitions run hot.
    fn key(&mut self) -> String {
        format!("k{}", self.zipf(1000))
    }

    /// A rank in `1..=n`, low ranks far more likely (log-uniform, close to Zipf s=1).
    fn zipf(&mut self, n: u64) -> u64 {
        let u: f64 = self.rng.random();
        ((n as f64).powf(u) as u64).clamp(1, n)
    }

    /// One event's field values, in contract order: `None` for a nullable
    /// field left out. A value per field (no map of names) and one clock read
    /// per event: the bench's producer shares the cores it measures.
    fn event(&mut self, delay_ms: i64) -> Vec<Option<Value>> {
        self.seq += 1;
        let now = self.now_ms();
        let fields = Arc::clone(&self.fields);
        fields
            .iter()
            .enumerate()
            .map(|(i, field)| {
                Some(if i == self.id_field {
                    self.event_id(field.ty)
                } else if i == self.time_field {
                    event_time(now - delay_ms, &mut self.rng)
                } else if field.nullable && self.rng.random_bool(0.05) {
                    return None;
                } else {
                    self.value(&field.name, field.ty, now)
                })
            })
            .collect()
    }

    /// The event as a JSON object, keys in name order (as a `serde_json`
    /// map writes them).
    fn to_json(&self, values: &[Option<Value>]) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(b'{');
        for &i in &self.by_name {
            let (Some(value), field) = (&values[i], &self.fields[i]) else {
                continue;
            };
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(&field.key);
            serde_json::to_writer(&mut out, value).expect("JSON serializes");
        }
        out.push(b'}');
        out
    }

    fn event_id(&mut self, ty: FieldType) -> Value {
        let salt: u32 = self.rng.random();
        match ty {
            FieldType::Int64 => json!(self.seq as i64 * 1_000_000 + (salt % 1_000_000) as i64),
            _ => json!(format!("{:08x}-{:012x}", salt, self.seq)),
        }
    }

    fn value(&mut self, name: &str, ty: FieldType, now_ms: i64) -> Value {
        // A few well-known clickstream fields get realistic values.
        match (name, ty) {
            ("action", FieldType::String) => {
                let roll: f64 = self.rng.random();
                let action = if roll < 0.70 {
                    "view"
                } else if roll < 0.95 {
                    "click"
                } else {
                    "purchase"
                };
                return json!(action);
            }
            ("country", FieldType::String) => {
                const COUNTRIES: [&str; 10] =
                    ["US", "DE", "GB", "FR", "IN", "BR", "JP", "NL", "SE", "PL"];
                return json!(COUNTRIES[self.zipf(10) as usize - 1]);
            }
            ("page", FieldType::String) => return json!(format!("/p/{}", self.zipf(200))),
            ("currency", FieldType::String) => {
                return json!(["EUR", "USD", "GBP", "CHF"][self.zipf(4) as usize - 1]);
            }
            _ => {}
        }
        match ty {
            FieldType::String => json!(format!("{name}_{}", self.zipf(200))),
            FieldType::Bool => json!(self.rng.random_bool(0.3)),
            FieldType::Int32 | FieldType::Int64 => json!(self.zipf(10_000)),
            FieldType::Float32 | FieldType::Float64 => {
                // Amounts: mostly small, a long tail; cents precision.
                let amount = (self.rng.random::<f64>().powi(3) * 500.0 * 100.0).round() / 100.0;
                json!(amount)
            }
            FieldType::Timestamp => {
                let delay = self.straggle();
                event_time(now_ms - delay, &mut self.rng)
            }
            FieldType::Date => json!(
                chrono::DateTime::from_timestamp_millis(now_ms)
                    .unwrap_or_default()
                    .format("%Y-%m-%d")
                    .to_string()
            ),
        }
    }

    fn malformed(&mut self, kind: Malformed) -> Vec<u8> {
        let delay = self.straggle();
        let mut event = self.event(delay);
        let (id, time) = (self.id_field, self.time_field);
        match kind {
            Malformed::NotJson => {
                let text = self.to_json(&event);
                text[..text.len() / 2].to_vec()
            }
            Malformed::NotAnObject => b"[1, 2, 3]".to_vec(),
            Malformed::MissingEventId => {
                event[id] = None;
                self.to_json(&event)
            }
            Malformed::WrongType => {
                event[time] = Some(json!({ "not": "a time" }));
                self.to_json(&event)
            }
            Malformed::AbsurdEventTime => {
                event[time] = Some(json!("2999-01-01T00:00:00Z"));
                self.to_json(&event)
            }
            Malformed::Empty => Vec::new(),
            Malformed::NotUtf8 => {
                let mut bytes = b"{\"x\": \"".to_vec();
                bytes.extend_from_slice(&[0xff, 0xfe, 0xfd]);
                bytes.extend_from_slice(b"\"}");
                bytes
            }
        }
    }
}

/// An event time (epoch ms), half the time as an RFC 3339 string, half as epoch millis.
fn event_time(ms: i64, rng: &mut StdRng) -> Value {
    if rng.random_bool(0.5) {
        json!(ms)
    } else {
        let t = Utc.timestamp_millis_opt(ms).single().expect("in range");
        json!(t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

/// Where one sent message landed, and what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

/// When to stop producing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Events per second; `None` sends as fast as the broker takes them.
    pub rate: Option<f64>,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("cannot create the Kafka producer for {brokers}: {source}")]
    Create { brokers: String, source: KafkaError },
    #[error("a message was not delivered to `{topic}`: {source}")]
    Delivery { topic: String, source: KafkaError },
}

/// How many sends may await their delivery report at once.
const IN_FLIGHT: usize = 20_000;

/// Sends generated messages to `topic` until a limit is reached or `stop` is
/// set, then waits for every delivery report. Sends are concurrent (awaiting
/// each one in turn is about a thousand times slower). With `framing`, each
/// goes out in its wire format; what is reported delivered is still its JSON.
pub async fn produce(
    bootstrap: &str,
    topic: &str,
    generator: &mut Generator,
    mut framing: Option<&mut Framing>,
    limits: Limits,
    stop: &AtomicBool,
    extra: &[(String, String)],
) -> Result<Vec<Delivered>, ProduceError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.max.bytes", "10000000");
    for (k, v) in extra {
        config.set(k, v);
    }
    let producer: FutureProducer = config.create().map_err(|source| ProduceError::Create {
        brokers: bootstrap.to_owned(),
        source,
    })?;

    let start = Instant::now();
    let mut pending: VecDeque<(Generated, DeliveryFuture)> = VecDeque::new();
    let mut delivered = Vec::new();
    let mut sent: u64 = 0;
    loop {
        if stop.load(Ordering::Relaxed)
            || limits.count.is_some_and(|c| sent >= c)
            || limits.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        if let Some(rate) = limits.rate {
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            if sent >= due {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        }
        let message = generator.next_message();
        let framed = framing.as_mut().map(|f| f.frame(&message.payload));
        let future = loop {
            let record = FutureRecord::to(topic)
                .key(&message.key)
                .payload(framed.as_deref().unwrap_or(&message.payload));
            match producer.send_result(record) {
                Ok(future) => break future,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    await_oldest(&mut pending, &mut delivered, topic).await?;
                    if pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err((source, _)) => {
                    return Err(ProduceError::Delivery {
                        topic: topic.to_owned(),
                        source,
                    });
                }
            }
        };
        pending.push_back((message, future));
        sent += 1;
        if pending.len() >= IN_FLIGHT {
            await_oldest(&mut pending, &mut delivered, topic).await?;
        }
    }
    while !pending.is_empty() {
        await_oldest(&mut pending, &mut delivered, topic).await?;
    }
    let _ = producer.flush(Duration::from_secs(10));
    Ok(delivered)
}

async fn await_oldest(
    pending: &mut VecDeque<(Generated, DeliveryFuture)>,
    delivered: &mut Vec<Delivered>,
    topic: &str,
) -> Result<(), ProduceError> {
    let Some((message, future)) = pending.pop_front() else {
        return Ok(());
    };
    let failed = |source| ProduceError::Delivery {
        topic: topic.to_owned(),
        source,
    };
    match future.await {
        Ok(Ok(d)) => {
            delivered.push(Delivered {
                partition: d.partition,
                offset: d.offset,
                kind: message.kind,
                payload: message.payload,
            });
            Ok(())
        }
        Ok(Err((e, _))) => Err(failed(e)),
        Err(_) => Err(failed(KafkaError::Canceled)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Job, Overrides};
    use std::path::Path;

    pub(crate) fn clickstream() -> Job {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/clickstream.toml");
        Job::load(&path, &Overrides::default()).unwrap()
    }

    #[test]
    fn mix_is_close_to_the_ratios_and_covers_every_malformed_kind() {
        let mix = Mix {
            malformed_ratio: 0.05,
            duplicate_ratio: 0.1,
            late_ratio: 0.02,
        };
        let mut g = Generator::new(clickstream().contract, mix, 7);
        let kinds: Vec<Kind> = (0..20_000).map(|_| g.next_message().kind).collect();
        let malformed = kinds.iter().filter(|k| !k.is_valid()).count();
        let dups = kinds.iter().filter(|k| **k == Kind::Duplicate).count();
        let late = kinds.iter().filter(|k| **k == Kind::Late).count();
        assert!((300..500).contains(&late), "{late}");
        assert!((800..1200).contains(&malformed), "{malformed}");
        assert!((1700..2300).contains(&dups), "{dups}");
        for m in MALFORMED_KINDS {
            assert!(kinds.contains(&Kind::Malformed(m)), "{m:?} never generated");
        }
    }

    #[test]
    fn no_late_ratio_no_late_events_even_when_nothing_could_be_re_sent_yet() {
        let mix = Mix {
            malformed_ratio: 0.0,
            duplicate_ratio: 1.0,
            late_ratio: 0.0,
        };
        let mut g = Generator::new(clickstream().contract, mix, 7);
        assert_eq!(g.next_message().kind, Kind::Valid);
        assert_eq!(g.next_message().kind, Kind::Duplicate);
    }

    #[test]
    fn same_seed_same_stream_apart_from_times() {
        let a: Vec<Kind> = {
            let mut g = Generator::new(clickstream().contract, Mix::default(), 1);
            (0..1000).map(|_| g.next_message().kind).collect()
        };
        let b: Vec<Kind> = {
            let mut g = Generator::new(clickstream().contract, Mix::default(), 1);
            (0..1000).map(|_| g.next_message().kind).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn events_are_written_as_a_json_map_would_write_them() {
        let mut g = Generator::new(clickstream().contract, Mix::default(), 3);
        for _ in 0..2000 {
            let m = g.next_message();
            if !matches!(m.kind, Kind::Valid | Kind::Late) {
                continue;
            }
            let map: serde_json::Map<String, Value> = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(
                serde_json::to_vec(&map).unwrap(),
                m.payload,
                "keys in name order, compact"
            );
        }
    }
}
