"""Credentials a team can run with (users.py): a users file of scrypt hashes, several clients, rotation without a
restart, verified headers remembered, failed logins limited per address, nothing secret in a log or a metric."""

import concurrent.futures
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import webtest

import api
from tabserve import users
from tabserve.settings import ApiSettings, read_api_settings
from tests.support import FLOWERS, ROOT, USERNAME, api_server, auth_header, query, wait_ready

SETOSA = query(FLOWERS["setosa"])


def users_file(path, **passwords):
    """A users file with these name=password pairs; returns its path."""
    path.write_text("# name:hash, one client a line\n\n" +
                    "".join(f"{name}:{users.hash_password(password)}\n" for name, password in passwords.items()))
    return path


def app_with(model_path, path, **settings):
    app = api.create_app(ApiSettings(username="", password="", users_file=path, model_path=model_path, **settings))
    return webtest.TestApp(app)


def get(client, who, password, status=200, address="10.0.0.1", **headers):
    return client.get(f"/api/v1.0?{SETOSA}", headers={**auth_header(who, password), **headers}, status=status,
                      extra_environ={"REMOTE_ADDR": address})


# --- The hash and the file ---------------------------------------------------------------------------------------


def test_a_hash_describes_itself_and_verifies_only_its_password():
    encoded = users.hash_password("correct horse")
    scheme, n, r, p, salt, digest = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1") and salt and digest
    assert users.verify_password("correct horse", encoded) and not users.verify_password("correct horsE", encoded)
    assert users.hash_password("correct horse") != encoded  # a new salt each time


def test_hash_password_reads_standard_input_when_it_is_not_a_terminal():
    result = subprocess.run([sys.executable, "api.py", "--hash-password"], cwd=ROOT, input="s3cret\n",
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and users.verify_password("s3cret", result.stdout.strip())
    assert "s3cret" not in result.stdout + result.stderr


@pytest.mark.parametrize("line, message", [
    ("alice", "line 2: a line is name:hash"),
    ("al ice:scrypt$16384$8$1$c2FsdA$ZGlnZXN0", "line 2: a line is name:hash, the name without spaces"),
    ("alice:plaintext-password", "line 2: the hash is not scrypt$N$r$p$salt$digest"),
    ("alice:scrypt$1000$8$1$c2FsdA$ZGlnZXN0", "line 2: the hash's scrypt parameters are out of range"),
    ("alice:md5$16384$8$1$c2FsdA$ZGlnZXN0", "line 2: the hash is not scrypt"),
])
def test_each_malformed_line_is_named(line, message):
    text = f"{USERNAME}:{users.hash_password('x')}\n{line}\n"
    with pytest.raises(users.UsersFileError, match=message.replace("$", r"\$")):
        users.parse_users(text, "users")


def test_a_users_file_that_is_bad_at_start_up_stops_the_api_with_its_line(model_path, tmp_path):
    (tmp_path / "users").write_text("alice:not-a-hash\n")
    with pytest.raises(api.StartupError, match="users line 1: the hash is not"):
        app_with(model_path, tmp_path / "users")
    with pytest.raises(api.StartupError, match="holds no user"):
        (tmp_path / "empty").write_text("# nobody yet\n")
        app_with(model_path, tmp_path / "empty")


# --- Several clients, remembered headers, metrics ----------------------------------------------------------------


def test_two_users_at_once_each_with_their_own_password(model_path, tmp_path):
    client = app_with(model_path, users_file(tmp_path / "users", web="web secret", batch="batch secret"))
    assert get(client, "web", "web secret").json["prediction"] == "setosa"
    assert get(client, "batch", "batch secret").json["prediction"] == "setosa"
    get(client, "web", "batch secret", status=401)
    get(client, "nobody", "web secret", status=401)


def test_a_verified_header_is_remembered_and_a_wrong_one_never_is(model_path, tmp_path, monkeypatch):
    client = app_with(model_path, users_file(tmp_path / "users", web="web secret"))
    get(client, "web", "web secret")
    checks = []
    monkeypatch.setattr(users, "verify_password", lambda *args: checks.append(args) or False)
    started = time.perf_counter()
    for _ in range(50):
        get(client, "web", "web secret")  # remembered: no scrypt
    assert checks == [] and time.perf_counter() - started < 1.0
    get(client, "web", "wrong", status=401)
    get(client, "web", "wrong", status=401)
    assert len(checks) == 2  # checked every time, remembered never


def test_a_burst_of_requests_with_a_new_header_costs_one_scrypt(model_path, tmp_path, monkeypatch):
    """Eight requests at once with a header not yet verified (a new client, or every client after the file changed)
    wait for one verification instead of paying 50 ms and 16 MiB each; a wrong password is checked for each of them,
    so that each failed login counts."""
    client = app_with(model_path, users_file(tmp_path / "users", web="web secret"))
    checks, verify = [], users.verify_password

    def slow_verify(password, encoded):
        checks.append(password)
        time.sleep(0.2)  # long enough for the whole burst to arrive while the first verifies
        return verify(password, encoded)

    monkeypatch.setattr(users, "verify_password", slow_verify)
    for password, status, verified in (("web secret", 200, 1), ("wrong", 401, 8)):
        checks.clear()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _, p=password, s=status: get(client, "web", p, status=s), range(8)))
        assert len(answers) == 8 and len(checks) == verified, checks


