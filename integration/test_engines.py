"""The engines weir's users query with read its tables and get `weir query`'s
rows: Apache Spark with Delta Lake and Trino run the views `weir views` prints
for them, ClickHouse (chdb) reads `raw` and merges `page_views` itself; after a
demo, and after `weir maintain` spread every table over hot, warm and cold.

Each engine's rows are compared with `weir query`'s, whole, in a form every
engine can give exactly: timestamps as epoch milliseconds, rounded half up as
Trino rounds them (its Delta connector reads timestamps at millisecond
precision), dates as ISO strings,
binary as upper-case hex, floating point to 9 significant digits (a merge adds
the same partials in another order)."""

import json
import re
import shutil

import pytest

from conftest import duckdb_with_views, spark_sql, weir
from test_tiers import tier_counts, tier_job

VIEWS = ("raw", "dlq", "late", "page_views", "revenue", "purchases", "visits")

# A session window too: its view joins fragments with window functions.
SESSIONS = """
[[outputs]]
name = "visits"
window = { session_gap = "2s" }
keys = ["user_id"]
aggregates = [
  { name = "events", fn = "count" },
  { name = "spent", fn = "sum", field = "price" },
  { name = "pages", fn = "count_distinct", field = "page" },
]
"""


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """The job and two copies of its data: right after a 40-second demo
    (`demo`, everything hot), and after one `weir maintain` (`maintained`).
    `dlq` is aged by when rows were read, so its hot tier keeps only what the
    demo read in the last `hot` seconds before the maintain reaches it: 15 s
    leaves room for a loaded machine between the demo's end and that move."""
    tmp = tmp_path_factory.mktemp("engines")
    job = tier_job(tmp / "job.toml", hot="15s", warm="25s")
    job.write_text(job.read_text() + SESSIONS)
    maintained = tmp / "maintained"
    weir("demo", "--job", job, "--seconds", 40, "--rate", 300, "--data", maintained,
         timeout=240)
    demo = tmp / "demo"
    shutil.copytree(maintained, demo)
    weir("maintain", "--job", job, "--data", maintained, "--once", timeout=240)
    for table in ("raw", "dlq", "page_views__partials"):
        counts = tier_counts(job, maintained, table)
        assert all(counts[t] > 0 for t in ("hot", "warm", "cold")), (table, counts)
    return job, {"demo": demo, "maintained": maintained}


def column_kinds(job, data):
    """{view: [(column, kind)]}, kind one of ts, date, binary, float, plain, from
    DuckDB's reading of the views."""
    con = duckdb_with_views(job, data)
    kinds = {"TIMESTAMP WITH TIME ZONE": "ts", "DATE": "date", "BLOB": "binary",
             "DOUBLE": "float"}
    return {view: [(name, kinds.get(type_, "plain"))
                   for name, type_, *_ in con.sql(f"DESCRIBE {view}").fetchall()]
            for view in VIEWS}


def portable(engine, column, kind):
    """`column` as an expression whose value every engine returns alike."""
    q = f"`{column}`" if engine == "spark" else f'"{column}"'
    forms = {
        "ts": {"datafusion": f"(CAST({q} AS BIGINT) + 500) / 1000",
               "spark": f"(unix_micros({q}) + 500) DIV 1000",
               "trino": f"CAST(to_unixtime({q}) * 1000 AS BIGINT)",
               "clickhouse": f"intDiv(toUnixTimestamp64Micro({q}) + 500, 1000)"},
        "date": {"spark": f"CAST({q} AS STRING)", "clickhouse": f"toString({q})"},
        "binary": {"datafusion": f"upper(encode({q}, 'hex'))", "trino": f"to_hex({q})"},
    }
    default = {"date": f"CAST({q} AS VARCHAR)", "binary": f"hex({q})"}.get(kind, q)
    return forms.get(kind, {}).get(engine, default)


