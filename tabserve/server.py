"""The production server for both services: granian, with this project's one server configuration.

    serve("api")      # python serve.py api: api.app_from_env() on port 8000, WORKERS worker processes
    serve("web")      # python serve.py web: web.app_from_env() on port 5000

Why granian: its Rust layer (hyper) reads and parses every request's headers, so a client that sends them one byte a
second costs a few KB and no Python thread, and it measured faster than gunicorn with gevent (docs/performance.md).
A request's body, though, is read by the Python thread that answers it: a client that sends its body slowly holds
one thread until it is done, so WORKERS x THREADS such clients at once stall the service. THREADS is 8 rather than
one per core for that reason (and, in the web app, for the calls to the API it waits on); in production, a proxy
that buffers requests before passing them on (docker-stack.yml's HAProxy does) removes the limit.

The app is built here, in the main process, before the workers are forked (what gunicorn calls preloading): a bad
configuration or a model that fails its self-test stops the server with the app's own one-line message, and the
workers share the loaded model's memory. Prometheus metrics are summed over the workers through files in a
directory of this server's own, made fresh at every start and set before the app is built.
"""

import gc
import importlib
import logging
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile

from granian import Granian
from granian.constants import Interfaces
from granian.http import HTTP1Settings

from tabserve.logs import configure_logging
from tabserve.settings import (
    DEFAULT_WORKERS,
    StartupError,
    logging_settings,
    read_grpc_port,
    read_server_settings,
)

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


def start(name, log, read_settings, create_app):
    """Logging set up from the environment, then settings and app, or one clear line and exit 1 (StartupError)."""
    environ = os.environ
    configure_logging(*logging_settings(environ))
    try:
        settings = read_settings(environ)
        app = create_app(settings)
    except StartupError as err:
        log.critical("%s refuses to start: %s", name, err)
        raise SystemExit(1) from None
    log.info("settings: user %r, log level %s, log format %s, access log %s, metrics %s", settings.username,
             settings.log_level, settings.log_format, settings.access_log,
             "summed over the workers" if "PROMETHEUS_MULTIPROC_DIR" in environ else "in-process")
    # Everything loaded so far (libraries, templates, the model) lives as long as the process: keep the garbage
    # collector from scanning it again and again (a large batch allocates many objects), and keep its pages shared
    # after the server forks its workers.
    gc.freeze()
    return settings, app


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
        # granian's own messages go through the root logger that logs.py set up (text or JSON lines).
        log_dictconfig={"loggers": {"_granian": {"handlers": [], "propagate": True}}},
    )
    logging.getLogger("_granian").addFilter(DeliberateThreads())  # after granian has set up its loggers
    logger.info("serving %s on %s:%s with %d workers of %d threads, graceful timeout %d s", name, host, port,
                workers, threads, GRACEFUL_TIMEOUT)
    return server


def check_free(host, port):
    """StartupError when another process listens on the gRPC port. The workers share it with SO_REUSEPORT, which
    would as gladly share it with another server of the same user: a bind without it fails where anyone listens."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections of a last run, closing, are no owner
        try:
            probe.bind((host, port))
        except OSError as err:
            raise StartupError(f"GRPC_PORT {port} on {host} is taken ({err.strerror}): set GRPC_PORT to a free port, "
                               "or off") from None


def worker_app(app, host, threads, grpc_port):
    """What a worker serves, called in it after the fork: the app, and beside the API's its gRPC server (gRPC's
    threads must not exist before a fork, so each worker starts its own; they share the port)."""
    if grpc_port is not None:
        from tabserve import grpcapi  # only where it is served: the web app never loads grpc
        grpcapi.serve(app, host, grpc_port, threads)
    return app


def serve(name, default_workers=DEFAULT_WORKERS):
    """Serve the app of the module called name (its app_from_env()) until SIGTERM or SIGINT."""
    try:
        settings = read_server_settings(name, os.environ, default_workers)
        grpc_port = read_grpc_port(os.environ) if name == "api" else None
        if grpc_port is not None:
            check_free(settings[0], grpc_port)
    except StartupError as err:
        sys.exit(f"serve.py: {err}")
    metrics_dir = tempfile.mkdtemp(prefix=f"tabserve-{name}-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        app = importlib.import_module(name).app_from_env()  # exits 1 with one line when it cannot start
        # granian copies this process's environment into every request's WSGI environ: the password has been read.
        os.environ.pop("API_PASSWORD", None)
        # The workers are forked copies of this process and inherit the app; "fork" is also what lets them share
        # the model's memory (Python 3.14 changes the default start method).
        multiprocessing.set_start_method("fork", force=True)
        host, _, _, threads = settings
        build_server(name, *settings).serve(target_loader=lambda target: worker_app(app, host, threads, grpc_port))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
