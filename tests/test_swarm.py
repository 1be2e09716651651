"""Scale-out on Docker Swarm: docker-stack.yml deployed by `make stack` on this machine's engine, with its own stack
name, image tag and ports, reached through the front door's published ports on 127.0.0.1 only.

Initialises a single-node swarm when the engine is in none (and leaves it at the end, only then); always removes the
stack and the images it built. Skips where Docker is missing (fails instead when CI is set).
"""

import functools
import http.client
import json
import re
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

import train
from tabserve import repository as repositories
from tabserve import users
from tests.support import (
    FLOWERS,
    ROOT,
    auth_header,
    free_port,
    free_ports,
    query,
    readme_curl,
    require,
    wait_ready,
)

LOGIN_WINDOW = 3  # seconds; the stack's default is 60
LOGIN_FAILURES = 10
SETOSA_QUERY = query(FLOWERS["setosa"])
DEMO = auth_header("my_username", "my_password")
PARTNER_OLD, PARTNER_NEW = "partner's old secret", "partner's new secret"


def docker(*args, check=True, timeout=300):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def task_logs(stack, service_name):
    """Each running task's log, by container ID, read from the container: `docker service logs` hangs now and then
    without ever returning (docker/cli#4678, open), and on this one-node swarm every task's container is local."""
    containers = docker("ps", "-q", "--no-trunc", "--filter", f"label=com.docker.swarm.service.name="
                        f"{stack.name}_{service_name}").stdout.split()
    return {container: docker("logs", container, timeout=60) for container in containers}


@pytest.fixture(scope="module")
def swarm(docker_engine):
    """This engine's swarm: `make stack` makes a single-node one when the engine is in none, and then this leaves
    it afterwards (only then)."""
    was_in_a_swarm = docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "active"
    had_gateway_bridge = bool(docker("network", "ls", "-q", "--filter", "name=^docker_gwbridge$").stdout.strip())
    try:
        yield
    finally:
        if not was_in_a_swarm:
            docker("swarm", "leave", "--force", check=False)
            if not had_gateway_bridge:  # swarm init made it, and leaving does not remove it
                docker("network", "rm", "docker_gwbridge", check=False)


