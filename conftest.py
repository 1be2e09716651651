"""Shared fixtures: a model trained by train.py into a temporary folder, and the API built on it."""

import os
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from contextlib import contextmanager
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import webtest

import api
import train

USERNAME = "tester"
PASSWORD = "s3cret-test-password"


def require(available, reason):
    """Skip a test that needs a missing part, but fail it in CI, which must exercise the real stack."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def serve(app):
    """Serve a WSGI app on a free 127.0.0.1 port in a thread; yields its base URL and stops it afterwards."""
    server = make_server("127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    """A logistic-regression artifact and its metadata, trained exactly as `python train.py` does."""
    path = tmp_path_factory.mktemp("model") / "iris.joblib"
    train.main(["--output", str(path)])
    return path


@pytest.fixture(scope="session")
def wsgi_app(model_path):
    return api.create_app(USERNAME, PASSWORD, model_path)


@pytest.fixture
def client(wsgi_app):
    """A WebTest client that sends the right credentials."""
    app = webtest.TestApp(wsgi_app)
    app.authorization = ("Basic", (USERNAME, PASSWORD))
    return app


@pytest.fixture
def anonymous(wsgi_app):
    """A WebTest client that sends no credentials."""
    return webtest.TestApp(wsgi_app)


@pytest.fixture(scope="session")
def live_api(wsgi_app):
    """The real API, served on a free loopback port for the web app to call."""
    with serve(wsgi_app) as url:
        yield url


class _Answer(BaseHTTPRequestHandler):
    """A stand-in API that sleeps, then answers with a fixed status; for the failures a real API rarely shows."""
    delay, status = 0.0, 500

    def do_GET(self):
        time.sleep(self.delay)
        try:
            self.send_response(self.status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"oops")
        except OSError:
            pass  # the web app gave up waiting and closed the connection

    def log_message(self, *args):
        pass


@pytest.fixture
def broken_api():
    """Start a stand-in API with a given delay and status; yields a function that returns its URL."""
    servers = []

    def start(delay=0.0, status=500):
        handler = type("Handler", (_Answer,), {"delay": delay, "status": status})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
