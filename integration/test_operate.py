"""Operating long-running jobs: the supervisor (several jobs, restarts with
backoff, graceful stop), /metrics and /healthz, `weir status`, secrets from the
environment, backpressure, and scale-out with fencing, on the real broker."""

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import (WEIR, duckdb_connection, free_port, read_report, spawn, table_path, weir,
                      with_source_properties, write_job)
from test_broker_e2e import (assert_exactly_once, assert_outputs_match_oracle,
                             stored)


def produce(broker, topic, report, *args):
    weir("produce", "--brokers", broker.bootstrap, "--topic", topic, "--report", report,
         "--late-ratio", 0, *args, timeout=180)
    return read_report(report)


def count_rows(data, job, table):
    path = table_path(data, job, table)
    if not (path / "_delta_log").exists():
        return 0
    return duckdb_connection().sql(f"SELECT count(*) FROM delta_scan('{path}')").fetchone()[0]


def committed(data, job):
    return sum(count_rows(data, job, t) for t in ("raw", "dlq", "late"))


def wait_until(predicate, timeout, proc=None, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None:
            assert proc.poll() is None, f"weir exited early with {proc.returncode}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@contextlib.contextmanager
def running(command, log_path):
    """`weir run` as a process for the block; then SIGTERM, and it must exit 0."""
    with open(log_path, "w") as log:
        proc = spawn(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=40) == 0


def killed_once(command, log_path, until, what):
    """`weir run` as a process, SIGKILLed once `until()` holds."""
    with open(log_path, "w") as log:
        proc = spawn(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(until, 60, proc, what)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def ingested(data, producer, report, proc):
    """The producer's report once it finished and the job stored all it sent."""
    producer.join()
    sent = read_report(report)
    wait_until(lambda: committed(data, "clickstream") == stored(sent), 180, proc, "ingest")
    return sent


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port):
    """/metrics parsed as Prometheus parses it: {(name, labels): value}."""
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, text


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def second_job(tmp_path, broker, data):
    job = write_job(tmp_path / "orders.toml", broker, "orders", data)
    job.write_text(job.read_text().replace('name = "clickstream"', 'name = "orders"'))
    return job


def test_supervisor_metrics_status_and_secrets(broker, tmp_path):
    """Two jobs in one process; the sink fails three times and the job keeps
    running with three restarts counted; /metrics parses and agrees with the
    tables; /healthz says ok; `weir status` shows no lag; SIGTERM exits 0; the
    secret given through ${VAR} appears nowhere."""
    broker.create_topic("clicks", 3)
    broker.create_topic("orders", 2)
    data = tmp_path / "data"
    clicks = write_job(tmp_path / "clicks.toml", broker, "clicks", data)
    clicks.write_text(clicks.read_text().replace(
        '[source.properties]', '[source.properties]\n"sasl.password" = "${WEIR_TEST_SECRET}"'))
    orders = second_job(tmp_path, broker, data)
    sent_clicks = produce(broker, "clicks", tmp_path / "clicks.csv", "--count", 1500)
    sent_orders = produce(broker, "orders", tmp_path / "orders.csv", "--count", 800)

    secret = "s3cr3t-Value-42"
    port = free_port()
    env = {**os.environ, "WEIR_TEST_SECRET": secret,
           "WEIR_FAULTS": "sink.after_commit.raw@1-3:error"}
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        proc = spawn([WEIR, "run", str(clicks), str(orders), "--metrics-addr",
                      f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: committed(data, "clickstream") == stored(sent_clicks)
                   and committed(data, "orders") == stored(sent_orders), 180, proc, "ingest")
        # Lag is measured from librdkafka's statistics (every 5 s), which may
        # come after a fast ingest is done.
        wait_until(lambda: reported_high_watermark(scrape(port)[0]), 30, proc,
                   "librdkafka's statistics")
        samples, text = scrape(port)
        status = weir("status", "--job", clicks, env=env).stdout
        health = get(f"http://127.0.0.1:{port}/healthz")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    logged = log_path.read_text()

    restarts = sum(value(samples, "weir_restarts_total", job=j) for j in ("clickstream", "orders"))
    assert restarts == 3, logged
    assert logged.count("job failed; restarting") == 3 and "injected fault" in logged
    assert health == (200, "ok\n")
    for job in ("clickstream", "orders"):
        for table in ("raw", "dlq", "late"):
            assert value(samples, "weir_rows_out_total", job=job, table=table) == \
                count_rows(data, job, table), (job, table)
        assert value(samples, "weir_batch_events_count", job=job) > 0
        for stage in ("poll", "decode", "dedup", "transform", "commit"):
            assert value(samples, "weir_stage_seconds_count", job=job, stage=stage) > 0, stage
        assert value(samples, "weir_poll_cpu_seconds_total", job=job) > 0
        assert value(samples, "weir_end_to_end_seconds_count", job=job, clock="event") > 0
        assert value(samples, "weir_watermark_seconds", job=job) > 1.7e9
        assert value(samples, "weir_dedup_index_entries", job=job) > 0
        assert value(samples, "weir_queue_capacity", job=job, queue="poll") == 2
    # librdkafka's statistics reported the high watermarks lag is measured from.
    assert reported_high_watermark(samples), text
    # A batch re-read after a failed trigger is judged again, so its duplicates
    # count again: at least every re-sent event.
    assert value(samples, "weir_duplicates_total", job="clickstream") >= \
        sum(1 for s in sent_clicks if s.kind == "duplicate") > 0
    assert_exactly_once(data, sent_clicks)
    assert_outputs_match_oracle(clicks, sent_clicks)

    # status: every partition committed up to the broker's high watermark.
    rows = [line.split() for line in status.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 3, status
    for partition, committed_offset, high, lag, *_ in rows:
        assert committed_offset == high and lag == "0", status
    assert "total lag 0" in status
    holders = [line for line in status.splitlines() if "holds the watermark" in line]
    assert len(holders) == 1, status

    for place in (logged, text, status, weir("run", "--help").stdout):
        assert secret not in place
    unset = clicks.read_text().replace("WEIR_TEST_SECRET", "WEIR_TEST_UNSET")
    (tmp_path / "unset.toml").write_text(unset)
    result = subprocess.run([WEIR, "run", str(tmp_path / "unset.toml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "WEIR_TEST_UNSET is not set" in result.stderr


def reported_high_watermark(samples) -> bool:
    return any(value(samples, "weir_partition_high_watermark", job="clickstream",
                     partition=str(p)) > 0 for p in range(3))


def rss_peak_mib(pid) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


RSS_BOUND_MIB = 400


def test_backpressure_bounds_memory_and_loses_nothing(broker, tmp_path):
    """The sink is slowed (0.7 s per trigger of at most 200 events, so about
    250 events/s, for its first 40 triggers) while a producer bursts at 2,500
    events/s, ten times that, for 8 s: the poller pauses
    the partitions, peak RSS stays under RSS_BOUND_MIB, nothing is lost, and the
    lag drains once the sink is fast again."""
    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    job = write_job(tmp_path / "job.toml", broker, "clicks", data, max_events=200)
    port = free_port()
    env = {**os.environ, "WEIR_FAULTS": "sink.after_commit.raw@1-40:sleep=700"}
    with open(tmp_path / "run.log", "w") as log:
        proc = spawn([WEIR, "run", str(job), "--metrics-addr", f"127.0.0.1:{port}"],
                     stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: healthy(port), 60, proc, "the job to run")
        producer = spawn(
            [WEIR, "produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--rate", "2500",
             "--seconds", "8", "--late-ratio", "0", "--report", str(tmp_path / "sent.csv")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        assert producer.wait(timeout=60) == 0
        sent = read_report(tmp_path / "sent.csv")
        wait_until(lambda: committed(data, "clickstream") == stored(sent), 240, proc, "drain")
        peak = rss_peak_mib(proc.pid)
        samples, _ = scrape(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    assert len(sent) > 15000
    assert value(samples, "weir_pauses_total", job="clickstream") > 0, \
        "the poller never paused its partitions"
    assert peak < RSS_BOUND_MIB, f"peak RSS {peak:.0f} MiB"
    assert value(samples, "weir_partitions_paused", job="clickstream") == 0
    print(f"backpressure: {len(sent)} events, peak RSS {peak:.0f} MiB")
    assert_exactly_once(data, sent)


def healthy(port):
    """Whether /healthz answers 200 (False while nothing listens yet)."""
    try:
        return get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    except OSError:
        return False


def start(job, port, log, faults=""):
    env = {**os.environ, "WEIR_FAULTS": faults}
    return spawn([WEIR, "run", str(job), "--metrics-addr", f"127.0.0.1:{port}"],
                 stdout=log, stderr=subprocess.STDOUT, env=env)


def test_a_panicking_job_is_restarted_and_loses_nothing(broker, tmp_path):
    """A panic inside a job (here injected right after its second raw commit)
    is a failure like any other: the job is restarted with backoff and
    counted, and every event still lands once. Before, the panic ended the
    job for good and `weir run` exited 0."""
    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    job = write_job(tmp_path / "job.toml", broker, "clicks", data)
    sent = produce(broker, "clicks", tmp_path / "sent.csv", "--count", 1500)
    port = free_port()
    with open(tmp_path / "run.log", "w") as log:
        proc = start(job, port, log, "sink.after_commit.raw@2:panic")
        wait_until(lambda: committed(data, "clickstream") == stored(sent), 120, proc, "ingest")
        wait_until(lambda: healthy(port), 30, proc, "the restarted job to be healthy")
        assert value(scrape(port)[0], "weir_restarts_total", job="clickstream") == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    text = (tmp_path / "run.log").read_text()
    assert "the job panicked: injected panic at sink.after_commit.raw (pass 2)" in text, text
    assert_exactly_once(data, sent)


def test_run_refuses_a_taken_metrics_address(broker, tmp_path):
    job = write_job(tmp_path / "job.toml", broker, "clicks", tmp_path / "data")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([WEIR, "run", str(job), "--metrics-addr", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr


def test_a_stalled_process_whose_partitions_moved_is_fenced(broker, tmp_path):
    """Process A stalls for 15 s right after a raw commit, mid-trigger. Process
    B joins and, once A misses the group's poll interval, takes all of A's
    partitions, re-reading them from the tables' positions. When A wakes, its next commit carries txns of partitions B has
    committed since: Delta refuses it, A drops the batch and restarts, and no
    event is lost or stored twice."""
    broker.create_topic("clicks", 4)
    data = tmp_path / "data"
    job = write_job(tmp_path / "job.toml", broker, "clicks", data)
    # A stalled process is out of the group 6 s into its stall (no poll:
    # max.poll.interval.ms, which may not be below session.timeout.ms), so B
    # takes all the partitions, including those of A's stalled batch.
    with_source_properties(job, max_poll_interval_ms="6000")
    sent = produce(broker, "clicks", tmp_path / "sent.csv", "--count", 4000)
    ports = free_port(), free_port()
    with open(tmp_path / "a.log", "w") as a_log, open(tmp_path / "b.log", "w") as b_log:
        a = start(job, ports[0], a_log, "sink.after_commit.raw@3:sleep=15000")
        wait_until(lambda: "injected stall" in (tmp_path / "a.log").read_text(), 60, a, "A stalls")
        b = start(job, ports[1], b_log)
        wait_until(lambda: committed(data, "clickstream") == stored(sent), 180, b, "ingest")
        # The conflict is counted when the commit fails, the restart once the
        # pipeline has wound down (a rebalance may hold the sink meanwhile):
        # wait for both, not for the first alone.
        def fenced_and_restarted():
            samples = scrape(ports[0])[0]
            return all(value(samples, name, job="clickstream") >= 1
                       for name in ("weir_commit_conflicts_total", "weir_restarts_total"))
        wait_until(fenced_and_restarted, 60, a, "A to be fenced and restart")
        for proc in (a, b):
            proc.send_signal(signal.SIGTERM)
        assert a.wait(timeout=40) == 0 and b.wait(timeout=40) == 0
    a_text = (tmp_path / "a.log").read_text()
    assert "this one is fenced" in a_text, a_text
    assert_exactly_once(data, sent)
    assert_outputs_match_oracle(job, sent)


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_scale_out_survives_sigkill_and_sigterm(broker, tmp_path, strategy):
    """Three processes share a 4-partition topic as one consumer group while a
    producer keeps sending; one is SIGKILLed and another stopped with SIGTERM
    mid-stream, both restarted: every valid event is in raw exactly once and
    the aggregates equal the oracle. With the eager protocol (range) every
    rebalance revokes every partition; with the cooperative one (incremental)
    only those that move."""
    broker.create_topic("clicks", 4)
    data = tmp_path / "data"
    job = with_source_properties(write_job(tmp_path / "job.toml", broker, "clicks", data),
                                 partition_assignment_strategy=strategy)
    ports = [free_port() for _ in range(3)]
    logs = [open(tmp_path / f"p{i}.log", "w") for i in range(3)]
    try:
        procs = [start(job, port, log) for port, log in zip(ports, logs)]
        producer = spawn(
            [WEIR, "produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--rate", "300",
             "--seconds", "24", "--late-ratio", "0", "--report", str(tmp_path / "sent.csv")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        time.sleep(8)
        procs[0].kill()
        procs[0].wait()
        time.sleep(4)
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(timeout=40) == 0
        time.sleep(4)
        procs[0] = start(job, ports[0], logs[0])
        procs[1] = start(job, ports[1], logs[1])
        assert producer.wait(timeout=120) == 0
        sent = read_report(tmp_path / "sent.csv")
        wait_until(lambda: committed(data, "clickstream") == stored(sent), 240, procs[2], "ingest")
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(timeout=40) for proc in procs] == [0, 0, 0]
    finally:
        for log in logs:
            log.close()
    for i in range(3):  # every process held partitions at some point
        assert "partitions assigned" in (tmp_path / f"p{i}.log").read_text()
    assert_exactly_once(data, sent)
    assert_outputs_match_oracle(job, sent)


# Measured here: 422–442 MiB with the 16 MiB default; 814 MiB with batches cut
# at max_events only (max_bytes = 1 GiB).
LARGE_RSS_BOUND_MIB = 550
LARGE_COUNT = 400


def test_large_messages_under_backpressure_stay_bounded_in_bytes(broker, tmp_path):
    """A burst of LARGE_COUNT valid events of 900 KiB each (a large field the
    contract ignores) against a sink slowed to 1.5 s per trigger. A batch is
    cut at `batching.max_bytes` (16 MiB: 18 such messages), not at
    `max_events` (1,000: a batch that grows while the queues are full would
    take the whole burst), so peak RSS stays under LARGE_RSS_BOUND_MIB;
    every event lands in raw once."""
    from confluent_kafka import Producer

    broker.create_topic("clicks", 1)
    data = tmp_path / "data"
    job = write_job(tmp_path / "job.toml", broker, "clicks", data, max_events=1000)
    port = free_port()
    with open(tmp_path / "run.log", "w") as log:
        proc = start(job, port, log, "sink.after_commit.raw@*:sleep=1500")
        wait_until(lambda: healthy(port), 60, proc, "the job to run")
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
        blob = "x" * (900 * 1024 - 300)
        for i in range(LARGE_COUNT):
            event = {"event_id": f"big-{i}", "ts": int(time.time() * 1000), "user_id": "u1",
                     "page": "/p/1", "action": "view", "country": "DE", "price": None,
                     "blob": blob}
            producer.produce("clicks", json.dumps(event).encode(), partition=0)
            producer.poll(0)
        assert producer.flush(60) == 0
        del producer
        wait_until(lambda: count_rows(data, "clickstream", "raw") == LARGE_COUNT, 240, proc, "drain")
        peak = rss_peak_mib(proc.pid)
        samples, _ = scrape(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    print(f"large messages: peak RSS {peak:.0f} MiB")
    assert peak < LARGE_RSS_BOUND_MIB, f"peak RSS {peak:.0f} MiB"
    assert value(samples, "weir_batch_events_count", job="clickstream") >= LARGE_COUNT / 20
    assert count_rows(data, "clickstream", "dlq") == 0
    con = duckdb_connection()
    path = table_path(data, "clickstream", "raw")
    assert con.sql(f"SELECT count(DISTINCT event_id), max(_offset) FROM delta_scan('{path}')"
                   ).fetchone() == (LARGE_COUNT, LARGE_COUNT - 1)
