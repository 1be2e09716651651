"""The peers the benchmarks measure this service beside: MLServer, Seldon's Open Inference Protocol server, serving
the same model with its default scikit-learn runtime, installed into a virtual environment of its own.

    executable = mlserver_executable(install=True)          # None where it is not installed and not asked to be
    server = start_mlserver(executable, model_path, folder)  # a tests.support.Server on a free loopback port
"""

import json
import subprocess
import sys
from pathlib import Path

import joblib

from tests.support import Server, free_ports, load_artifact, wait_ready

MLSERVER = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1",
            "uvloop==0.21.0")  # uvloop 0.22 and later break MLServer 1.7.1's worker start
MLSERVER_HOME = Path.home() / ".cache" / "tabserve-bench" / "mlserver"


def mlserver_executable(install):
    """MLServer's own command, installed into its virtual environment when asked to; None when there is none."""
    executable = MLSERVER_HOME / "bin" / "mlserver"
    if not executable.exists() and install:
        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_HOME)], check=True)
        subprocess.run([str(MLSERVER_HOME / "bin" / "pip"), "install", "--quiet", *MLSERVER], check=True)
    return executable if executable.exists() else None


def start_mlserver(executable, model_path, folder, name="iris", settings=None):
    """MLServer serving the same artifact with its default scikit-learn runtime, as `mlserver start` does, under this
    model name, with these model settings besides (its adaptive batching, say)."""
    models = Path(folder) / f"mlserver-{name}"
    (models / name).mkdir(parents=True)
    # MLServer's scikit-learn runtime loads a joblib file (a pickle): our own artifact, written again as one.
    joblib.dump(load_artifact(model_path), models / name / "model.joblib")
    (models / name / "model-settings.json").write_text(json.dumps(
        {"name": name, "implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.joblib"},
         **(settings or {})}))

    grpc_port, metrics_port = free_ports(2)

    def command(port):
        (models / "settings.json").write_text(json.dumps({"host": "127.0.0.1", "http_port": port,
                                                          "grpc_port": grpc_port, "metrics_port": metrics_port}))
        return [str(executable), "start", str(models)]

    server = Server(None, command=command)
    server.grpc_port = grpc_port  # MLServer's own, from its settings (Server's GRPC_PORT is ours)
    wait_ready(server.url + "/v2/health/ready", timeout=120)
    return server
