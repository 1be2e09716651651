"""Model versions side by side: published into a repository, routed by its routing file (default, canary, shadow),
asked by name, followed without a restart, counted per version (tabserve/repository.py, routing.py, versions.py)."""

import json
import re
import shutil
import time

import pytest
import webtest
from support import FLOWERS, PASSWORD, USERNAME, Traffic, api_server, query, serve_in_thread

import api
import train
from tabserve import repository as repositories
from tabserve import routing, versions
from tabserve.metrics import ApiMetrics
from tabserve.model import load_checked
from tabserve.serving import with_batching
from tabserve.settings import ApiSettings, StartupError, read_api_settings
from tabserve.stores import FolderStore

NAME = "iris-classifier"
SETOSA = FLOWERS["setosa"]
QUERY = query(SETOSA)


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    """A repository as train.py publishes it: version 1 (the default model) and version 2 (a random forest)."""
    repository = tmp_path_factory.mktemp("repository")
    train.main(["--publish", str(repository)])
    train.main(["--publish", str(repository), "--model", "random_forest"])
    return repository


@pytest.fixture
def repository(master, tmp_path, monkeypatch):
    """A copy of the master repository for one test, followed at every request (no second's wait)."""
    monkeypatch.setattr(versions, "RESCAN_SECONDS", 0.0)
    return shutil.copytree(master, tmp_path / "repository")


def client_of(repository, **settings):
    app = api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_repository=repository, **settings))
    client = webtest.TestApp(app)
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    return client


def set_routing(repository, document):
    (repository / NAME / routing.ROUTING_FILE).write_text(json.dumps(document))


def index(client, **body):
    return {entry["version"]: entry for entry in client.post_json("/v2/repository/index", body).json}


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- Publishing ------------------------------------------------------------------------------------------------


def test_publishing_numbers_the_versions_and_never_changes_the_routing(master, tmp_path, capsys):
    folder = master / NAME
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2", "routing.json"]
    cards = [json.loads((folder / v / "model.json").read_text()) for v in ("1", "2")]
    assert [(c["version"], c["algorithm"]) for c in cards] == [("1", "logistic_regression"), ("2", "random_forest")]
    assert all(len(c["sha256"]) == 64 for c in cards) and cards[0]["sha256"] != cards[1]["sha256"]
    assert json.loads((folder / "routing.json").read_text()) == {"default": "1"}  # the second publish left it
    copy = shutil.copytree(master, tmp_path / "again")
    train.main(["--publish", str(copy), "--model", "knn"])
    assert f"Published {NAME} version 3; the routing is {{\"default\": \"1\"}}" in capsys.readouterr().out


def test_versions_compare_as_numbers(tmp_path):
    for name in ("1", "2", "9", "10", "draft"):
        (tmp_path / name).mkdir()
    assert routing.published(tmp_path) == ["1", "2", "9", "10"]


def test_publish_and_output_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--publish", str(tmp_path), "--output", str(tmp_path / "m.skops")])
    assert "--publish and --output" in capsys.readouterr().err


# --- Serving and asking a version ------------------------------------------------------------------------------


def test_both_versions_are_served_and_the_default_answers_unless_one_is_named(repository):
    client = client_of(repository)
    assert client.get(f"/api/v1.0?{QUERY}").json["model"] == {"name": NAME, "version": "1"}
    assert client.get(f"/api/v1.0?{QUERY}&_version=2").json["model"]["version"] == "2"
    assert client.get(f"/api/v1.0/explain?{QUERY}&_version=2").json["model"]["version"] == "2"
    batch = client.post_json("/api/v1.0/predict?_version=2", {"instances": [list(SETOSA)]}).json
    assert batch["model"]["version"] == "2"
    assert client.get("/api/v1.0/model").json["algorithm"] == "logistic_regression"
    assert client.get("/api/v1.0/model?_version=2").json["algorithm"] == "random_forest"
    missing = client.get(f"/api/v1.0?{QUERY}&_version=7", status=404).json
    assert missing["detail"] == f"model '{NAME}' has no version '7' ready; the versions ready are 1, 2"
    errors = client.get(f"/api/v1.0?{QUERY}&_versions=2&_version=", status=400).json["errors"]
    assert errors == [{"field": "_versions", "message": "is not an option of this endpoint; the options are "
                                                        "_version"},
                      {"field": "_version", "message": "must be given once, with a value"}]
    assert client.get("/readyz").json["model"] == {"name": NAME, "version": "1"}


