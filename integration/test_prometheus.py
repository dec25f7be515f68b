"""The operator's files in deploy/, checked by the real tools: Debian's
promtool checks and unit-tests the alert rules and parses every query of the
Grafana dashboard; a real Prometheus server scrapes `weir run` on Apache
Kafka, evaluates the rules, and fires the lag alert when a fault plan slows
the sink."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

from conftest import ROOT, WEIR, free_port, spawn, weir, write_job

DEPLOY = ROOT / "deploy"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    not (PROMTOOL and PROMETHEUS), reason="Debian's prometheus package is not installed")


def promtool(*args, cwd=None) -> str:
    result = subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True,
                            cwd=cwd, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def weir_metric_names() -> set[str]:
    """Every metric weir registers (src/metrics.rs)."""
    return set(re.findall(r'"(weir_[a-z_]+)"', (ROOT / "src" / "metrics.rs").read_text()))


def test_rules_pass_promtool_and_every_dashboard_query_parses(tmp_path):
    out = promtool("check", "rules", DEPLOY / "prometheus" / "weir-rules.yml")
    assert "SUCCESS: 13 rules found" in out, out
    promtool("test", "rules", "weir-rules.test.yml", cwd=DEPLOY / "prometheus")
    promtool("check", "config", DEPLOY / "prometheus" / "prometheus.yml")

    dashboard = json.loads((DEPLOY / "grafana" / "weir.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 25, exprs
    # Each query as a recording rule, Grafana's variables filled in: promtool
    # parses them with Prometheus's own parser.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}",
         "expr": e.replace("$job", ".*").replace("$__rate_interval", "1m")}
        for i, e in enumerate(exprs)]}]}
    (tmp_path / "dashboard-rules.yml").write_text(json.dumps(rules))
    promtool("check", "rules", tmp_path / "dashboard-rules.yml")
    # And each metric they name is one weir serves.
    known = weir_metric_names()
    rule_text = (DEPLOY / "prometheus" / "weir-rules.yml").read_text()
    used = {re.sub(r"_(bucket|sum|count)$", "", name)
            for name in re.findall(r"\bweir_[a-z_]+", " ".join(exprs) + rule_text)}
    assert used <= known, used - known


def shortened(rules: str) -> str:
    """The rules with their windows cut to test scale: ranges 6 s a minute,
    `for` 2 s a minute."""
    rules = re.sub(r"\[(\d+)m\]", lambda m: f"[{int(m[1]) * 6}s]", rules)
    return re.sub(r"for: (\d+)m", lambda m: f"for: {int(m[1]) * 2}s", rules)


def firing(prometheus_port: int) -> list[dict]:
    url = f"http://127.0.0.1:{prometheus_port}/api/v1/alerts"
    alerts = json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["alerts"]
    return [a for a in alerts if a["state"] == "firing"]


def test_a_real_prometheus_fires_the_lag_alert_when_the_sink_is_slowed(broker, tmp_path):
    broker.create_topic("clicks", 3)
    job = write_job(tmp_path / "job.toml", broker, "clicks", tmp_path / "data")
    weir_port, prometheus_port = free_port(), free_port()
    config = tmp_path / "prometheus"
    config.mkdir()
    (config / "weir-rules.yml").write_text(
        shortened((DEPLOY / "prometheus" / "weir-rules.yml").read_text()))
    (config / "prometheus.yml").write_text(
        (DEPLOY / "prometheus" / "prometheus.yml").read_text()
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("127.0.0.1:9898", f"127.0.0.1:{weir_port}"))
    # Each of raw's commits stalls 1.5 s: about 130 events/s get through.
    slowed = {**os.environ, "WEIR_FAULTS": "sink.after_commit.raw@*:sleep=1500"}
    with open(tmp_path / "weir.log", "w") as weir_log, \
            open(tmp_path / "prometheus.log", "w") as prometheus_log:
        run = spawn([WEIR, "run", str(job), "--metrics-addr", f"127.0.0.1:{weir_port}"],
                    stdout=weir_log, stderr=subprocess.STDOUT, env=slowed)
        prometheus = spawn(
            [PROMETHEUS, f"--config.file={config / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=prometheus_log, stderr=subprocess.STDOUT)
        producer = spawn(
            [WEIR, "produce", "--job", str(job), "--brokers", broker.bootstrap, "--topic",
             "clicks", "--rate", "1500", "--seconds", "120", "--malformed-ratio", "0",
             "--duplicate-ratio", "0", "--late-ratio", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 150
            alerts = []
            while time.monotonic() < deadline:
                assert run.poll() is None, (tmp_path / "weir.log").read_text()[-2000:]
                try:
                    alerts = firing(prometheus_port)
                except OSError:
                    alerts = []  # Prometheus still starting
                if any(a["labels"]["alertname"] == "WeirLagGrowing" for a in alerts):
                    break
                time.sleep(2)
            lag = [a for a in alerts if a["labels"]["alertname"] == "WeirLagGrowing"]
            assert lag, (alerts, (tmp_path / "prometheus.log").read_text()[-2000:])
            # weir's own `job` label survives the scrape (honor_labels).
            assert lag[0]["labels"]["job"] == "clickstream", lag
            assert lag[0]["labels"]["severity"] == "warning", lag
            assert "consumer lag has grown" in lag[0]["annotations"]["summary"], lag
        finally:
            for proc in (producer, prometheus, run):
                proc.send_signal(signal.SIGTERM)
            for proc in (producer, prometheus, run):
                proc.wait(timeout=60)