class Stack:
    """One deployment of docker-stack.yml, with its own name, tag and free ports."""

    def __init__(self):
        self.name = f"tabserve-t{uuid.uuid4().hex[:6]}"
        self.tag = f"test-{uuid.uuid4().hex[:8]}"
        names = ("API_PORT", "WEB_PORT", "API_TLS_PORT", "WEB_TLS_PORT", "API_GRPC_PORT", "API_GRPC_TLS_PORT")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "STACK": self.name, "TAG": self.tag, "ACCESS_LOG": "all",
                    "LOGIN_WINDOW": str(LOGIN_WINDOW), "LOGIN_FAILURES": str(LOGIN_FAILURES),
                    **{name: str(port) for name, port in self.ports.items()}}
        self.images = [f"tabserve-{name}:{self.tag}" for name in ("api", "web", "lb")]
        self.secrets = []  # secrets a test made by hand (a rotated users file), removed with the stack

    def write_users(self):
        """The API's users file before make stack (which writes it only when it is missing): the web replicas' user,
        as make stack would write it, and a partner whose password test_a_password_is_rotated... rotates."""
        folder = ROOT / ".stack" / self.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "api_users").write_text(f"my_username:{users.hash_password('my_password')}\n"
                                          f"partner:{users.hash_password(PARTNER_OLD)}\n")

    def make(self, target, timeout=900):
        return subprocess.run(["make", target], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def url(self, port_name, path=""):
        scheme = "https" if "TLS" in port_name else "http"
        return f"{scheme}://localhost:{self.ports[port_name]}{path}"

    def build_api_image(self, suffix, dockerfile=None, build_args=()):
        """Another API image: the Dockerfile piped in (FROM this stack's image), or Dockerfile.api with build args."""
        tag = f"tabserve-api:{self.tag}-{suffix}"
        command = ["build", "-q", "-t", tag, *(arg for pair in build_args for arg in ("--build-arg", pair))]
        if dockerfile:
            subprocess.run(["docker", *command, "-"], input=dockerfile, text=True, capture_output=True, check=True,
                           timeout=600)
        else:
            docker(*command, "-f", "Dockerfile.api", str(ROOT), timeout=900)
        self.images.append(tag)
        return tag

    def api_containers(self):
        return docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={self.name}_api").stdout.split()

    def remove(self):
        """The stack, its network, its containers (Swarm removes them a little later) and the images it used."""
        self.make("stack-down", timeout=120)
        label = f"label=com.docker.stack.namespace={self.name}"
        deadline = time.monotonic() + 90
        while (docker("ps", "-aq", "--filter", label).stdout.strip()
               or docker("network", "ls", "-q", "--filter", label).stdout.strip()) and time.monotonic() < deadline:
            time.sleep(1)
        for secret in self.secrets:
            docker("secret", "rm", secret, check=False)
        for image in self.images:
            docker("image", "rm", image, check=False)
        shutil.rmtree(ROOT / ".stack" / self.name, ignore_errors=True)
        if (ROOT / ".stack").exists() and not any((ROOT / ".stack").iterdir()):
            (ROOT / ".stack").rmdir()


@pytest.fixture(scope="module")
def stack(swarm):
    stack = Stack()
    try:
        stack.write_users()
        made = stack.make("stack")
        if made.returncode != 0:
            logs = docker("stack", "ps", "--no-trunc", stack.name, check=False).stdout[-3000:]
            pytest.fail(f"make stack failed:\n{made.stdout[-3000:]}\n{made.stderr[-3000:]}\n{logs}")
        yield stack
    finally:
        stack.remove()


def get(url, headers=None, context=None, timeout=10):
    """(status, headers, body) of a GET."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout,
                                    context=context) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers, err.read().decode()


class Load:
    """Steady load on the front door from a few kept-alive clients: every answer and every failure counted."""

    def __init__(self, port, clients=4, headers=DEMO):
        self.port, self.stop, self.lock, self.headers = port, threading.Event(), threading.Lock(), headers
        self.answers, self.failures, self.versions = 0, [], []
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]

    def client(self):
        connection = None
        while not self.stop.is_set():
            version = None
            try:
                connection = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                connection.request("GET", f"/api/v1.0?{SETOSA_QUERY}", headers=self.headers)
                response = connection.getresponse()
                body = response.read()
                if response.status == 200:
                    version = json.loads(body)["model"]["version"]
                else:
                    failure = f"{response.status}"
            except (OSError, http.client.HTTPException, ValueError) as err:
                failure, connection = f"{type(err).__name__}: {err}", None
            with self.lock:
                if version is not None:
                    self.answers += 1
                    self.versions.append(version)
                else:
                    self.failures.append(failure)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        time.sleep(1)
        return self

    def __exit__(self, *exc):
        time.sleep(1)
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)


def service(stack, name, template):
    return docker("service", "inspect", "-f", template, f"{stack.name}_{name}").stdout.strip()


def wait_for(condition, seconds, message):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(1)


# --- Through the front door --------------------------------------------------------------------------------------


def test_readme_curl_answers_through_the_front_door(stack):
    result = subprocess.run(readme_curl(stack.ports["API_PORT"]), capture_output=True, text=True, timeout=30)
    assert result.stdout.startswith("HTTP/1.1 200")
    assert re.search(r'"prediction": "(setosa|versicolor|virginica)"', result.stdout)
    assert "x-request-id:" in result.stdout.lower() and "granian" not in result.stdout.lower()


def test_the_web_page_through_the_front_door(stack):
    status, _, form = get(stack.url("WEB_PORT", "/"))
    assert status == 200 and '<form action="/prediction" method="get"' in form
    status, _, page = get(stack.url("WEB_PORT", f"/prediction?{SETOSA_QUERY}"))
    assert status == 200 and "Iris setosa" in page


def test_https_with_the_stacks_certificate(stack):
    context = ssl.create_default_context(cafile=str(ROOT / ".stack" / stack.name / "tls.crt"))
    status, _, body = get(stack.url("API_TLS_PORT", f"/api/v1.0?{SETOSA_QUERY}"), DEMO, context)
    assert status == 200 and json.loads(body)["prediction"] == "setosa"
    status, _, page = get(stack.url("WEB_TLS_PORT", f"/prediction?{SETOSA_QUERY}"), context=context)
    assert status == 200 and "Iris setosa" in page


def test_grpc_through_the_front_door_in_cleartext_and_over_tls(stack):
    """tritonclient.grpc through HAProxy's HTTP/2 frontends: h2c, and TLS with ALPN h2 and the stack's certificate;
    each call is balanced over the replicas (one connection, calls answered by more than one)."""
    certificate = str(ROOT / ".stack" / stack.name / "tls.crt")
    rows = np.array([FLOWERS["setosa"]], dtype=np.float32)
    for port_name, options in (("API_GRPC_PORT", {}), ("API_GRPC_TLS_PORT", {"ssl": True,
                                                                            "root_certificates": certificate})):
        with triton_grpc.InferenceServerClient(f"localhost:{stack.ports[port_name]}", **options) as client:
            assert client.is_server_ready()
            tensor = triton_grpc.InferInput("input-0", [1, 4], "FP32")
            tensor.set_data_from_numpy(rows)
            for _ in range(6):
                result = client.infer("iris-classifier", [tensor], headers={"authorization": DEMO["Authorization"]})
                assert result.as_numpy("predict")[0] == b"setosa"
            with pytest.raises(InferenceServerException) as refused:
                client.infer("iris-classifier", [tensor])
            assert refused.value.status() == "StatusCode.UNAUTHENTICATED"


def handshake(port, *options):
    """Whether openssl s_client completes a TLS handshake with the front door on this loopback port."""
    result = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                             *options], input="", capture_output=True, text=True, timeout=30)
    return result.returncode == 0 and "Cipher is (NONE)" not in result.stdout


@pytest.mark.parametrize("port_name", ["API_TLS_PORT", "WEB_TLS_PORT"])
def test_tls_follows_mozillas_intermediate_profile_and_sends_hsts(stack, port_name):
    require(shutil.which("openssl"), "openssl is not installed")
    port = stack.ports[port_name]
    assert handshake(port, "-tls1_3")
    assert handshake(port, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")
    assert handshake(port, "-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305")
    for cbc in ("ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384", "AES128-SHA", "AES256-SHA256"):  # LUCKY13's kind
        assert not handshake(port, "-tls1_2", "-cipher", cbc), cbc
    for old in ("-tls1", "-tls1_1"):
        assert not handshake(port, old, "-cipher", "ALL:@SECLEVEL=0"), old
    context = ssl.create_default_context(cafile=str(ROOT / ".stack" / stack.name / "tls.crt"))
    path = f"/api/v1.0?{SETOSA_QUERY}" if port_name == "API_TLS_PORT" else "/"
    # On answers and errors alike (a 404, not a 401: the front door counts every 401 as a guess).
    for url, headers in ((stack.url(port_name, path), DEMO), (stack.url(port_name, "/nothing-here"), {})):
        _, response_headers, _ = get(url, headers, context)
        assert response_headers["Strict-Transport-Security"] == "max-age=63072000"
    _, plain_headers, _ = get(stack.url(port_name.replace("_TLS", ""), path), DEMO)
    assert "Strict-Transport-Security" not in plain_headers  # HSTS means nothing over plain HTTP


def test_requests_spread_over_every_api_replica(stack):
    """Counted from each replica's own log (ACCESS_LOG=all here), not from anything the clients are told."""
    for number in range(60):
        assert get(stack.url("API_PORT", f"/api/v1.0?{SETOSA_QUERY}"),
                   {**DEMO, "X-Request-ID": f"spread-{number}"})[0] == 200
    time.sleep(1)  # log lines are written in batches (logs.BatchingStreamHandler)
    per_replica = {replica: len(re.findall(r"\[spread-\d+\] GET /api/v1.0 200", logs.stderr))  # they log to stderr
                   for replica, logs in task_logs(stack, "api").items()}
    assert len(per_replica) == 3 and sum(per_replica.values()) == 60, per_replica
    assert min(per_replica.values()) >= 10, per_replica


def test_the_web_replicas_call_the_api_through_the_front_door(stack):
    assert service(stack, "web", "{{range .Spec.TaskTemplate.ContainerSpec.Env}}{{println .}}{{end}}").count(
        "API_URL=http://lb:8001") == 1


def test_the_front_door_against_one_replica_direct(stack, capsys):
    """Figures for the README, not asserted: the front door's rate beside the same image published on its own."""
    require(shutil.which("wrk"), "wrk is not installed (apt-get install wrk)")
    image = service(stack, "api", "{{.Spec.TaskTemplate.ContainerSpec.Image}}")
    port = free_port()
    container = docker("run", "-d", "--rm", "--network", "host", "-e", "HOST=127.0.0.1", "-e", f"PORT={port}",
                       "-e", "API_USERNAME=my_username", "-e", "API_PASSWORD=my_password", image).stdout.strip()
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz")
        rates = {name: wrk_rate(f"http://127.0.0.1:{target}/api/v1.0?{SETOSA_QUERY}")
                 for name, target in (("front door, 3 replicas", stack.ports["API_PORT"]), ("one replica", port))}
    finally:
        docker("rm", "-f", container, check=False)
    with capsys.disabled():
        print("\n" + ", ".join(f"{name}: {rate:,.0f} req/s" for name, rate in rates.items()))
    assert all(rate > 0 for rate in rates.values())


# --- Faults and rollouts under load ----------------------------------------------------------------------------


def test_a_killed_replica_costs_no_request(stack, capsys):
    victim = stack.api_containers()[0]
    with Load(stack.ports["API_PORT"]) as load:
        time.sleep(2)
        docker("kill", victim)
        time.sleep(6)
    assert load.failures == [] and load.answers > 100
    wait_for(lambda: len(stack.api_containers()) == 3 and victim not in stack.api_containers(), 90,
             "Swarm did not replace the killed replica")
    with capsys.disabled():
        print(f"\nkilled one of 3 replicas under load: {load.answers} answers, {len(load.failures)} failed")


def test_another_model_rolls_out_without_a_failed_request(stack, capsys):
    other = stack.build_api_image("rf", build_args=["MODEL=random_forest"])
    before = json.loads(get(stack.url("API_PORT", "/api/v1.0/model"), DEMO)[2])["version"]
    started = time.monotonic()
    with Load(stack.ports["API_PORT"]) as load:
        docker("service", "update", "--detach=false", "--image", other, f"{stack.name}_api", timeout=600)
        seconds = time.monotonic() - started
    after = json.loads(get(stack.url("API_PORT", "/api/v1.0/model"), DEMO)[2])
    assert load.failures == [], load.failures[:5]
    assert after["algorithm"] == "random_forest" and after["version"] != before
    assert load.versions[0] == before and load.versions[-1] == after["version"]
    with capsys.disabled():
        print(f"\nrolled 3 replicas to another model in {seconds:.0f} s under load: {load.answers} answers, "
              f"{len(load.failures)} failed")


def test_a_broken_image_is_rolled_back_without_a_failed_request(stack, capsys):
    """An image whose artifact no longer matches its metadata: the API refuses to start, so it never gets healthy."""
    current = service(stack, "api", "{{.Spec.TaskTemplate.ContainerSpec.Image}}")
    broken = stack.build_api_image("broken", dockerfile=(
        f"FROM {current}\nUSER 0\n"
        "RUN sed -i 's/\"sha256\": \"[0-9a-f]*\"/\"sha256\": \"0000\"/' /app/model/model.json\nUSER 10001\n"))
    with Load(stack.ports["API_PORT"]) as load:
        docker("service", "update", "--detach=false", "--image", broken, f"{stack.name}_api", check=False, timeout=600)
        wait_for(lambda: service(stack, "api", "{{.UpdateStatus.State}}") == "rollback_completed", 180,
                 "the broken image was not rolled back")
    assert service(stack, "api", "{{.Spec.TaskTemplate.ContainerSpec.Image}}") == current
    assert load.failures == [], load.failures[:5]
    with capsys.disabled():
        print(f"\nrolled back a broken image under load: {load.answers} answers, {len(load.failures)} failed")


def test_versions_are_promoted_and_rolled_back_on_every_replica_without_a_failed_request(stack, tmp_path, capsys):
    """make stack REPO=...: every replica mounts the repository (deploy/repository-stack.yml) and follows its routing
    file; a promotion and a rollback under load, with no rollout."""
    repository = tmp_path / "models"
    train.main(["--publish", str(repository)])
    train.main(["--publish", str(repository), "--model", "random_forest"])
    made = subprocess.run(["make", "stack"], cwd=ROOT, env={**stack.env, "REPO": str(repository)},
                          capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    mounts = service(stack, "api", "{{range .Spec.TaskTemplate.ContainerSpec.Mounts}}{{.Target}}={{.Source}}:"
                                   "{{.ReadOnly}} {{end}}").split()
    assert f"/models={repository}:true" in mounts, mounts
    versions = [json.loads(get(stack.url("API_PORT", f"/api/v1.0?{SETOSA_QUERY}"), DEMO)[2])["model"]["version"]
                for _ in range(9)]
    assert versions == ["1"] * 9  # every replica serves the repository's default
    load = promoted_and_rolled_back(stack, lambda: repositories.main(["promote", str(repository), "2"]),
                                    lambda: repositories.main(["rollback", str(repository)]), settle=3)
    with capsys.disabled():
        print(f"\npromoted and rolled back on 3 replicas under load: {load.answers} answers, "
              f"{len(load.failures)} failed")


def promoted_and_rolled_back(stack, promote, rollback, settle):
    """The Load of a client that asked the API while version 2 was promoted and then rolled back, settle seconds after
    each: no request failed, and the replicas answered version 1, then 2, then 1 again."""
    with Load(stack.ports["API_PORT"]) as load:
        promote()
        time.sleep(settle)
        rollback()
        time.sleep(settle)
    assert load.failures == [], load.failures[:5]
    assert "2" in load.versions and load.versions[0] == load.versions[-1] == "1"
    return load


def wrk_rate(url):
    output = subprocess.run(["wrk", "-t2", "-c16", "-d5s", "-H", f"Authorization: {DEMO['Authorization']}", url],
                            capture_output=True, text=True, check=True).stdout
    assert "Non-2xx" not in output, output
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))


