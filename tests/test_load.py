"""A smoke run of tools/load.py: a few thousand mixed requests through the production server, every answer checked,
no 5xx."""

import subprocess
import sys

import pytest

import train
from tests.support import ROOT


@pytest.fixture(scope="module")
def forest_path(tmp_path_factory):
    """A random forest: served with adaptive batching (BATCHING=auto), so concurrent requests share model calls."""
    path = tmp_path_factory.mktemp("forest") / "forest.skops"
    train.main(["--model", "random_forest", "--output", str(path)])
    return path


@pytest.mark.parametrize("artifact", ["model_path", "forest_path"])
def test_load_script_meets_its_targets_on_a_short_run(request, artifact):
    model_path = request.getfixturevalue(artifact)
    result = subprocess.run([sys.executable, "-m", "tools.load", "--requests", "3000", "--model-path", str(model_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "wrong answers: 0" in result.stdout and "connection errors: 0" in result.stdout
    assert "status codes: 200:" in result.stdout and "400:" in result.stdout and "401:" in result.stdout
