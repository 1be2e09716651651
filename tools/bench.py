"""Benchmark the services the way users run them, beside the alternatives, and print markdown tables. From the
repository root, in the project's environment (make bench):

    python -m tools.bench                     # about 10 minutes: 3 interleaved rounds of 5 s runs, medians
    python -m tools.bench --duration 1 --rounds 1 --no-docker --no-mlserver     # a smoke run (test_bench.py)

Processes on loopback ports, started as the images start them (tests/support.py: serve.py, logging to a file):
a hello-world Bottle app (tools/hello.py) and the API under granian and under gunicorn (sync and gevent workers,
the server the images ran before), batches, the web page. With --mlserver (the default when it can be installed):
MLServer 1.7.1's default scikit-learn server on the same model, from a virtual environment of its own under
~/.cache/tabserve-bench. With --docker (the default when docker answers): the API image, run with --network host and
Docker's default log driver, with each ACCESS_LOG setting and PREDICTION_LOG=stdout; its cold start, memory and
size. Load comes from wrk (apt-get install wrk) with 2 threads on the same cores. Every URL is on 127.0.0.1. Needs a
trained model.
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
import time
from pathlib import Path

from tabserve import users
from tests.support import (
    FLOWERS,
    PASSWORD,
    ROOT,
    USERNAME,
    Server,
    free_ports,
    query,
    remove_untagged_images,
    untagged_images,
    wait_ready,
)
from tools.grpcload import grpc_load
from tools.measure import AUTH, batch, measure, post_script, print_table, v2_request, wrk
from tools.peers import MLSERVER_HOME, mlserver_executable, start_mlserver

SETOSA = query(FLOWERS["setosa"])
BATCH_ROWS = (1, 100, 10_000)
IMAGE = "tabserve-bench"
# The container's logging settings measured side by side with its default ("").
LOGGING = ("ACCESS_LOG=all", "ACCESS_LOG=off", "PREDICTION_LOG=stdout")
HELLO_SYNC, HELLO_GRANIAN, API_PROCESS = "hello world, gunicorn sync", "hello world, granian", "GET /api/v1.0"
CEILING = f"{HELLO_SYNC}, 16 connections"
GRANIAN_HELLO = f"{HELLO_GRANIAN}, 16 connections"
WEB = "web GET /prediction, 16 connections"
EXPLAIN = "GET /api/v1.0/explain, 16 connections"
USERS_FILE = "GET /api/v1.0 with API_USERS_FILE, 16 connections"
V2_ONE = "POST /v2/models/iris-classifier/infer, 1 row, JSON, 16 connections"
V2_BINARY = "POST /v2/models/iris-classifier/infer, 10000 rows, binary, 2 connections"
MLSERVER = "MLServer, POST /v2/models/iris/infer, 1 row"
MLSERVER_CASE = f"{MLSERVER}, 16 connections"
CONTAINER = "API container, GET /api/v1.0"
CONTAINER_16 = f"{CONTAINER}, 16 connections, ACCESS_LOG=default (errors)"
CONTAINER_1 = f"{CONTAINER}, 1 connection"
# The side by side table's columns: {heading: the cases' name before ", N connections"}.
PEERS = {"hello world (gunicorn sync, 2 workers)": HELLO_SYNC, "hello world (granian, 2 workers)": HELLO_GRANIAN,
         "MLServer 1.7": MLSERVER, "tabserve, the API container": CONTAINER, "tabserve, serve.py": API_PROCESS}
# gRPC figures come from tools/grpcload.py's Python client, not wrk: compare them with each other, not with wrk's.
GRPC = "{server}gRPC ModelInfer, 1 row, raw, {connections} connection{s} (Python client)"


def grpc_cases(target, model, duration, server=""):
    """The gRPC cases of one server at 1 and 16 connections, with the API's credentials (MLServer needs none)."""
    return {GRPC.format(server=server, connections=n, s="s" * (n > 1)): (
        lambda n=n: grpc_load(target, model, n, duration, [("authorization", AUTH)])) for n in (1, 16)}


