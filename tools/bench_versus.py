"""This tree's API beside a base commit's, in the same run (make bench-versus BASE=<commit>):

    python -m tools.bench_versus --base 509470e          # 3 interleaved rounds of 5 s per endpoint, medians
    python -m tools.bench_versus --base HEAD --duration 1 --rounds 1 --cold-starts 1   # a smoke run (test_bench.py)
    python -m tools.bench_versus --base 7f4b846 --repository   # this tree serving a model repository's version
    python -m tools.bench_versus --base HEAD --env PREDICTION_LOG=stdout   # the cost of a setting, same run

Each tree (the base unpacked with `git archive`) trains its own model with its own train.py (same dataset, algorithm
and seed) and serves it as the image does (serve.py, 2 workers); every URL is on 127.0.0.1. It prints, side by side:
the cold start (serve.py start to the first 200 from /readyz), the memory of all the server's processes after
warm-up, and requests/s and p99 latency from wrk (16 connections) for GET /api/v1.0, its explain, a batch of 100 rows
and /v2 with one row, the two trees' runs interleaved so that a drift of the machine hits both alike.
Needs wrk and git.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support import FLOWERS, PASSWORD, ROOT, USERNAME, Server, query, wait_ready
from tools.bench import stop
from tools.bench_web import unpack
from tools.measure import batch, post_script, v2_request, wrk

DEFAULT_BASE = "509470e"  # the last commit before the package (issue 27): the iris service as it was
CONNECTIONS = 16


def train(tree, folder, args, repository=False):
    """The tree's own train.py on the chosen table; the artifact's path, or the repository it was published in."""
    output = Path(folder) / ("repository" if repository else f"{tree.name}.skops")
    command = [sys.executable, "train.py", "--dataset", args.dataset, "--model", args.model,
               "--publish" if repository else "--output", str(output)]
    subprocess.run(command, cwd=tree, check=True, capture_output=True)
    return output


def start(tree, model_path, settings=()):
    """The tree's API under its serve.py, as the image runs it, with these (NAME, value) settings; (server, seconds to
    ready). Its output goes to a file, as a container's does."""
    env = {"API_USERNAME": USERNAME, "API_PASSWORD": PASSWORD, "LOG_LEVEL": "WARNING",
           "MODEL_REPOSITORY" if model_path.is_dir() else "MODEL_PATH": str(model_path), **dict(settings)}
    started = time.perf_counter()
    server = Server("api", env, lambda port: ["env", "-C", str(tree), sys.executable, "serve.py", "api"])
    wait_ready(server.url + "/readyz")
    return server, time.perf_counter() - started


def cold_start(tree, model_path, repeats, settings=()):
    """The median seconds from start to ready over a few starts."""
    seconds = []
    for _ in range(repeats):
        server, ready = start(tree, model_path, settings)
        seconds.append(ready)
        stop([server])
    return statistics.median(seconds)


def cases(card_name, folder):
    """(name, path, wrk script) of each endpoint measured."""
    rows = [FLOWERS["setosa"]]
    body, headers = v2_request(rows, binary=False)
    return [("GET /api/v1.0", f"/api/v1.0?{query(FLOWERS['setosa'])}", None),
            ("GET /api/v1.0/explain", f"/api/v1.0/explain?{query(FLOWERS['setosa'])}", None),
            ("POST /api/v1.0/predict, 100 rows", "/api/v1.0/predict", post_script(batch(100), folder)),
            ("POST /v2 infer, 1 row", f"/v2/models/{card_name}/infer", post_script(body, folder, headers))]


def measure(servers, endpoints, args):
    """{(tree, case): [wrk results]}, every case of every tree once a round, the trees alternating."""
    results = {}
    for _ in range(args.rounds):
        for name, path, script in endpoints:
            for tree, server in servers.items():
                result = wrk(server.url + path, CONNECTIONS, args.duration, script)
                results.setdefault((tree, name), []).append(result)
    return results


def median(results, key):
    return statistics.median(result[key] for result in results)


def report(figures, results, endpoints, args):
    base, this = list(figures)
    print(f"\n{args.dataset}, {args.model}; serve.py with 2 workers; wrk {CONNECTIONS} connections, {args.rounds} "
          f"interleaved rounds of {args.duration} s, medians\n")
    print(f"| figure | {base} | {this} | this / base |\n| --- | ---: | ---: | ---: |")
    for label, key, unit in (("cold start", "cold", "s"), ("memory after warm-up, all processes", "rss", "MiB")):
        a, b = figures[base][key], figures[this][key]
        print(f"| {label} | {a:.2f} {unit} | {b:.2f} {unit} | {b / a:.0%} |")
    for name, _, _ in endpoints:
        a, b = results[(base, name)], results[(this, name)]
        failed = sum(r["failures"] for r in a + b)
        print(f"| {name}: req/s | {median(a, 'rps'):,.0f} | {median(b, 'rps'):,.0f} | "
              f"{median(b, 'rps') / median(a, 'rps'):.0%} |")
        print(f"| {name}: p99 | {median(a, 'p99'):.2f} ms | {median(b, 'p99'):.2f} ms | "
              f"{median(b, 'p99') / median(a, 'p99'):.0%} |" + (f" {failed} failed" if failed else ""))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"the commit to compare with (default: {DEFAULT_BASE})")
    parser.add_argument("--dataset", default="iris", help="the bundled table both trees train on (default: iris)")
    parser.add_argument("--model", default="logistic_regression", help="the algorithm (default: logistic_regression)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default: 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported (default: 3)")
    parser.add_argument("--repository", action="store_true",
                        help="this tree serves the model published into a model repository (MODEL_REPOSITORY)")
    parser.add_argument("--cold-starts", type=int, default=3, help="starts timed per tree; the median (default: 3)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of this tree's API only (repeatable), such as PREDICTION_LOG=stdout")
    args = parser.parse_args(argv)
    if not all("=" in setting for setting in args.env):
        parser.error("--env takes NAME=VALUE")
    args.env = [tuple(setting.split("=", 1)) for setting in args.env]
    for tool in ("wrk", "git"):
        if not shutil.which(tool):
            sys.exit(f"bench_versus.py: {tool} is not installed")
    return args


def main(argv=None):
    args = parse_args(argv)
    stack, figures, servers = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="tabserve-bench-versus-") as folder:
        (Path(folder) / "base").mkdir()
        this = ", ".join(["this tree", *(["repository"] if args.repository else []),
                          *(f"{name}={value}" for name, value in args.env)])
        trees = {f"at {args.base}": unpack(args.base, Path(folder) / "base"), this: ROOT}
        try:
            for label, tree in trees.items():
                model_path = train(tree, folder, args, repository=args.repository and tree == ROOT)
                settings = args.env if tree == ROOT else ()
                figures[label] = {"cold": cold_start(tree, model_path, args.cold_starts, settings)}
                server, _ = start(tree, model_path, settings)
                stack.append(server)
                servers[label] = server
            endpoints = cases(f"{args.dataset.replace('_', '-')}-classifier", folder)
            for _, path, script in endpoints:  # warm-up, then the memory of each server
                for server in servers.values():
                    wrk(server.url + path, CONNECTIONS, 1, script)
            for label, server in servers.items():
                figures[label]["rss"] = sum(server.rss_mib())
            results = measure(servers, endpoints, args)
        finally:
            stop(stack)
    report(figures, results, endpoints, args)


if __name__ == "__main__":
    main()
