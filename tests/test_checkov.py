"""checkov, the infrastructure-as-code scanner, over the repository: the Dockerfiles, the Kubernetes manifests (as
written and through kustomize) and openapi.json pass every check, but the two that .checkov.yaml skips with its
reasons (and those skipped in place with a checkov:skip annotation)."""

import subprocess

from tests.support import ROOT, require

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


def test_checkov_finds_no_failed_check():
    require(CHECKOV.exists(), "checkov is not installed (make .venv-checkov/installed, which make test runs)")
    result = subprocess.run([str(CHECKOV), "--config-file", ".checkov.yaml"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    summary = [line for line in result.stdout.splitlines() if "checks:" in line]
    assert result.returncode == 0 and summary, result.stdout[-4000:] + result.stderr[-2000:]
    assert all("Failed checks: 0," in line for line in summary), summary
    scanned = {line.split()[0] for line in result.stdout.splitlines() if line.endswith("scan results:")}
    assert {"kubernetes", "dockerfile", "openapi", "kustomize"} <= scanned, scanned
