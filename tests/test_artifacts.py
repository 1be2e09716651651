"""The door a model comes in by: train.py writes skops files that load back as they were, the API builds them only
from its own list of types, and refuses a pickle, a crafted file and a crafted tree, by MODEL_PATH and in a
repository, while the other versions serve (tabserve/artifacts.py, model.py)."""

import hashlib
import json
import operator
import os
import pickle
import shutil
import subprocess
import sys

import joblib
import numpy as np
import pytest
import skops.io
import webtest
from sklearn.preprocessing import FunctionTransformer

import api
import train
from tabserve import artifacts, versions
from tabserve.datasets import load_bundled
from tabserve.settings import ApiSettings, StartupError
from tabserve.tables import read_csv
from tabserve.training import ALGORITHMS, build_estimator
from tests.support import FLOWERS, PASSWORD, ROOT, USERNAME, load_artifact, query, write_fruit_csv, write_penguins_csv

QUERY = query(FLOWERS["setosa"])
NAME = "iris-classifier"


def client_of(**settings):
    client = webtest.TestApp(api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, **settings)))
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    return client


def plant(artifact, data, card):
    """Write data as the artifact, and the card beside it carrying its sha256: what a writer of the folder can do."""
    artifact.write_bytes(data)
    card = {**card, "sha256": hashlib.sha256(data).hexdigest()}
    artifact.with_suffix(".json").write_text(json.dumps(card))


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """A table per kind the round trip covers: numbers (iris, diabetes), categories (fruit), holes (penguins)."""
    folder = tmp_path_factory.mktemp("tables")
    return {"iris": load_bundled("iris"), "diabetes": load_bundled("diabetes"),
            "fruit": read_csv(write_fruit_csv(folder / "fruit.csv"), "Fruit", ("ID",)),
            "penguins": read_csv(write_penguins_csv(folder / "penguins.csv"), "species")}


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """Version 1 (the default model) and version 2 (a random forest), as train.py publishes them."""
    folder = tmp_path_factory.mktemp("repository")
    train.main(["--publish", str(folder)])
    train.main(["--publish", str(folder), "--model", "random_forest"])
    return folder


@pytest.fixture
def copy(repository, tmp_path, monkeypatch):
    monkeypatch.setattr(versions, "RESCAN_SECONDS", 0.0)
    return shutil.copytree(repository, tmp_path / "repository")


# --- Every model train.py writes comes back as it was -----------------------------------------------------------


@pytest.mark.parametrize(("table", "algorithm"), [(table, algorithm) for table in ("iris", "diabetes", "fruit",
                                                                                   "penguins")
                                                  for algorithm in ALGORITHMS["regression" if table == "diabetes"
                                                                              else "classification"]])
def test_every_algorithm_of_both_tasks_round_trips_through_skops(tables, table, algorithm):
    data = tables[table]
    X = data.matrix()
    estimator = build_estimator(data, algorithm, 0).fit(X, data.target)
    written = artifacts.to_bytes(estimator)
    # The same fit, the same bytes, and so the same version: skops's memory addresses, uuids, times and the padding
    # of a tree's nodes are taken out (artifacts.canonical).
    assert artifacts.to_bytes(build_estimator(data, algorithm, 0).fit(X, data.target)) == written
    loaded = artifacts.from_bytes(written, "model.skops")
    ask = "predict" if data.task == "regression" else "predict_proba"
    assert np.array_equal(getattr(loaded, ask)(X), getattr(estimator, ask)(X))  # the training rows, exactly


