"""The CLI's contract: bad specs and bad usage exit 2 with a message that names
the file and the key; nothing connects anywhere first."""

import subprocess

from conftest import ROOT, WEIR, free_port


def run(*args):
    return subprocess.run([WEIR, *map(str, args)], capture_output=True, text=True, timeout=60)


def bad_spec(tmp_path, old: str, new: str):
    """The example job with one edit, run against an address nothing listens on."""
    spec = tmp_path / "bad.toml"
    text = (ROOT / "jobs/clickstream.toml").read_text()
    assert old in text
    spec.write_text(text.replace(old, new))
    return spec, run("run", spec, "--brokers", "127.0.0.1:1")


def test_unknown_key_exits_2_naming_file_and_key(tmp_path):
    spec, result = bad_spec(tmp_path, "[batching]", "[batching]\nmax_evnts = 5")
    assert result.returncode == 2
    assert str(spec) in result.stderr and "max_evnts" in result.stderr


def test_impossible_value_exits_2(tmp_path):
    spec, result = bad_spec(tmp_path, "max_wait_ms = 250", "max_wait_ms = 0")
    assert result.returncode == 2
    assert str(spec) in result.stderr and "batching.max_wait_ms" in result.stderr


def test_bad_start_from_and_until_exit_2_saying_why(tmp_path):
    spec, result = bad_spec(tmp_path, 'start_from = "earliest"', 'start_from = "offsets:0=x"')
    assert result.returncode == 2
    assert str(spec) in result.stderr and "source.start_from" in result.stderr
    assert "`offsets:0=x`" in result.stderr, result.stderr
    for until, why in (("yesterday", "neither `caught-up`"),
                       ("2020-01-01T00:00:00Z", "is in the past")):
        result = run("run", spec, "--brokers", "127.0.0.1:1", "--until", until)
        assert result.returncode == 2 and why in result.stderr, result.stderr


def test_run_refuses_the_embedded_broker():
    result = run("run", ROOT / "jobs/clickstream.toml")
    assert result.returncode == 2
    assert "weir demo --job" in result.stderr


def test_missing_job_file_exits_2(tmp_path):
    result = run("run", tmp_path / "nope.toml")
    assert result.returncode == 2
    assert "nope.toml" in result.stderr


def test_every_command_has_help():
    for command in ([], ["demo"], ["run"], ["produce"], ["query"], ["views"], ["maintain"],
                    ["reprocess"], ["verify"], ["status"], ["bench"], ["tune"]):
        result = run(*command, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout


def test_status_needs_a_job_or_a_process_and_names_an_unreachable_one():
    result = run("status")
    assert result.returncode == 2 and "--job" in result.stderr, result.stderr
    port = free_port()
    result = run("status", "--from", f"http://127.0.0.1:{port}")
    assert result.returncode == 1, result.stderr
    assert f"asking http://127.0.0.1:{port}/api/status for the status" in result.stderr


def test_bad_reprocess_requests_exit_2_saying_why(tmp_path):
    spec = ROOT / "jobs/clickstream.toml"
    for args, message in (
            (["--from", "2026-11-20", "--to", "2026-11-19"], "is after --to"),
            (["--from", "2026-11-31", "--to", "2026-12-01"], "--from"),
            (["--from", "2026-11-19", "--to", "2026-11-19", "--output", "nope"],
             "has no output `nope`; its outputs are: page_views, revenue, purchases"),
            (["--from", "2026-11-19", "--to", "2026-11-19", "--memory-mib", "8"],
             "invalid value '8' for '--memory-mib <MIB>': 8 is not in 16..")):
        for command in ("reprocess", "verify"):
            result = run(command, "--job", spec, "--data", tmp_path, *args)
            assert result.returncode == 2 and message in result.stderr, result.stderr


def test_json_logs_are_one_object_per_line(tmp_path):
    import json

    result = run("--log-format", "json", "demo", "--seconds", 1, "--rate", 200, "--data",
                 tmp_path / "data")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert lines and all("level" in line and "fields" in line for line in lines)


def test_query_before_the_job_ran_says_so(tmp_path):
    spec = ROOT / "jobs/clickstream.toml"
    result = run("query", "--job", spec, "--data", tmp_path, "SELECT 1")
    assert result.returncode == 1 and "run the job first" in result.stderr


def test_output_sql_that_does_not_plan_exits_2_before_connecting(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text((ROOT / "jobs/clickstream.toml").read_text()
                    + '\n[[outputs]]\nname = "broken"\nsql = "SELECT nope FROM batch"\n')
    result = run("run", spec, "--brokers", "127.0.0.1:1", "--data", tmp_path / "data")
    assert result.returncode == 2, result.stderr
    assert "outputs[3].sql" in result.stderr and "nope" in result.stderr
    assert not (tmp_path / "data").exists(), "nothing is created before the spec is valid"


def test_window_filter_that_does_not_plan_exits_2_before_connecting(tmp_path):
    spec, result = bad_spec(tmp_path, 'filter = "action = \'view\'"',
                            'filter = "no_such_field = 1"')
    assert result.returncode == 2, result.stderr
    assert "outputs[0].filter" in result.stderr and "no_such_field" in result.stderr


def test_output_names_that_collide_exit_2(tmp_path):
    """Names SQL engines cannot tell apart (by case) or that weir's own tables
    take (`<output>__partials`, `raw`) are refused, naming the key."""
    for name in ["PAGE_VIEWS", "Raw", "x__partials"]:
        spec = tmp_path / "bad.toml"
        spec.write_text((ROOT / "jobs/clickstream.toml").read_text()
                        + f'\n[[outputs]]\nname = "{name}"\nsql = "SELECT 1 AS one FROM batch"\n')
        result = run("run", spec, "--brokers", "127.0.0.1:1")
        assert result.returncode == 2, (name, result.stderr)
        assert "outputs[3].name" in result.stderr and name in result.stderr, result.stderr
