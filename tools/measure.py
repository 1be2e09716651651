"""How the benchmarks measure: wrk runs (requests/s, p50, p99 and p99.9), interleaved rounds, medians, tables.

    figures = wrk(url, connections=16, duration=5)          # {"rps", "p50", "p99", "p999", "failures"}
    medians = measure({"case": lambda: wrk(...)}, rounds=3)  # each case once per round, interleaved; medians
    print_table(medians, names)                              # the markdown table of the READMEs
"""

import json
import math
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from tests.support import FLOWERS, auth_header

AUTH = auth_header()["Authorization"]
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
FIGURES = ("rps", "p50", "p99", "p999")
# wrk's --latency prints no percentile above the 99th: its Lua hook prints the 99.9th (microseconds), the tail a
# service's objectives are set on once the 99th is good.
P999_HOOK = '\ndone = function(summary, latency, requests) io.write(string.format("p99.9 %d\\n", ' \
            'latency:percentile(99.9))) end\n'


def wrk(url, connections, duration, script=None, auth=True):
    """Run wrk: requests/s, p50, p99 and p99.9 latency in ms, and the number of non-2xx answers or socket errors."""
    with tempfile.TemporaryDirectory(prefix="tabserve-wrk-") as folder:
        hooked = Path(folder) / "script.lua"
        hooked.write_text((Path(script).read_text() if script else "") + P999_HOOK)
        command = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s", "--latency",
                   "--timeout", "10s", "-s", str(hooked)]
        command += ["-H", f"Authorization: {AUTH}"] if auth else []
        output = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout
    latency = {p: float(v) * UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", output, re.M)}
    p999 = re.search(r"^p99\.9 (\d+)$", output, re.M)
    failures = sum(map(int, re.findall(r"(?:Non-2xx or 3xx responses:|connect|read|write|timeout) (\d+)", output)))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    # A server that hangs answers nothing within wrk's timeout: each connection's request failed.
    return {"rps": rps, "failures": failures + (connections if rps == 0 else 0),
            "p50": latency.get("50", math.nan), "p99": latency.get("99", math.nan),
            "p999": int(p999.group(1)) / 1000 if p999 and rps else math.nan}


def post_script(body, folder, headers=None):
    """A wrk Lua script that POSTs this body (bytes, or text sent as JSON) with these headers."""
    if isinstance(body, str):
        body, headers = body.encode(), {"Content-Type": "application/json", **(headers or {})}
    script = Path(folder) / f"post-{len(list(Path(folder).glob('post-*')))}.lua"
    lines = ['wrk.method = "POST"', *(f'wrk.headers["{name}"] = "{value}"' for name, value in (headers or {}).items()),
             'wrk.body = "' + "".join(f"\\{byte}" for byte in body) + '"']
    script.write_text("\n".join(lines) + "\n")
    return str(script)


def v2_request(rows, binary):
    """An Open Inference Protocol request for these rows: (body, headers); binary: Triton's binary tensors, out too."""
    rows = np.asarray(rows, dtype=np.float64)
    tensor = {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64"}
    if not binary:
        return json.dumps({"inputs": [{**tensor, "data": rows.ravel().tolist()}]}), {}
    raw = rows.astype("<f8").tobytes()
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def batch(rows):
    flowers = [FLOWERS["setosa"], FLOWERS["virginica"]] * (rows // 2) + [FLOWERS["versicolor"]] * (rows % 2)
    return json.dumps({"instances": flowers})


def median_of(results, key):
    values = [result[key] for result in results if result.get(key) is not None and not math.isnan(result[key])]
    return statistics.median(values) if values else math.nan


def measure(cases, rounds):
    """Each case `rounds` times, interleaved, so that a noisy moment hurts every case a little, not one a lot."""
    results = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            results[name].append(run())
    return {name: {key: median_of(samples, key) for key in FIGURES} | {
        "failures": sum(sample["failures"] for sample in samples)} for name, samples in results.items()}


def print_table(medians, names):
    print("| case | requests/s | rows/s | p50 ms | p99 ms | p99.9 ms | failed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        result = medians[name]
        rows = int(re.search(r"(\d+) rows?", name).group(1)) if re.search(r"\d+ rows?", name) else 1
        print(f"| {name} | {result['rps']:,.0f} | {result['rps'] * rows:,.0f} | {result['p50']:.2f} | "
              f"{result['p99']:.2f} | {result['p999']:.2f} | {result['failures']} |")
    print()