# --- The servers on loopback -----------------------------------------------------------------------------------


def gunicorn(app, worker_class):
    """The command that serves app under gunicorn with 2 workers of this class (the images' server before granian)."""
    return lambda port: [sys.executable, "-m", "gunicorn", "--workers", "2", "--worker-class", worker_class,
                         "--preload", "--bind", f"127.0.0.1:{port}", app]


def start_servers(model_path, folder, stack):
    """Every server of the comparison, started (and added to stack, to be stopped) and ready: {name: Server}."""
    credentials = {"API_USERNAME": USERNAME, "API_PASSWORD": PASSWORD, "MODEL_PATH": str(model_path),
                   "LOG_LEVEL": "INFO"}
    # gunicorn runs the API as the images did: its metrics summed over the workers through files.
    (metrics := Path(folder) / "metrics").mkdir()
    (users_file := Path(folder) / "users").write_text(f"{USERNAME}:{users.hash_password(PASSWORD)}\n")
    from_file = {**credentials, "API_USERNAME": "", "API_PASSWORD": "", "API_USERS_FILE": str(users_file)}
    commands = {"api": ("api", credentials, None), "api users file": ("api", from_file, None),
                "hello gevent": (None, {}, gunicorn("tools.hello:hello_app()", "gevent")),
                "api gevent": (None, {**credentials, "PROMETHEUS_MULTIPROC_DIR": str(metrics)},
                               gunicorn("api:app_from_env()", "gevent"))}
    servers = {}
    for name, (module, env, command) in commands.items():
        stack.append(server := Server(module, env, command))
        servers[name] = server
        seconds = wait_ready(server.url + ("/readyz" if name.startswith("api") else "/"))
        servers.setdefault("api cold start", seconds)  # the first, alone
    stack.append(web := Server("web", {**credentials, "API_URL": servers["api"].url}))
    wait_ready(web.url + "/readyz")
    servers["web"] = web
    return servers


def loopback_cases(servers, duration, folder):
    """{case name: a function that measures it once}."""
    api, web = servers["api"].url, servers["web"].url
    cases = {"hello world, gunicorn gevent, 16 connections": lambda: wrk(servers["hello gevent"].url + "/", 16,
                                                                          duration, auth=False)}
    cases["GET /api/v1.0, gunicorn gevent, 16 connections"] = lambda: wrk(
        f"{servers['api gevent'].url}/api/v1.0?{SETOSA}", 16, duration)
    cases["GET /api/v1.0, 16 connections"] = lambda: wrk(f"{api}/api/v1.0?{SETOSA}", 16, duration)
    cases["GET /api/v1.0, 1 connection"] = lambda: wrk(f"{api}/api/v1.0?{SETOSA}", 1, duration)
    cases[EXPLAIN] = lambda: wrk(f"{api}/api/v1.0/explain?{SETOSA}", 16, duration)
    cases[USERS_FILE] = lambda: wrk(f"{servers['api users file'].url}/api/v1.0?{SETOSA}", 16, duration)
    for rows in BATCH_ROWS:
        script = post_script(batch(rows), folder)
        cases[f"POST /api/v1.0/predict, {rows} rows, 2 connections"] = (
            lambda script=script: wrk(f"{api}/api/v1.0/predict", 2, duration, script))
    for rows, binary, connections in ((1, False, 16), (10_000, False, 2), (10_000, True, 2)):
        flowers = [FLOWERS["setosa"], FLOWERS["virginica"]] * (rows // 2) or [FLOWERS["setosa"]]
        body, headers = v2_request(flowers, binary)
        script = post_script(body, folder, headers)
        name = (f"POST /v2/models/iris-classifier/infer, {rows} row{'s' * (rows > 1)}, "
                f"{'binary' if binary else 'JSON'}, {connections} connections")
        cases[name] = lambda script=script, connections=connections: wrk(
            f"{api}/v2/models/iris-classifier/infer", connections, duration, script)
    cases[WEB] = lambda: wrk(f"{web}/prediction?{SETOSA}", 16, duration, auth=False)
    return cases | grpc_cases(f"127.0.0.1:{servers['api'].grpc_port}", "iris-classifier", duration)


# --- MLServer --------------------------------------------------------------------------------------------------


def connections(n):
    return f"{n} connection{'s' * (n > 1)}"


def mlserver_cases(server, duration, folder):
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": list(FLOWERS["setosa"])}]}
    script = post_script(json.dumps(body), folder)
    return {f"{MLSERVER}, {connections(n)}": (lambda n=n: wrk(f"{server.url}/v2/models/iris/infer", n, duration,
                                                                script, auth=False)) for n in (1, 16)}


# --- The API container -----------------------------------------------------------------------------------------


def build_images(stack):
    """Build both images (added to stack, to be untagged); their sizes in MB."""
    sizes = {}
    for name in ("api", "web"):
        tag = f"{IMAGE}-{name}"
        subprocess.run(["docker", "build", "-q", "-f", f"Dockerfile.{name}", "-t", tag, "."], cwd=ROOT, check=True,
                       capture_output=True)
        stack.append(f"image:{tag}")
        size = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", tag], capture_output=True, text=True,
                              check=True).stdout
        sizes[name] = int(size) / 1e6
    return sizes


