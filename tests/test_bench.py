"""A smoke run of tools/bench.py: it starts the services as the containers do, loads them with wrk, prints its tables.

Not a timed test: the figures are printed, not asserted; only that every case ran and every request succeeded.
"""

import shutil
import subprocess
import sys

from tests.support import ROOT, require

CASES = ("hello world, gunicorn sync, 16 connections", "hello world, granian, 16 connections",
         "hello world, gunicorn sync, 1 connection", "hello world, granian, 1 connection",
         "GET /api/v1.0, gunicorn gevent, 16 connections", "GET /api/v1.0, 16 connections",
         "GET /api/v1.0, 1 connection", "GET /api/v1.0/explain, 16 connections",
         "GET /api/v1.0 with API_USERS_FILE, 16 connections",
         "POST /api/v1.0/predict, 10000 rows, 2 connections",
         "web GET /prediction, 16 connections")


def test_bench_runs_and_prints_its_table(model_path):
    require(shutil.which("wrk"), "wrk is not installed (apt-get install wrk)")
    result = subprocess.run([sys.executable, "-m", "tools.bench", "--duration", "1", "--rounds", "1", "--no-docker",
                             "--no-mlserver", "--model-path", str(model_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    cases = {line.split(" | ")[0][2:]: line for line in table}
    for case in CASES:
        assert case in cases, result.stdout
    measured = [line for line in table if line.count("|") == 8 and not line.startswith(("| case", "| ---"))]
    assert len(measured) >= 10
    for line in measured:
        assert line.rstrip(" |").endswith("| 0"), f"failed requests in: {line}"  # the 'failed' column
        assert "nan" not in line, line  # p99.9 among them, from wrk's Lua hook
    # The peers side by side: the hello worlds and this API's server, at 1 and 16 connections, with p99.9.
    assert cases["figure"].split(" | ")[1:] == ["hello world (gunicorn sync, 2 workers)",
                                                "hello world (granian, 2 workers)", "tabserve, serve.py |"]
    for row in ("p99 at 1 connection", "p99.9 at 1 connection", "p99.9 at 16 connections",
                "cold start, to the first answer", "memory of the largest worker after the load, RSS (PSS)"):
        assert "–" not in cases[row] and "nan" not in cases[row], cases[row]


def test_the_batching_bench_runs_and_prints_its_targets():
    require(shutil.which("wrk"), "wrk is not installed (apt-get install wrk)")
    result = subprocess.run([sys.executable, "-m", "tools.bench_batching", "--duration", "1", "--rounds", "1",
                             "--no-mlserver"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for case in ("this API, BATCHING=auto, 16 connections", "this API, BATCHING=off, 1 connection",
                 "forest, 1 connection: at least the unbatched rate"):
        assert f"| {case} |" in result.stdout, result.stdout
    measured = [line for line in result.stdout.splitlines() if line.startswith("| this API")]
    assert len(measured) == 5 and all(line.rstrip(" |").endswith("| 0") for line in measured)


def test_the_web_page_bench_runs_and_prints_its_target(model_path):
    """Against HEAD, which every clone has (the default base, the commit before the page's "Why", may be missing
    from a shallow one)."""
    require(shutil.which("wrk"), "wrk is not installed (apt-get install wrk)")
    result = subprocess.run([sys.executable, "-m", "tools.bench_web", "--base", "HEAD", "--duration", "1", "--rounds",
                             "1", "--model-path", str(model_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    pages = [line for line in result.stdout.splitlines() if line.startswith(("| the page at HEAD", "| this tree"))]
    assert len(pages) == 2 and all(line.rstrip(" |").endswith("| 0") for line in pages), result.stdout
    assert "| the page with its \"Why\" costs the web app ≤ 110% of the page before |" in result.stdout


def test_the_bench_beside_a_base_commit_runs_and_prints_both_columns():
    """Against HEAD, which every clone has; the figures are printed, not asserted, but every request must succeed."""
    require(shutil.which("wrk"), "wrk is not installed (apt-get install wrk)")
    result = subprocess.run([sys.executable, "-m", "tools.bench_versus", "--base", "HEAD", "--duration", "1",
                             "--rounds", "1", "--cold-starts", "1"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| figure | at HEAD | this tree | this / base |"
    for figure in ("cold start", "GET /api/v1.0: req/s", "GET /api/v1.0/explain: p99", "POST /v2 infer, 1 row: req/s"):
        assert any(row.startswith(f"| {figure} |") for row in rows), result.stdout
    assert "failed" not in result.stdout


def test_the_bench_of_several_models_runs_and_reads_each_against_the_default():
    require(shutil.which("wrk"), "wrk is not installed (apt-get install wrk)")
    result = subprocess.run([sys.executable, "-m", "tools.bench_models", "--duration", "1", "--rounds", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.count("|") == 8 and "---" not in line][1:]
    assert len(rows) == 10, result.stdout  # five models, two endpoints each
    assert any(row.startswith("| diabetes, ridge (a linear regressor) | numpy | GET /api/v1.0 |") for row in rows)
    assert all(row.rstrip(" |").endswith("| 0") for row in rows), result.stdout
    assert "| the linear regressor at least as fast as the linear classifier on the same inputs" in result.stdout
