"""Shared fixtures: a model trained by train.py, the API built on it (in-process and on a loopback port), the web
app in front of it, and stand-ins for an API that is down, slow or failing."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import webtest

import api
import train
import web
from tabserve.settings import ApiSettings, WebSettings
from tests.support import (
    PASSWORD,
    TESTS_FAILURES_PER_MINUTE,
    USERNAME,
    api_server,
    docker_available,
    free_port,
    remove_untagged_images,
    require,
    serve_in_thread,
    untagged_images,
    write_fruit_csv,
)

# Tests run in one process per core (pytest-xdist). These modules run one after another in a single process, in
# their file's order: they share the one Docker engine (images, compose projects, the swarm), or they measure time
# (a latency, a deadline) or put the machine under load, which a neighbour's load would disturb.
ONE_AT_A_TIME = {"test_stack", "test_swarm", "test_hostile", "test_load", "test_users", "test_web", "test_s3",
                 "test_batching", "test_serve", "test_bench"}


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's, called only when it runs the tests
def pytest_xdist_make_scheduler(config, log):
    """xdist's scheduling by scope, each test a scope of its own but those of ONE_AT_A_TIME, which are one. (Its own
    xdist_group marks do not work with pytest 9.2: xdist 3.8 renames a test's private _nodeid, which pytest no
    longer reads, and the tests of a group were spread over both processes.)"""
    from xdist.scheduler import LoadScopeScheduling

    class OneAtATime(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return "one at a time" if Path(nodeid.split("::")[0]).stem in ONE_AT_A_TIME else nodeid

    return OneAtATime(config, log)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    """A logistic-regression artifact and its metadata, trained exactly as `python train.py` does."""
    path = tmp_path_factory.mktemp("model") / "iris.skops"
    train.main(["--output", str(path)])
    return path


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    """The contract suites' models, name -> artifact path: iris, wine and a CSV with categories that the test writes,
    each trained as the README says (train.py on a bundled table or on the CSV)."""
    folder = tmp_path_factory.mktemp("models")
    fruit = write_fruit_csv(folder / "fruit.csv")
    commands = {"iris": [], "wine": ["--dataset", "wine"],
                "fruit": ["--csv", str(fruit), "--target", "Fruit", "--drop", "ID"]}
    paths = {}
    for name, arguments in commands.items():
        paths[name] = folder / f"{name}.skops"
        train.main([*arguments, "--output", str(paths[name])])
    return paths


@pytest.fixture(scope="session")
def docker_engine():
    """A Docker engine for the tests that build and run the images. Each test removes the images it tagged; Docker
    also keeps every build's training stage, untagged, as its cache. The tests share that cache while they run
    (a second build of the API image takes seconds), and the ones this session added are removed at its end."""
    require(docker_available(), "Docker Engine with the Compose plugin is not available "
                                "(../shared/tools/docker-ready installs it)")
    before = untagged_images()
    yield
    remove_untagged_images(keep=before)


@pytest.fixture(scope="session")
def api_app(model_path):
    """The API as a WSGI app, with the test credentials, logging a line for every request (ACCESS_LOG=all). Its tests
    send wrong passwords by the hundred from one address: the limit on failed logins (test_users.py) is lifted."""
    return api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=model_path, access_log="all",
                                       failures_per_minute=TESTS_FAILURES_PER_MINUTE))


@pytest.fixture
def api_client(api_app):
    """A WebTest client of the API that sends the right credentials."""
    client = webtest.TestApp(api_app)
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    return client


@pytest.fixture
def anonymous_api_client(api_app):
    """A WebTest client of the API that sends no credentials."""
    return webtest.TestApp(api_app)


@pytest.fixture(scope="module")
def served_api(model_path):
    """The API served as its image serves it (serve.py), on a free loopback port."""
    server = api_server(model_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def live_api(api_app):
    """The real API, served on a free loopback port for the web app to call; yields its URL."""
    with serve_in_thread(api_app) as url:
        yield url


def _new_web_client(api_url, username=USERNAME, password=PASSWORD, timeout=5.0):
    settings = WebSettings(api_url=api_url, username=username, password=password, timeout=timeout, access_log="all")
    return webtest.TestApp(web.create_app(settings))


@pytest.fixture
def new_web_client():
    """A function that builds a WebTest client of a new web app: new_web_client(api_url, password=..., timeout=...)."""
    return _new_web_client


@pytest.fixture
def web_client(live_api):
    """A WebTest client of the web app talking to the real API with the right credentials."""
    return _new_web_client(live_api)


@pytest.fixture
def closed_port_url():
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


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
def stand_in_api():
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
