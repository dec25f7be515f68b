"""`weir bench` and `weir tune`: the table, the CSV and the PNG of the frontier,
on the embedded broker and on Apache Kafka; tune's recommendation recomputed
from the CSV it wrote."""

import csv
import os
import re
import subprocess
import sys

from PIL import Image

from conftest import ROOT, WEIR, weir, with_source_properties, write_job

COLUMNS = [
    "batch_events", "throughput_eps", "raw_consume_eps", "ratio_to_raw", "offered_eps",
    "committed_share", "e2e_p50_ms", "e2e_p95_ms", "e2e_p99_ms", "commit_p50_ms",
    "commit_p95_ms", "commit_p99_ms", "batches", "mean_batch_events", "job", "broker",
    "poll_cpu_ns_per_event", "raw_cpu_ns_per_event",
]


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def check_sweep(result, csv_path, png_path, sizes):
    """The printed table, the CSV's rows and the PNG agree with each other and
    with what a sweep must measure."""
    for header in ("batch", "events/s", "ratio", "offered", "committed", "e2e p50", "p95", "p99",
                   "commit", "mean", "raw consume", "poll ns"):
        assert header in result.stdout, header
    rows = read_csv(csv_path)
    assert [int(r["batch_events"]) for r in rows] == sizes
    raw = {float(r["raw_consume_eps"]) for r in rows}
    assert len(raw) == 1 and raw.pop() > 0
    # CPU per event of the raw consumer's thread (one figure for the run) and
    # of the pipeline's poll thread (per drain): measured, never zero.
    raw_cpu = {int(r["raw_cpu_ns_per_event"]) for r in rows}
    assert len(raw_cpu) == 1 and raw_cpu.pop() > 0
    assert all(int(r["poll_cpu_ns_per_event"]) > 0 for r in rows), rows
    for r in rows:
        size, throughput = int(r["batch_events"]), float(r["throughput_eps"])
        assert throughput > 0, r
        assert abs(float(r["ratio_to_raw"]) - throughput / float(r["raw_consume_eps"])) < 1e-3, r
        for kind in ("e2e", "commit"):
            p50, p95, p99 = (float(r[f"{kind}_{q}_ms"]) for q in ("p50", "p95", "p99"))
            assert 0 < p50 <= p95 <= p99, r
        # Every event waits at least for its own trigger's commit.
        assert float(r["e2e_p99_ms"]) >= float(r["commit_p50_ms"]) * 0.5, r
        assert int(r["batches"]) > 0 and 0 < float(r["mean_batch_events"]) <= size, r
        assert 0 < float(r["committed_share"]) <= 1, r
        # The table shows the same figures.
        assert re.search(rf"^\s*{size}\s+{round(throughput)}\s", result.stdout, re.M), size
    with Image.open(png_path) as image:
        image.verify()
    with Image.open(png_path) as image:
        assert image.format == "PNG" and image.size == (1000, 640)
    return rows


def test_bench_on_the_embedded_broker_writes_table_csv_and_png(tmp_path):
    result = weir("bench", "--seconds-per-point", "3", cwd=tmp_path, timeout=900)
    check_sweep(result, tmp_path / "weir-bench.csv", tmp_path / "weir-bench.png",
                [100, 250, 500, 1000, 2500, 10000])