def start_container(setting, stack):
    """The API image on free loopback ports, HTTP and gRPC (--network host, Docker's default log driver; containers
    side by side would all claim 8001), with one NAME=VALUE setting or none (""), added to stack: (id, URL, seconds
    from docker run to the first 200 from /readyz)."""
    port, grpc_port = free_ports(2)
    started = time.monotonic()
    container = subprocess.run(
        ["docker", "run", "-d", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp", "--init",
         "-e", "HOST=127.0.0.1", "-e", f"PORT={port}", "-e", f"GRPC_PORT={grpc_port}",
         "-e", f"API_USERNAME={USERNAME}", "-e", f"API_PASSWORD={PASSWORD}", *(["-e", setting] if setting else []),
         f"{IMAGE}-api"],
        capture_output=True, text=True, check=True).stdout.strip()
    stack.append(container)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/readyz")
    return container, url, time.monotonic() - started


def container_cold_start(stack, runs=3):
    """The API image started `runs` times, the last one kept (added to stack): (id, URL, the median seconds from
    docker run to the first 200 from /readyz). One start measured 1.3 to 2.4 s: the first after a build also reads
    the new image's files from disk."""
    seconds = []
    for _ in range(runs - 1):
        started = []
        try:
            seconds.append(start_container("", started)[2])
        finally:
            stop(started)
    container, url, last = start_container("", stack)
    return container, url, statistics.median([*seconds, last])


def container_memory(container):
    """Resident memory of the container's server processes, in MiB: (main process, workers' largest, workers), and
    the workers' pids."""
    rows = subprocess.run(["docker", "top", container, "-eo", "pid,ppid,rss,args"], capture_output=True, text=True,
                          check=True).stdout.splitlines()[1:]
    servers = [row.split(None, 3) for row in rows if row.split(None, 3)[3].startswith("python serve.py")]
    main = next(s for s in servers if not any(s[1] == other[0] for other in servers))
    workers = [int(s[2]) / 1024 for s in servers if s is not main]
    return (int(main[2]) / 1024, max(workers, default=0), len(workers)), [int(s[0]) for s in servers if s is not main]


def worker_memory(pids):
    """The largest worker's resident memory (RSS) and its proportional share (PSS: the pages it shares with the
    main process and the other workers divided among them), in MiB."""
    figures = []
    for pid in pids:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        figures.append([int(re.search(rf"^{key}:\s+(\d+) kB", rollup, re.M).group(1)) / 1024 for key in ("Rss", "Pss")])
    return tuple(max(column) for column in zip(*figures, strict=True)) if figures else None


