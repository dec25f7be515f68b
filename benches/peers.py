#!/usr/bin/env python3
"""weir beside its peers (issue 20, item 7), on one Apache Kafka broker:
`weir run`, kafka-delta-ingest and Spark Structured Streaming (Kafka source,
Delta sink through foreachBatch with txnAppId/txnVersion), each with its own
defaults, batches of up to 100,000 events and a trigger of about a second
(kafka-delta-ingest: 5 s, see Peer.start).

Per run and peer, three measurements, each on a topic of its own:

- throughput: once the peer has stored ten events (it has joined and polls;
  a JVM's start-up is left out), EVENTS clean events (3 partitions) are sent
  as fast as the broker takes them; events/s is EVENTS over the time from the
  first send to the commit that holds the last event. This includes the
  producer's own pace and the peer's trigger interval;
- backlog: the peer stores ten events and is stopped; BACKLOG events are
  sent; the peer is started again and drains them. Events/s is the events of
  its commits after the first one over the time from the first to the last,
  so neither start-up nor the producer is in it: the peer's own pace;
- latency: likewise ready, the peer gets RATE events/s for SECONDS from
  `weir produce`; an event's latency is the timestamp of the Delta commit that
  added its file minus its Kafka timestamp (the producer's create time), p50
  and p99 over events.

Both are read from the Delta log and the data files alone, so each peer is
judged the same way. Usage, after integration/setup.sh, `cargo build
--release` and a release build of kafka-delta-ingest (KDI, below):

    ~/.cache/weir-venv/bin/python benches/peers.py [--runs 3] [--peers weir,kdi,spark]

KDI is the binary to run for kafka-delta-ingest (default:
~/.cache/kdi-target/release/kafka-delta-ingest, built from its source with
`cargo build --release`).
"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import polars as pl

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "integration"))
from conftest import start_kafka, stop_kafka, write_job  # noqa: E402

WEIR = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "weir"
KDI = pathlib.Path(os.environ.get(
    "KDI", pathlib.Path.home() / ".cache/kdi-target/release/kafka-delta-ingest"))
SPARK_LIBS = pathlib.Path.home() / ".cache/weir-peers-spark"
CLEAN = ["--malformed-ratio", "0", "--duplicate-ratio", "0", "--late-ratio", "0"]


def spark_jars():
    """Spark, Delta and Spark's Kafka source (benches/peers/pom.xml), once."""
    pom = ROOT / "benches/peers/pom.xml"
    stamp = SPARK_LIBS / ".weir-pom"
    if stamp.exists() and stamp.read_text() == pom.read_text():
        return
    shutil.rmtree(SPARK_LIBS, ignore_errors=True)
    subprocess.run(["mvn", "--batch-mode", "--quiet", "--file", str(pom),
                    "dependency:copy-dependencies", "-DincludeScope=runtime",
                    f"-DoutputDirectory={SPARK_LIBS}"], check=True)
    stamp.write_text(pom.read_text())


def produce(broker, topic, *limits):
    subprocess.run([WEIR, "produce", "--brokers", broker.bootstrap, "--topic", topic,
                    *CLEAN, *map(str, limits)], check=True, capture_output=True, timeout=900)


def commits(table: pathlib.Path):
    """(commit time in s, rows, Kafka timestamps in ms) per data file added,
    from the Delta log and the files. The Kafka timestamp (the producer's
    create time) is the one event time all three peers store alike."""
    out = []
    log = table / "_delta_log"
    if not log.exists():
        return out
    for version in sorted(log.glob("*.json")):
        actions = [json.loads(line) for line in version.read_text().splitlines() if line]
        info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
        at = info.get("timestamp", version.stat().st_mtime * 1000) / 1000
        for add in (a["add"] for a in actions if "add" in a):
            ts = pl.read_parquet(table / add["path"], columns=["_kafka_ts"])["_kafka_ts"]
            out.append((at, ts.len(), ts.dt.epoch("ms").to_list()))
    return out


def rows(table: pathlib.Path) -> int:
    """Rows committed so far, from the log's file statistics alone: polling
    must not take the CPU the peer needs."""
    total = 0
    log = table / "_delta_log"
    for version in sorted(log.glob("*.json")) if log.exists() else []:
        try:
            lines = version.read_text().splitlines()
            adds = [json.loads(line)["add"] for line in lines if '"add"' in line]
            total += sum(json.loads(add["stats"])["numRecords"] for add in adds)
        except (OSError, ValueError, KeyError):
            return total  # a version being written
    return total


class Peer:
    """One system under test: starts on a topic into a table, and stops."""

    def __init__(self, name, work: pathlib.Path, broker):
        self.name, self.work, self.broker, self.proc = name, work, broker, None

    def table(self, topic) -> pathlib.Path:
        if self.name == "weir":
            return self.work / topic / "hot" / "clickstream" / "raw"
        return self.work / topic / "table"

    def start(self, topic):
        """Starts the peer on `topic`, resuming where it stopped if it ran on
        it before (each keeps its position in its table or checkpoint)."""
        out = self.work / topic
        fresh = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        log = open(out / "peer.log", "a")
        if self.name == "weir":
            job = write_job(out / "job.toml", self.broker, topic, out, max_events=100000,
                            interval_ms=1000)
            command = [WEIR, "run", str(job)]
        elif self.name == "kdi":
            if fresh:
                create_kdi_table(self.table(topic))
            command = [KDI, "ingest", topic, str(self.table(topic)), "--kafka",
                       self.broker.bootstrap, "--app_id", f"peer-{topic}",
                       # Its commits take about 1.5 s here: with allowed_latency 1
                       # every message after the first flush completes a file of
                       # its own (one row a commit); 5 s lets it batch.
                       "--allowed_latency", "5", "--max_messages_per_batch", "100000",
                       "--auto_offset_reset", "earliest",
                       "--transform", "_kafka_ts: kafka.timestamp"]
        else:
            classpath = f"{SPARK_LIBS}/*"
            command = ["java", "-Xmx2g", "-cp", classpath, str(ROOT / "benches/peers/SparkStream.java"),
                       self.broker.bootstrap, topic, str(self.table(topic)),
                       str(out / "checkpoint"), "1000"]
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def create_kdi_table(path: pathlib.Path):
    """kafka-delta-ingest writes into a table that exists, with the columns
    of the messages' fields."""
    import pyarrow as pa
    from deltalake import write_deltalake

    schema = pa.schema([("event_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")),
                        ("user_id", pa.string()), ("page", pa.string()),
                        ("action", pa.string()), ("country", pa.string()),
                        ("price", pa.float64()), ("_kafka_ts", pa.timestamp("us", tz="UTC"))])
    write_deltalake(str(path), schema.empty_table(), mode="overwrite")


