#!/usr/bin/env python3
"""Soak: `weir run` (the example job, default batching) against the test suite's
Apache Kafka broker at a steady rate for many minutes, sampled once a minute.

Per minute it records what must stay flat in a long run: the process's RSS
(at the minute's end, and the most of samples every 2 s within it),
the dedup index (entries and bytes: the one thing that grows, until event
time has covered the dedup horizon), the mean time of a trigger's commits,
raw's log versions since its newest checkpoint (checkpoint lag) and the size
of that checkpoint, raw's live files (small-file merging keeping up) and the
consumer lag. `--trace` keeps every 2-s RSS sample and `--log` weir's log
(merges are logged with their time), to place a step in memory. Once the
producer is done and weir has read everything, it says whether every message
produced is in exactly one place (raw, late, the DLQ, or dropped as a
duplicate) and times `count(*)` over raw, with no `weir maintain`. Run it with the
test venv's Python after integration/setup.sh and a release build:

    cargo build --release
    ~/.cache/weir-venv/bin/python benches/soak.py --rate 12000 --minutes 10 \\
        --csv benches/results/soak.csv

Nothing here fails on a figure: the figures and what they mean are in benches/README.md.
"""

import argparse
import contextlib
import csv
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import TextIO
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "integration"))
from conftest import free_port, start_kafka, stop_kafka, stop_process, write_job  # noqa: E402

COLUMNS = ["minute", "events", "events_per_s", "rss_mib", "rss_max_mib", "dedup_ids",
           "dedup_mib", "bytes_per_id", "commit_ms", "checkpoint_lag", "checkpoint_kib",
           "raw_versions", "raw_files", "consumer_lag"]