def container_cases(urls, duration):
    """{case: measure it once} for containers {a logging setting, or "" for the image's default: URL}."""
    return {f"API container, GET /api/v1.0, 16 connections, {setting or 'ACCESS_LOG=default (errors)'}":
            (lambda url=url: wrk(f"{url}/api/v1.0?{SETOSA}", 16, duration)) for setting, url in urls.items()}


# --- Phases ----------------------------------------------------------------------------------------------------
# Each gives (cases, figures known now, a function giving figures read after the load).


def loopback_phase(args, folder, stack):
    """The servers as processes."""
    servers = start_servers(args.model_path, folder, stack)

    def memory():
        lines = {}
        for name in ("api", "web"):
            main_process, *workers = servers[name].rss_mib()
            lines[f"{name} memory after the load (RSS)"] = (f"main process {main_process:.0f} MiB, largest of "
                                                            f"{len(workers)} workers {max(workers):.0f} MiB")
        return lines | {f"{API_PROCESS} memory": worker_memory(servers["api"].workers())}

    figures = {f"{API_PROCESS} cold start": servers["api cold start"]}
    return loopback_cases(servers, args.duration, folder), figures, memory


def mlserver_phase(args, folder, stack):
    executable = mlserver_executable(install=args.mlserver is True) if args.mlserver is not False else None
    if not executable:
        return {}, {}, dict
    started = time.monotonic()
    stack.append(server := start_mlserver(executable, args.model_path, folder))
    figures = {f"{MLSERVER} cold start": time.monotonic() - started}
    return {**mlserver_cases(server, args.duration, folder),
            **grpc_cases(f"127.0.0.1:{server.grpc_port}", "iris", args.duration, "MLServer, ")}, figures, (
        lambda: {f"{MLSERVER} memory": worker_memory(server.workers())})


def docker_wanted(args):
    return args.docker or (args.docker is None and shutil.which("docker"))


def peers_phase(args, folder, stack):
    """The hello worlds and the API image as users run it, at 1 and 16 connections, each loaded with the others idle
    beside it: the side by side table's figures, cold starts, memory, the images' sizes."""
    urls, figures, pids = {}, {}, {}
    for peer, command in ((HELLO_SYNC, gunicorn("tools.hello:hello_app()", "sync")), (HELLO_GRANIAN, None)):
        stack.append(server := Server("tools.hello", {}, command))
        figures[f"{peer} cold start"] = wait_ready(server.url + "/")
        urls[peer], pids[peer] = server.url + "/", lambda server=server: server.workers()
    if docker_wanted(args):
        figures |= {f"{name} image": f"{size:.0f} MB" for name, size in build_images(stack).items()}
        container, url, figures[f"{CONTAINER} cold start"] = container_cold_start(stack)
        urls[CONTAINER], pids[CONTAINER] = f"{url}/api/v1.0?{SETOSA}", lambda: container_memory(container)[1]
    cases = {f"{peer}, {connections(n)}": (lambda url=url, n=n, peer=peer: wrk(url, n, args.duration,
                                                                               auth=peer == CONTAINER))
             for peer, url in urls.items() for n in (1, 16)}
    return cases, figures, lambda: {f"{peer} memory": worker_memory(find()) for peer, find in pids.items()}


def logging_phase(args, folder, stack):
    """The API image with its default logging and with each other logging setting, side by side."""
    if not docker_wanted(args):
        return {}, {}, dict
    build_images(stack)
    containers, urls = {}, {}
    for setting in ("", *LOGGING):
        containers[setting], urls[setting], _ = start_container(setting, stack)
    return container_cases(urls, args.duration), {}, lambda: {"container memory": container_memory(containers[""])[0]}


# --- Report ----------------------------------------------------------------------------------------------------