# --- Password guessing (late, and it waits until its guesses are forgotten: every client here reaches the front door
# from the same address) -----------------------------------------------------------------------------------------


def test_password_guessing_is_stopped_then_forgotten(stack):
    wrong = auth_header("my_username", "guess")
    statuses = [get(stack.url("API_PORT", "/api/v1.0/model"), wrong)[0] for _ in range(30)]
    assert statuses[:LOGIN_FAILURES] == [401] * LOGIN_FAILURES and 429 in statuses
    assert statuses.index(429) < 29
    status, headers, _ = get(stack.url("API_PORT", "/api/v1.0/model"), DEMO)
    assert status == 429 and headers["Retry-After"] == str(LOGIN_WINDOW)  # the right password waits too
    assert any(" 429 " in logs.stdout for logs in task_logs(stack, "lb").values())  # and HAProxy logged the refusals
    time.sleep(LOGIN_WINDOW + 1)
    assert get(stack.url("API_PORT", "/api/v1.0/model"), DEMO)[0] == 200


# --- Credentials ---------------------------------------------------------------------------------------------------


def roll_out_users(stack, text, version):
    """A new version of the API's users file as a secret of its own, rolled out with docker service update."""
    name = f"{stack.name}_api_users_v{version}"
    subprocess.run(["docker", "secret", "create", name, "-"], input=text, text=True, capture_output=True, check=True)
    stack.secrets.append(name)
    current = service(stack, "api", "{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}}{{end}}")
    docker("service", "update", "--detach=false", "--secret-rm", current, "--secret-add",
           f"source={name},target=api_users", f"{stack.name}_api", timeout=600)


