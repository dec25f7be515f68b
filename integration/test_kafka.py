"""What Apache Kafka does that an imitation broker could not show: retention
deleting unread messages, a topic deleted and recreated under a job, partitions
added while a job runs, transactions committed and aborted, a compacted topic
with offset gaps, and group rebalances under the eager and the cooperative
protocols (the last in test_operate's scale-out test)."""

import json
import subprocess
import time
import uuid

import pytest

from conftest import (duckdb_connection, free_port, read_report, table_path, weir,
                      with_source_properties, write_job)
from test_broker_e2e import running, start_run, stop_gracefully, wait_for_count
from test_operate import scrape, start, value, wait_until

def produce(broker, report, count, seed):
    """`count` well-formed, on-time, distinct events through `weir produce`."""
    weir("produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--count", count,
         "--malformed-ratio", 0, "--duplicate-ratio", 0, "--late-ratio", 0, "--seed", seed,
         "--report", report, timeout=120)
    return read_report(report)


def raw_positions(data):
    path = table_path(data, "clickstream", "raw")
    return [(int(p), int(o)) for p, o in duckdb_connection().sql(
        f"SELECT _partition, _offset FROM delta_scan('{path}') ORDER BY 1, 2").fetchall()]


def ingest(job, data, expected, log, settle=0.0, while_running=None):
    """Runs `weir run` until the tables hold `expected` rows and `settle`
    seconds more (time to commit what it should not), then `while_running()`,
    then stops it."""
    with open(log, "a") as out, running(job, out) as proc:
        wait_for_count(data, expected, 120, proc)
        time.sleep(settle)
        if while_running:
            while_running()
        assert stop_gracefully(proc) == 0, log.read_text()


def run_expecting_a_stop(job, log, timeout=30):
    """`weir run` once more; returns its exit code and output, or fails when it
    keeps running past `timeout` (it went on instead of stopping)."""
    with open(log, "w") as out:
        proc = start_run(job, out)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_gracefully(proc)
            raise AssertionError(f"weir run kept going:\n{log.read_text()[-3000:]}")
    return code, log.read_text()


def event(event_id, page="/p/1"):
    """One valid clickstream event, timed now."""
    return json.dumps({"event_id": event_id, "ts": int(time.time() * 1000), "user_id": "u1",
                       "page": page, "action": "view", "country": "DE", "price": None})


def lose_unread_to_retention(broker, tmp_path):
    """100 more messages, of which retention deletes 50 before weir reads them
    (DeleteRecords, as retention.ms would). Returns the log start offset."""
    produce(broker, tmp_path / "second.csv", 100, 2)
    assert broker.delete_records_before("clicks", 0, 150) == 150
    assert broker.watermarks("clicks", 0) == (150, 200)
    return 150


def recreate_topic(broker, tmp_path):
    """The topic deleted and created again, with 40 new messages: offsets
    restart below the tables' position. Returns the high watermark."""
    broker.delete_topic("clicks")
    broker.create_topic("clicks", 1)
    produce(broker, tmp_path / "second.csv", 40, 2)
    assert broker.watermarks("clicks", 0) == (0, 40)
    return 40


@pytest.mark.parametrize("move_position", [lose_unread_to_retention, recreate_topic],
                         ids=["retention", "recreated"])
def test_a_position_the_broker_no_longer_holds_stops_the_job(broker, tmp_path, move_position):
    """The tables hold partition 0 up to offset 100; then the broker's
    partition no longer holds offset 100. Resuming there, librdkafka would
    reset to the earliest offset and weir would skip the deleted messages, or
    drop the recreated topic's new ones as already stored, and go on: the
    job stops instead, naming topic, partition and both offsets."""
    broker.create_topic("clicks", 1)
    data = tmp_path / "data"
    job = write_job(tmp_path / "job.toml", broker, "clicks", data)
    first = produce(broker, tmp_path / "first.csv", 100, 1)
    ingest(job, data, 100, tmp_path / "run.log")
    available = move_position(broker, tmp_path)

    code, out = run_expecting_a_stop(job, tmp_path / "moved.log")
    assert code != 0
    assert "clicks" in out and "partition 0" in out and "100" in out and str(available) in out
    assert raw_positions(data) == sorted(s.position for s in first)