def wait_for(table, count, peer, timeout):
    deadline = time.time() + timeout
    while rows(table) < count:
        if peer.proc.poll() is not None:
            tail = (table.parent / "peer.log").read_text()[-3000:]
            raise RuntimeError(f"{peer.name} exited; the end of its log:\n{tail}")
        if time.time() > deadline:
            raise RuntimeError(f"{peer.name}: {rows(table)} of {count} rows after {timeout} s")
        time.sleep(0.5)


def ready(peer, broker, topic):
    """Starts `peer` on a new topic and returns once it has stored ten events:
    it has joined its group and polls (a JVM's start-up is left out)."""
    broker.create_topic(topic, 3)
    peer.start(topic)
    produce(broker, topic, "--count", 10)
    wait_for(peer.table(topic), 10, peer, 300)


def drain(peer, broker, topic, events) -> float:
    """Events/s while EVENTS are sent as fast as the broker takes them: from
    the first send to the commit that holds the last event."""
    ready(peer, broker, topic)
    try:
        started = time.time()
        produce(broker, topic, "--count", events)
        wait_for(peer.table(topic), 10 + events, peer, 900)
    finally:
        peer.stop()
    return events / (max(at for at, n, _ in commits(peer.table(topic)) if n) - started)


def backlog(peer, broker, topic, events) -> float:
    """Events/s draining EVENTS that waited on the broker while the peer was
    stopped: the rows of its commits after the first one after the restart,
    over the time from that first commit to the last."""
    ready(peer, broker, topic)
    peer.stop()
    produce(broker, topic, "--count", events)
    restarted = time.time()
    peer.start(topic)
    try:
        wait_for(peer.table(topic), 10 + events, peer, 1800)
    finally:
        peer.stop()
    drained = {}
    for at, n, _ in commits(peer.table(topic)):
        if at >= restarted and n:
            drained[at] = drained.get(at, 0) + n
    times = sorted(drained)
    if len(times) < 2:
        raise RuntimeError(f"{peer.name} drained the backlog in one commit: nothing to time")
    return sum(drained[at] for at in times[1:]) / (times[-1] - times[0])


def latency(peer, broker, topic, rate, seconds) -> tuple[float, float]:
    """p50 and p99 of commit time minus event time, at RATE events/s."""
    ready(peer, broker, topic)
    try:
        since_ms = time.time() * 1000
        produce(broker, topic, "--rate", rate, "--seconds", seconds)
        wait_for(peer.table(topic), 10 + rate * seconds * 0.99, peer, 300)
        time.sleep(3)
    finally:
        peer.stop()
    lags = sorted(at * 1000 - t for at, _, ts in commits(peer.table(topic)) for t in ts
                  if t >= since_ms)
    return lags[len(lags) // 2], lags[int(len(lags) * 0.99)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peers", default="weir,kdi,spark")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--latency-only", action="store_true",
                        help="measure latency alone (at a rate every peer sustains, say)")
    args = parser.parse_args()
    peers = args.peers.split(",")
    if "spark" in peers:
        spark_jars()
    results = {p: {"drain": [], "backlog": [], "p50": [], "p99": []} for p in peers}
    with tempfile.TemporaryDirectory(prefix="weir-peers-") as work:
        work = pathlib.Path(work)
        broker = start_kafka(work / "kafka")
        try:
            for run in range(1, args.runs + 1):
                for name in peers:
                    peer = Peer(name, work / name, broker)
                    rate = pace = float("nan")
                    if not args.latency_only:
                        rate = drain(peer, broker, f"{name}-drain-{run}", args.events)
                        pace = backlog(peer, broker, f"{name}-backlog-{run}", args.backlog)
                    p50, p99 = latency(peer, broker, f"{name}-latency-{run}", args.rate,
                                       args.seconds)
                    for key, value in (("drain", rate), ("backlog", pace), ("p50", p50),
                                       ("p99", p99)):
                        results[name][key].append(value)
                    print(f"run {run} {name:5}: drain {rate:9.0f} events/s; backlog {pace:9.0f} "
                          f"events/s; at {args.rate}/s "
                          f"latency p50 {p50:7.0f} ms, p99 {p99:7.0f} ms", flush=True)
                    if not os.environ.get("KEEP"):
                        shutil.rmtree(work / name, ignore_errors=True)
        finally:
            stop_kafka(broker)
    print("medians:")
    for name, r in results.items():
        print(f"  {name:5}: drain {statistics.median(r['drain']):9.0f} events/s; backlog "
              f"{statistics.median(r['backlog']):9.0f} events/s; latency p50 "
              f"{statistics.median(r['p50']):7.0f} ms, p99 {statistics.median(r['p99']):7.0f} ms")


if __name__ == "__main__":
    main()