def test_the_api_users_password_is_known_before_any_request(model_path, monkeypatch):
    """API_USERNAME's header is remembered when the app is built (before the server forks its workers): no worker's
    first request waits 40-80 ms for scrypt, which made the p99 at 1 connection."""
    client = webtest.TestApp(api.create_app(ApiSettings(username="web", password="web secret", users_file=None,
                                                        model_path=model_path)))
    checks = []
    monkeypatch.setattr(users, "verify_password", lambda *args: checks.append(args) or False)
    assert get(client, "web", "web secret").json["prediction"] == "setosa"
    assert checks == []
    get(client, "web", "wrong", status=401)
    assert len(checks) == 1  # any other password is still checked


def test_metrics_count_requests_and_failures_by_user_name_from_the_file_only(model_path, tmp_path):
    client = app_with(model_path, users_file(tmp_path / "users", web="web secret"), failures_per_minute=100)
    get(client, "web", "web secret")
    get(client, "web", "wrong", status=401)
    for number in range(5):
        get(client, f"guess-{number}", "x", status=401)
    client.get(f"/api/v1.0?{SETOSA}", status=401)
    metrics = client.get("/metrics", headers=auth_header("web", "web secret")).text
    version = json.loads(model_path.with_suffix(".json").read_text())["version"]
    assert ('tabserve_api_requests_total{endpoint="/api/v1.0",method="GET",status="200",user="web",'
            f'version="{version}"}} 1.0') in metrics
    assert ('tabserve_api_requests_total{endpoint="/api/v1.0",method="GET",status="401",user="none",version="none"} '
            '7.0') in metrics
    assert 'tabserve_api_failed_logins_total{user="web"} 1.0' in metrics
    assert 'tabserve_api_failed_logins_total{user="unknown"} 6.0' in metrics
    assert "guess-" not in metrics and "wrong" not in metrics and "web secret" not in metrics


