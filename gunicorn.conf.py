"""gunicorn settings for both services (the API and the web app), from environment variables.

    gunicorn --config gunicorn.conf.py 'api:app_from_env()'     # or 'web:app_from_env()'

    HOST, PORT   where to listen (default: 127.0.0.1 and 8000; the images set 0.0.0.0 and their port)
    WORKERS      worker processes (default: 2, one per core of a small machine)
    THREADS      threads per worker (default: 4)
"""

import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WORKERS", "2"))
threads = int(os.environ.get("THREADS", "4"))
# gthread: a worker's main thread waits on idle and slow connections with a poller, so a client that dribbles its
# request does not hold one of the threads that compute answers.
worker_class = "gthread"
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
