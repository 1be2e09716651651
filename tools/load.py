"""Load test: many requests, valid and invalid, against the API and the web app served as the containers serve them.

    python -m tools.load                  # from the repository root: 100,000 requests at 32 connections
    python -m tools.load --requests 2000  # a smoke run

It starts both services as the images do (tests/support.py) on free loopback ports, sends a fixed mix of requests
(predictions, batches, invalid values, malformed JSON, missing credentials, web pages) from 4 processes x 8 threads
over kept-alive connections, checks every answer against what the model itself computes, and prints requests/s,
latency percentiles, the count of each status code, connection errors and the servers' memory after warm-up and at
the end. It exits 1 when a target is missed: a 5xx, a connection error, a wrong answer, or memory growth of 10 % or
more after warm-up. Needs a trained model (python train.py).
"""

import argparse
import collections
import http.client
import json
import multiprocessing
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tabserve import model, v1
from tests.support import FLOWERS, PASSWORD, ROOT, USERNAME, Server, auth_header, query, wait_ready

AUTH = auth_header()
PROCESSES, THREADS = 4, 8  # 32 connections
WARM_UP_SHARE = 0.05
MAX_MEMORY_GROWTH = 0.10


def build_mix(model_path):
    """(service, method, path, headers, body, expected status, check) for each kind of request, with the answer
    that the model itself gives, so that every response can be checked."""
    loaded = model.load_model(model_path)
    answers = {name: v1.answers(loaded, rows, model.predict(loaded, rows))[0]
               for name, rows in ((name, np.array([values])) for name, values in FLOWERS.items())}
    batch = [FLOWERS[name] for name in ("setosa", "versicolor", "virginica", "odd")] * 5
    batch_answers = [answers[name] for name in ("setosa", "versicolor", "virginica", "odd")] * 5
    json_headers = {**AUTH, "Content-Type": "application/json"}

    def single(name):
        return lambda body: {k: body[k] for k in ("prediction", "probabilities", "warnings")} == answers[name]

    mix = [("api", "GET", f"/api/v1.0?{query(values)}", AUTH, None, 200, single(name))
           for name, values in FLOWERS.items()]
    mix += [
        ("api", "POST", "/api/v1.0/predict", json_headers, json.dumps({"instances": batch}), 200,
         lambda body: body["predictions"] == batch_answers),
        ("api", "GET", "/api/v1.0?sepal_length=abc&sepal_width=1&petal_length=1&petal_width=1", AUTH, None, 400,
         lambda body: [e["field"] for e in body["errors"]] == ["sepal_length"]),
        ("api", "GET", f"/api/v1.0?{query(FLOWERS['setosa'])}", {}, None, 401, lambda body: body["status"] == 401),
        ("api", "POST", "/api/v1.0/predict", json_headers, '{"instances": [[1, 2', 400,
         lambda body: body["errors"][0]["field"] == "body"),
        ("web", "GET", f"/prediction?{query(FLOWERS['virginica'])}", {}, None, 200,
         lambda text: "<h1 class=\"answer\">Iris virginica</h1>" in text),
        ("web", "GET", "/prediction?sepal_length=0&sepal_width=1&petal_length=1&petal_width=1", {}, None, 400,
         lambda text: "must be greater than 0" in text),
        ("web", "GET", "/", {}, None, 200, lambda text: 'action="/prediction"' in text),
    ]
    return mix


def send(connections, port, method, path, headers, body):
    """(status, body) of one request on the kept-alive connection to this port; OSError or HTTPException on failure,
    and the connection is then forgotten."""
    connection = connections.get(port) or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connections[port] = connection
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode()
    except (OSError, http.client.HTTPException):
        connections.pop(port, None)
        raise


