"""Benchmark adaptive batching on a model users bring: a random forest of 100 trees, served by this API and by
MLServer 1.7.1, with and without MLServer's adaptive batching, in one run on one machine (make bench-batching):

    python -m tools.bench_batching                  # 3 interleaved rounds of 5 s runs, medians
    python -m tools.bench_batching --no-mlserver    # this API only (BATCHING auto, on and off)

The forest is trained here (train.py --model random_forest); every server runs as a process on a loopback port, as
tools/bench.py starts them, MLServer from the virtual environment tools/bench.py installs it into. Load from wrk,
2 threads, on the same cores. The one-row request is /api/v1.0's GET for this API and the /v2 JSON request for
MLServer (MLServer speaks no /api/v1.0); this API's /v2 is in the table too.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import train
from tests.support import FLOWERS, PASSWORD, USERNAME, Server, query, wait_ready
from tools.bench import stop
from tools.measure import measure, post_script, print_table, wrk
from tools.peers import MLSERVER_HOME, mlserver_executable, start_mlserver

SETOSA = query(FLOWERS["setosa"])
# MLServer's adaptive batching as the issue measured it: up to 16 requests, waiting at most 2 ms for them.
MLSERVER_BATCHING = {"max_batch_size": 16, "max_batch_time": 0.002}
CONNECTIONS = (1, 16)


def start_api(model_path, batching):
    credentials = {"API_USERNAME": USERNAME, "API_PASSWORD": PASSWORD, "MODEL_PATH": str(model_path),
                   "LOG_LEVEL": "WARNING", "BATCHING": batching}
    server = Server("api", credentials)
    wait_ready(server.url + "/readyz")
    return server


def v2_script(folder, name="input-0"):
    body = {"inputs": [{"name": name, "shape": [1, 4], "datatype": "FP64", "data": list(FLOWERS["setosa"])}]}
    return post_script(json.dumps(body), folder)


def cases_for(servers, folder, duration):
    """{case name: a function that measures it once}, for every server at 1 and 16 connections."""
    cases, script = {}, v2_script(folder)
    for name, server in servers.items():
        for connections in CONNECTIONS:
            label = f"{name}, {connections} connection{'s' * (connections > 1)}"
            if name.startswith("MLServer"):
                model = "batched" if "batching" in name else "forest"
                cases[label] = (lambda url=server.url, c=connections, m=model: wrk(f"{url}/v2/models/{m}/infer", c,
                                                                                   duration, script, auth=False))
            else:
                cases[label] = lambda url=server.url, c=connections: wrk(f"{url}/api/v1.0?{SETOSA}", c, duration)
    api = servers["this API, BATCHING=auto"]
    cases["this API, BATCHING=auto, /v2 1 row, 16 connections"] = lambda: wrk(
        f"{api.url}/v2/models/iris-classifier/infer", 16, duration, script)
    return cases


def targets(medians):
    """(target, measured, met) for the issue's targets that this run could measure."""
    ours = {c: medians[f"this API, BATCHING=auto, {c} connection{'s' * (c > 1)}"] for c in CONNECTIONS}
    rows = [("forest, 1 connection: at least the unbatched rate", ours[1]["rps"],
             medians["this API, BATCHING=off, 1 connection"]["rps"] * 0.95)]
    batched, default = "MLServer, adaptive batching", "MLServer, default"
    if f"{batched}, 16 connections" in medians:
        rows += [("forest, 16 connections: ≥ 2 × MLServer with batching", ours[16]["rps"],
                  2 * medians[f"{batched}, 16 connections"]["rps"]),
                 ("forest, 1 connection: above MLServer's", ours[1]["rps"], medians[f"{default}, 1 connection"]["rps"]),
                 ("forest, p99 at 16 connections ≤ MLServer with batching's (ms)", -ours[16]["p99"],
                  -medians[f"{batched}, 16 connections"]["p99"])]
    return [(target, f"{abs(value):,.2f}" if "p99" in target else f"{value:,.0f} vs {bound:,.0f}", value >= bound)
            for target, value, bound in rows]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default: 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported (default: 3)")
    parser.add_argument("--mlserver", action=argparse.BooleanOptionalAction, default=True,
                        help=f"also measure MLServer, installed into {MLSERVER_HOME} if needed (default: yes)")
    args = parser.parse_args(argv)
    stack = []
    with tempfile.TemporaryDirectory(prefix="tabserve-bench-batching-") as folder:
        model_path = Path(folder) / "forest.skops"
        train.main(["--model", "random_forest", "--output", str(model_path)])
        try:
            servers = {f"this API, BATCHING={setting}": start_api(model_path, setting) for setting in ("auto", "off")}
            executable = mlserver_executable(install=True) if args.mlserver else None
            if executable:
                servers["MLServer, default"] = start_mlserver(executable, model_path, folder, "forest")
                servers["MLServer, adaptive batching"] = start_mlserver(executable, model_path, folder, "batched",
                                                                        MLSERVER_BATCHING)
            stack.extend(servers.values())
            medians = measure(cases_for(servers, folder, args.duration), args.rounds)
        finally:
            stop(stack)
    print(f"\nrandom forest of 100 trees, {args.rounds} rounds of {args.duration} s, medians\n", file=sys.stderr)
    print_table(medians, list(medians))
    print("| target | measured | met |\n| --- | ---: | --- |")
    for target, measured, met in targets(medians):
        print(f"| {target} | {measured} | {'yes' if met else '**no**'} |")


if __name__ == "__main__":
    main()
