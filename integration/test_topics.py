"""One job reading several topics (`source.topics`) from Apache Kafka: every
record lands exactly once per topic through SIGKILLs mid-stream, partition 0
of one topic is never mistaken for partition 0 of another (not by the replay
filter, not by dedup), and `weir status` reports each topic's partitions."""

import json
import time

from conftest import duckdb_connection, kill_at_random_moments, table_path, weir, write_job
from test_broker_e2e import committed_count, run_command
from test_kafka import ingest

TOPICS = {"clicks": 3, "clicks.eu": 2}


def event(event_id: str) -> bytes:
    return json.dumps({"event_id": event_id, "ts": int(time.time() * 1000), "user_id": "u1",
                       "page": "/p/1", "action": "view", "country": "DE",
                       "price": None}).encode()


class Sender:
    """A producer that remembers where each record landed."""

    def __init__(self, broker):
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        self.landed: dict[tuple[str, int, int], str] = {}

    def send(self, topic: str, event_id: str, partition: int | None = None) -> None:
        def delivered(err, msg):
            assert err is None, err
            self.landed[(msg.topic(), msg.partition(), msg.offset())] = event_id

        extra = {} if partition is None else {"partition": partition}
        self.producer.produce(topic, event(event_id), on_delivery=delivered, **extra)

    def wave(self, name: str, count: int) -> None:
        for i in range(count):
            topic = "clicks.eu" if i % 3 == 0 else "clicks"
            self.send(topic, f"{name}-{topic}-{i}")
        assert self.producer.flush(30) == 0


def raw_rows(data):
    path = table_path(data, "clickstream", "raw")
    return duckdb_connection().sql(
        f"SELECT _topic, _partition, _offset, event_id FROM delta_scan('{path}')").fetchall()


def test_two_topics_land_exactly_once_per_topic_across_kills(broker, tmp_path):
    for topic, partitions in TOPICS.items():
        broker.create_topic(topic, partitions)
    data = tmp_path / "data"
    job = write_job(tmp_path / "job.toml", broker, "clicks", data, max_events=100)
    job.write_text(job.read_text().replace('topic = "clicks"',
                                           'topics = ["clicks", "clicks.eu"]'))
    sender = Sender(broker)
    # One event sent to both topics, each copy the first record of its
    # partition 0: two positions that differ only by topic. Taken for the
    # same position, the second copy would pass dedup as a replay.
    for topic in TOPICS:
        sender.send(topic, "twin", partition=0)
    sender.wave("w0", 3000)

    waves = iter(range(1, 4))
    kill_at_random_moments(run_command(job), 3, 1.5, 4.0,
                           check=lambda: sender.wave(f"w{next(waves)}", 1000))
    expected = {pos: eid for pos, eid in sender.landed.items() if eid != "twin"}
    twins = {pos for pos, eid in sender.landed.items() if eid == "twin"}
    assert len(twins) == 2 and {p[1:] for p in twins} == {(0, 0)}
    ingest(job, data, len(expected) + 1, tmp_path / "run.log", settle=2.0)

    rows = raw_rows(data)
    positions = [(t, p, o) for t, p, o, _ in rows]
    assert len(positions) == len(set(positions)), "raw holds a record twice"
    assert [eid for *_, eid in rows].count("twin") == 1, "the twin is one event"
    stored = {(t, p, o): eid for t, p, o, eid in rows if eid != "twin"}
    assert stored == expected
    assert committed_count(data) == len(expected) + 1

    status = weir("status", "--job", job, timeout=60)
    assert status.returncode == 0, status.stderr
    text = status.stdout
    assert "on topics clicks,clicks.eu" in text, text
    for topic, partitions in TOPICS.items():
        assert f"topic {topic}: lag 0" in text, text
        for p in range(partitions):
            assert f"{topic}:{p} " in text, text
