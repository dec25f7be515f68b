"""Chaos: several `weir run` processes of one job on a 6-partition Apache Kafka
topic while a producer sends ~1,500 events/s with duplicates and malformed
messages. Every few seconds a random process is started, SIGKILLed or
SIGTERMed; each process's sink is slowed, so decoded batches wait in its queues
across the rebalances. Then one process drains, and DuckDB checks the tables:
every valid message in `raw` exactly once, every malformed one in `dlq`, no
(partition, offset) and no event ID twice, and the outputs equal to an
independent aggregation of what was sent."""

import random
import signal
import subprocess
import time

import pytest

from conftest import (WEIR, duckdb_connection, free_port, read_report, spawn, table_path,
                      with_source_properties, write_job)
from test_broker_e2e import assert_exactly_once, assert_outputs_match_oracle, stored
from test_operate import committed, start, wait_until

SECONDS = 60
RATE = 1500
MAX_PROCESSES = 4
MOVES = 5
# Slow enough that batches queue behind the commit, fast enough to keep up.
SLOW_SINK = "sink.after_commit.raw@*:sleep=40"


class Fleet:
    """The job's live processes, each with its own log and metrics port."""

    def __init__(self, job, logs, rng):
        self.job, self.logs, self.rng = job, logs, rng
        self.live: list[subprocess.Popen] = []
        self.started = self.killed = self.stopped = 0

    def start(self):
        log = open(self.logs / f"p{self.started}.log", "w")
        self.live.append(start(self.job, free_port(), log, SLOW_SINK))
        self.started += 1

    def pick(self):
        return self.live.pop(self.rng.randrange(len(self.live)))

    def kill(self):
        proc = self.pick()
        proc.kill()
        proc.wait()
        self.killed += 1

    def stop(self):
        proc = self.pick()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "a SIGTERMed process exits 0"
        self.stopped += 1

    def step(self):
        """One random move that keeps between one and MAX_PROCESSES running."""
        moves = []
        if len(self.live) < MAX_PROCESSES:
            moves += [self.start] * 2
        if len(self.live) > 1:
            moves += [self.kill, self.stop]
        self.rng.choice(moves)()

    def check_alive(self):
        for proc in self.live:
            assert proc.poll() is None, f"a weir process exited on its own with {proc.returncode}"


def assert_no_event_id_twice(data):
    con = duckdb_connection()
    tables = " UNION ALL ".join(
        f"SELECT event_id FROM delta_scan('{table_path(data, 'clickstream', t)}')"
        for t in ("raw", "late"))
    twice = con.sql(f"SELECT event_id, count(*) FROM ({tables}) GROUP BY 1 HAVING count(*) > 1"
                    ).fetchall()
    assert not twice, f"event IDs stored twice: {twice[:5]}"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chaos_keeps_every_event_exactly_once(broker, tmp_path, seed):
    rng = random.Random(seed)
    broker.create_topic("clicks", 6)
    data = tmp_path / "data"
    # A SIGKILLed member holds its partitions until the broker gives up on
    # it: the job's 6 s session timeout (Kafka's shortest) bounds that.
    job = with_source_properties(write_job(tmp_path / "job.toml", broker, "clicks", data),
                                 heartbeat_interval_ms="1000")
    # A partition stalled by the kills longer than the allowed lateness has its
    # backlog judged late by the process that takes it over (the README's
    # caveat): the producer sends no late events, so every valid one must be
    # in raw, which needs a lateness above the longest stall the churn causes.
    job.write_text(job.read_text().replace('allowed_lateness = "1m"', 'allowed_lateness = "10m"'))
    fleet = Fleet(job, tmp_path, rng)
    producer = spawn(
        [WEIR, "produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--rate", str(RATE),
         "--seconds", str(SECONDS), "--late-ratio", "0", "--seed", str(seed),
         "--report", str(tmp_path / "sent.csv")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        fleet.start()
        fleet.start()
        deadline = time.monotonic() + SECONDS
        # At least MOVES processes killed or stopped, however slow the machine.
        while time.monotonic() < deadline or fleet.killed + fleet.stopped < MOVES:
            time.sleep(rng.uniform(2, 6))
            fleet.check_alive()
            fleet.step()
        assert producer.wait(timeout=120) == 0
        sent = read_report(tmp_path / "sent.csv")
        # One process drains what is left.
        while len(fleet.live) > 1:
            fleet.stop()
        if not fleet.live:
            fleet.start()
        wait_until(lambda: committed(data, "clickstream") == stored(sent), 300,
                   fleet.live[0], "the last process to drain")
        fleet.stop()
    finally:
        producer.kill()
        for proc in fleet.live:
            proc.kill()
    assert len(sent) > SECONDS * RATE * 0.9
    assert_exactly_once(data, sent)
    assert_no_event_id_twice(data)
    assert_outputs_match_oracle(job, sent)
