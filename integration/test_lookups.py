"""Lookup tables (`[[lookups]]`) on Apache Kafka: a CSV of page → section,
joined by a `sql` output and read by a derived window key. The file changes
while the job runs: events after the refresh take the new sections, events
before keep the old, exactly once through a SIGKILL; every commit names the
versions it used in `weir.lookups`; a broken upload (a repeated key) keeps the
last good version and counts a failure."""

import json
import signal
import subprocess
import threading
import time
import urllib.error

from conftest import (WEIR, duckdb_connection, free_port, read_report, spawn, table_path, weir,
                      write_job)
from test_broker_e2e import stored
from test_operate import committed, scrape, value, wait_until

PAGES = 200


def sections(version):
    return {f"/p/{n}": f"{version}-{n % (4 if version == 'v1' else 3)}" for n in range(PAGES)}


def write_pages(path, mapping, extra=""):
    path.write_text("page,section\n" + "".join(f"{p},{s}\n" for p, s in mapping.items()) + extra)


def metric(port, name):
    try:
        samples, _ = scrape(port)
    except urllib.error.URLError:
        return 0
    return value(samples, name, job="clickstream", lookup="pages")


def produce(broker, report, count, *rate):
    weir("produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--report", report,
         "--count", count, "--late-ratio", 0, *rate, timeout=180)


def expected(report, mapping):
    """Per on-time original: its section under `mapping` (events whose page
    the lookup has; the join drops the rest)."""
    out = {}
    for sent in report:
        if sent.kind != "valid":
            continue
        event = json.loads(sent.payload)
        if event.get("page") in mapping:
            out[event["event_id"]] = mapping[event["page"]]
    return out


def test_lookups_join_refresh_between_triggers_and_keep_the_last_good(broker, tmp_path):
    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    pages = tmp_path / "pages.csv"
    write_pages(pages, sections("v1"))
    job = write_job(tmp_path / "clicks.toml", broker, "clicks", data)
    job.write_text(job.read_text() + f"""
[[lookups]]
name = "pages"
source = "{pages}"
key = "page"
refresh = "1s"

[[outputs]]
name = "sections"
sql = "SELECT b.event_id, p.section FROM batch b JOIN pages p ON b.page = p.page"
""")
    port = free_port()
    command = [WEIR, "run", str(job), "--metrics-addr", f"127.0.0.1:{port}"]

    first_report = tmp_path / "first.csv"
    produce(broker, first_report, 1500)
    first = read_report(first_report)
    with open(tmp_path / "run-1.log", "w") as log:
        run = spawn(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: committed(data, "clickstream") == stored(first), 120, run, "phase 1")
        write_pages(pages, sections("v2"))
        wait_until(lambda: metric(port, "weir_lookup_loads_total") == 2, 30, run, "the refresh")
        second_report = tmp_path / "second.csv"
        producer = threading.Thread(
            target=produce, args=(broker, second_report, 2000, "--rate", 500))
        producer.start()
        time.sleep(2)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
    with open(tmp_path / "run-2.log", "w") as log:
        run = spawn(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            producer.join()
            second = read_report(second_report)
            wait_until(lambda: committed(data, "clickstream") == stored(first) + stored(second),
                       180, run, "phase 2")
            # A broken upload: the key repeats. The job keeps v2.
            write_pages(pages, sections("v2"), extra="/p/1,again\n")
            wait_until(lambda: metric(port, "weir_lookup_refresh_failures_total") >= 1, 30, run,
                       "a failed refresh")
            assert metric(port, "weir_lookup_loads_total") == 1
            assert metric(port, "weir_lookup_rows") == PAGES
        finally:
            run.send_signal(signal.SIGTERM)
            assert run.wait(timeout=40) == 0
    assert "its key `page` repeats (1 extra rows; `/p/1`" in (tmp_path / "run-2.log").read_text()

    want = {**expected(first, sections("v1")), **expected(second, sections("v2"))}
    rows = duckdb_connection().sql(
        f"SELECT event_id, section FROM delta_scan('{table_path(data, 'clickstream', 'sections')}')"
    ).fetchall()
    assert len(rows) == len({r[0] for r in rows}), "an event joined twice"
    assert dict(rows) == want

    # Every commit of raw with rows names the lookup version its trigger read:
    # one version, then the other, never back.
    stamps = []
    for entry in sorted((table_path(data, "clickstream", "raw") / "_delta_log").glob("*.json")):
        for line in entry.read_text().splitlines():
            info = json.loads(line).get("commitInfo")
            if info and "weir.lookups" in info:
                stamps.append(info["weir.lookups"]["pages"])
    changes = [b for a, b in zip(stamps, stamps[1:]) if a != b]
    assert len(set(stamps)) == 2 and len(changes) == 1, stamps
