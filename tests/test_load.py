"""A smoke run of tools/load.py: a few thousand mixed requests through the production server, every answer checked, no 5xx."""

import subprocess
import sys

from tests.support import ROOT


def test_load_script_meets_its_targets_on_a_short_run(model_path):
    result = subprocess.run([sys.executable, "-m", "tools.load", "--requests", "3000", "--model-path", str(model_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "wrong answers: 0" in result.stdout and "connection errors: 0" in result.stdout
    assert "status codes: 200:" in result.stdout and "400:" in result.stdout and "401:" in result.stdout