def target_rows(medians, figures):
    """(target, measured, met) for each target of the README that this run measured."""
    rps = {name: result["rps"] for name, result in medians.items()}
    api = rps["GET /api/v1.0, 16 connections"]
    rows = [("web /prediction ≥ 60 % of the API's rate (16 connections)", rps[WEB] / api, 0.60, "{:.0%}"),
            ("/v2 infer, 1 row, ≥ 90 % of /api/v1.0's rate", rps[V2_ONE] / api, 0.90, "{:.0%}"),
            ("/api/v1.0/explain ≥ 50 % of /api/v1.0's rate (16 connections)", rps[EXPLAIN] / api, 0.50, "{:.0%}"),
            ("a users file ≥ 95 % of API_USERNAME's rate (16 connections)", rps[USERS_FILE] / api, 0.95, "{:.0%}"),
            ("/v2 infer, 10,000 binary rows ≥ 2,000,000 rows/s", rps[V2_BINARY] * 10_000, 2e6, "{:,.0f} rows/s"),
            ("API process cold start < 1.5 s", figures[f"{API_PROCESS} cold start"], -1.5, "{:.2f} s")]
    container = rps.get(CONTAINER_16)
    if container:
        rows += [("API container ≥ 1.5 × hello world under gunicorn sync", container / rps[CEILING], 1.5, "{:.2f} ×"),
                 ("the default logging costs ≤ 10 % of the container's rate",
                  1 - container / rps[CONTAINER_16.replace("default (errors)", "off")], -0.10, "{:.0%}"),
                 ("API container p99 at 1 connection < 1 ms", medians[CONTAINER_1]["p99"], -1.0, "{:.2f} ms"),
                 *peer_targets(medians, figures)]
    # A negative bound is an upper limit: the measured value must stay under its absolute value.
    return [(target, fmt.format(value), value >= bound if bound > 0 else value <= -bound)
            for target, value, bound, fmt in rows]


def peer_targets(medians, figures):
    """The targets of the side by side table: the API container beside the hello worlds and MLServer."""
    alone, hello = medians[f"{CONTAINER}, 16 connections"], medians[CEILING]
    rows = [("API container p99 ≤ 1.5 × the gunicorn hello world's, 1 connection",
             medians[CONTAINER_1]["p99"] / medians[f"{HELLO_SYNC}, 1 connection"]["p99"], -1.5, "{:.2f} ×"),
            ("API container p99 ≤ 1.5 × the gunicorn hello world's, 16 connections", alone["p99"] / hello["p99"], -1.5,
             "{:.2f} ×"),
            ("API container ≥ 40 % of the granian hello world's rate (16 connections)",
             alone["rps"] / medians[GRANIAN_HELLO]["rps"], 0.40, "{:.0%}"),
            ("API container cold start < 1 s", figures[f"{CONTAINER} cold start"], -1.0, "{:.2f} s"),
            ("memory per API worker < 150 MiB (RSS, the largest after the load)", figures[f"{CONTAINER} memory"][0],
             -150, "{:.0f} MiB")]
    if MLSERVER_CASE in medians:
        rows.append(("API container ≥ 10 × MLServer's default scikit-learn server (16 connections)",
                     alone["rps"] / medians[MLSERVER_CASE]["rps"], 10, "{:.1f} ×"))
    return rows


PEER_ROWS = (("req/s at 16 connections", 16, "rps", "{:,.0f}"), ("p50 at 1 connection", 1, "p50", "{:.2f} ms"),
             ("p99 at 1 connection", 1, "p99", "{:.2f} ms"), ("p99.9 at 1 connection", 1, "p999", "{:.2f} ms"),
             ("p99 at 16 connections", 16, "p99", "{:.2f} ms"), ("p99.9 at 16 connections", 16, "p999", "{:.2f} ms"))


