"""Benchmark the services the way the containers run them, and print a markdown table. From the repository root:

    python -m tools.bench                # about 4 minutes: 3 interleaved rounds of 5 s runs, medians reported
    python -m tools.bench --duration 1 --rounds 1 --no-docker     # a smoke run of a few seconds
    python -m tools.bench --docker       # also the API container: cold start, load through Docker's proxy, size

It starts the services as the images do (tests/support.py: the production server with the project's settings), on
free loopback ports, with each service's logging going to a file as it goes to Docker's log in a container. Load
comes from wrk (apt-get install wrk / brew install wrk). Every URL is on 127.0.0.1. Needs a trained model (python
train.py). A hello-world Bottle app under the same server (tools/hello.py) is the ceiling.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support import (FLOWERS, PASSWORD, ROOT, SERVER_SETTINGS, USERNAME, Server, auth_header, free_port, query,
                           wait_ready)

AUTH = auth_header()["Authorization"]
SETOSA = query(FLOWERS["setosa"])
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def memory_mib(server):
    """Resident memory of the main process and of the largest worker, in MiB, and the number of workers."""
    main_process, *workers = server.rss_mib()
    return main_process, max(workers, default=0.0), len(workers)


def post_script(rows):
    """A wrk Lua script that POSTs a batch of `rows` flowers."""
    body = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.4, 2.1]] * (rows // 2) + [[6.0, 2.8, 4.4, 1.4]] * (rows % 2)})
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = {json.dumps(body)}\n')
    script.close()
    return script.name


def wrk(url, connections, duration, script=None, auth=True):
    """Run wrk; return requests/s, p50 and p99 latency in ms, and the number of non-2xx answers or errors."""
    command = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    if auth:
        command += ["-H", f"Authorization: {AUTH}"]
    if script:
        command += ["-s", script]
    output = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout
    latency = {p: float(v) * UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", output, re.M)}
    failures = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    failures += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
            "p50": latency.get("50"), "p99": latency.get("99"), "failures": failures}


def median_of(results, key):
    return statistics.median(result[key] for result in results)


def docker_figures(duration):
    """The API container: cold start to the first 200 from /readyz, load through the published port, sizes."""
    figures = {}
    for name, dockerfile in (("api", "Dockerfile.api"), ("web", "Dockerfile.web")):
        subprocess.run(["docker", "build", "-q", "-f", dockerfile, "-t", f"iris-bench-{name}", "."], cwd=ROOT,
                       check=True, capture_output=True)
        size = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", f"iris-bench-{name}"],
                              capture_output=True, text=True, check=True).stdout
        figures[f"{name} image"] = f"{int(size) / 1e6:.0f} MB"
    port = free_port()
    container = subprocess.run(
        ["docker", "run", "-d", "--rm", "--read-only", "--tmpfs", "/tmp", "--init", "-p", f"127.0.0.1:{port}:8000",
         "-e", f"API_USERNAME={USERNAME}", "-e", f"API_PASSWORD={PASSWORD}", "iris-bench-api"],
        capture_output=True, text=True, check=True).stdout.strip()
    try:
        figures["API container cold start"] = f"{wait_ready(f'http://127.0.0.1:{port}/readyz'):.2f} s"
        result = wrk(f"http://127.0.0.1:{port}/api/v1.0?{SETOSA}", 16, duration)
        figures["API container, GET /api/v1.0 at 16 connections"] = (
            f"{result['rps']:.0f} req/s, p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms")
        stats = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", container],
                               capture_output=True, text=True).stdout.strip()
        figures["API container memory after load"] = stats.split("/")[0].strip()
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        # Untag the images; their layers stay in Docker's build cache for the next run.
        subprocess.run(["docker", "image", "rm", "iris-bench-api", "iris-bench-web"], capture_output=True)
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default: 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported (default: 3)")
    parser.add_argument("--model-path", type=Path, default=ROOT / "model" / "iris.joblib",
                        help="the artifact the API serves (default: model/iris.joblib, written by python train.py)")
    parser.add_argument("--docker", action=argparse.BooleanOptionalAction, default=None,
                        help="also measure the API container (default: when docker is on PATH)")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        sys.exit("bench.py: wrk is not installed (apt-get install wrk / brew install wrk)")
    if not args.model_path.exists():
        sys.exit(f"bench.py: no model at {args.model_path}: run python train.py first")

    credentials = {"API_USERNAME": USERNAME, "API_PASSWORD": PASSWORD, "LOG_LEVEL": "INFO",
                   "MODEL_PATH": str(args.model_path)}
    hello = Server("tools.hello:hello_app()")
    api = Server("api:app_from_env()", credentials)
    api_cold_start = wait_ready(api.url + "/readyz")
    web = Server("web:app_from_env()", {**credentials, "API_URL": api.url})
    wait_ready(hello.url + "/")
    wait_ready(web.url + "/readyz")
    scripts = {rows: post_script(rows) for rows in (1, 100, 10_000)}
    runs = {
        "hello world, 16 connections (the ceiling)": lambda: wrk(hello.url + "/", 16, args.duration, auth=False),
        "GET /api/v1.0, 1 connection": lambda: wrk(f"{api.url}/api/v1.0?{SETOSA}", 1, args.duration),
        "GET /api/v1.0, 16 connections": lambda: wrk(f"{api.url}/api/v1.0?{SETOSA}", 16, args.duration),
        **{f"POST /api/v1.0/predict, {rows} rows, 2 connections":
           (lambda rows=rows: wrk(f"{api.url}/api/v1.0/predict", 2, args.duration, scripts[rows]))
           for rows in scripts},
        "web GET /prediction, 16 connections": lambda: wrk(f"{web.url}/prediction?{SETOSA}", 16, args.duration,
                                                           auth=False),
    }
    results = {name: [] for name in runs}
    try:
        for _ in range(args.rounds):  # interleaved, so a noisy moment hurts every case a little, not one a lot
            for name, run in runs.items():
                results[name].append(run())
        memory = {"api": memory_mib(api), "web": memory_mib(web)}
    finally:
        for server in (hello, api, web):
            server.stop()
        for script in scripts.values():
            os.unlink(script)

    ceiling = median_of(results["hello world, 16 connections (the ceiling)"], "rps")
    print(f"\n{os.cpu_count()} cores, Python {sys.version.split()[0]}, gunicorn WORKERS={SERVER_SETTINGS['WORKERS']} "
          f"WORKER_CLASS={os.environ.get('WORKER_CLASS', 'gevent')}, {args.rounds} rounds of {args.duration} s, "
          "medians\n")
    print("| case | requests/s | rows/s | p50 ms | p99 ms | vs ceiling | failed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, samples in results.items():
        rps = median_of(samples, "rps")
        rows = int(re.search(r"(\d+) rows", name).group(1)) if "rows" in name else 1
        print(f"| {name} | {rps:,.0f} | {rps * rows:,.0f} | {median_of(samples, 'p50'):.2f} | "
              f"{median_of(samples, 'p99'):.2f} | {rps / ceiling:.0%} | {sum(s['failures'] for s in samples)} |")
    print()
    print("| other figure | value |")
    print("| --- | --- |")
    print(f"| API process cold start (gunicorn start to first 200 from /readyz) | {api_cold_start:.2f} s |")
    for name, (master, worker, workers) in memory.items():
        print(f"| {name} memory after the load (RSS) | master {master:.0f} MiB, largest of {workers} workers "
              f"{worker:.0f} MiB |")
    if args.docker or (args.docker is None and shutil.which("docker")):
        for name, value in docker_figures(args.duration).items():
            print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
