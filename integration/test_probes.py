"""Synthetic latency probes (`probes.every`) on Apache Kafka: each round sends
a marked record to every partition of the job's own topic and times it until
raw's committed Delta log holds its offset. Probes never reach raw, the DLQ or
late (exactly once holds for the producer's events through a SIGKILL), yet the
tables' positions move past them; the latency shows in /metrics,
/api/status and `weir status --from`."""

import json
import re
import threading
import urllib.error

from conftest import WEIR, free_port, weir, write_job
from test_broker_e2e import assert_exactly_once
from test_operate import get, ingested, killed_once, running, scrape, value, wait_until


def probed(port):
    """Probes seen so far (0 while the server is not up yet)."""
    try:
        samples, _ = scrape(port)
    except urllib.error.URLError:
        return 0
    return value(samples, "weir_probe_latency_seconds_count", job="clickstream")


def positions(job):
    """{partition: (committed, high watermark)} as `weir status` shows them."""
    status = weir("status", "--job", job).stdout
    rows = re.findall(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+\d+\s", status, re.M)
    return {int(p): (int(committed), int(high)) for p, committed, high in rows}


def test_probes_measure_send_to_visible_and_never_land(broker, tmp_path):
    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    job = write_job(tmp_path / "clicks.toml", broker, "clicks", data)
    job.write_text(job.read_text() + '\n[probes]\nevery = "1s"\n')
    port = free_port()
    report = tmp_path / "sent.csv"
    command = [WEIR, "run", str(job), "--metrics-addr", f"127.0.0.1:{port}"]

    # No late events: which of them a watermark still rising at the stream's
    # start lets through depends on batch boundaries, not on probes.
    producer = threading.Thread(target=lambda: weir(
        "produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--report", report,
        "--count", 4000, "--rate", 400, "--late-ratio", 0, timeout=180))
    producer.start()
    # Probes flow while events do; then a SIGKILL mid-stream.
    killed_once(command, tmp_path / "run-1.log", lambda: probed(port) >= 6,
                "two rounds of probes")
    with running(command, tmp_path / "run-2.log") as second:
        sent = ingested(data, producer, report, second)
        # Rounds after the last event: each partition's newest record is a
        # probe, and it is seen (the positions move past it).
        seen = probed(port)
        wait_until(lambda: probed(port) >= seen + 6, 60, second, "two more rounds")
        samples, _ = scrape(port)
        _, body = get(f"http://127.0.0.1:{port}/api/status")
        from_cli = weir("status", "--from", f"http://127.0.0.1:{port}").stdout
        # Every record now is a probe: the tables' positions move past the
        # newest ones (probes go on arriving, so lag is rarely 0).
        before = positions(job)
        assert sorted(before) == [0, 1, 2], before
        wait_until(lambda: all(committed >= before[p][1]
                               for p, (committed, _) in positions(job).items()),
                   60, second, "positions past the probes")

    assert_exactly_once(data, sent)
    assert value(samples, "weir_probe_failures_total", job="clickstream") == 0
    count = value(samples, "weir_probe_latency_seconds_count", job="clickstream")
    total = value(samples, "weir_probe_latency_seconds_sum", job="clickstream")
    assert 0 < total / count < 30, (total, count)
    (live,) = json.loads(body)["jobs"]
    assert sorted(live["live"]["probes"]) == ["0", "1", "2"], live["live"]
    assert "probes (send → visible in raw, newest per partition): 0: " in from_cli, from_cli