@pytest.mark.parametrize("library", ["xgboost", "lightgbm"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_xgboost_and_lightgbm_round_trip_through_skops(tables, library, task):
    module = __import__(library)
    data = tables["iris"]
    X = data.matrix()
    if task == "classification":
        names = {"xgboost": "XGBClassifier", "lightgbm": "LGBMClassifier"}
        y = np.unique(data.target, return_inverse=True)[1]
    else:
        names, y = {"xgboost": "XGBRegressor", "lightgbm": "LGBMRegressor"}, X[:, 0]
        X = X[:, 1:]
    options = {"verbose": -1} if library == "lightgbm" else {}
    estimator = getattr(module, names[library])(n_estimators=20, **options).fit(X, y)
    loaded = artifacts.from_bytes(artifacts.to_bytes(estimator), "model.skops")
    ask = "predict" if task == "regression" else "predict_proba"
    assert np.array_equal(getattr(loaded, ask)(X), getattr(estimator, ask)(X))


def test_the_card_records_the_format_and_the_artifact_is_a_zip(tmp_path):
    train.main(["--output", str(tmp_path / "iris.skops")])
    card = json.loads((tmp_path / "iris.json").read_text())
    assert card["format"] == "skops" and card["versions"]["skops"] == skops.__version__
    assert (tmp_path / "iris.skops").read_bytes()[:4] == b"PK\x03\x04"


def test_the_output_is_named_for_its_format(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--output", str(tmp_path / "iris.joblib")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "the artifact is a skops file: name it <something>.skops" in result.stderr
    assert list(tmp_path.iterdir()) == []


# --- Crafted files are refused before anything in them is built ------------------------------------------------


CRAFTED = {  # what a writer of the model folder could put in a skops file, and the type our list refuses
    "builtins.eval": FunctionTransformer(func=eval),
    "posix.system": FunctionTransformer(func=os.system, kw_args={"command": "touch /tmp/tabserve-pwned"}),
    "operator.methodcaller": FunctionTransformer(func=operator.methodcaller("system", "touch /tmp/tabserve-pwned")),
}


@pytest.mark.parametrize("named", sorted(CRAFTED))
def test_a_crafted_skops_file_is_refused_at_start_in_one_line(model_path, tmp_path, named):
    card = json.loads(model_path.with_suffix(".json").read_text())
    plant(tmp_path / "iris.skops", skops.io.dumps(CRAFTED[named]), card)
    with pytest.raises(StartupError) as refused:
        api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=tmp_path / "iris.skops"))
    message = str(refused.value)
    assert message.endswith(f"names types the API does not trust, so nothing in it is built: {named}")
    assert "\n" not in message


@pytest.mark.parametrize("named", sorted(CRAFTED))
def test_a_crafted_version_is_refused_and_the_others_serve(copy, named):
    client = client_of(model_repository=copy)
    crafted = shutil.copytree(copy / NAME / "2", copy / NAME / "3")
    plant(crafted / "model.skops", skops.io.dumps(CRAFTED[named]), json.loads((crafted / "model.json").read_text()))
    assert client.get(f"/api/v1.0?{QUERY}").json["model"]["version"] == "1"
    entry = wait_for_state(client, "3", "UNAVAILABLE")
    assert entry["reason"].endswith(f"names types the API does not trust, so nothing in it is built: {named}")
    assert client.get(f"/api/v1.0?{QUERY}&_version=2").json["prediction"] == "setosa"


def wait_for_state(client, version, state, timeout=30.0):
    import time
    deadline = time.monotonic() + timeout
    while True:
        entries = {e["version"]: e for e in client.post_json("/v2/repository/index", {}).json}
        if entries.get(version, {}).get("state") == state:
            return entries[version]
        assert time.monotonic() < deadline, entries
        time.sleep(0.05)


def pickle_that_touches(marker):
    """A pickle that creates a file the moment it is unpickled: os.system, called by the unpickler."""
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


def test_a_crafted_pickle_whose_card_matches_is_refused_and_never_runs(model_path, tmp_path):
    live = tmp_path / "live"
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=pickle_that_touches(live), timeout=30, check=True)
    assert live.exists()  # the payload is real: unpickled, it creates its file
    marker = tmp_path / "pwned"
    card = json.loads(model_path.with_suffix(".json").read_text())
    plant(tmp_path / "iris.skops", pickle_that_touches(marker), card)  # a pickle, whatever its name says
    with pytest.raises(StartupError, match=r"iris.skops is a pickle, and loading a pickle runs the code it names: "
                                           r"the API loads only skops files. Convert it with 'python train.py "
                                           r"--convert .*iris.skops' \(or set ALLOW_PICKLE=true"):
        api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=tmp_path / "iris.skops"))
    assert not marker.exists()


def test_a_crafted_pickle_version_is_refused_and_never_runs(copy, tmp_path):
    client = client_of(model_repository=copy)
    marker = tmp_path / "pwned"
    crafted = shutil.copytree(copy / NAME / "2", copy / NAME / "3")
    plant(crafted / "model.skops", pickle_that_touches(marker), json.loads((crafted / "model.json").read_text()))
    client.get(f"/api/v1.0?{QUERY}")
    assert "is a pickle, and loading a pickle runs the code" in wait_for_state(client, "3", "UNAVAILABLE")["reason"]
    assert not marker.exists()
    assert client.get(f"/api/v1.0?{QUERY}&_version=2").json["model"]["version"] == "2"


def test_a_file_that_is_neither_is_refused(model_path, tmp_path):
    plant(tmp_path / "iris.skops", b"not a model", json.loads(model_path.with_suffix(".json").read_text()))
    with pytest.raises(StartupError, match="is neither a skops file nor a pickle: not a model train.py writes"):
        api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=tmp_path / "iris.skops"))


@pytest.mark.parametrize("spoil", ["outside", "cycle", "feature"])
def test_a_forest_whose_nodes_point_outside_their_tree_is_refused(tmp_path, spoil):
    """skops checks types, not contents: a crafted Tree would crash the process when it predicts."""
    train.main(["--model", "random_forest", "--output", str(tmp_path / "forest.skops")])
    forest = load_artifact(tmp_path / "forest.skops")
    tree = forest.estimators_[3].tree_
    state = tree.__getstate__()
    nodes = state["nodes"].copy()
    field, value = {"outside": ("left_child", 10**6), "cycle": ("right_child", 0), "feature": ("feature", 7)}[spoil]
    nodes[field][0] = value
    tree.__setstate__({**state, "nodes": nodes})
    plant(tmp_path / "forest.skops", skops.io.dumps(forest), json.loads((tmp_path / "forest.json").read_text()))
    with pytest.raises(StartupError, match="forest.skops holds a tree whose nodes point outside it: refusing"):
        api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=tmp_path / "forest.skops"))