def test_a_password_is_rotated_with_a_new_secret_without_a_failed_request(stack, capsys):
    """The rotation a team runs: the new password beside the old (a rollout), the client switches, the old one
    goes (another rollout). Under load, from that client, the whole time."""
    web_user = (ROOT / ".stack" / stack.name / "api_users").read_text().splitlines()[0]
    old, new = users.hash_password(PARTNER_OLD), users.hash_password(PARTNER_NEW)
    url = stack.url("API_PORT", f"/api/v1.0?{SETOSA_QUERY}")
    # The localhost clients of a one-node swarm share one address at the front door: let an earlier test's guesses
    # be forgotten first.
    wait_for(lambda: get(url, auth_header("partner", PARTNER_OLD))[0] != 429, LOGIN_WINDOW + 5, "still limited")
    assert get(url, auth_header("partner", PARTNER_OLD))[0] == 200
    started = time.monotonic()
    with Load(stack.ports["API_PORT"], headers=auth_header("partner", PARTNER_OLD)) as load:
        roll_out_users(stack, f"{web_user}\npartner:{old}\npartner:{new}\n", 1)
        load.headers = auth_header("partner", PARTNER_NEW)  # the client switches to its new password
        time.sleep(2)
        roll_out_users(stack, f"{web_user}\npartner:{new}\n", 2)
    with capsys.disabled():
        print(f"\npassword rotated in {time.monotonic() - started:.0f} s under load: {load.answers} answers, "
              f"{len(load.failures)} failed")
    assert load.failures == [] and load.answers > 100
    assert get(url, auth_header("partner", PARTNER_OLD))[0] == 401
    assert get(url, auth_header("partner", PARTNER_NEW))[0] == 200
    assert get(stack.url("WEB_PORT", f"/prediction?{SETOSA_QUERY}"))[0] == 200  # the web replicas' user kept


