"""Signed versions (OpenSSF model signing): what train.py signs verifies with the upstream command, what the upstream
command signs is served, and a version that is unsigned, signed by another key or changed after signing is refused
while the others serve (tabserve/signing.py, model.load_checked)."""

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import webtest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import api
import train
from tabserve import versions
from tabserve.settings import ApiSettings, StartupError, read_api_settings
from tabserve.signing import read_public_keys
from tests.support import FLOWERS, PASSWORD, USERNAME, query

QUERY = query(FLOWERS["setosa"])
NAME = "iris-classifier"
UPSTREAM = str(Path(sys.executable).parent / "model_signing")  # the model-signing package's own command


def key_pair(folder, name):
    """(private key file, public key file) of a new P-256 key, as `openssl ecparam -genkey` makes one."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return {"ours": key_pair(folder, "ours"), "other": key_pair(folder, "other")}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys):
    """Versions 1 and 2 published and signed with our key, version 3 published unsigned."""
    folder = tmp_path_factory.mktemp("signed")
    train.main(["--publish", str(folder), "--sign-key", str(keys["ours"][0])])
    train.main(["--publish", str(folder), "--model", "random_forest", "--sign-key", str(keys["ours"][0])])
    train.main(["--publish", str(folder), "--model", "knn"])
    return folder


@pytest.fixture
def repository(signed, tmp_path, monkeypatch):
    monkeypatch.setattr(versions, "RESCAN_SECONDS", 0.0)
    return shutil.copytree(signed, tmp_path / "repository")


def client_of(public_key=None, **settings):
    keys = read_public_keys(public_key) if public_key else None
    app = api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, signing_keys=keys, **settings))
    client = webtest.TestApp(app)
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    return client


def states(client):
    return {e["version"]: e for e in client.post_json("/v2/repository/index", {}).json}


def wait_for(client, version, state, timeout=30.0):
    deadline = time.monotonic() + timeout
    while states(client).get(version, {}).get("state") != state:
        assert time.monotonic() < deadline, states(client)
        time.sleep(0.05)
    return states(client)[version]


def upstream(*args):
    return subprocess.run([UPSTREAM, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_a_version_signed_here_verifies_with_the_upstream_command(signed, keys):
    folder = signed / NAME / "2"
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.sig", "model.skops"]
    result = upstream("verify", "key", folder, "--public_key", keys["ours"][1], "--signature", folder / "model.sig")
    assert result.returncode == 0 and "Verification succeeded" in result.stdout, result.stderr
    other = upstream("verify", "key", folder, "--public_key", keys["other"][1], "--signature", folder / "model.sig")
    assert other.returncode != 0


def test_a_version_signed_by_the_upstream_command_is_served(repository, keys):
    folder = repository / NAME / "3"
    result = upstream("sign", "key", folder, "--private_key", keys["ours"][0], "--signature", folder / "model.sig")
    assert result.returncode == 0, result.stderr
    client = client_of(keys["ours"][1], model_repository=repository)
    wait_for(client, "3", "READY")
    answer = client.get(f"/api/v1.0?{QUERY}&_version=3").json
    assert answer["prediction"] == "setosa" and answer["model"]["version"] == "3"
    signature = client.get("/api/v1.0/model?_version=3").json["artifact"]["signature"]
    fingerprint = next(iter(read_public_keys(keys["ours"][1])))
    assert signature == f"verified: signed by the key with sha256 {fingerprint}"
    assert client.get(f"/v2/models/{NAME}/versions/3").json["parameters"]["signature"] == signature
    assert 'signature="verified",version="3"' in client.get("/metrics").text


def change_card(folder, card_file="model.json"):
    card = json.loads((folder / card_file).read_text())
    card["class_labels"]["setosa"] = "Iris virginica"  # what a writer of the folder might want the page to say
    (folder / card_file).write_text(json.dumps(card))


TAMPERING = {
    "a changed card": (change_card, "model.json changed after signing"),
    "a changed artifact": (lambda folder: (folder / "model.skops").write_bytes(
        (folder / "model.skops").read_bytes() + b"\0"), "model.skops changed after signing"),
    "an added file": (lambda folder: (folder / "notes.txt").write_text("hello"), "notes.txt added after signing"),
    "no signature": (lambda folder: (folder / "model.sig").unlink(), "it is not signed (there is no model.sig)"),
}


@pytest.mark.parametrize("what", sorted(TAMPERING))
def test_a_version_changed_after_signing_is_refused_and_the_others_serve(repository, keys, what, caplog):
    spoil, reason = TAMPERING[what]
    folder = shutil.copytree(repository / NAME / "2", repository / NAME / "4")
    card = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**card, "version": "4"}))  # a copy is version 4 ...
    result = upstream("sign", "key", folder, "--private_key", keys["ours"][0], "--signature", folder / "model.sig")
    assert result.returncode == 0, result.stderr  # ... signed by our key
    spoil(folder)
    client = client_of(keys["ours"][1], model_repository=repository)
    entry = wait_for(client, "4", "UNAVAILABLE")
    assert f"{folder} is refused: " in entry["reason"] and reason in entry["reason"]
    assert f"version 4 of {repository / NAME} is refused and not served" in caplog.text
    assert client.get(f"/api/v1.0?{QUERY}").json["model"]["version"] == "1"
    assert client.get(f"/api/v1.0?{QUERY}&_version=2").json["prediction"] == "setosa"
    assert 'tabserve_api_version_loads_total{outcome="UNAVAILABLE",version="4"} 1.0' in client.get("/metrics").text


def test_a_version_signed_by_another_key_is_refused(repository, keys):
    folder = repository / NAME / "3"
    upstream("sign", "key", folder, "--private_key", keys["other"][0], "--signature", folder / "model.sig")
    client = client_of(keys["ours"][1], model_repository=repository)
    fingerprint = next(iter(read_public_keys(keys["other"][1])))
    assert wait_for(client, "3", "UNAVAILABLE")["reason"].endswith(
        f"is refused: it is signed by a key that MODEL_SIGNING_PUBLIC_KEY does not hold (sha256 {fingerprint[:16]}…)")
    both = repository.parent / "both.pub"
    both.write_bytes(keys["ours"][1].read_bytes() + keys["other"][1].read_bytes())  # a key per publisher
    assert states(client_of(both, model_repository=repository))["3"]["state"] in ("LOADING", "READY")


def test_a_default_that_is_not_signed_stops_the_start_in_one_line(repository, keys):
    (repository / NAME / "routing.json").write_text(json.dumps({"default": "3"}))
    with pytest.raises(StartupError) as refused:
        client_of(keys["ours"][1], model_repository=repository)
    assert "the default version 3" in str(refused.value) and "it is not signed" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_without_a_key_versions_are_served_unverified_and_the_log_says_so(repository, caplog):
    caplog.set_level(logging.INFO)
    client = client_of(model_repository=repository)
    wait_for(client, "3", "READY")
    assert "model signatures are not verified: set MODEL_SIGNING_PUBLIC_KEY" in caplog.text
    assert client.get("/api/v1.0/model").json["artifact"] == {
        "format": "skops", "signature": "not verified: MODEL_SIGNING_PUBLIC_KEY is not set"}


def test_the_api_without_a_key_never_imports_model_signing(signed):
    code = ("import sys, api\nfrom tabserve.settings import ApiSettings\n"
            f"api.create_app(ApiSettings(username='u', password='p', model_repository={str(signed)!r}))\n"
            "print('model_signing' in sys.modules, 'cryptography' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(api.__file__).parent, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.split() == ["False", "False"], result.stderr[-2000:]


def test_a_single_artifact_is_signed_with_its_card(tmp_path, keys):
    artifact = tmp_path / "model" / "iris.skops"
    train.main(["--output", str(artifact), "--sign-key", str(keys["ours"][0])])
    train.main(["--dataset", "wine", "--output", str(tmp_path / "model" / "wine.skops")])  # another in the folder
    client = client_of(keys["ours"][1], model_path=artifact)
    assert client.get("/api/v1.0/model").json["artifact"]["signature"].startswith("verified: signed by the key")
    result = upstream("verify", "key", artifact.parent, "--public_key", keys["ours"][1], "--signature",
                      artifact.with_suffix(".sig"), "--ignore_unsigned_files")
    assert result.returncode == 0, result.stderr
    change_card(artifact.parent, "iris.json")
    with pytest.raises(StartupError, match=r"iris.skops is refused: its signature does not hold: iris.json changed"):
        client_of(keys["ours"][1], model_path=artifact)
    with pytest.raises(StartupError, match=r"wine.skops is refused: it is not signed \(there is no wine.sig\)"):
        client_of(keys["ours"][1], model_path=tmp_path / "model" / "wine.skops")


def test_writing_an_unsigned_artifact_removes_the_signature_it_no_longer_matches(tmp_path, keys):
    artifact = tmp_path / "iris.skops"
    train.main(["--output", str(artifact), "--sign-key", str(keys["ours"][0])])
    assert artifact.with_suffix(".sig").exists()
    train.main(["--output", str(artifact), "--seed", "7"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iris.json", "iris.skops"]


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read"),
    (b"not a key", "holds no PEM public key"),
    (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "holds a public key that cannot be read"),
])
def test_a_public_key_file_that_cannot_be_used_stops_the_start(tmp_path, content, message):
    path = tmp_path / "keys.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(StartupError, match=f"MODEL_SIGNING_PUBLIC_KEY: .*{message}"):
        read_api_settings({"API_USERNAME": "u", "API_PASSWORD": "p", "MODEL_SIGNING_PUBLIC_KEY": str(path)})


def test_a_signing_key_that_cannot_sign_is_refused_by_train_py(tmp_path, keys):
    result = subprocess.run([sys.executable, train.__file__, "--output", str(tmp_path / "m.skops"), "--sign-key",
                             str(keys["ours"][1])], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "is not an unencrypted PEM private key" in result.stderr
    assert list(tmp_path.iterdir()) == []