def test_bench_and_tune_on_a_real_broker(tmp_path, broker):
    csv_path, png_path = tmp_path / "b.csv", tmp_path / "b.png"
    result = weir("bench", "--brokers", broker.bootstrap, "--batch-sizes", "200,2000",
                  "--seconds-per-point", "2", "--rate", "3000", "--backlog", "20000",
                  "--csv", csv_path, "--png", png_path, timeout=600)
    rows = check_sweep(result, csv_path, png_path, [200, 2000])
    assert all(r["broker"] == broker.bootstrap for r in rows)

    job = write_job(tmp_path / "job.toml", broker, "clicks", tmp_path / "data")
    target = 5000
    result = weir("tune", "--job", job, "--target-p99", target, "--rate", "1000",
                  "--batch-sizes", "100,1000", "--seconds-per-point", "2", "--backlog", "20000",
                  "--csv", csv_path, "--png", png_path, timeout=600)
    rows = check_sweep(result, csv_path, png_path, [100, 1000])
    # The recommendation, recomputed: the most throughput within the target
    # among sizes that kept up with the offered rate.
    within = [r for r in rows if float(r["e2e_p99_ms"]) <= target
              and float(r["committed_share"]) >= 0.99]
    best = max(within, key=lambda r: float(r["throughput_eps"])) if within else None
    chosen = int(re.search(r"^max_events = (\d+)$", result.stdout, re.M).group(1))
    assert re.search(rf"^min_events = {chosen}$", result.stdout, re.M)
    assert re.search(r"^max_wait_ms = \d+$", result.stdout, re.M)
    if best:
        assert chosen == int(best["batch_events"])
        assert f"within the {target} ms target" in result.stdout
    else:
        assert "no measured size met" in result.stdout
    assert result.stdout.count("\n# ") == 2, result.stdout


def test_bad_sweeps_exit_2_saying_why(tmp_path):
    import subprocess

    def run(*args):
        return subprocess.run([WEIR, *map(str, args)], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)

    result = run("bench", "--batch-sizes", "0,100")
    assert result.returncode == 2 and "--batch-sizes" in result.stderr
    result = run("bench", "--rate", "0")
    assert result.returncode == 2 and "--rate" in result.stderr
    result = run("tune", "--job", ROOT / "jobs/clickstream.toml", "--target-p99", "100")
    assert result.returncode == 2 and "pass --rate" in result.stderr
    assert not (tmp_path / "weir-bench.csv").exists()


def test_tune_reaches_the_broker_with_the_jobs_properties(tmp_path, broker):
    """The rate probe is a client of the job's cluster like the job's own
    consumer: it takes `[source.properties]` (a secured cluster needs them).
    A value librdkafka refuses shows that it does: the probe fails at once,
    naming the property, instead of measuring without it."""
    import subprocess

    job = with_source_properties(write_job(tmp_path / "job.toml", broker, "probed",
                                           tmp_path / "data"), fetch_wait_max_ms="soon")
    result = subprocess.run([WEIR, "tune", "--job", job, "--target-p99", "100"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "fetch.wait.max.ms" in result.stderr and "soon" in result.stderr, result.stderr
    assert "nothing arrived" not in result.stderr


def test_the_debug_log_says_how_old_each_batch_is_and_stages_sums_it_up(tmp_path):
    """A batch's debug line carries the ages of its oldest and newest events
    at decode; in the latency phase the oldest is older by about the time
    the batch took to fill (500 events at 25,000 events/s: 20 ms), and
    benches/stages.py --latency prints p50/p99 of both."""
    env = {**os.environ, "RUST_LOG": "weir=debug"}
    result = weir("bench", "--batch-sizes", "500", "--seconds-per-point", "3", "--rate", "25000",
                  cwd=tmp_path, env=env, timeout=600)
    log = tmp_path / "bench.log"
    log.write_text(result.stderr)
    latency = result.stderr.split("latency phase", 1)[1]
    ages = [(float(m.group(1)), float(m.group(2))) for m in re.finditer(
        r"batch prepared events=\d+ \S+ oldest_age_ms=([0-9.]+) newest_age_ms=([0-9.]+)", latency)]
    assert len(ages) >= 20, latency[-2000:]
    assert all(oldest >= newest >= 0 for oldest, newest in ages), ages
    spreads = sorted(oldest - newest for oldest, newest in ages)
    assert 10 <= spreads[len(spreads) // 2] <= 60, spreads
    summary = subprocess.run([sys.executable, ROOT / "benches" / "stages.py", "--latency", log],
                             capture_output=True, text=True, check=True).stdout
    for field in ("oldest_age_ms", "newest_age_ms", "commit_ms"):
        assert re.search(rf"{field} [0-9.]+/[0-9.]+", summary), summary