def test_the_versioned_v2_routes_answer_for_every_version(repository):
    client = client_of(repository)
    tensor = {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, 4], "data": list(SETOSA)}]}
    for version in ("1", "2"):
        base = f"/v2/models/{NAME}/versions/{version}"
        assert client.get(base).json["versions"] == ["1", "2"]
        assert client.get(f"{base}/ready").json == {"name": NAME, "ready": True}
        assert client.post_json(f"{base}/infer", tensor).json["model_version"] == version
    assert client.post_json(f"/v2/models/{NAME}/infer", tensor).json["model_version"] == "1"
    error = client.get(f"/v2/models/{NAME}/versions/3/ready", status=404).json["error"]
    assert error == f"model '{NAME}' has no version '3' ready; the versions ready are 1, 2"


def test_the_repository_index_lists_each_version_and_its_state(repository):
    client = client_of(repository)
    expected = [{"name": NAME, "version": v, "state": "READY", "reason": ""} for v in ("1", "2")]
    assert client.post("/v2/repository/index").json == expected
    assert client.post_json("/v2/repository/index", {"ready": True}).json == expected
    assert client.post_json("/v2/repository/index", {"ready": 1}, status=400).json == {
        "error": "ready must be true or false, got a number"}
    assert "model_repository" in client.get("/v2").json["extensions"]


def test_a_version_published_while_serving_is_loaded_then_served(repository):
    client = client_of(repository)
    train.main(["--publish", str(repository), "--model", "knn"])
    assert index(client)["3"]["state"] in ("LOADING", "READY")
    wait_for(lambda: index(client)["3"]["state"] == "READY")
    assert client.get(f"/api/v1.0?{QUERY}&_version=3").json["model"]["version"] == "3"
    assert client.get(f"/api/v1.0?{QUERY}").json["model"]["version"] == "1"  # publishing is not promoting


def test_a_broken_version_is_refused_while_serving_goes_on(repository, caplog):
    client = client_of(repository)
    broken = shutil.copytree(repository / NAME / "2", repository / NAME / "3")
    shutil.copyfile(repository / NAME / "1" / "model.skops", broken / "model.skops")  # another version's artifact
    client.get(f"/api/v1.0?{QUERY}")
    wait_for(lambda: index(client)["3"]["state"] == "UNAVAILABLE")
    assert "does not match the sha256" in index(client)["3"]["reason"]
    assert f"version 3 of {repository / NAME} is refused and not served" in caplog.text
    set_routing(repository, {"default": "3"})  # a routing whose default is not ready keeps the last good one
    assert client.get(f"/api/v1.0?{QUERY}").json["model"]["version"] == "1"
    assert "routing of" in caplog.text and "default version 3 is not ready" in caplog.text
    client.get(f"/api/v1.0?{QUERY}&_version=3", status=404)
    metrics = client.get("/metrics").text
    assert 'tabserve_api_version_loads_total{outcome="UNAVAILABLE",version="3"} 1.0' in metrics
    assert 'tabserve_model_version_state{state="UNAVAILABLE",version="3"} 1.0' in metrics
    assert 'tabserve_model_version_state{state="READY",version="2"} 1.0' in metrics


def test_at_most_max_loaded_versions_are_kept_in_memory(repository, monkeypatch):
    monkeypatch.setattr(versions, "MAX_LOADED", 2)
    train.main(["--publish", str(repository), "--model", "knn"])
    states = {entry["version"]: entry for entry in client_of(repository).post("/v2/repository/index").json}
    assert [states[v]["state"] for v in ("1", "2", "3")] == ["READY", "UNAVAILABLE", "READY"]  # default, newest
    assert states["2"]["reason"].startswith("not loaded: at most 2 versions")


# --- Routing ---------------------------------------------------------------------------------------------------


def test_the_canary_takes_its_share_of_the_clients_and_each_keeps_its_version(repository):
    client = client_of(repository)
    repositories.main(["canary", str(repository / NAME), "2", "10"])
    seen = {f"client-{n}": client.get(f"/api/v1.0?{QUERY}", headers={"X-Routing-Key": f"client-{n}"}).json[
        "model"]["version"] for n in range(3000)}
    share = sum(version == "2" for version in seen.values()) / len(seen)
    assert 0.08 <= share <= 0.12, share
    for key in list(seen)[:300]:  # sticky: the same key, the same version
        assert client.get(f"/api/v1.0?{QUERY}", headers={"X-Routing-Key": key}).json["model"]["version"] == seen[key]
    # Without the header, the user decides.
    expected = "2" if routing.Split("2", 10).takes(USERNAME) else "1"
    assert client.get(f"/api/v1.0?{QUERY}").json["model"]["version"] == expected