def test_partitions_added_while_running_are_consumed(broker, tmp_path):
    """The topic grows from 2 to 4 partitions under a running job: the group
    picks up the new partitions and every event lands once. A consumer sees
    new partitions at its next metadata refresh (librdkafka's default: every
    5 minutes), here every 2 s."""
    broker.create_topic("clicks", 2)
    data = tmp_path / "data"
    job = with_source_properties(write_job(tmp_path / "job.toml", broker, "clicks", data),
                                 topic_metadata_refresh_interval_ms="2000")
    with open(tmp_path / "run.log", "w") as log:
        proc = start_run(job, log)
        before = produce(broker, tmp_path / "before.csv", 400, 1)
        wait_for_count(data, 400, 120, proc)
        broker.add_partitions("clicks", 4)
        after = produce(broker, tmp_path / "after.csv", 800, 2)
        assert {s.partition for s in after} == {0, 1, 2, 3}
        wait_for_count(data, 1200, 120, proc)
        assert stop_gracefully(proc) == 0
    assert raw_positions(data) == sorted(s.position for s in before + after)


def transactional_producer(broker):
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": broker.bootstrap,
                         "transactional.id": f"weir-test-{uuid.uuid4()}"})
    producer.init_transactions(30)
    return producer


def send_transaction(producer, ids, commit: bool):
    producer.begin_transaction()
    for i, event_id in enumerate(ids):
        producer.produce("clicks", value=event(event_id), partition=i % 2)
    producer.flush(30)
    if commit:
        producer.commit_transaction(30)
    else:
        producer.abort_transaction(30)


def transactions(broker, tmp_path, while_running=None):
    """A transactional producer commits, aborts and commits again on a
    2-partition topic; `weir run` ingests it (calling `while_running()`
    before it stops). Returns the job, the data folder and the committed
    event IDs."""
    broker.create_topic("clicks", 2)
    data = tmp_path / "data"
    job = write_job(tmp_path / "job.toml", broker, "clicks", data)
    producer = transactional_producer(broker)
    committed = [f"c1-{i}" for i in range(300)] + [f"c2-{i}" for i in range(200)]
    send_transaction(producer, committed[:300], commit=True)
    send_transaction(producer, [f"aborted-{i}" for i in range(250)], commit=False)
    send_transaction(producer, committed[300:], commit=True)
    # Each partition holds 150 + 125 + 100 records and three markers.
    assert [broker.watermarks("clicks", p)[1] for p in (0, 1)] == [378, 378]
    ingest(job, data, len(committed), tmp_path / "run.log", settle=2,
           while_running=while_running)
    return job, data, committed


def test_aborted_transactions_never_reach_a_table(broker, tmp_path):
    _, data, committed = transactions(broker, tmp_path)
    path = table_path(data, "clickstream", "raw")
    ids = [r[0] for r in duckdb_connection().sql(
        f"SELECT event_id FROM delta_scan('{path}') ORDER BY 1").fetchall()]
    assert ids == sorted(committed)


def test_commit_markers_do_not_leave_lag(broker, tmp_path):
    """The marker that ends a transaction is never delivered, so a table's
    position (the offset after the last record it stored) would stop one
    short of the high watermark. Once idle, the poller reports the
    consumer's position past it, and a data-less commit moves the tables
    there: `weir status` shows no lag while `weir run` is still running, and
    after it stopped."""
    job = tmp_path / "job.toml"

    def no_lag_while_running():
        wait_until(lambda: status_lags(weir("status", "--job", job, timeout=60).stdout)
                   == {0: 0, 1: 0}, 30, what="no lag in weir status while weir run runs")

    transactions(broker, tmp_path, while_running=no_lag_while_running)
    status = weir("status", "--job", job, timeout=60).stdout
    assert status_lags(status) == {0: 0, 1: 0}, status


def status_lags(text):
    """{partition: lag} from `weir status`'s partition table (partition,
    committed, high watermark, lag, ...)."""
    rows = [line.split() for line in text.splitlines()]
    return {int(cells[0]): int(cells[3]) for cells in rows if cells and cells[0].isdigit()}


