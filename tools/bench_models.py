"""Several models of this tree side by side, in the same run (make bench-models): the default classifier beside
regressors and a table with categories, so that a model's cost is read against the default's.

    python -m tools.bench_models                                  # 3 interleaved rounds of 5 s per endpoint, medians
    python -m tools.bench_models --duration 1 --rounds 1          # a smoke run (test_bench.py)

Each model is trained by train.py and served as the image serves it (serve.py, 2 workers); wrk (16 connections)
asks each GET /api/v1.0 and a batch of 100 rows with the card's own example rows; every URL is on 127.0.0.1. It
prints req/s and p99 of each beside the default classifier's, and its engine (a NumPy fast path or scikit-learn).
Needs wrk.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
from sklearn.datasets import load_diabetes

from tests.support import write_homes_csv
from tools.bench import stop
from tools.bench_versus import CONNECTIONS, ROOT, start
from tools.measure import post_script, wrk

# name -> train.py's arguments (the first is the one the others are read against)
DEFAULT = "iris, logistic_regression (the default classifier)"
SAME_INPUTS = "diabetes as two classes (above its median or not), logistic_regression"
LINEAR_REGRESSOR = "diabetes, ridge (a linear regressor)"
MODELS = {
    DEFAULT: ["--dataset", "iris"],
    SAME_INPUTS: ["--csv", "{diabetes_classes}", "--target", "progression"],
    LINEAR_REGRESSOR: ["--dataset", "diabetes"],
    "diabetes, random_forest": ["--dataset", "diabetes", "--model", "random_forest"],
    "homes CSV with a category, gradient_boosting": ["--csv", "{homes}", "--target", "Price (k€)", "--drop", "ID",
                                                     "--model", "gradient_boosting"],
}


def train(name, folder):
    """The artifact train.py writes for this model, and its card."""
    output = Path(folder) / f"model-{list(MODELS).index(name)}.skops"
    arguments = [argument.replace("{homes}", str(Path(folder) / "homes.csv")).replace(
        "{diabetes_classes}", str(Path(folder) / "diabetes-classes.csv")) for argument in MODELS[name]]
    subprocess.run([sys.executable, "train.py", *arguments, "--output", str(output)], cwd=ROOT, check=True,
                   capture_output=True)
    return output, json.loads(output.with_suffix(".json").read_text())


def write_diabetes_classes(path):
    """Diabetes with its target as two classes: the same ten inputs as the regressor, for a like-for-like figure."""
    data = load_diabetes(scaled=False)
    median = float(np.median(data.target))
    lines = [",".join([*data.feature_names, "progression"])]
    lines += [",".join([*(f"{value:g}" for value in row), "high" if target > median else "low"])
              for row, target in zip(data.data, data.target, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def endpoints(card, folder):
    """(label, path, wrk script) of each endpoint asked, with the card's example rows."""
    rows = list(card["examples"].values())
    batch = json.dumps({"instances": (rows * 100)[:100]})
    return [("GET /api/v1.0", "/api/v1.0?" + urllib.parse.urlencode(rows[0]), None),
            ("POST /api/v1.0/predict, 100 rows", "/api/v1.0/predict", post_script(batch, folder))]


def measure(servers, cases, args):
    """{(model, endpoint): [wrk results]}, the models' runs interleaved."""
    results = {}
    for _ in range(args.rounds):
        for model, server in servers.items():
            for label, path, script in cases[model]:
                results.setdefault((model, label), []).append(wrk(server.url + path, CONNECTIONS, args.duration,
                                                                  script))
    return results


def report(results, engines, args):
    default = DEFAULT
    print(f"\nserve.py with 2 workers; wrk {CONNECTIONS} connections, {args.rounds} interleaved rounds of "
          f"{args.duration} s, medians\n")
    print("| model | engine | endpoint | req/s | p99 | req/s / the default's | failed |\n"
          "| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for (model, label), runs in results.items():
        rps, p99 = statistics.median(r["rps"] for r in runs), statistics.median(r["p99"] for r in runs)
        base = statistics.median(r["rps"] for r in results[(default, label)])
        print(f"| {model} | {engines[model]} | {label} | {rps:,.0f} | {p99:.2f} ms | {rps / base:.0%} | "
              f"{sum(r['failures'] for r in runs)} |")
    regressor, classifier = (statistics.median(r["rps"] for r in results[(name, "GET /api/v1.0")])
                             for name in (LINEAR_REGRESSOR, SAME_INPUTS))
    print("\n| target | measured | met |\n| --- | ---: | --- |")
    met = "yes" if regressor >= classifier else "**no**"
    print(f"| the linear regressor at least as fast as the linear classifier on the same inputs (GET /api/v1.0) | "
          f"{regressor:,.0f} against {classifier:,.0f} req/s ({regressor / classifier:.0%}) | {met} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default: 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported (default: 3)")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        sys.exit("bench_models.py: wrk is not installed")
    stack, servers, cases, engines = [], {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="tabserve-bench-models-") as folder:
        write_homes_csv(Path(folder) / "homes.csv")
        write_diabetes_classes(Path(folder) / "diabetes-classes.csv")
        try:
            for name in MODELS:
                artifact, card = train(name, folder)
                server, _ = start(ROOT, artifact)
                stack.append(server)
                servers[name], cases[name] = server, endpoints(card, folder)
                engines[name] = json.loads(urllib.request.urlopen(server.url + "/readyz").read())["engine"]
            results = measure(servers, cases, args)
        finally:
            stop(stack)
    report(results, engines, args)


if __name__ == "__main__":
    main()
