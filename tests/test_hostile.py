"""Hostile input, slow clients and faults, against the services served as the containers serve them (serve.py) on
loopback ports. Raw sockets, so that nothing between the test and the server tidies the bytes.
"""

import base64
import contextlib
import json
import signal
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.support import FLOWERS, api_server, auth_header, query, web_server

AUTH = auth_header()["Authorization"]
SETOSA_QUERY = query(FLOWERS["setosa"])


@pytest.fixture(scope="module")
def served_web(served_api):
    """The web app served as its image serves it, in front of served_api."""
    server = web_server(served_api.url)
    yield server
    server.stop()


def exchange(port, data, timeout=10.0):
    """Send raw bytes and return all the server sends back until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may refuse to read more: what it answered, if anything, is still to be read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def status_of(response):
    """The status code of a raw HTTP response, or None when the server closed without answering."""
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.") else None


def get(server, path, headers=None, timeout=10.0):
    request = urllib.request.Request(server.url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def request(method, target, headers=(), body=b""):
    lines = [f"{method} ".encode() + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# --- Hostile input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, raw", [
    ("100 KB query string", request("GET", b"/api/v1.0?sepal_length=" + b"1" * 100_000)),
    ("64 KB header", request("GET", b"/api/v1.0?" + SETOSA_QUERY.encode(), [b"X-Padding: " + b"a" * 65_536])),
    ("10,000 headers", request("GET", b"/healthz", [b"X-%d: 1" % i for i in range(10_000)])),
])
def test_oversized_requests_get_a_clean_4xx_or_a_closed_connection(served_api, name, raw):
    started = time.monotonic()
    status = status_of(exchange(served_api.port, raw))
    assert status is None or 400 <= status < 500, name
    assert time.monotonic() - started < 5
    assert get(served_api, "/readyz")[0] == 200  # and the server is fine


def test_a_body_over_the_limit_is_refused_before_it_is_sent(served_api):
    headers = [f"Authorization: {AUTH}".encode(), b"Content-Type: application/json", b"Content-Length: 500000000"]
    with socket.create_connection(("127.0.0.1", served_api.port), timeout=10) as sock:
        sock.sendall(request("POST", b"/api/v1.0/predict", headers) + b'{"instances": [' + b"[1, 1, 1, 1], " * 100)
        started = time.monotonic()
        answer = sock.recv(65536)  # 500 MB were announced; 1.5 KB were sent
    assert status_of(answer) == 413 and b"application/problem+json" in answer
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("name, headers, body, expected", [
    ("deeply nested JSON", [b"Content-Type: application/json"], b"[" * 200_000 + b"]" * 200_000, 400),
    ("JSON sent as text/plain", [b"Content-Type: text/plain"], b'{"instances": [[1, 1, 1, 1]]}', 415),
    ("no Content-Type", [], b'{"instances": [[1, 1, 1, 1]]}', 415),
])
def test_bad_bodies_are_refused_cleanly(served_api, name, headers, body, expected):
    headers = [f"Authorization: {AUTH}".encode(), b"Content-Length: %d" % len(body), *headers]
    answer = exchange(served_api.port, request("POST", b"/api/v1.0/predict", headers, body))
    assert status_of(answer) == expected, name
    assert b"application/problem+json" in answer and b"Traceback" not in answer


@pytest.mark.parametrize("name, target, headers, allowed", [
    ("non-UTF-8 query", b"/api/v1.0?sepal_length=\xff\xfe&sepal_width=1&petal_length=1&petal_width=1",
     [f"Authorization: {AUTH}".encode()], {400}),
    ("non-UTF-8 escaped query", b"/api/v1.0?sepal_length=%ff%fe&sepal_width=1&petal_length=1&petal_width=1",
     [f"Authorization: {AUTH}".encode()], {400}),
    ("non-UTF-8 Authorization", b"/api/v1.0?" + SETOSA_QUERY.encode(), [b"Authorization: Basic \xff\xfe\xfd"],
     {400, 401}),
    ("non-UTF-8 credentials", b"/api/v1.0?" + SETOSA_QUERY.encode(),
     [b"Authorization: Basic " + base64.b64encode(b"\xff\xfe:\xfd")], {401}),
])
def test_non_utf8_bytes_are_refused_cleanly(served_api, name, target, headers, allowed):
    answer = exchange(served_api.port, request("GET", target, headers))
    assert status_of(answer) in allowed, (name, answer[:200])
    assert b"Traceback" not in answer


@pytest.mark.parametrize("target", [b"/static/../web.py", b"/static/..%2fweb.py", b"/static/%2e%2e/web.py",
                                    b"/static/../../etc/passwd", b"/static//etc/passwd", b"/static/%00style.css"])
def test_static_files_cannot_be_escaped_through_the_server(served_web, target):
    answer = exchange(served_web.port, request("GET", target))
    assert status_of(answer) in (400, 403, 404), answer[:200]
    assert b"import bottle" not in answer and b"root:" not in answer


# --- Slow and stuck clients ------------------------------------------------------------------------------------


def dribble(port, stop, seconds):
    """A client that sends its request headers one byte a second and never finishes them."""
    headers = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"z" * 100
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=seconds + 5) as sock:
            for byte in headers[: int(seconds)]:
                if stop.is_set():
                    return
                sock.send(bytes([byte]))
                time.sleep(1)
    except OSError:
        pass  # the server may drop a client this slow: that is its right


def latencies(server, count):
    result = []
    for _ in range(count):
        started = time.monotonic()
        status, _ = get(server, f"/api/v1.0?{SETOSA_QUERY}", {"Authorization": AUTH}, timeout=5)
        assert status == 200
        result.append(time.monotonic() - started)
        time.sleep(0.05)
    return result


def upload_slowly(port, stop, seconds, credentials=True):
    """A client that sends a batch's headers at once, then its body one byte a second, and never finishes it.

    Without credentials it is refused before its body is read. With them, the Python thread that answers it waits
    for the body (serve.py): fewer such clients than THREADS (8) cannot stall a worker, whichever one they reach.
    """
    headers = [b"Content-Type: application/json", b"Content-Length: 1000"]
    headers += [f"Authorization: {AUTH}".encode()] if credentials else []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=seconds + 5) as sock:
            sock.sendall(request("POST", b"/api/v1.0/predict", headers))
            for _ in range(int(seconds)):
                if stop.is_set():
                    return
                sock.send(b" ")
                time.sleep(1)
    except OSError:
        pass


def upload_slowly_without_credentials(port, stop, seconds):
    upload_slowly(port, stop, seconds, credentials=False)


@pytest.mark.parametrize("slow_client, count", [(dribble, 10), (upload_slowly_without_credentials, 30),
                                                (upload_slowly, 6)])
def test_slow_clients_do_not_delay_anyone_else(served_api, slow_client, count):
    normal = latencies(served_api, 20)
    stop = threading.Event()
    slow = [threading.Thread(target=slow_client, args=(served_api.port, stop, 15), daemon=True) for _ in range(count)]
    for thread in slow:
        thread.start()
    time.sleep(2)  # every slow client has sent a few bytes
    try:
        during = latencies(served_api, 40)
    finally:
        stop.set()
    assert statistics.median(during) < 3 * statistics.median(normal) + 0.02, (normal, during)
    assert max(during) < 1.0, during


# --- Faults ----------------------------------------------------------------------------------------------------


def test_sigterm_lets_requests_in_flight_finish_then_exits_zero(model_path):
    server = api_server(model_path)
    body = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]] * 1000}).encode()
    headers = [f"Authorization: {AUTH}".encode(), b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    sockets = []
    try:
        for _ in range(3):  # three uploads under way: headers and half the body sent
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(request("POST", b"/api/v1.0/predict", headers) + body[: len(body) // 2])
            sockets.append(sock)
        time.sleep(0.5)
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        answers = []
        for sock in sockets:
            sock.sendall(body[len(body) // 2:])
            answer = b""
            while chunk := sock.recv(65536):  # the request said Connection: close
                answer += chunk
            answers.append(answer)
        assert [status_of(answer) for answer in answers] == [200, 200, 200]
        assert all(answer.count(b'"prediction": "setosa"') == 1000 for answer in answers)
        assert server.process.wait(timeout=10) == 0
        assert time.monotonic() - stopped < 8
    finally:
        for sock in sockets:
            sock.close()
        if server.process.poll() is None:
            server.process.kill()
        server.stop()


def test_web_timeout_gives_503_in_time_and_frees_the_worker(stand_in_api):
    slow_api = stand_in_api(delay=10.0, status=200)
    server = web_server(slow_api, API_TIMEOUT="1", WORKERS="1")
    try:
        started = time.monotonic()
        status, page = get(server, f"/prediction?{SETOSA_QUERY}")
        assert status == 503 and b"The prediction service is unavailable" in page
        assert time.monotonic() - started < 1 + 0.5
        started = time.monotonic()
        assert get(server, "/healthz")[0] == 200
        assert time.monotonic() - started < 0.5
    finally:
        server.stop()


def chunked(body, size=65_536):
    """A body in HTTP/1.1 chunked transfer encoding."""
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def test_chunked_uploads_are_read_up_to_the_limit(served_api):
    headers = [f"Authorization: {AUTH}".encode(), b"Content-Type: application/json", b"Transfer-Encoding: chunked"]
    small = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()
    answer = exchange(served_api.port, request("POST", b"/api/v1.0/predict", headers, chunked(small)))
    assert status_of(answer) == 200 and b'"prediction": "setosa"' in answer
    large = b'{"instances": [' + b"[1, 1, 1, 1], " * 100_000 + b"[1, 1, 1, 1]]}"
    answer = exchange(served_api.port, request("POST", b"/api/v1.0/predict", headers, chunked(large)))
    assert status_of(answer) == 413
