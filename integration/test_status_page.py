"""The status page `weir run` serves, opened in a real browser: Debian's
Chromium, headless, driven by Playwright. Its figures are checked against
/metrics and against the tables read by DuckDB; /api/status and
`weir status --from` against the same; the page's own script refreshes it
without an error; without JavaScript it still shows every figure. The
screenshot is left in the test's folder (WEIR_SCREENSHOT copies it, which is
how docs/status-page.png is made)."""

import json
import os
import shutil
import signal
import subprocess

from playwright.sync_api import sync_playwright

from conftest import (WEIR, duckdb_connection, free_port, read_report, spawn, table_path, weir,
                      write_job)
from test_broker_e2e import stored
from test_operate import (committed, count_rows, get, reported_high_watermark, scrape, value,
                          wait_until)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def dlq_reasons(data):
    """The DLQ's ten commonest reasons, as DuckDB counts them."""
    path = table_path(data, "clickstream", "dlq")
    return duckdb_connection().sql(
        f"SELECT count(*), error FROM delta_scan('{path}') GROUP BY error "
        "ORDER BY 1 DESC, 2 LIMIT 10").fetchall()


def figure(page, key):
    return page.locator(f'[data-job="clickstream"] [data-figure="{key}"]').first.inner_text()


def test_the_status_page_agrees_with_metrics_and_tables(broker, tmp_path):
    broker.create_topic("clicks", 3)
    data = tmp_path / "data"
    job = write_job(tmp_path / "clicks.toml", broker, "clicks", data)
    job.write_text(job.read_text().replace('every = "10m"', 'every = "3s"'))
    report = tmp_path / "sent.csv"
    weir("produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--report", report,
         "--count", 2000, timeout=180)
    sent = read_report(report)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "run.log", "w") as log:
        proc = spawn([WEIR, "run", str(job), "--metrics-addr", f"127.0.0.1:{port}"],
                     stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: committed(data, "clickstream") == stored(sent), 180, proc,
                       "ingest")
            # Every partition has a clock now, so the watermark stands: late
            # events sent after this are judged late whatever the fetch order
            # (before it, a partition not yet read holds the watermark back).
            more = tmp_path / "late.csv"
            weir("produce", "--brokers", broker.bootstrap, "--topic", "clicks", "--report", more,
                 "--count", 300, "--late-ratio", 0.1, timeout=180)
            sent += read_report(more)
            assert any(s.kind == "late" for s in sent)
            wait_until(lambda: committed(data, "clickstream") == stored(sent), 180, proc,
                       "ingest of the late events")
            wait_until(lambda: reported_high_watermark(scrape(port)[0]), 30, proc,
                       "librdkafka's statistics")
            # Two samples make an interval for the charts; a maintenance round.
            wait_until(lambda: len(api(base)["history"]) >= 2
                       and api(base)["live"]["last_maintenance"] is not None, 60, proc,
                       "two samples and a maintenance round")
            check_page(base, port, data, tmp_path)
            from_cli = weir("status", "--from", base, "--job", job).stdout
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=40) == 0

    assert "total lag 0" in from_cli, from_cli
    assert "live: running;" in from_cli, from_cli
    assert f"table raw: {count_rows(data, 'clickstream', 'raw')} rows" in from_cli, from_cli


def api(base):
    status, body = get(f"{base}/api/status")
    assert status == 200, body
    (job,) = json.loads(body)["jobs"]
    return job


def check_page(base, port, data, tmp_path):
    samples, _ = scrape(port)
    snapshot = api(base)
    events_in = value(samples, "weir_events_in_total", job="clickstream")
    assert snapshot["live"]["events_in"] == events_in > 0
    assert snapshot["tables"]["partitions"] and snapshot["tables_error"] is None

    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.goto(base + "/")
        check_figures(page, samples, data)
        page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)
        # The script refreshes the page in place: the time in the header moves on.
        first = page.locator("header time").inner_text()
        page.wait_for_function(
            f"document.querySelector('header time').textContent !== {json.dumps(first)}",
            timeout=20_000)
        check_figures(page, samples, data)
        # Hovering a chart's left edge reads out its first value.
        chart = page.locator('[data-job="clickstream"] [data-chart="events_per_s"]')
        first_value = json.loads(chart.locator("svg").get_attribute("data-values"))[0]
        chart.locator("svg").hover(position={"x": 1, "y": 10})
        assert chart.locator("output").inner_text() == f"{first_value:.1f}"
        # Without JavaScript the same figures are there.
        plain = browser.new_context(java_script_enabled=False).new_page()
        plain.goto(base + "/")
        check_figures(plain, samples, data)
        browser.close()
    assert errors == [], errors
    if target := os.environ.get("WEIR_SCREENSHOT"):
        shutil.copy(tmp_path / "status-page.png", target)


def check_figures(page, samples, data):
    assert figure(page, "health") == "running"
    assert int(figure(page, "events_in")) == value(samples, "weir_events_in_total",
                                                  job="clickstream")
    assert int(figure(page, "lag")) == 0
    assert int(figure(page, "restarts")) == 0
    assert int(figure(page, "late_events")) == count_rows(data, "clickstream", "late") > 0
    assert int(figure(page, "dlq_messages")) == count_rows(data, "clickstream", "dlq") > 0
    dedup = value(samples, "weir_dedup_index_entries", job="clickstream")
    assert figure(page, "dedup_entries") == f"{dedup:.0f} IDs"
    assert figure(page, "last_maintenance") != "not yet"
    section = page.locator('[data-job="clickstream"]')
    for table in ("raw", "dlq", "late"):
        shown = section.locator(f'tr[data-table="{table}"] [data-figure="rows"]').inner_text()
        assert int(shown) == count_rows(data, "clickstream", table), table
    partitions = section.locator("tr[data-partition]")
    assert partitions.count() == 3
    for i in range(3):
        row = partitions.nth(i)
        assert row.locator('[data-figure="lag"]').inner_text() == "0"
    holders = section.locator("tr[data-partition]", has_text="holds the watermark")
    assert holders.count() == 1
    holder = holders.first.get_attribute("data-partition")
    assert f"held by partition {holder}" in section.locator(".figure", has=page.locator(
        '[data-figure="watermark"]')).inner_text()
    reasons = section.locator('[data-figure="dlq_reasons"] tr')
    shown = [tuple(reasons.nth(i).locator("td").all_inner_texts())
             for i in range(1, reasons.count())]
    assert [(int(n), why) for n, why in shown] == dlq_reasons(data)
    values = json.loads(section.locator('[data-chart="events_per_s"] svg')
                        .get_attribute("data-values"))
    assert len(values) >= 2 and max(values) > 0
