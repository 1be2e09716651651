"""gunicorn settings for both services (the API and the web app), from environment variables.

    gunicorn --config gunicorn.conf.py 'api:app_from_env()'     # or 'web:app_from_env()'

    HOST, PORT           where to listen (default: 127.0.0.1 and 8000; the images set 0.0.0.0 and their port)
    WORKERS              worker processes (default: 2, one per core of a small machine)
    WORKER_CLASS         gevent (default) or gthread
    WORKER_CONNECTIONS   connections a gevent worker serves at once (default: 1000)
    THREADS              threads per gthread worker (default: 4)

Why gevent: a client that sends its request one byte a second holds a gthread worker's thread for as long as it
dribbles (ten such clients stopped a 2 x 4-thread API here); a gevent worker reads every connection cooperatively,
so slow clients cost a few KB each and everyone else is answered as usual. It was also the faster of the two in
bench.py (the event loop needs no GIL hand-offs between threads). The arithmetic of a prediction is a few
microseconds, far too short to need threads.
"""

import os
import shutil
import tempfile

# Prometheus metrics summed over all workers: each worker writes its counts to files in a directory of this
# server's own, made fresh at every start (stale files would add old counts), and set before the app is imported,
# since prometheus_client reads it at import.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="iris-metrics-")

worker_class = os.environ.get("WORKER_CLASS", "gevent")
if worker_class == "gevent":
    # Patch the standard library before the app is imported (preload_app below), as gevent requires.
    import gevent
    from gevent import monkey

    monkey.patch_all()

    def post_request(worker, req, environ, resp):
        """Let the other connections have their turn.

        gevent runs a greenlet until it would block; on a fast network a kept-alive connection whose next request
        has already arrived never blocks, and starves the others (p99 at 16 connections was 80 ms, 9 ms with this).
        """
        gevent.sleep(0)

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WORKERS", "2"))
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "1000"))
threads = int(os.environ.get("THREADS", "4"))
# Build the app (load and self-test the model) once in the master, before forking: a bad configuration stops
# gunicorn with the app's one-line message instead of a crash loop of workers, and the workers share the memory.
preload_app = True
# docker stop waits 10 s before SIGKILL: finish in-flight requests well within that.
graceful_timeout = 5
keepalive = 5
# Each app logs one line per request itself; gunicorn's own messages go to stderr.
accesslog = None
errorlog = "-"
# The containers' root filesystem is read-only: no control socket, heartbeat files in the /tmp tmpfs.
control_socket_disable = True
worker_tmp_dir = "/tmp"


def child_exit(server, worker):
    """A worker that is gone no longer contributes to live gauges; its counts stay in the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def when_ready(server):
    concurrency = f"{worker_connections} connections" if worker_class == "gevent" else f"{threads} threads"
    server.log.info("serving on %s with %d %s workers of %s each, graceful timeout %d s", bind, workers,
                    worker_class, concurrency, graceful_timeout)