def compacted_positions(broker, keys, timeout=90):
    """Writes one event per key, then one more for every other key, into the
    compacted topic, rolling a segment after each round, and waits until the
    cleaner has removed the superseded events: gaps between the survivors.
    Returns the surviving (partition, offset)s."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for round_, round_keys in enumerate((keys, keys[::2])):
        for key in round_keys:
            producer.produce("clicks", key=key, value=event(f"{key}-r{round_}"), partition=0)
        producer.flush(30)
        time.sleep(1.2)  # older than segment.ms: the next write rolls the segment
    producer.produce("clicks", key="roll", value=event("roll"), partition=0)
    producer.flush(30)
    deadline = time.monotonic() + timeout
    while True:
        survivors = read_positions(broker)
        if len(survivors) == len(keys) + 1:
            return survivors
        assert time.monotonic() < deadline, f"the cleaner left {len(survivors)} records"
        time.sleep(1)


def read_positions(broker):
    """Every (partition, offset) a plain consumer reads from partition 0 now."""
    from confluent_kafka import Consumer, TopicPartition

    _, high = broker.watermarks("clicks", 0)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": str(uuid.uuid4()),
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition("clicks", 0, 0)])
    positions = []
    try:
        while not positions or positions[-1][1] < high - 1:
            message = consumer.poll(5)
            assert message is not None, "the consumer stopped short of the high watermark"
            assert message.error() is None, message.error()
            positions.append((0, message.offset()))
    finally:
        consumer.close()
    return positions


def test_compacted_topic_with_offset_gaps_lands_every_survivor_once(broker, tmp_path):
    """The log cleaner leaves gaps in the offsets; weir's positions (the next
    offset to read) must step over them without losing or repeating records."""
    broker.create_topic("clicks", 1, {
        "cleanup.policy": "compact", "segment.ms": "1000", "min.cleanable.dirty.ratio": "0.001",
        "min.compaction.lag.ms": "0", "delete.retention.ms": "100"})
    keys = [f"k{i}" for i in range(40)]
    survivors = compacted_positions(broker, keys)
    offsets = [o for _, o in survivors]
    assert offsets[:3] == [1, 3, 5] and offsets[-1] == len(keys) * 3 // 2, offsets

    data = tmp_path / "data"
    job = write_job(tmp_path / "job.toml", broker, "clicks", data)
    ingest(job, data, len(survivors), tmp_path / "run.log")
    assert raw_positions(data) == survivors
    # A restart resumes after the last survivor: nothing is read again.
    ingest(job, data, len(survivors), tmp_path / "run.log", settle=8)
    assert raw_positions(data) == survivors


def test_skip_goes_on_past_messages_deleted_unread_and_counts_them(broker, tmp_path):
    """With `source.on_data_loss = "skip"`, the retention gap of the test above
    is gone past from the oldest message left: the 50 survivors land, the gap
    is logged with both offsets and counted in weir_skipped_offsets_total."""
    broker.create_topic("clicks", 1)
    data = tmp_path / "data"
    job = write_job(tmp_path / "job.toml", broker, "clicks", data)
    first = produce(broker, tmp_path / "first.csv", 100, 1)
    ingest(job, data, 100, tmp_path / "run.log")
    lose_unread_to_retention(broker, tmp_path)
    survivors = [s for s in read_report(tmp_path / "second.csv") if s.offset >= 150]
    assert len(survivors) == 50

    job.write_text(job.read_text().replace('on_data_loss = "fail"', 'on_data_loss = "skip"'))
    port = free_port()
    with open(tmp_path / "skip.log", "w") as log:
        proc = start(job, port, log)
        wait_for_count(data, 150, 60, proc)
        samples, _ = scrape(port)
        assert value(samples, "weir_skipped_offsets_total", job="clickstream", partition="0") == 50
        assert stop_gracefully(proc) == 0
    out = (tmp_path / "skip.log").read_text()
    assert "deleted messages before weir read them" in out and "skipped=50" in out, out
    assert raw_positions(data) == sorted(s.position for s in first + survivors)


@pytest.mark.parametrize("start_from", ["earliest", "latest"])
def test_a_gap_that_opens_while_the_job_runs_stops_it(broker, tmp_path, start_from):
    """Retention overtakes a job that lags (its sink slowed, its partition
    paused, librdkafka's prefetch dropped): the next fetch is out of range.
    librdkafka would reset to `start_from` and the job would go on past the
    gap; it stops instead, naming the partition, where it was and the log
    start, with every row before the gap committed and none after it."""
    broker.create_topic("clicks", 1)
    data = tmp_path / "data"
    job = write_job(tmp_path / "job.toml", broker, "clicks", data, max_events=50)
    job.write_text(job.read_text()
                   .replace('start_from = "earliest"', f'start_from = "{start_from}"')
                   .replace("min_events = 100", "min_events = 10"))
    with open(tmp_path / "run.log", "w") as log:
        proc = start(job, free_port(), log, "sink.after_commit.raw@*:sleep=1500")
        # Sent once the job is assigned: `latest` starts at the end.
        wait_until(lambda: "partitions assigned" in (tmp_path / "run.log").read_text(), 60,
                   proc, "the assignment")
        produce(broker, tmp_path / "sent.csv", 2000, 1)
        wait_for_count(data, 50, 60, proc)
        assert broker.delete_records_before("clicks", 0, 1500) == 1500
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_gracefully(proc)
            raise AssertionError("weir run went on past the gap")
    out = (tmp_path / "run.log").read_text()
    assert code != 0, out
    assert "partition 0" in out and "now starts at offset 1500" in out, out[-3000:]
    positions = raw_positions(data)
    assert positions == [(0, o) for o in range(len(positions))] and len(positions) < 1500


def test_keys_headers_and_topic_round_trip_byte_for_byte(broker, tmp_path):
    """With `source.columns`, every record's key and headers (binary, a name
    repeated, a null value, none at all, a probe's header on an event) land in
    raw exactly as sent, with the topic; DuckDB and polars read them; an SQL
    output selects them, and `weir reprocess` rebuilds that output with them
    intact."""
    import datetime
    import random

    import polars as pl
    from confluent_kafka import Producer

    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    job = write_job(tmp_path / "job.toml", broker, "clicks", data)
    job.write_text(job.read_text().replace(
        "max_message_bytes = 1048576",
        'max_message_bytes = 1048576\ncolumns = ["key", "headers", "timestamp", "topic"]'
    ) + '\n[[outputs]]\nname = "keyed"\nsql = "SELECT event_id, ts, _key, _headers FROM batch"\n')
    rng = random.Random(7)
    day = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
    start_ms = int(day.replace(hour=1).timestamp() * 1000)
    sent = {}
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(600):
        key = None if i % 10 == 0 else bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        headers = [] if i % 5 == 0 else [
            ("trace", bytes(rng.randrange(256) for _ in range(4))), ("trace", b"\x00"),
            ("empty", None), ("ü-name", "wert".encode())]
        if i == 3:
            # Probes are empty records; one with a value is an event whatever
            # its headers say, and is stored, not stepped over.
            headers = [("weir-probe", b"someone")]
        event = {"event_id": f"e{i}", "ts": start_ms + i * 1000, "page": "/p", "action": "view"}
        producer.produce("clicks", value=json.dumps(event).encode(), key=key, headers=headers)
        sent[f"e{i}"] = (key, headers)
    # A present event on each partition moves the watermark past the day, so
    # it can be reprocessed.
    for p in range(3):
        now = {"event_id": f"now{p}", "ts": int(time.time() * 1000), "page": "/p",
               "action": "view"}
        producer.produce("clicks", value=json.dumps(now).encode(), key=b"k", partition=p)
        sent[f"now{p}"] = (b"k", [])
    assert producer.flush(30) == 0
    ingest(job, data, len(sent), tmp_path / "run.log")

    def check(rows):
        assert len(rows) == len(sent)
        for event_id, key, headers, topic in rows:
            want_key, want_headers = sent[event_id]
            assert key == want_key and topic == "clicks", event_id
            got = [(h["key"], h["value"]) for h in headers]
            assert got == [(n, v) for n, v in want_headers], event_id

    raw = table_path(data, "clickstream", "raw")
    con = duckdb_connection()
    check(con.sql(f"SELECT event_id, _key, _headers, _topic FROM delta_scan('{raw}')").fetchall())
    frame = pl.read_delta(str(raw)).select("event_id", "_key", "_headers", "_topic")
    check(frame.rows())

    keyed = table_path(data, "clickstream", "keyed")
    before = sorted(con.sql(f"SELECT event_id, _key, _headers FROM delta_scan('{keyed}')")
                    .fetchall())
    assert len(before) == len(sent)
    span = ["--from", day.date().isoformat(), "--to", day.date().isoformat()]
    report = weir("reprocess", "--job", job, "--output", "keyed", *span, timeout=240).stdout
    assert "replaced" in report, report
    after = sorted(duckdb_connection().sql(
        f"SELECT event_id, _key, _headers FROM delta_scan('{keyed}')").fetchall())
    assert after == before
