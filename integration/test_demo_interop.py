"""`weir demo` leaves Delta tables that other engines read with the same counts."""

import json
import re
import subprocess

import polars as pl

from conftest import ROOT, WEIR, duckdb_connection, duckdb_with_views, table_path, weir


def summary_count(stdout: str, table: str) -> int:
    match = re.search(rf"^\s+{table}\s+(\d+)", stdout, re.MULTILINE)
    assert match, stdout
    return int(match.group(1))


def test_demo_counts_match_duckdb_and_polars(tmp_path):
    data = tmp_path / "demo"
    out = weir("demo", "--seconds", 5, "--rate", 1000, "--data", data, timeout=180).stdout
    assert "check: produced" in out and ": ok" in out, out
    raw, dlq, late = (summary_count(out, t) for t in ("raw", "dlq", "late"))
    assert raw > 2000 and dlq > 0 and late > 0, out

    con = duckdb_connection()
    for table, expected in (("raw", raw), ("dlq", dlq), ("late", late)):
        path = table_path(data, "clickstream", table)
        assert con.sql(f"SELECT count(*) FROM delta_scan('{path}')").fetchone()[0] == expected
        assert pl.read_delta(str(path)).height == expected

    raw_path = table_path(data, "clickstream", "raw")
    described = con.sql(f"DESCRIBE SELECT * FROM delta_scan('{raw_path}')").fetchall()
    types = {row[0]: row[1] for row in described}
    assert types["ts"] == "TIMESTAMP WITH TIME ZONE"
    assert types["_event_date"] == "DATE"
    assert types["price"] == "DOUBLE"

    # `weir query` (DataFusion) and DuckDB agree row for row.
    sql = ("SELECT _partition, count(*) AS events, min(_offset) AS first, max(_offset) AS last, "
           "count(price) AS priced, sum(CAST(round(price * 100) AS BIGINT)) AS revenue_cents "
           "FROM raw GROUP BY _partition ORDER BY _partition")
    weir_rows = json.loads(weir("query", "--job", ROOT / "jobs/clickstream.toml", "--data", data,
                                "--format", "json", sql).stdout)
    duck_rows = con.sql(sql.replace("FROM raw", f"FROM delta_scan('{raw_path}')")).fetchall()
    assert [tuple(r.values()) for r in weir_rows] == [tuple(r) for r in duck_rows]

    # The merged outputs account for every committed event, none more.
    totals = json.loads(weir("query", "--job", ROOT / "jobs/clickstream.toml", "--data", data,
                             "--format", "json",
                             "SELECT (SELECT sum(views) FROM page_views) AS views, "
                             "(SELECT count(*) FROM raw WHERE action = 'view') AS raw_views, "
                             "(SELECT sum(purchases) FROM revenue) AS purchases, "
                             "(SELECT count(*) FROM raw WHERE action = 'purchase') AS raw_purchases"
                             ).stdout)[0]
    assert totals["views"] == totals["raw_views"] > 1000, totals
    assert totals["purchases"] == totals["raw_purchases"] > 0, totals

    bad = subprocess.run([WEIR, "query", "--job", ROOT / "jobs/clickstream.toml", "--data", data,
                          "SELECT nope FROM raw"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "No field named nope" in bad.stderr, bad.stderr

    # Running the demo again replaces its own earlier tables.
    again = weir("demo", "--seconds", 2, "--rate", 500, "--data", data, timeout=180).stdout
    assert con.sql(f"SELECT count(*) FROM delta_scan('{raw_path}')").fetchone()[0] == \
        summary_count(again, "raw")


def test_notebooks_run_headless_against_fresh_output(tmp_path, monkeypatch):
    """Both notebooks run in a Jupyter kernel (nbclient) against a fresh demo's
    tables and a fresh `weir bench` CSV: a cell that fails fails the test."""
    import nbclient
    import nbformat

    data = tmp_path / "data"
    weir("demo", "--seconds", 2, "--rate", 500, "--data", data, timeout=180)
    bench_csv = tmp_path / "bench.csv"
    weir("bench", "--batch-sizes", "100,1000", "--seconds-per-point", 1, "--rate", 2000,
         "--backlog", 5000, "--csv", bench_csv, "--png", tmp_path / "bench.png", timeout=600)
    monkeypatch.setenv("WEIR_DATA", str(data))
    monkeypatch.setenv("WEIR_BIN", WEIR)
    monkeypatch.setenv("WEIR_BENCH_CSV", str(bench_csv))
    outputs = {}
    for name in ("explore.ipynb", "tuning.ipynb"):
        notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
        outputs[name] = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    shown = lambda name, kind: [o for o in outputs[name] if kind in o.get("data", {})]
    # explore: every table cell showed rows; the views matched polars (asserted in the cell).
    assert len(shown("explore.ipynb", "text/plain")) >= 6
    assert "'views'" in shown("explore.ipynb", "text/plain")[-1]["data"]["text/plain"]
    # tuning: the frontier was drawn, from this run's two batch sizes.
    assert len(shown("tuning.ipynb", "image/png")) == 1
    assert "100" in shown("tuning.ipynb", "text/plain")[1]["data"]["text/plain"]


def test_duckdb_views_equal_weir_query(tmp_path):
    """`weir views --dialect duckdb` run in DuckDB gives the rows `weir query`
    gives, with the tables under a path whose quote must stay in its literal."""
    import math

    data = tmp_path / "it's data"
    spec = ROOT / "jobs/clickstream.toml"
    weir("demo", "--seconds", 3, "--rate", 1000, "--data", data, timeout=180)
    con = duckdb_with_views(spec, data)

    columns = "page, country, purchases, revenue, avg_price, max_price"
    order = "ORDER BY 1, page NULLS FIRST, country NULLS FIRST"
    duck = con.sql(f"SELECT epoch_ms(window_start), {columns} FROM revenue {order}").fetchall()
    ours = json.loads(weir("query", "--job", spec, "--data", data, "--format", "json",
                           f"SELECT CAST(to_unixtime(window_start) * 1000 AS BIGINT) AS w, "
                           f"{columns} FROM revenue {order}").stdout)
    assert len(duck) > 10 and len(duck) == len(ours)
    for d, o in zip(duck, ours):
        o = [o.get(k) for k in ["w", "page", "country", "purchases", "revenue", "avg_price",
                                "max_price"]]
        assert d[:4] == tuple(o[:4]), (d, o)
        for a, b in zip(d[4:], o[4:]):
            assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-9), (d, o)
    views_total = con.sql("SELECT sum(views) FROM page_views").fetchone()[0]
    raw_views = con.sql("SELECT count(*) FROM raw WHERE action = 'view'").fetchone()[0]
    assert views_total == raw_views > 0


def test_payments_demo_aggregates_every_approved_payment(tmp_path):
    data = tmp_path / "data"
    spec = ROOT / "jobs/payments.toml"
    out = weir("demo", "--job", spec, "--seconds", 3, "--rate", 1000, "--data", data,
               timeout=180).stdout
    assert ": ok" in out, out
    con = duckdb_with_views(spec, data)
    raw = f"delta_scan('{table_path(data, 'payments', 'raw')}')"
    got = con.sql("SELECT merchant, sum(payments), round(sum(amount), 2) FROM merchant_10s "
                  "GROUP BY 1 ORDER BY 1").fetchall()
    want = con.sql(f"SELECT merchant, count(*), round(sum(amount), 2) FROM {raw} WHERE approved "
                   "GROUP BY 1 ORDER BY 1").fetchall()
    assert len(got) > 5
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert all(abs(g[2] - w[2]) < 0.011 for g, w in zip(got, want))


def test_an_output_named_with_capitals_works_in_query_verify_and_views(tmp_path):
    """`PageViews` reads as itself quoted and, as SQL folds it, unquoted."""
    spec = tmp_path / "capitals.toml"
    spec.write_text((ROOT / "jobs/clickstream.toml").read_text()
                    .replace('name = "page_views"', 'name = "PageViews"'))
    data = tmp_path / "data"
    weir("demo", "--job", spec, "--seconds", 3, "--rate", 1000, "--data", data,
         "--backfill", "2days", timeout=180)

    def query(sql):
        return json.loads(weir("query", "--job", spec, "--data", data, "--format", "json",
                               sql).stdout)[0]

    raw_views = query("SELECT count(*) AS n FROM raw WHERE action = 'view'")["n"]
    assert raw_views > 0
    assert query('SELECT sum(views) AS n FROM "PageViews"')["n"] == raw_views
    assert query("SELECT sum(views) AS n FROM PageViews")["n"] == raw_views
    assert query('SELECT count(*) AS n FROM "PageViews__partials"')["n"] > 0

    day = query("SELECT CAST(min(_event_date) AS VARCHAR) AS d FROM raw")["d"]
    weir("verify", "--job", spec, "--data", data, "--from", day, "--to", day,
         "--output", "PageViews", timeout=180)

    con = duckdb_with_views(spec, data)
    assert con.sql('SELECT sum(views) FROM "PageViews"').fetchone()[0] == raw_views
