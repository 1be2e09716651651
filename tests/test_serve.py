"""serve.py, the production server's configuration: what it refuses, and what it hands to the apps."""

import json
import subprocess
import sys
import urllib.request

import pytest

from tests.support import PASSWORD, ROOT, USERNAME, Server, wait_ready


def test_the_password_does_not_reach_the_apps_environ():
    """granian copies the process environment into every request's WSGI environ: serve.py removes the password."""
    server = Server("tests.environ_echo", {"API_USERNAME": USERNAME, "API_PASSWORD": PASSWORD})
    try:
        wait_ready(server.url + "/")
        with urllib.request.urlopen(server.url + "/") as response:
            environ = json.load(response)
    finally:
        server.stop()
    assert environ["PATH_INFO"] == "/" and "wsgi.input" in environ  # it is the request's environ
    assert "API_PASSWORD" not in environ and PASSWORD not in json.dumps(environ)


@pytest.mark.parametrize("environ, message", [
    ({"WORKERS": "0"}, "WORKERS must be a whole number of at least 1, got '0'"),
    ({"THREADS": "many"}, "THREADS must be a whole number of at least 1, got 'many'"),
    ({"API_USERNAME": ""}, "api refuses to start: API_USERNAME and API_PASSWORD"),
])
def test_a_bad_setting_stops_the_server_with_one_line(model_path, environ, message):
    env = {"PATH": "/usr/bin:/bin", "API_USERNAME": USERNAME, "API_PASSWORD": PASSWORD,
           "MODEL_PATH": str(model_path), "PORT": "1", **environ}
    result = subprocess.run([sys.executable, "serve.py", "api"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