def select(engine, columns, source):
    exprs = ", ".join(f"{portable(engine, c, k)} AS c{i}" for i, (c, k) in enumerate(columns))
    return f"SELECT {exprs} FROM {source}"


def plain(value):
    return float(f"{value:.9g}") if isinstance(value, float) else value


def normalized(rows):
    """Dicts or sequences of c0..cN as sorted tuples of plain values."""
    tuples = [tuple(plain(v) for v in (r.values() if isinstance(r, dict) else r)) for r in rows]
    return sorted(tuples, key=repr)


def weir_rows(job, data, columns, view):
    return normalized(json.loads(weir("query", "--job", job, "--data", data, "--format", "json",
                                      select("datafusion", columns, view), timeout=120).stdout))


def views(job, data, dialect):
    """The statements `weir views` prints, without their comment lines."""
    text = weir("views", "--job", job, "--data", data, "--dialect", dialect).stdout
    statements = ("\n".join(line for line in s.splitlines() if not line.startswith("--"))
                  for s in text.split(";\n"))
    return [s.strip() for s in statements if s.strip()]


def test_spark_runs_the_spark_views_and_gets_weir_querys_rows(tables, tmp_path):
    job, states = tables
    statements, wanted = [], []
    for state, data in states.items():
        kinds = column_kinds(job, data)
        statements += views(job, data, "spark")
        for view in VIEWS:
            wanted.append((state, view, len(statements), weir_rows(job, data, kinds[view], view)))
            statements.append(select("spark", kinds[view], view))
    results = spark_sql(statements, tmp_path)
    for state, view, index, want in wanted:
        assert want, (state, view)
        assert normalized(results[index]) == want, f"Spark's {view} differs ({state})"


def test_trino_runs_the_trino_views_and_gets_weir_querys_rows(tables, trino):
    job, states = tables
    for state, data in states.items():
        kinds = column_kinds(job, data)
        setup = views(job, data, "trino")
        for statement in setup:
            trino.run(statement)
        for view in VIEWS:
            want = weir_rows(job, data, kinds[view], view)
            assert want, (state, view)
            got = normalized(trino.run(select("trino", kinds[view], view)))
            assert got == want, f"Trino's {view} differs ({state})"
        # The next state registers tables of the same names.
        for name in re.findall(r"table_name => '([^']+)'", ";".join(setup)):
            trino.run(f"CALL delta.system.unregister_table('weir', '{name}')")


def clickhouse(sql):
    import chdb

    result = chdb.query(f"{sql} SETTINGS output_format_json_quote_64bit_integers = 0",
                        "JSONCompact")
    return json.loads(result.bytes())["data"]


def test_clickhouse_reads_raw_and_merges_page_views(tables, monkeypatch):
    """chdb has no dialect of its own in `weir views`; it reads each tier's
    Delta table (after a complete move no row is in two tiers) and merges the
    partials with ClickHouse's own functions."""
    job, states = tables
    data = states["maintained"]
    kinds = column_kinds(job, data)
    # clickhouse-local reads only files under its user_files_path, the working
    # directory; its Delta reader takes absolute paths only.
    monkeypatch.chdir("/")

    def tiers(table):
        return " UNION ALL ".join(f"SELECT * FROM deltaLakeLocal('{data}/{tier}/clickstream/{table}')"
                                  for tier in ("hot", "warm", "cold"))

    got = normalized(clickhouse(select("clickhouse", kinds["raw"], f"({tiers('raw')})")))
    assert got == weir_rows(job, data, kinds["raw"], "raw") and got

    merged = (f"(SELECT window_start, window_end, page, country, sum(views) AS views, "
              f"toInt64(length(arrayDistinct(arrayFlatten(groupArray(visitors__distinct))))) "
              f"AS visitors FROM ({tiers('page_views')}) "
              f"GROUP BY window_start, window_end, page, country)")
    got = normalized(clickhouse(select("clickhouse", kinds["page_views"], merged)))
    assert got == weir_rows(job, data, kinds["page_views"], "page_views") and got
