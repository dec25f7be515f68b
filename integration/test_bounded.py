"""Bounded runs for schedulers, on Apache Kafka: `weir run --until
caught-up` ends by itself (exit 0) once the tables hold every message below
the high watermarks it saw at start, exactly once even after a SIGKILL; and
`source.start_from` begins a first run at a time or at given offsets."""

import datetime
import os
import signal
import subprocess
import time

from conftest import duckdb_offsets, read_report, spawn, weir, write_job
from test_broker_e2e import (assert_exactly_once, run_command, stored, wait_for_count)


def produce(broker, job, report, count, seed, *ratios):
    malformed, duplicate = ratios or (0, 0)
    weir("produce", "--job", job, "--brokers", broker.bootstrap, "--topic", "clicks",
         "--count", count, "--malformed-ratio", malformed, "--duplicate-ratio", duplicate,
         "--late-ratio", 0, "--seed", seed, "--report", report, timeout=120)
    return read_report(report)


def run_until_caught_up(job, log, timeout=180) -> float:
    """Runs `weir run --until caught-up` to its own end; returns its seconds."""
    started = time.monotonic()
    result = subprocess.run([*run_command(job), "--until", "caught-up"], stdout=log,
                            stderr=subprocess.STDOUT, timeout=timeout)
    assert result.returncode == 0, log.name
    return time.monotonic() - started


def test_until_caught_up_ends_by_itself_exactly_once_through_a_kill(broker, tmp_path):
    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    job = write_job(tmp_path / "job.toml", broker, "clicks", data)
    first = produce(broker, job, tmp_path / "first.csv", 3000, 1, 0.02, 0.02)
    with open(tmp_path / "run.log", "w") as log:
        run_until_caught_up(job, log)
        assert_exactly_once(data, first)

        # More arrives; a bounded run is killed mid-way, the next one ends
        # with everything, once.
        second = produce(broker, job, tmp_path / "second.csv", 3000, 2, 0.02, 0.02)
        # Each trigger slowed, so the kill lands mid-stream.
        slowed = {**os.environ, "WEIR_FAULTS": "sink.after_commit.raw@*:sleep=200"}
        proc = spawn([*run_command(job), "--until", "caught-up"], stdout=log,
                     stderr=subprocess.STDOUT, env=slowed)
        wait_for_count(data, stored(first) + 300, 120, proc)
        assert proc.poll() is None, "the bounded run ended before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        run_until_caught_up(job, log)
        assert_exactly_once(data, first + second)

        # Nothing new: it ends at once, storing nothing.
        assert run_until_caught_up(job, log) < 60
        assert_exactly_once(data, first + second)
    # Every run but the killed one said it caught up.
    assert (tmp_path / "run.log").read_text().count("caught up:") == 3


def test_start_from_a_time_or_offsets_begins_a_first_run_there(broker, tmp_path):
    broker.create_topic("clicks", 3)
    before = produce(broker, write_job(tmp_path / "p.toml", broker, "clicks", tmp_path / "p"),
                     tmp_path / "before.csv", 600, 3)
    time.sleep(1.5)
    cut = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    time.sleep(1.5)
    after = produce(broker, write_job(tmp_path / "p.toml", broker, "clicks", tmp_path / "p"),
                    tmp_path / "after.csv", 600, 4)
    everything = before + after

    def job_from(start_from, name):
        job = write_job(tmp_path / f"{name}.toml", broker, "clicks", tmp_path / name)
        text = job.read_text().replace('start_from = "earliest"',
                                       f'start_from = "{start_from}"')
        assert f'start_from = "{start_from}"' in text
        # Each job its own consumer group: each reads the whole topic.
        job.write_text(text.replace('group = "weir-clickstream"', f'group = "{name}"'))
        return job

    def stored_from(start_from, name):
        with open(tmp_path / f"{name}.log", "w") as log:
            run_until_caught_up(job_from(start_from, name), log)
        return duckdb_offsets(tmp_path / name, "clickstream", "raw")

    assert stored_from(f"timestamp:{cut}", "by_time") == sorted(s.position for s in after)
    starts = {0: 150, 2: 10}  # partition 1 is not named: from its start
    offsets = ",".join(f"{p}={o}" for p, o in starts.items())
    assert stored_from(f"offsets:{offsets}", "by_offsets") == sorted(
        s.position for s in everything if s.offset >= starts.get(s.partition, 0))

    # An offset the partition does not hold is a mistake in the spec: exit 2,
    # naming the key, the partition and what the broker holds.
    past = subprocess.run([*run_command(job_from("offsets:2=10000", "past")), "--until",
                           "caught-up"], capture_output=True, text=True, timeout=120)
    assert past.returncode == 2, past.stderr
    high = max(s.offset for s in everything if s.partition == 2) + 1
    assert "source.start_from" in past.stderr, past.stderr
    assert f"partition 2 (0 to {high})" in past.stderr and "10000" in past.stderr, past.stderr
