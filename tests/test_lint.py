"""ruff, with the rules in pyproject.toml, over everything in the repository that is Python: the scripts, the package,
the tests and the tools. A finding fails the suite, so CI cannot land one."""

import subprocess
import sys

from tests.support import ROOT


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_checks_the_rules_the_project_chose():
    """The rule set is the project's (pyproject.toml), not ruff's default: E, W, F, I, B, UP and SIM at 120 columns."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--show-settings", "api.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    settings = result.stdout
    assert "linter.line_length = 120" in settings
    enabled = settings.split("linter.rules.enabled = [", 1)[1].split("]", 1)[0]
    for code in ("E501", "W291", "F401", "I001", "B905", "UP017", "SIM115"):  # one rule of each family
        assert f"({code})" in enabled, code
