"""Hot, warm and cold tiers: `weir maintain` moves aged rows on, and every
reader (weir query, DuckDB over `weir views`) sees the same rows before, during
and after a move, after a crash between a move's two commits, and after
SIGKILLs anywhere. Warm and cold also run on an S3-compatible server."""

import json
import os
import random
import subprocess
import time

import polars as pl
import pytest

from conftest import WEIR, clickstream_job, crash_after_each, duckdb_with_views, spawn, weir
from test_maintain import rows, totals_never_change


def tier_job(path, warm_root=None, cold_root=None, hot="5s", warm="10s"):
    """The clickstream job aged in seconds: 2 s windows, lateness and dedup
    horizon; hot keeps `hot`, warm `warm`, cold the rest."""
    return clickstream_job(path, (('window = "1m"', 'window = "2s"'),
                                  ('allowed_lateness = "1m"', 'allowed_lateness = "2s"'),
                                  ('horizon = "1h"', 'horizon = "2s"'),
                                  ('max_age = "24h"', f'max_age = "{hot}"'),
                                  ('max_age = "30days"', f'max_age = "{warm}"')),
                           warm_root, cold_root)


def query(job, data, sql):
    return json.loads(weir("query", "--job", job, "--data", data, "--format", "json",
                           sql, timeout=120).stdout)


def snapshot(job, data):
    """What readers see: every table's positions through `weir query`, and
    every view (tables and merged outputs) through DuckDB."""
    out = {}
    for table in ("raw", "dlq", "late"):
        got = query(job, data, f"SELECT _partition, _offset FROM {table} ORDER BY 1, 2")
        out[table] = [(r["_partition"], r["_offset"]) for r in got]
        assert len(out[table]) == len(set(out[table])), f"{table} holds a row twice"
    con = duckdb_with_views(job, data)
    for view in ("raw", "dlq", "late", "page_views", "revenue", "purchases"):
        out[f"duckdb:{view}"] = rows(con.sql(f"SELECT * FROM {view}"))
    return out


def tier_counts(job, data, table="raw"):
    got = query(job, data, f"SELECT (SELECT count(*) FROM {table}__hot) AS hot, "
                           f"(SELECT count(*) FROM {table}__warm) AS warm, "
                           f"(SELECT count(*) FROM {table}__cold) AS cold")
    return got[0]


@pytest.mark.parametrize("remote", [False, True], ids=["local", "s3"])
def test_moves_keep_every_answer_through_crashes_and_concurrent_reads(remote, request,
                                                                       tmp_path):
    roots = {}
    if remote:
        bucket = request.getfixturevalue("s3")
        roots = {"warm_root": f"{bucket}/warm", "cold_root": f"{bucket}/cold"}
    job = tier_job(tmp_path / "job.toml", **roots)
    data = tmp_path / "data"
    weir("demo", "--job", job, "--seconds", 20, "--rate", 300, "--data", data, timeout=240)
    before = snapshot(job, data)
    assert len(before["raw"]) > 4000 and before["late"] and before["dlq"]
    assert tier_counts(job, data)["warm"] == 0
    command = [WEIR, "maintain", "--job", str(job), "--data", str(data), "--once"]

    # A crash between a move's two commits: the copies are hidden, the answer
    # is unchanged; the re-run finishes the move without writing it again.
    # Each point is in a table the crashed runs before it never reached.
    def unchanged(point):
        assert snapshot(job, data) == before, f"a crash at {point} changed the answer"

    crash_after_each(command, [f"maintain.after_{p}" for p in
                               ("move_write.raw", "move_delete.page_views", "move_write.revenue")],
                     unchanged)
    resumed = weir("maintain", "--job", job, "--data", data, "--once", timeout=240).stdout
    assert "resumed" in resumed, resumed
    assert snapshot(job, data) == before

    # SIGKILL at random moments, with a reader polling all the while.
    with totals_never_change(job, data):
        rng = random.Random()
        for _ in range(4):
            time.sleep(2)  # let rows age, so every round has something to move
            proc = spawn(command, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.1, 1.0))
            proc.kill()
            proc.wait()
        time.sleep(10)  # everything older than warm's age now
        weir("maintain", "--job", job, "--data", data, "--once", timeout=240)
    assert snapshot(job, data) == before, "moves changed what a reader sees"

    # raw ages by event time: with no new events the watermark stands still,
    # so the newest seconds stay hot and the rest moved on.
    counts = tier_counts(job, data)
    assert counts["hot"] > 0 and counts["cold"] > 0, counts
    assert sum(counts.values()) == len(before["raw"]), counts
    assert tier_counts(job, data, "page_views__partials")["cold"] > 0
    # dlq ages by ingest time: more than warm's age has passed, all of it is cold.
    assert tier_counts(job, data, "dlq") == {"hot": 0, "warm": 0, "cold": len(before["dlq"])}

    # DuckDB over `weir views` routes exactly as `weir query` does, and polars
    # reads every tier's table where it lives.
    raw_view = duckdb_with_views(job, data).sql(
        "SELECT _partition, _offset FROM raw ORDER BY 1, 2").fetchall()
    assert raw_view == before["raw"]
    tiers = {"hot": data / "hot", "warm": roots.get("warm_root", data / "warm"),
             "cold": roots.get("cold_root", data / "cold")}
    options = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    heights = {t: pl.read_delta(f"{root}/clickstream/raw", storage_options=options).height
               for t, root in tiers.items()}
    assert heights == counts, (heights, counts)


def test_a_recreated_hot_table_is_never_emptied_by_a_move_it_did_not_make(tmp_path):
    """Warm took rows from one hot `raw`; then hot is replaced by another run's
    (a user moving tables aside, a rerun that replaced hot only). Warm's move
    txn then looks like a move whose delete is pending, and finishing it would
    delete the new hot rows below its cutoff that were never copied. The move
    is refused with the reason, and hot keeps every row."""
    job = clickstream_job(tmp_path / "job.toml", [('max_age = "24h"', 'max_age = "30h"')])
    first, second = tmp_path / "first", tmp_path / "second"
    for data in (first, second):
        weir("demo", "--job", job, "--seconds", 3, "--rate", 1000, "--backfill", "3days",
             "--data", data, timeout=180)
    weir("maintain", "--job", job, "--data", first, "--once", timeout=240)
    assert tier_counts(job, first)["warm"] > 0
    hot_raw = first / "hot" / "clickstream" / "raw"
    subprocess.run(["rm", "-rf", str(hot_raw)], check=True)
    subprocess.run(["cp", "-r", str(second / "hot" / "clickstream" / "raw"), str(hot_raw)],
                   check=True)
    rows_before = tier_counts(job, first)["hot"]

    refused = subprocess.run([WEIR, "maintain", "--job", job, "--data", first, "--once"],
                             capture_output=True, text=True, timeout=240)
    assert refused.returncode != 0, refused.stdout
    assert "recreated or replaced" in refused.stderr + refused.stdout, refused.stderr
    assert tier_counts(job, first)["hot"] == rows_before