def print_peers(medians, figures):
    """The side by side table: each peer's column, its figures at 1 and 16 connections, cold start and memory."""
    peers = {heading: peer for heading, peer in PEERS.items() if f"{peer}, 16 connections" in medians}
    rows = [(label, [fmt.format(medians[f"{peer}, {connections(n)}"][key]) for peer in peers.values()])
            for label, n, key, fmt in PEER_ROWS]
    starts, memory = ([figures.get(f"{peer} {figure}") for peer in peers.values()] for figure in ("cold start",
                                                                                                    "memory"))
    rows.append(("cold start, to the first answer", ["–" if s is None else f"{s:.2f} s" for s in starts]))
    rows.append(("memory of the largest worker after the load, RSS (PSS)",
                 ["–" if m is None else f"{m[0]:.0f} MiB ({m[1]:.0f})" for m in memory]))
    print("| figure | " + " | ".join(peers) + " |\n| --- |" + " ---: |" * len(peers))
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()


def print_figures(figures):
    print("| other figure | value |\n| --- | --- |")
    # The cold starts are in the side by side table: serve.py's from its start, the container's from docker run, each
    # to the first 200 from /readyz.
    if "container memory" in figures:
        main_process, worker, workers = figures["container memory"]
        print(f"| API container memory after the load (RSS) | main process {main_process:.0f} MiB, largest of "
              f"{workers} workers {worker:.0f} MiB |")
    for name, value in figures.items():
        if isinstance(value, str):
            print(f"| {name} | {value} |")


def report(medians, figures, args):
    print(f"\n{os.cpu_count()} cores, Python {sys.version.split()[0]}, granian via serve.py (WORKERS=2, THREADS "
          f"{os.environ.get('THREADS', 'default')}), {args.rounds} rounds of {args.duration} s, medians\n")
    print_table(medians, [name for name in medians if not name.startswith("API container")])
    containers = [name for name in medians if name.startswith("API container")]
    if containers:
        print_table(medians, containers)
    print_peers(medians, figures)
    print_figures(figures)
    print("\n| target | measured | met |\n| --- | ---: | --- |")
    for target, measured, met in target_rows(medians, figures):
        print(f"| {target} | {measured} | {'yes' if met else '**no**'} |")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default: 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported (default: 3)")
    parser.add_argument("--model-path", type=Path, default=ROOT / "model" / "iris.skops",
                        help="the artifact the API serves (default: model/iris.skops, written by python train.py)")
    parser.add_argument("--docker", action=argparse.BooleanOptionalAction, default=None,
                        help="also measure the API container (default: when docker is on PATH)")
    parser.add_argument("--mlserver", action=argparse.BooleanOptionalAction, default=None,
                        help=f"also measure MLServer, installing it into {MLSERVER_HOME} if needed (default: when "
                             "it is installed there)")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        sys.exit("bench.py: wrk is not installed (apt-get install wrk / brew install wrk)")
    if not args.model_path.exists():
        sys.exit(f"bench.py: no model at {args.model_path}: run python train.py first")
    return args


def stop(stack):
    """Stop every server and container of a phase, whatever happened; untag the images it built (their build cache
    stays until the end of the run, for the next phase)."""
    for item in reversed(stack):
        if isinstance(item, Server):
            item.stop()
        elif item.startswith("image:"):
            subprocess.run(["docker", "image", "rm", item.removeprefix("image:")], capture_output=True)
        else:
            subprocess.run(["docker", "rm", "-f", item], capture_output=True)


def main(argv=None):
    args = parse_args(argv)
    medians, figures = {}, {}
    untagged_before = untagged_images() if docker_wanted(args) else None
    try:
        # One phase after another, so that what is measured shares the machine with nothing else of this run (idle
        # servers beside it more than doubled the API container's p99 at 1 connection).
        for phase in (peers_phase, loopback_phase, mlserver_phase, logging_phase):
            stack = []
            with tempfile.TemporaryDirectory(prefix="tabserve-bench-") as folder:
                try:
                    cases, known, after_load = phase(args, folder, stack)
                    medians.update(measure(cases, args.rounds))
                    figures.update(known, **after_load())
                finally:
                    stop(stack)
    finally:
        if untagged_before is not None:  # the build cache this run added goes too: the machine is left as found
            remove_untagged_images(keep=untagged_before)
    report(medians, figures, args)


if __name__ == "__main__":
    main()