def metrics(port: int) -> dict[str, float]:
    """The job's metrics, summed over labels other than `job` and `stage=commit`."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r'^(\w+)(\{[^}]*\})? (\S+)$', line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name.startswith("weir_stage_seconds") and 'stage="commit"' not in labels:
            continue
        out[name] = out.get(name, 0.0) + value
    return out


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    return kib / 1024


def raw_log(table: pathlib.Path) -> tuple[int, int, int, int]:
    """raw's newest version, versions since its newest checkpoint, that
    checkpoint's size in KiB, and live files."""
    from deltalake import DeltaTable
    log = table / "_delta_log"
    newest = max((int(p.stem) for p in log.glob("*.json") if p.stem.isdigit()), default=0)
    last = log / "_last_checkpoint"
    checkpoint = json.loads(last.read_text())["version"] if last.exists() else -1
    parquet = log / f"{checkpoint:020}.checkpoint.parquet"
    kib = round(parquet.stat().st_size / 1024) if parquet.exists() else 0
    files = len(DeltaTable(str(table)).file_uris())
    return newest, newest - checkpoint, kib, files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=12000, help="events per second produced")
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--horizon", default="1h",
                        help="dedup.horizon: a short one shows the index level off within the run")
    parser.add_argument("--compact-after", type=int, default=64,
                        help="maintenance.compact_after_files (0: no merging beside ingest)")
    parser.add_argument("--every", default="10m", help="maintenance.every")
    parser.add_argument("--hot-retention", default="1h",
                        help="maintenance.hot_vacuum_retention: a short one, with a short "
                             "--every, shows raw's checkpoint level off within the run")
    parser.add_argument("--weir", default=str(pathlib.Path(
        os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "weir"))
    parser.add_argument("--csv", type=pathlib.Path, help="where to write the samples")
    parser.add_argument("--trace", type=pathlib.Path,
                        help="where to write every 2-s RSS sample (UTC time, MiB)")
    parser.add_argument("--log", type=pathlib.Path, help="where to copy weir run's log")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="weir-soak-") as workdir:
        work = pathlib.Path(workdir)
        broker = start_kafka(work / "kafka")
        procs = []
        try:
            broker.create_topic("clicks", args.partitions)
            data = work / "data"
            job = write_job(work / "job.toml", broker, "clicks", data, max_events=100000,
                            interval_ms=1000)
            job.write_text(job.read_text()
                           .replace('horizon = "1h"', f'horizon = "{args.horizon}"')
                           .replace('every = "10m"', f'every = "{args.every}"')
                           .replace('hot_vacuum_retention = "1h"',
                                    f'hot_vacuum_retention = "{args.hot_retention}"')
                           .replace("target_file_mib = 128", "target_file_mib = 128\n"
                                    f"compact_after_files = {args.compact_after}"))
            port = free_port()
            run = subprocess.Popen([args.weir, "run", str(job), "--metrics-addr",
                                    f"127.0.0.1:{port}"],
                                   stdout=open(work / "run.log", "w"), stderr=subprocess.STDOUT)
            procs.append(run)
            produce = subprocess.Popen(
                [args.weir, "produce", "--brokers", broker.bootstrap, "--topic", "clicks",
                 "--rate", str(args.rate), "--seconds", str(args.minutes * 60)],
                stdout=subprocess.PIPE, stderr=open(work / "produce.log", "w"), text=True)
            procs.append(produce)
            with open(args.trace, "w") if args.trace else contextlib.nullcontext() as trace:
                samples = sample(args, run, port, data / "hot" / "clickstream" / "raw", trace)
            settle(args, job, port, produce)
        finally:
            for proc in procs:
                stop_process(proc)
            stop_kafka(broker)
            if args.log:
                shutil.copy(work / "run.log", args.log)
    if args.csv:
        with open(args.csv, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(samples)


def sample(args, run: subprocess.Popen, port: int, raw: pathlib.Path,
           trace: TextIO | None) -> list[dict]:
    print("  ".join(f"{c:>12}" for c in COLUMNS), flush=True)
    samples, before = [], None
    started = time.monotonic()
    for minute in range(1, args.minutes + 1):
        peak = 0.0
        while (left := started + minute * 60 - time.monotonic()) > 0:
            time.sleep(min(left, 2.0))
            assert run.poll() is None, f"weir run exited with {run.returncode}"
            now = rss_mib(run.pid)
            peak = max(peak, now)
            if trace:
                print(f"{datetime.now(timezone.utc):%H:%M:%S},{now:.0f}", file=trace, flush=True)
        rss = rss_mib(run.pid)
        peak = max(peak, rss)
        m = metrics(port)
        newest, lag, checkpoint_kib, files = raw_log(raw)
        events = m.get("weir_events_in_total", 0.0)
        commits = (m.get("weir_stage_seconds_sum", 0.0), m.get("weir_stage_seconds_count", 0.0))
        prev_events, prev_commits = before or (0.0, (0.0, 0.0))
        ids = m.get("weir_dedup_index_entries", 0.0)
        row = {
            "minute": minute,
            "events": int(events),
            "events_per_s": round((events - prev_events) / 60),
            "rss_mib": round(rss),
            "rss_max_mib": round(peak),
            "dedup_ids": int(ids),
            "dedup_mib": round(m.get("weir_dedup_index_bytes", 0.0) / 2**20, 1),
            "bytes_per_id": round(m.get("weir_dedup_index_bytes", 0.0) / ids, 1) if ids else 0,
            "commit_ms": round(1000 * (commits[0] - prev_commits[0])
                               / max(1.0, commits[1] - prev_commits[1]), 1),
            "checkpoint_lag": lag,
            "checkpoint_kib": checkpoint_kib,
            "raw_versions": newest,
            "raw_files": files,
            "consumer_lag": int(m.get("weir_consumer_lag", 0.0)),
        }
        before = (events, commits)
        samples.append(row)
        print("  ".join(f"{row[c]:>12}" for c in COLUMNS), flush=True)
    return samples


def query(args, job: pathlib.Path, sql: str) -> list[str]:
    """The one row `sql` answers over the job's tables, as CSV fields."""
    out = subprocess.run([args.weir, "query", "--job", str(job), "--format", "csv", sql],
                         check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1].split(",")


def settle(args, job: pathlib.Path, port: int, produce: subprocess.Popen) -> None:
    """Once the producer has sent its last event and weir has read up to it:
    whether every message produced is in exactly one place (stored in raw,
    late or the DLQ, or dropped as a duplicate), and how long `count(*)` over
    raw takes after the whole run, with no `weir maintain`."""
    stdout, _ = produce.communicate(timeout=300)
    found = re.search(r"produced (\d+) messages", stdout)
    assert found, f"weir produce said: {stdout!r}"
    produced = int(found.group(1))
    deadline = time.monotonic() + 600
    while (m := metrics(port)).get("weir_events_in_total", 0.0) < produced \
            or m.get("weir_consumer_lag", 0.0) > 0:
        assert time.monotonic() < deadline, "weir did not read every produced message in 10 min"
        time.sleep(2)
    raw, late, dlq = (int(n) for n in query(
        args, job, "SELECT (SELECT count(*) FROM raw) AS raw, (SELECT count(*) FROM late) "
                   "AS late, (SELECT count(*) FROM dlq) AS dlq"))
    duplicates = int(metrics(port).get("weir_duplicates_total", 0.0))
    stored = raw + late + dlq + duplicates
    verdict = "ok" if stored == produced else f"MISMATCH: {stored - produced:+d}"
    print(f"settled: produced {produced} = raw {raw} + late {late} + dlq {dlq} + duplicates "
          f"{duplicates}: {verdict}", flush=True)
    timings = []
    for _ in range(3):
        started = time.monotonic()
        query(args, job, "SELECT count(*) FROM raw")
        timings.append(f"{time.monotonic() - started:.2f}")
    print(f"count(*) over raw ({raw} rows, no weir maintain): {', '.join(timings)} s", flush=True)


if __name__ == "__main__":
    main()
