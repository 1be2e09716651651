"""The production server for both services: granian, with this project's one server configuration.

    python serve.py api      # what Dockerfile.api runs: api.app_from_env() on port 8000
    python serve.py web      # what Dockerfile.web runs: web.app_from_env() on port 5000

The environment variables it reads, once at start-up, are in docs/configuration.md (the one table of them).

Why granian: its Rust layer (hyper) reads and parses every request's headers, so a client that sends them one byte a
second costs a few KB and no Python thread, and it measured faster than gunicorn with gevent (docs/performance.md).
A request's body, though, is read by the Python thread that answers it: a client that sends its body slowly holds
one thread until it is done, so WORKERS x THREADS such clients at once stall the service. THREADS is 8 rather than
one per core for that reason (and, in the web app, for the calls to the API it waits on); in production, a proxy
that buffers requests before passing them on (docker-stack.yml's HAProxy does) removes the limit.

The app is built here, in the main process, before the workers are forked (what gunicorn calls preloading): a bad
configuration or a model that fails its self-test stops the server with the app's own one-line message, and the
workers share the loaded model's memory. Prometheus metrics are summed over the workers through files in a
directory of this server's own, made fresh at every start and set before the app is imported.
"""

import importlib
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile

from granian import Granian
from granian.constants import Interfaces
from granian.http import HTTP1Settings

DEFAULT_PORTS = {"api": 8000, "web": 5000}
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 8
# docker stop waits 10 s before SIGKILL: requests in flight get this long to finish.
GRACEFUL_TIMEOUT = 5
# A client gets this long to send its request headers (hyper's timer); then the connection is closed.
HEADER_READ_TIMEOUT_MS = 10_000

logger = logging.getLogger("serve")


class DeliberateThreads(logging.Filter):
    """Drop granian's advice against more threads than 2 x cores + 1: THREADS is above that on purpose (see above),
    and a warning at every start would teach operators to ignore warnings."""

    def filter(self, record):
        return not record.getMessage().startswith("Configuration allows spawning up to")


def positive_int(environ, name, default):
    value = environ.get(name) or str(default)  # empty counts as unset, as in the apps' settings
    if not value.isdigit() or int(value) < 1:
        sys.exit(f"serve.py: {name} must be a whole number of at least 1, got {value!r}")
    return int(value)


def read_server_settings(name, environ):
    """(host, port, workers, threads) from the environment; one line and exit 1 when one is wrong."""
    port = positive_int(environ, "PORT", DEFAULT_PORTS.get(name, 8000))
    if port > 65535:
        sys.exit(f"serve.py: PORT must be from 1 to 65535, got {port}")
    return (environ.get("HOST") or "127.0.0.1", port, positive_int(environ, "WORKERS", DEFAULT_WORKERS),
            positive_int(environ, "THREADS", DEFAULT_THREADS))


def build_server(name, host, port, workers, threads):
    """A granian server for the app called `name`; serve() hands its workers the app built in this process."""
    server = Granian(
        f"{name}:app_from_env",  # for granian's process names; the workers serve the app built here
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        http1_settings=HTTP1Settings(header_read_timeout=HEADER_READ_TIMEOUT_MS),
        workers_kill_timeout=GRACEFUL_TIMEOUT,
        # granian's own messages go through the root logger that service.py set up (text or JSON lines).
        log_dictconfig={"loggers": {"_granian": {"handlers": [], "propagate": True}}},
    )
    logging.getLogger("_granian").addFilter(DeliberateThreads())  # after granian has set up its loggers
    logger.info("serving %s on %s:%s with %d workers of %d threads, graceful timeout %d s", name, host, port,
                workers, threads, GRACEFUL_TIMEOUT)
    return server


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python serve.py api|web  (any module with an app_from_env() function)")
    name = argv[0]
    settings = read_server_settings(name, os.environ)
    metrics_dir = tempfile.mkdtemp(prefix=f"iris-{name}-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        app = importlib.import_module(name).app_from_env()  # exits 1 with one line when it cannot start
        # granian copies this process's environment into every request's WSGI environ: the password has been read.
        os.environ.pop("API_PASSWORD", None)
        # The workers are forked copies of this process and inherit the app; "fork" is also what lets them share
        # the model's memory (Python 3.14 changes the default start method).
        multiprocessing.set_start_method("fork", force=True)
        build_server(name, *settings).serve(target_loader=lambda target: app)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
