"""The recording rules and the alert of docs/watching.md, run by promtool (Prometheus's own rule tester) on the series
the API exposes after real traffic: Prometheus's PSI across replicas equals the API's, and the alert fires for the
input that drifted and for no other.

promtool comes out of Debian's prometheus package, unpacked without installing it (.ci/run; PROMTOOL names it)."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import webtest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris

import api
from tabserve.settings import ApiSettings
from tests.support import PASSWORD, ROOT, USERNAME, require

PROMTOOL = os.environ.get("PROMTOOL") or shutil.which("promtool") or str(
    Path.home() / ".cache" / "tabserve" / "promtool" / "usr" / "bin" / "promtool")
MINUTES = 60  # the series grow linearly over an hour, one sample a minute
SCALE = 10  # every count times ten, so the hour holds the alert's 500 values; shares, and so the PSI, are unchanged


def documented_rules():
    """The rule group of docs/watching.md, as written there."""
    text = (ROOT / "docs" / "watching.md").read_text()
    block = next(block for block in re.findall(r"```yaml\n(.*?)```", text, re.S) if "tabserve-drift" in block)
    return yaml.safe_load(block)


def exposed_after_traffic(model_path):
    """(the API's /metrics samples, its monitoring report) after iris's flowers, then the same flowers with the petal
    width in inches."""
    client = webtest.TestApp(api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=model_path,
                                                        drift_min_count=100)))
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    rows = load_iris().data.tolist()
    client.post_json("/api/v1.0/predict", {"instances": rows + [[a, b, c, round(d / 2.54, 2)] for a, b, c, d in rows]})
    report = client.get("/api/v1.0/monitoring").json  # flushes this worker's counts into the counters
    families = text_string_to_metric_families(client.get("/metrics").text)
    samples = [sample for family in families for sample in family.samples
               if sample.name in ("tabserve_api_drift_input_values_total", "tabserve_model_input_reference_share")]
    return samples, report


def series(sample):
    labels = ",".join(f'{name}="{value}"' for name, value in sorted(sample.labels.items()))
    if sample.name.endswith("_total"):  # a counter from 0 to its count times SCALE over the hour
        values = f"0+{SCALE * sample.value / MINUTES}x{MINUTES}"
    else:
        values = f"{sample.value}x{MINUTES}"
    return {"series": f"{sample.name}{{{labels}}}", "values": values}


def test_the_documented_promql_gives_the_apis_psi_and_alerts_on_the_drifted_input(model_path, tmp_path):
    require(Path(PROMTOOL).exists(), f"promtool is not at {PROMTOOL} (.ci/run unpacks it from Debian's package)")
    samples, report = exposed_after_traffic(model_path)
    version = report["model"]["version"]
    drifted = [name for name, judged in report["inputs"].items() if judged["psi"] > 0.25]
    assert drifted == ["petal_width"]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(documented_rules()))
    psi_checks = [{"expr": f'abs(tabserve:drift_input_psi:1h{{input="{name}"}} - {judged["psi"]}) < bool 0.0001',
                   "eval_time": f"{MINUTES}m",
                   "exp_samples": [{"labels": f'{{input="{name}", version="{version}"}}', "value": 1}]}
                  for name, judged in report["inputs"].items()]
    alert = {"eval_time": f"{MINUTES}m", "alertname": "ModelInputDrifted",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "version": version, "input": name},
                             "exp_annotations": {"summary": f"{name} has drifted from training (version {version})"}}
                            for name in drifted]}
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m",
             "tests": [{"interval": "1m", "input_series": [series(sample) for sample in samples],
                        "promql_expr_test": psi_checks, "alert_rule_test": [alert]}]}
    (tmp_path / "tests.yml").write_text(json.dumps(tests))
    result = subprocess.run([PROMTOOL, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_documented_rules_are_valid_for_prometheus(tmp_path):
    require(Path(PROMTOOL).exists(), f"promtool is not at {PROMTOOL} (.ci/run unpacks it from Debian's package)")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(documented_rules()))
    result = subprocess.run([PROMTOOL, "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS: 3 rules found" in result.stdout, result.stdout + result.stderr

