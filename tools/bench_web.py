"""What the result page costs the web app, beside the page before explanations (make bench-web):

    python -m tools.bench_web                                    # 5 interleaved rounds of 5 s, medians
    python -m tools.bench_web --base HEAD --duration 1 --rounds 1  # a smoke run (test_bench.py)

The web app of this tree and of BASE (by default the commit before the page had its "Why", unpacked with
`git archive`) each run as the image runs it (serve.py, one worker), pinned to core 0; the API of this tree, which
answers both, and wrk (16 connections) share core 1. The web app then keeps core 0 busy, and the CPU time of its
processes (utime + stime in /proc) per page answered is its own cost, not the API's: with everything on both cores,
the slower explain endpoint left the web app idle between pages, and its CPU per page rose with the idling (and
moved by 10 % from run to run). Needs 2 cores, git, taskset, wrk and a trained model.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support import FLOWERS, PASSWORD, ROOT, USERNAME, Server, query, wait_ready
from tools.bench import stop
from tools.measure import wrk

BEFORE_WHY = "8df6e4b"  # "Your own model": the last commit whose result page had no "Why"
WEB_CORE, LOAD_CORE = 0, 1
TARGET = 1.10  # the page with its "Why" costs at most 10 % more than the page before
PAGE = f"/prediction?{query(FLOWERS['setosa'])}"


def unpack(revision, folder):
    """The files of revision (a commit of this repository) in folder; SystemExit when git does not have it."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision], capture_output=True)
    if archive.returncode != 0:
        sys.exit(f"bench_web.py: git cannot unpack {revision!r} (a shallow clone?): {archive.stderr.decode()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return Path(folder)


def start_web(tree, api_url, stack):
    """The web app of this tree, on the web's core alone, learnt its form from the API."""
    env = {"API_USERNAME": USERNAME, "API_PASSWORD": PASSWORD, "API_URL": api_url, "WORKERS": "1",
           "LOG_LEVEL": "INFO"}
    command = ["env", "-C", str(tree), "taskset", "-c", str(WEB_CORE), sys.executable, "serve.py", "web"]
    stack.append(server := Server("web", env, lambda port: command))
    wait_ready(server.url + "/readyz")
    return server


def cpu_seconds(server):
    """The user and system CPU time of the server's processes (the main one and its workers) so far."""
    ticks = 0
    for pid in [server.process.pid, *server.workers()]:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime and stime: fields 14 and 15 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def measure_once(server, duration):
    before = cpu_seconds(server)
    result = wrk(server.url + PAGE, 16, duration, auth=False)
    pages = result["rps"] * duration
    return {**result, "cpu_us": (cpu_seconds(server) - before) / pages * 1e6}


def measure(webs, args):
    """{name: (median pages/s, median CPU µs a page, failed requests)}, the webs' runs interleaved."""
    runs = {name: [] for name in webs}
    for _ in range(args.rounds):
        for name, server in webs.items():
            runs[name].append(measure_once(server, args.duration))
    return {name: (statistics.median(r["rps"] for r in results), statistics.median(r["cpu_us"] for r in results),
                   sum(r["failures"] for r in results)) for name, results in runs.items()}


def report(results, args):
    print(f"\nweb app on core {WEB_CORE}, the API and wrk (16 connections) on core {LOAD_CORE}; {args.rounds} "
          f"interleaved rounds of {args.duration} s, medians; GET {PAGE}\n")
    print("| page | pages/s | web CPU a page | failed |\n| --- | ---: | ---: | ---: |")
    for name, (rps, cpu_us, failures) in results.items():
        print(f"| {name} | {rps:,.0f} | {cpu_us:.0f} µs | {failures} |")
    (_, before, _), (_, now, _) = results.values()
    print("\n| target | measured | met |\n| --- | ---: | --- |")
    print(f"| the page with its \"Why\" costs the web app ≤ {TARGET:.0%} of the page before | {now / before:.0%} | "
          f"{'yes' if now / before <= TARGET else '**no**'} |")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=BEFORE_WHY, help=f"the commit to compare with (default: {BEFORE_WHY})")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default: 5)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported (default: 5)")
    parser.add_argument("--model-path", type=Path, default=ROOT / "model" / "iris.skops",
                        help="the artifact the API serves (default: model/iris.skops, written by python train.py)")
    args = parser.parse_args(argv)
    for tool in ("wrk", "taskset", "git"):
        if not shutil.which(tool):
            sys.exit(f"bench_web.py: {tool} is not installed")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench_web.py: needs 2 cores, one for the web app and one for the API and the load")
    if not args.model_path.exists():
        sys.exit(f"bench_web.py: no model at {args.model_path}: run python train.py first")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.sched_setaffinity(0, {LOAD_CORE})  # the API and wrk, started from here, run on this core too
    stack = []
    with tempfile.TemporaryDirectory(prefix="tabserve-bench-web-") as folder:
        try:
            base = unpack(args.base, folder)
            stack.append(api := Server("api", {"API_USERNAME": USERNAME, "API_PASSWORD": PASSWORD, "WORKERS": "1",
                                               "MODEL_PATH": str(args.model_path), "LOG_LEVEL": "INFO"}))
            wait_ready(api.url + "/readyz")
            webs = {f"the page at {args.base}": start_web(base, api.url, stack),
                    "this tree's page, with its \"Why\"": start_web(ROOT, api.url, stack)}
            results = measure(webs, args)
        finally:
            stop(stack)
    report(results, args)


if __name__ == "__main__":
    main()