def test_make_stack_writes_the_users_file_from_the_password(stack, tmp_path):
    """make stack's recipe (the fixture wrote this stack's file itself): the password hashed by the API image."""
    (tmp_path / "password").write_text("a new stack's password\n")
    other = f"{stack.name}-users"
    target = ROOT / ".stack" / other / "api_users"
    try:
        made = subprocess.run(["make", str(target)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**stack.env, "STACK": other, "API_PASSWORD_SECRET": str(tmp_path / "password")})
        assert made.returncode == 0, made.stderr
        name, _, encoded = target.read_text().strip().partition(":")
        assert name == "my_username" and users.verify_password("a new stack's password", encoded)
    finally:
        shutil.rmtree(target.parent, ignore_errors=True)


# --- Last: it leaves the stack without its API service -------------------------------------------------------


def test_a_repository_in_s3_is_followed_by_every_replica_without_a_failed_request(stack, tmp_path, capsys):
    """docs/running.md's S3 walk-through on Swarm: the S3 server a stack of its own (make s3-stack), version 1 and 2
    published into it from this machine, make stack S3_REPOSITORY=1, a promotion and a rollback under load."""
    s3_stack, credentials, s3_port = f"{stack.name}-s3", tmp_path / "credentials", free_port()
    env = {**stack.env, "S3_STACK": s3_stack, "S3_NETWORK": s3_stack, "S3_PORT": str(s3_port),
           "S3_CREDENTIALS": str(credentials), "S3": f"http://127.0.0.1:{s3_port}", "REPO": "s3://models/",
           "REPOSITORY_POLL": "1"}
    stack.images.append(f"tabserve-s3:{stack.tag}")
    try:
        for words in (["s3-credentials"], ["s3-stack"], ["publish"], ["publish", "MODEL=random_forest"]):
            made = subprocess.run(["make", *words], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
            assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
        made = subprocess.run(["make", "stack", "S3_REPOSITORY=1"], cwd=ROOT, env={**env, "REPO": ""},
                              capture_output=True, text=True, timeout=900)
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
        answers = [get(stack.url("API_PORT", f"/api/v1.0?{SETOSA_QUERY}&_version=2"), DEMO) for _ in range(9)]
        assert [status for status, _, _ in answers] == [200] * 9, answers[0][2]
        assert {json.loads(body)["model"]["version"] for _, _, body in answers} == {"2"}  # every replica: the bucket's
        make = functools.partial(subprocess.run, cwd=ROOT, env=env, check=True, capture_output=True)
        load = promoted_and_rolled_back(stack, lambda: make(["make", "promote", "VERSION=2"]),
                                        lambda: make(["make", "rollback"]), settle=4)
        with capsys.disabled():
            print(f"\nfollowed a repository in S3 on 3 replicas under load: {load.answers} answers, "
                  f"{len(load.failures)} failed")
    finally:
        # The API's replicas are on the S3 stack's network: they go first, so that its network can go. The stack is
        # not deployed again with its image's model: no test comes after this one (the fixture removes the rest).
        docker("service", "rm", f"{stack.name}_api", check=False)
        docker("stack", "rm", s3_stack, check=False)
        deadline = time.monotonic() + 60
        while not s3_stack_gone(s3_stack) and time.monotonic() < deadline:
            time.sleep(1)


def s3_stack_gone(name):
    """The S3 stack's network gone and its volume removed (Swarm lets go of both a little after stack rm)."""
    if docker("network", "ls", "-q", "--filter", f"name=^{name}$").stdout.strip():
        docker("network", "rm", name, check=False)  # refused while the API's removed replicas are still stopping
        return False
    removed = docker("volume", "rm", f"{name}_s3-data", check=False)
    return removed.returncode == 0 or "no such volume" in removed.stderr.lower()