# --- A pickle of an earlier train.py: converted, or loaded under ALLOW_PICKLE ---------------------------------


@pytest.fixture
def old_artifact(model_path, tmp_path):
    """What an earlier train.py wrote: the model as a joblib pickle, beside a card of that pickle's sha256."""
    path = tmp_path / "old" / "iris.joblib"
    path.parent.mkdir()
    joblib.dump(load_artifact(model_path), path)
    card = json.loads(model_path.with_suffix(".json").read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    card = {**card, "sha256": digest, "version": digest[:12]}
    del card["format"]
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def test_allow_pickle_loads_an_old_artifact_warned_and_shown(old_artifact, caplog):
    with pytest.raises(StartupError, match="is a pickle"):
        client_of(model_path=old_artifact)
    client = client_of(model_path=old_artifact, allow_pickle=True)
    assert client.get(f"/api/v1.0?{QUERY}").json["prediction"] == "setosa"
    assert "is a pickle, loaded because ALLOW_PICKLE is set" in caplog.text
    assert client.get("/api/v1.0/model").json["artifact"]["format"] == "pickle"
    metadata = client.get(f"/v2/models/{NAME}").json
    assert metadata["platform"] == "sklearn_pickle" and metadata["parameters"]["artifact_format"] == "pickle"
    assert 'format="pickle"' in client.get("/metrics").text


def test_convert_writes_the_skops_artifact_and_its_card(old_artifact, model_path, capsys):
    train.main(["--convert", str(old_artifact)])
    converted = old_artifact.with_suffix(".skops")
    card = json.loads(converted.with_suffix(".json").read_text())
    assert card["format"] == "skops" and card["sha256"] == hashlib.sha256(converted.read_bytes()).hexdigest()
    assert card["version"] == card["sha256"][:12]  # an artifact alone is named by its bytes
    assert card["version"] == json.loads(model_path.with_suffix(".json").read_text())["version"]  # as trained anew
    client = client_of(model_path=converted)
    assert client.get(f"/api/v1.0?{QUERY}").json["model"]["version"] == card["version"]
    assert client.get("/api/v1.0/model").json["artifact"]["format"] == "skops"
    assert "is a pickle, and unpickling runs whatever code it names" in capsys.readouterr().out


def test_convert_keeps_a_versions_number(copy):
    old = copy / NAME / "2"
    joblib.dump(load_artifact(old / "model.skops"), old / "model.joblib")
    (old / "model.skops").unlink()
    card = json.loads((old / "model.json").read_text())
    (old / "model.json").write_text(json.dumps({**card, "sha256": hashlib.sha256(
        (old / "model.joblib").read_bytes()).hexdigest()}))
    client = client_of(model_repository=copy)
    assert "is a pickle" in wait_for_state(client, "2", "UNAVAILABLE")["reason"]
    train.main(["--convert", str(old / "model.joblib")])
    assert json.loads((old / "model.json").read_text())["version"] == "2"
    assert client_of(model_repository=copy).get(f"/api/v1.0?{QUERY}&_version=2").json["model"]["version"] == "2"


def test_convert_refuses_a_file_its_card_does_not_describe(old_artifact):
    old_artifact.write_bytes(old_artifact.read_bytes() + b"\0")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--convert", str(old_artifact)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "does not match the sha256 in" in result.stderr and not old_artifact.with_suffix(".skops").exists()


# --- train.py refuses what the API would not load -------------------------------------------------------------


def test_a_pipeline_holding_an_untrusted_function_is_refused_by_train_py(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    table = write_fruit_csv(tmp_path / "fruit.csv")
    data = read_csv(table, "Fruit", ("ID",))
    numbers = data.matrix()[:, :1].astype(float)
    mine = make_pipeline(FunctionTransformer(abs), LogisticRegression()).fit(numbers, data.target)  # outside the list
    joblib.dump(mine, tmp_path / "mine.joblib")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--csv", str(table), "--target", "Fruit",
                             "--drop", "ID", "--drop", "Colour", "--drop", "Origin", "--fitted",
                             str(tmp_path / "mine.joblib"), "--output", str(tmp_path / "out" / "m.skops")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "holds builtins.abs, which the API does not trust, so it would refuse to load it" in result.stderr
    assert not (tmp_path / "out").exists()


def test_pickle_opcodes_are_told_apart_from_a_zip():
    assert artifacts.format_of(pickle.dumps({"a": 1})) == "pickle"
    assert artifacts.format_of(pickle.dumps({"a": 1}, protocol=0)) == "pickle"
    assert artifacts.format_of(skops.io.dumps({"a": 1})) == "skops"
    assert artifacts.format_of(b"hello") is None
