"""serve.py, the production server's configuration: what it refuses, and what it hands to the apps."""

import json
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests.support import PASSWORD, ROOT, USERNAME, Server, api_server, free_ports, readme_curl, wait_ready


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


def test_the_servers_of_a_test_run_never_share_a_port():
    """A port handed to one server but not yet listened on must not go to the next (the kernel, asked for any free
    port 300 times, repeats a few): a server started on a taken port fails, and so would its test."""
    ports = [port for _ in range(150) for port in free_ports(2)]
    assert len(set(ports)) == len(ports)


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


@pytest.fixture(scope="module")
def echo_port():
    """The environ echo under the production server (granian); yields its port."""
    process = Server("tests.environ_echo", {"API_USERNAME": USERNAME, "API_PASSWORD": PASSWORD})
    try:
        wait_ready(process.url + "/")
        yield process.port
    finally:
        process.stop()


def environ_of(port, request):
    """The environ (and what wsgi.py reads from it) that a raw HTTP/1.1 request gets; its lines end in \\n here."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.replace(b"\n", b"\r\n"))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return json.loads(answer.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize("request_bytes, check", [
    # tritonclient sends its JSON with no Content-Type: a server that says text/plain made /v2 refuse it (415).
    (b"POST /v2 HTTP/1.1\nHost: x\nContent-Length: 2\nConnection: close\n\n{}",
     lambda seen: seen["as read"] == {"media type": "", "body": "{}"}),
    (b"POST /v2 HTTP/1.1\nHost: x\nContent-Type: Application/JSON; charset=utf-8\nContent-Length: 2\n"
     b"Connection: close\n\n{}", lambda seen: seen["as read"] == {"media type": "application/json", "body": "{}"}),
    # A chunked body is read whole (wsgiref hands an app an empty one).
    (b"POST /v2 HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\nConnection: close\n\n2\n{\"\n3;x=1\na\":\n"
     b"3\n 1}\n0\n\n", lambda seen: seen["as read"]["body"] == '{"a": 1}'),
    # No body at all reads as empty, whether the server says CONTENT_LENGTH "" or nothing.
    (b"GET /v2 HTTP/1.1\nHost: x\nConnection: close\n\n", lambda seen: seen["as read"]["body"] == ""),
    # A header spelt with "_" is filed as the one spelt with "-": nothing may trust such a header from a client.
    (b"GET /v2 HTTP/1.1\nHost: x\nX_Request_ID: sent\nConnection: close\n\n",
     lambda seen: seen["HTTP_X_REQUEST_ID"] == "sent"),
], ids=["no content type", "content type with parameters", "chunked body", "no body", "underscore header"])
def test_the_server_hands_the_apps_the_request_as_they_read_it(echo_port, request_bytes, check):
    seen = environ_of(echo_port, request_bytes)
    assert check(seen), {key: value for key, value in seen.items() if key.isupper() or key == "as read"}


def test_python_api_py_runs_the_production_server_with_one_worker(model_path):
    """`python api.py` (the README's way to run it without Docker) serves the README's curl under granian itself."""
    server = api_server(model_path, "api.py", API_USERNAME="my_username", API_PASSWORD="my_password", WORKERS="")
    try:
        result = subprocess.run(readme_curl(server.port), capture_output=True, text=True, timeout=30)
        assert result.stdout.startswith("HTTP/1.1 200") and "server: granian" in result.stdout.lower()
        assert len(server.rss_mib()) == 2  # granian's main process and one worker
    finally:
        server.stop()