def test_promotion_and_rollback_follow_the_routing_file_without_a_restart(repository, capsys):
    client = client_of(repository)
    folder = str(repository / NAME)
    repositories.main(["promote", folder, "2"])
    assert json.loads(capsys.readouterr().out) == {"default": "2", "previous": "1"}
    assert client.get(f"/api/v1.0?{QUERY}").json["model"]["version"] == "2"
    assert client.get("/api/v1.0/model").json["version"] == "2"
    repositories.main(["rollback", folder])
    assert client.get(f"/api/v1.0?{QUERY}").json["model"]["version"] == "1"
    with pytest.raises(SystemExit, match="there is no earlier default"):
        repositories.main(["rollback", folder])
    with pytest.raises(SystemExit, match="there is no version 9; the versions are 1, 2"):
        repositories.main(["canary", folder, "9", "10"])


@pytest.mark.parametrize(("arguments", "message"), [
    (["canary", "2", "ten"], "canary.percent must be a number from 0 to 100, got 'ten'"),
    (["canary", "2", "120"], "canary.percent must be a number from 0 to 100, got 120.0"),
    (["shadow", "5", "100"], "there is no version 5; the versions are 1, 2"),
    (["promote", "1"], "version 1 is the default already"),
    (["promote"], "promote which version? name one, or start a canary first"),
])
def test_the_routing_commands_refuse_what_cannot_be_done(repository, arguments, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        repositories.main([arguments[0], str(repository), *arguments[1:]])
    assert json.loads((repository / NAME / "routing.json").read_text()) == {"default": "1"}


def test_the_routing_commands_take_the_repository_or_its_model_folder(repository, capsys):
    repositories.main(["shadow", str(repository), "2", "25"])
    repositories.main(["show", str(repository / NAME)])
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"default": "1",
                                                                   "shadow": {"version": "2", "percent": 25}}
    with pytest.raises(SystemExit, match="usage: python -m tabserve.repository canary REPO VERSION PERCENT"):
        repositories.main(["stop", str(repository)])


def test_a_routing_file_that_does_not_parse_keeps_the_last_good_one(repository, caplog):
    client = client_of(repository)
    set_routing(repository, {"default": "2"})
    assert client.get(f"/api/v1.0?{QUERY}").json["model"]["version"] == "2"
    (repository / NAME / "routing.json").write_text('{"default": "1", "canary": {"version": "2"}}')
    assert client.get(f"/api/v1.0?{QUERY}").json["model"]["version"] == "2"
    assert "the last good one stays: canary must be an object with exactly version and percent" in caplog.text


def test_a_canary_with_other_inputs_is_refused_as_a_canary_and_served_when_named(repository, caplog):
    train.main(["--dataset", "wine", "--name", NAME, "--publish", str(repository)])
    client = client_of(repository)
    set_routing(repository, {"default": "1", "canary": {"version": "3", "percent": 100}})
    assert client.get(f"/api/v1.0?{QUERY}").json["model"]["version"] == "1"
    assert "the canary version 3 does not take the default's inputs: it is served only when named" in caplog.text
    assert client.get("/api/v1.0/model?_version=3").json["inputs"][0]["name"] == "alcohol"