def run_client(ports, mix_args, count, seed):
    """One process: THREADS threads, each on its own kept-alive connections, `count` requests in all."""
    mix = build_mix(*mix_args)
    statuses, errors, wrong, samples = collections.Counter(), collections.Counter(), [], []
    lock = threading.Lock()

    def worker(index, share):
        connections = {}
        for choice in np.random.default_rng(seed * 100 + index).integers(0, len(mix), size=share):
            service, method, path, headers, body, expected, check = mix[choice]
            started = time.perf_counter()
            try:
                status, text = send(connections, ports[service], method, path, headers, body)
            except (OSError, http.client.HTTPException) as err:
                with lock:
                    errors[type(err).__name__] += 1
                continue
            elapsed = time.perf_counter() - started
            ok = status == expected and check(json.loads(text) if service == "api" else text)
            with lock:
                statuses[status] += 1
                samples.append(elapsed)
                if not ok:
                    wrong.append(f"{method} {path} -> {status}: {text[:200]}")

    shares = [count // THREADS + (1 if i < count % THREADS else 0) for i in range(THREADS)]
    threads = [threading.Thread(target=worker, args=(i, share)) for i, share in enumerate(shares)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses, errors, wrong, samples


def drive(ports, model_path, total):
    """Send `total` requests from PROCESSES processes; merged results and the wall time."""
    shares = [total // PROCESSES + (1 if i < total % PROCESSES else 0) for i in range(PROCESSES)]
    started = time.perf_counter()
    with multiprocessing.Pool(PROCESSES) as pool:
        results = pool.starmap(run_client, [(ports, (model_path,), share, i) for i, share in enumerate(shares)])
    elapsed = time.perf_counter() - started
    statuses, errors, wrong, samples = collections.Counter(), collections.Counter(), [], []
    for s, e, w, lat in results:
        statuses.update(s)
        errors.update(e)
        wrong.extend(w)
        samples.extend(lat)
    return statuses, errors, wrong, samples, elapsed


def memory_mib(server):
    return sum(server.rss_mib())


def run(model_path, requests):
    """Both services started as the images start them, a warm-up, then the measured run; stopped whatever happens."""
    credentials = {"API_USERNAME": USERNAME, "API_PASSWORD": PASSWORD, "LOG_LEVEL": "INFO"}
    servers = {"api": Server("api", {**credentials, "MODEL_PATH": str(model_path)})}
    try:
        wait_ready(servers["api"].url + "/readyz")
        servers["web"] = Server("web", {**credentials, "API_URL": servers["api"].url})
        wait_ready(servers["web"].url + "/readyz")
        ports = {name: server.port for name, server in servers.items()}
        drive(ports, model_path, max(int(requests * WARM_UP_SHARE), 200))
        warm = {name: memory_mib(server) for name, server in servers.items()}
        results = drive(ports, model_path, requests)
        end = {name: memory_mib(server) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    return results, warm, end


def report(results, warm, end):
    """Print the figures; True when every target is met."""
    statuses, errors, wrong, samples, elapsed = results
    quantiles = statistics.quantiles(samples, n=1000) if len(samples) > 1 else [0.0] * 999
    print(f"\n{len(samples):,} requests in {elapsed:.1f} s at {PROCESSES * THREADS} connections: "
          f"{len(samples) / elapsed:,.0f} requests/s")
    print(f"latency ms: p50 {quantiles[499] * 1000:.2f}, p90 {quantiles[899] * 1000:.2f}, "
          f"p99 {quantiles[989] * 1000:.2f}, p99.9 {quantiles[998] * 1000:.2f}, max {max(samples) * 1000:.2f}")
    print("status codes: " + ", ".join(f"{code}: {n:,}" for code, n in sorted(statuses.items())))
    print(f"connection errors: {sum(errors.values())} {dict(errors) or ''}")
    print(f"wrong answers: {len(wrong)}")
    for line in wrong[:5]:
        print(f"  {line}")
    growth = {name: end[name] / warm[name] - 1 for name in warm}
    for name in warm:
        print(f"{name} memory (all processes, RSS): {warm[name]:.0f} MiB after warm-up, {end[name]:.0f} MiB at the end "
              f"({growth[name]:+.1%})")
    server_errors = sum(n for code, n in statuses.items() if code >= 500)
    met = not (server_errors or errors or wrong or any(g >= MAX_MEMORY_GROWTH for g in growth.values()))
    print("targets: " + ("met (no 5xx, no connection errors, every answer correct, memory growth under 10 %)"
                         if met else "MISSED"))
    return met


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="requests after warm-up (default: 100000)")
    parser.add_argument("--model-path", type=Path, default=ROOT / "model" / "iris.skops",
                        help="the artifact the API serves (default: model/iris.skops)")
    args = parser.parse_args(argv)
    if not args.model_path.exists():
        sys.exit(f"load.py: no model at {args.model_path}: run python train.py first")
    return 0 if report(*run(args.model_path, args.requests)) else 1


if __name__ == "__main__":
    sys.exit(main())
