"""The deployment files, checked by the tools that can run here (no container
engine, no cluster, no init system runs on these machines): the Kubernetes
manifests against the Kubernetes API's JSON schemas (kubernetes-validate,
strict), the Dockerfile by a linter (dockerfilelint), the systemd unit by
`systemd-analyze verify`; and what ties them to weir: the job spec they ship
parses, probes hit /healthz on the metrics port, the grace period outlasts
the shutdown timeout, every secret they read exists."""

import os
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT, WEIR, weir

MANIFESTS = ROOT / "deploy" / "kubernetes" / "weir.yaml"
VENV = pathlib.Path(os.environ.get("WEIR_VENV", pathlib.Path.home() / ".cache" / "weir-venv"))
DOCKERFILELINT = (pathlib.Path(os.environ.get("WEIR_NPM", pathlib.Path.home() / ".cache" / "weir-npm"))
                  / "node_modules" / ".bin" / "dockerfilelint")


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*map(str, args)], capture_output=True, text=True, timeout=120)


def test_manifests_validate_strictly_against_the_kubernetes_api():
    result = run(VENV / "bin" / "kubernetes-validate", "--strict", MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = [line.split("resource ")[1].split("/")[0] for line in result.stdout.splitlines()
             if "passed for resource" in line]
    assert kinds == ["configmap", "secret", "deployment", "service"], result.stdout


def test_manifests_hold_together_with_weir(tmp_path):
    docs = {d["kind"]: d for d in yaml.safe_load_all(MANIFESTS.read_text())}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    # The shipped job spec is one weir accepts.
    for name, spec in docs["ConfigMap"]["data"].items():
        (tmp_path / name).write_text(spec)
        weir("views", "--job", tmp_path / name, "--dialect", "duckdb")
    # Probes reach /healthz where weir serves it, on all interfaces.
    port = args[args.index("--metrics-addr") + 1]
    assert port == "0.0.0.0:9898", args
    (named,) = container["ports"]
    assert named["containerPort"] == 9898
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": named["name"]}
    # SIGTERM commits what is in flight within --shutdown-timeout: the pod waits longer.
    timeout = args[args.index("--shutdown-timeout") + 1]
    assert timeout.endswith("s") and pod["terminationGracePeriodSeconds"] > int(timeout[:-1])
    # Every secret read exists, and the spec's ${VAR}s are all set.
    secret = docs["Secret"]
    env = {e["name"]: e for e in container["env"]}
    for e in env.values():
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    wanted = set(re.findall(r"\$\{(\w+)\}", "".join(docs["ConfigMap"]["data"].values())))
    assert wanted <= set(env), wanted - set(env)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]


@pytest.mark.skipif(not DOCKERFILELINT.exists(), reason="dockerfilelint not installed (no npm)")
def test_dockerfile_lints_clean_and_runs_weir_as_a_user():
    result = run(DOCKERFILELINT, ROOT / "Dockerfile")
    assert result.returncode == 0 and "Issues: None found" in result.stdout, result.stdout
    text = (ROOT / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]
    assert "USER 10001" in final and "COPY jobs /etc/weir/jobs" in final, final
    assert '"--metrics-addr", "0.0.0.0:9898"' in final, final


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path):
    unit = (ROOT / "deploy" / "systemd" / "weir.service").read_text()
    assert "ExecStart=/usr/local/bin/weir run /etc/weir/jobs" in unit
    assert "RestartPreventExitStatus=2" in unit
    # As installed: the binary where the unit expects it (here, the one under test).
    local = tmp_path / "weir.service"
    local.write_text(unit.replace("/usr/local/bin/weir", str(pathlib.Path(WEIR).resolve())))
    result = run("systemd-analyze", "verify", local)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