def test_a_shadow_is_asked_too_and_compared_but_never_answers(repository):
    client = client_of(repository)
    set_routing(repository, {"default": "1", "shadow": {"version": "2", "percent": 100}})
    for _ in range(20):
        assert client.get(f"/api/v1.0?{QUERY}").json["model"]["version"] == "1"

    def compared():
        metrics = client.get("/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith('tabserve_api_shadow_comparisons_total{result="agree",version="2"}'))

    wait_for(lambda: compared() == 20)  # both call setosa a setosa


def test_metrics_are_kept_per_version(repository):
    client = client_of(repository)
    client.get(f"/api/v1.0?{QUERY}")
    client.get(f"/api/v1.0?{QUERY}&_version=2")
    client.get(f"/api/v1.0?{QUERY}&_version=2")
    metrics = client.get("/metrics").text
    for version, count in (("1", 1), ("2", 2)):
        assert (f'tabserve_api_requests_total{{endpoint="/api/v1.0",method="GET",status="200",user="{USERNAME}",'
                f'version="{version}"}} {count}.0') in metrics
        assert f'tabserve_api_predictions_total{{class="setosa",version="{version}"}} {count}.0' in metrics
        assert f'tabserve_api_request_duration_seconds_count{{endpoint="/api/v1.0",version="{version}"}}' in metrics
        assert f'tabserve_model_version_state{{state="READY",version="{version}"}} 1.0' in metrics
    assert ('tabserve_model_info{algorithm="random_forest",format="skops",name="iris-classifier",'
            'signature="unverified",version="2"} 1.0') in metrics


def test_each_version_is_watched_apart(repository):
    """Drift counts, feedback and the traffic share per version: GET /api/v1.0/monitoring?_version=2 counts only what
    version 2 answered."""
    client = client_of(repository)
    for _ in range(3):
        client.get(f"/api/v1.0?{QUERY}")
    client.post_json("/api/v1.0/predict?_version=2", {"instances": [list(SETOSA)] * 5})
    client.post_json("/api/v1.0/feedback", [{"prediction": "setosa", "truth": "setosa", "version": "2"},
                                            {"prediction": "setosa", "truth": "virginica", "version": "1"}])
    first, second = client.get("/api/v1.0/monitoring").json, client.get("/api/v1.0/monitoring?_version=2").json
    assert (first["model"]["version"], second["model"]["version"]) == ("1", "2")
    assert first["traffic"] == second["traffic"] == {"1": 3, "2": 5}
    assert [judged["count"] for judged in (first["output"], second["output"])] == [3, 5]
    assert all(judged["count"] == 5 for judged in second["inputs"].values())
    assert (first["feedback"]["accuracy"], second["feedback"]["accuracy"]) == (0.0, 1.0)


def test_each_version_has_its_own_batcher(repository):
    metrics = ApiMetrics()
    def load(artifact, whole_folder):
        return with_batching(load_checked(artifact, whole_folder=whole_folder), "on", metrics)

    served = versions.Versions.repository(FolderStore(repository / NAME), load, api.logger)
    first, second = served.named("1").compute, served.named("2").compute
    assert type(first).__name__ == type(second).__name__ == "Batcher" and first is not second


# --- Settings --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("environ", "message"), [
    ({"MODEL_PATH": "m.skops", "MODEL_REPOSITORY": "repo"}, "set MODEL_PATH (one artifact) or MODEL_REPOSITORY"),
    ({"MODEL_NAME": "iris"}, "MODEL_NAME names a model of MODEL_REPOSITORY, which is not set"),
])
def test_repository_settings_are_checked(environ, message):
    with pytest.raises(StartupError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_api_settings({"API_USERNAME": "u", "API_PASSWORD": "p", **environ})


def test_a_repository_with_nothing_or_several_models_says_so(tmp_path, master):
    with pytest.raises(StartupError, match="holds no model: publish one with train.py --publish"):
        client_of(tmp_path)
    shutil.copytree(master / NAME, tmp_path / NAME)
    shutil.copytree(master / NAME, tmp_path / "other")
    with pytest.raises(StartupError, match="holds iris-classifier, other: set MODEL_NAME to one"):
        client_of(tmp_path)
    with pytest.raises(StartupError, match="has no model 'wine'"):
        client_of(tmp_path, model_name="wine")


# --- Under the production server ---------------------------------------------------------------------------------


def test_promotion_and_rollback_under_load_lose_no_request(repository):
    """Two workers, 8 clients; a canary, a promotion and a rollback while they ask: every request answered."""
    server = api_server("", MODEL_REPOSITORY=str(repository))
    folder = str(repository / NAME)
    try:
        with Traffic(server.url, QUERY) as traffic:
            for command in (["canary", folder, "2", "50"], ["promote", folder], ["rollback", folder]):
                time.sleep(1.5)
                repositories.main(command)
            time.sleep(1.5)
        assert len(traffic.statuses) > 100 and traffic.failed() == {}
        assert traffic.versions == {"1", "2"}
    finally:
        server.stop()


def test_the_web_page_asks_its_forms_version_and_learns_the_form_again_when_it_is_gone(repository, model_path,
                                                                                       new_web_client):
    """The API behind the web app is redeployed with another model: the page's version is a 404 there, so it learns
    the new default's form and asks again."""
    first = api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_repository=repository))
    second = api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=model_path))
    behind = [first]
    with serve_in_thread(lambda environ, start: behind[0](environ, start)) as url:
        web = new_web_client(url)
        assert "version 1" in web.get(f"/prediction?{QUERY}").html.select_one(".meta").text
        behind[0] = second
        page = web.get(f"/prediction?{QUERY}")
        assert f"version {json.loads(model_path.with_suffix('.json').read_text())['version']}" in page.html.select_one(
            ".meta").text