def test_no_password_reaches_a_log_line(model_path, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    client = app_with(model_path, users_file(tmp_path / "users", web="web secret"))
    get(client, "web", "web secret")
    get(client, "web", "hunter2", status=401)
    assert "authentication failed for user 'web' from 10.0.0.1" in caplog.text
    assert "hunter2" not in caplog.text and "web secret" not in caplog.text


# --- Guessing is stopped at the door -------------------------------------------------------------------------------


def test_past_the_limit_an_address_gets_429_and_others_are_unaffected(model_path, tmp_path):
    client = app_with(model_path, users_file(tmp_path / "users", web="web secret"), failures_per_minute=3)
    for _ in range(3):
        get(client, "web", "guess", status=401, address="192.0.2.7")
    refused = get(client, "web", "web secret", status=429, address="192.0.2.7")  # even the right one, for now
    assert refused.content_type == "application/problem+json" and "Too many failed logins" in refused.json["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert get(client, "web", "web secret", address="192.0.2.8").json["prediction"] == "setosa"
    v2 = client.get("/v2", headers=auth_header("web", "x"), status=429, extra_environ={"REMOTE_ADDR": "192.0.2.7"})
    assert set(v2.json) == {"error"}


def test_x_forwarded_for_counts_only_behind_a_trusted_proxy(model_path, tmp_path):
    path = users_file(tmp_path / "users", web="web secret")
    untrusting = app_with(model_path, path, failures_per_minute=2)
    for client_address in ("198.51.100.1", "198.51.100.2"):  # a forged header does not make a new address
        get(untrusting, "web", "guess", status=401, address="127.0.0.1", **{"X-Forwarded-For": client_address})
    get(untrusting, "web", "guess", status=429, address="127.0.0.1", **{"X-Forwarded-For": "198.51.100.3"})
    trusting = app_with(model_path, path, failures_per_minute=2,
                        trusted_proxies=users.trusted_networks("127.0.0.0/8"))
    for _ in range(2):
        get(trusting, "web", "guess", status=401, address="127.0.0.1", **{"X-Forwarded-For": "203.0.113.9"})
    get(trusting, "web", "guess", status=429, address="127.0.0.1", **{"X-Forwarded-For": "203.0.113.9"})
    assert get(trusting, "web", "web secret", address="127.0.0.1",
               **{"X-Forwarded-For": "203.0.113.10"}).json["prediction"] == "setosa"


def test_the_limiter_forgets_the_oldest_address_past_its_bound():
    limiter = users.FailureLimiter(per_minute=10)
    for number in range(100_000):
        limiter.fail(f"10.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}", 1.0)
    assert len(limiter.windows) == users.MAX_ADDRESSES
    assert "10.1.134.159" in limiter.windows and "10.0.0.0" not in limiter.windows  # the last kept, the first gone


@pytest.mark.parametrize("environ, message", [
    ({"LOGIN_FAILURES_PER_MINUTE": "0"}, "LOGIN_FAILURES_PER_MINUTE must be a whole number of at least 1"),
    ({"TRUSTED_PROXIES": "10.0.0.0/8, proxy"}, "TRUSTED_PROXIES: 'proxy' is not an address or a network"),
    ({"API_USERS_FILE": "users", "API_USERNAME": "a", "API_PASSWORD": "b"}, "set API_USERS_FILE or API_USERNAME"),
])
def test_a_bad_credentials_setting_is_one_clear_line(environ, message):
    with pytest.raises(api.StartupError, match=message):
        read_api_settings({"API_USERNAME": "u", "API_PASSWORD": "p", **environ} if "API_USERS_FILE" not in environ
                          else environ)


# --- Rotation without a restart, under the production server -------------------------------------------------------


def status_of(server, who, password):
    request = urllib.request.Request(f"{server.url}/api/v1.0?{SETOSA}", headers=auth_header(who, password))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def wait_for(condition, seconds):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_rotated_password_is_refused_within_2_s_and_the_new_one_accepted_without_a_restart(model_path, tmp_path):
    path = users_file(tmp_path / "users", web="old secret", batch="batch secret")
    server = api_server(model_path, API_USERNAME="", API_PASSWORD="", API_USERS_FILE=str(path))
    try:
        assert status_of(server, "web", "old secret") == 200 and status_of(server, "batch", "batch secret") == 200
        pid = server.process.pid
        lines = path.read_text().splitlines()
        rotated = [line if not line.startswith("web:") else f"web:{users.hash_password('new secret')}"
                   for line in lines]
        path.write_text("\n".join(rotated) + "\n")
        changed = time.monotonic()
        # Both workers (each asked several times) refuse the old password within 2 s.
        assert wait_for(lambda: all(status_of(server, "web", "old secret") == 401 for _ in range(6)), 2.0)
        assert time.monotonic() - changed < 2.0
        assert status_of(server, "web", "new secret") == 200
        assert all(status_of(server, "batch", "batch secret") == 200 for _ in range(6))  # no one else disturbed
        path.write_text("\n".join(rotated) + "\nbroken line\n")  # a bad edit: the last good set stays
        time.sleep(1.5)
        assert status_of(server, "web", "new secret") == 200 and status_of(server, "batch", "batch secret") == 200
        assert "users line 5: a line is name:hash" in server.log_text()  # comment, blank, web, batch, broken
        path.write_text("\n".join(line for line in rotated if not line.startswith("batch:")) + "\n")
        assert wait_for(lambda: all(status_of(server, "batch", "batch secret") == 401 for _ in range(6)), 2.0)
        assert server.process.pid == pid and server.process.poll() is None
        wait_ready(server.url + "/readyz")
    finally:
        server.stop()


def test_the_users_file_hashes_are_never_answered(model_path, tmp_path):
    path = users_file(tmp_path / "users", web="web secret")
    client = app_with(model_path, path)
    hashes = [line.split(":", 1)[1] for line in path.read_text().splitlines() if line.startswith("web:")]
    for url in ("/api/v1.0/model", "/openapi.json", "/metrics"):
        text = client.get(url, headers=auth_header("web", "web secret")).text
        assert hashes[0] not in text and "scrypt$" not in text
    assert json.dumps(client.get("/readyz").json).find("scrypt") == -1


def test_while_a_password_is_rotated_the_old_and_the_new_are_both_good(model_path, tmp_path):
    path = tmp_path / "users"
    path.write_text(f"partner:{users.hash_password('old')}\npartner:{users.hash_password('new')}\n")
    client = app_with(model_path, path)
    assert get(client, "partner", "old").status_int == 200 and get(client, "partner", "new").status_int == 200
    get(client, "partner", "neither", status=401)
