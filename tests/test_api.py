"""The API contract, through WebTest against create_app() with a model trained in a fixture."""

import base64
import functools
import json
import logging
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import webtest
from openapi_spec_validator import validate
from sklearn.datasets import load_iris

import api
from tabserve import fastpaths, model, serving, users, wsgi
from tabserve.batching import Overloaded
from tabserve.model import Unpredictable
from tabserve.settings import DEFAULT_MODEL_PATH, ApiSettings, read_api_settings
from tests.support import FEATURES, PASSWORD, USERNAME, auth_header

README_QUERY = "sepal_length=1&sepal_width=1&petal_length=1&petal_width=1"
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 6.9, "sepal_width": 3.1, "petal_length": 5.4, "petal_width": 2.1}
CLASSES = {"setosa", "versicolor", "virginica"}


def query(**features):
    return "&".join(f"{name}={value}" for name, value in features.items())


def errors_of(response):
    """The problem+json body's errors as {field: message}."""
    assert response.content_type == "application/problem+json"
    body = response.json
    assert body["status"] == response.status_int and body["type"] and body["title"] and body["detail"]
    return {error["field"]: error["message"] for error in body.get("errors", [])}


# --- GET /api/v1.0 ---------------------------------------------------------------------------------------------


def test_readme_curl_query_answers_with_extrapolation_warnings(api_client):
    response = api_client.get(f"/api/v1.0?{README_QUERY}", headers={"Content-Type": "application/json"})
    assert response.content_type == "application/json"
    body = response.json
    assert body["prediction"] in CLASSES
    assert body["features"] == {"sepal_length": 1.0, "sepal_width": 1.0, "petal_length": 1.0, "petal_width": 1.0}
    warned = " ".join(body["warnings"])
    assert len(body["warnings"]) == 3  # petal_width 1 cm is inside the training range
    assert all(name in warned for name in ("sepal_length", "sepal_width", "petal_length"))
    assert "sepal_length 1 cm lies outside the 4.3 to 7.9 cm seen in training" in warned
    assert "extrapolation" in warned


def test_typical_flowers_are_recognised(api_client, model_path):
    version = json.loads(model_path.with_suffix(".json").read_text())["version"]
    for features, species in ((SETOSA, "setosa"), (VIRGINICA, "virginica")):
        body = api_client.get(f"/api/v1.0?{query(**features)}").json
        assert body["prediction"] == species
        assert set(body["probabilities"]) == CLASSES
        assert body["probabilities"][species] == max(body["probabilities"].values())
        assert sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert body["features"] == features
        assert body["warnings"] == []
        assert body["model"] == {"name": "iris-classifier", "version": version}


def test_trailing_slash_is_the_same_endpoint(api_client):
    assert api_client.get(f"/api/v1.0/?{query(**SETOSA)}").json == api_client.get(f"/api/v1.0?{query(**SETOSA)}").json


def test_boundary_values_are_accepted(api_client):
    body = api_client.get("/api/v1.0?sepal_length=100&sepal_width=0.001&petal_length=1e1&petal_width=%2B.5").json
    assert body["features"] == {"sepal_length": 100.0, "sepal_width": 0.001, "petal_length": 10.0, "petal_width": 0.5}


@pytest.mark.parametrize("query_string, field, message", [
    ("sepal_length=1&sepal_width=1&petal_length=1", "petal_width", "is required"),
    (README_QUERY + "&sepal_lenght=1", "sepal_lenght", "the parameters are sepal_length, sepal_width"),
    (README_QUERY + "&petal_width=2", "petal_width", "was given 2 times"),
    ("sepal_length=abc&sepal_width=1&petal_length=1&petal_width=1", "sepal_length",
     "must be a decimal number in cm, got 'abc'"),
    ("sepal_length=&sepal_width=1&petal_length=1&petal_width=1", "sepal_length", "must be a decimal number"),
    ("sepal_length=nan&sepal_width=1&petal_length=1&petal_width=1", "sepal_length", "must be a decimal number"),
    ("sepal_length=inf&sepal_width=1&petal_length=1&petal_width=1", "sepal_length", "must be a decimal number"),
    ("sepal_length=1e999&sepal_width=1&petal_length=1&petal_width=1", "sepal_length", "must be a finite number"),
    ("sepal_length=0x10&sepal_width=1&petal_length=1&petal_width=1", "sepal_length", "must be a decimal number"),
    ("sepal_length=1_0&sepal_width=1&petal_length=1&petal_width=1", "sepal_length", "must be a decimal number"),
    ("sepal_length=%201&sepal_width=1&petal_length=1&petal_width=1", "sepal_length", "must be a decimal number"),
    ("sepal_length=%D9%A3&sepal_width=1&petal_length=1&petal_width=1", "sepal_length", "must be a decimal number"),
    ("sepal_length=0&sepal_width=1&petal_length=1&petal_width=1", "sepal_length",
     "greater than 0 and at most 100 cm, got 0"),
    ("sepal_length=-1&sepal_width=1&petal_length=1&petal_width=1", "sepal_length", "greater than 0 and at most 100 cm"),
    ("sepal_length=100.5&sepal_width=1&petal_length=1&petal_width=1", "sepal_length", "at most 100 cm, got 100.5"),
    ("sepal_length=%ff&sepal_width=1&petal_length=1&petal_width=1", "query", "is not valid UTF-8"),
    ("&".join(f"x{i}=1" for i in range(40)), "query", "has more than 16 parameters"),
])
def test_bad_query_gives_400_naming_the_field(api_client, query_string, field, message):
    response = api_client.get(f"/api/v1.0?{query_string}", status=400)
    errors = errors_of(response)
    assert message in errors[field]


def test_every_bad_field_is_named_at_once(api_client):
    errors = errors_of(api_client.get("/api/v1.0?sepal_length=abc&petal_width=0", status=400))
    assert set(errors) == set(FEATURES)


# --- Authentication --------------------------------------------------------------------------------------------


def basic(raw):
    return "Basic " + base64.b64encode(raw).decode()


@pytest.fixture(scope="module", params=["API_USERNAME", "API_USERS_FILE"])
def credentials_app(request, api_app, model_path, tmp_path_factory):
    """The API knowing the test user from API_USERNAME + API_PASSWORD, or from a users file with another user."""
    if request.param == "API_USERNAME":
        return api_app
    users_file = tmp_path_factory.mktemp("users") / "users"
    users_file.write_text(f"# the tests' users\n{USERNAME}:{users.hash_password(PASSWORD)}\n\n"
                          f"partner:{users.hash_password('another secret')}\n")
    return api.create_app(ApiSettings(username="", password="", users_file=users_file, model_path=model_path,
                                       failures_per_minute=10_000))


@pytest.mark.parametrize("authorization", [
    None,
    basic(f"{USERNAME}:wrong".encode()),
    basic(f"someone:{PASSWORD}".encode()),
    basic(b"someone:wrong"),
    basic(f"{USERNAME}:".encode()),
    basic(f":{PASSWORD}".encode()),
    basic(f"{USERNAME}{PASSWORD}".encode()),  # no colon
    "Basic not-base64!!",
    basic(b"\xff\xfe:\xff"),  # not UTF-8
    "Basic \xff\xfe",  # not ASCII in the header itself
    f"Bearer {base64.b64encode(f'{USERNAME}:{PASSWORD}'.encode()).decode()}",
    "Basic",
])
def test_anything_but_the_right_credentials_gives_401(credentials_app, authorization):
    client = webtest.TestApp(credentials_app)
    headers = {"Authorization": authorization} if authorization else {}
    for url in (f"/api/v1.0?{README_QUERY}", "/api/v1.0/model"):
        response = client.get(url, headers=headers, status=401)
        assert response.headers["WWW-Authenticate"].startswith('Basic realm="iris-classifier"')
        assert errors_of(response) == {}
    response = client.post("/api/v1.0/predict", "{}", headers={**headers, "Content-Type": "application/json"},
                           status=401)
    assert response.content_type == "application/problem+json"


def test_right_credentials_work_on_every_protected_endpoint(credentials_app):
    anonymous_api_client = webtest.TestApp(credentials_app)
    headers = auth_header()
    anonymous_api_client.get(f"/api/v1.0?{README_QUERY}", headers=headers, status=200)
    anonymous_api_client.get("/api/v1.0/model", headers=headers, status=200)
    anonymous_api_client.post_json("/api/v1.0/predict", {"instances": [[1, 1, 1, 1]]}, headers=headers, status=200)


def test_failed_login_logs_the_user_but_never_the_password(anonymous_api_client, caplog):
    caplog.set_level(logging.INFO)
    anonymous_api_client.get(f"/api/v1.0?{README_QUERY}", headers={"Authorization": basic(b"mallory:hunter2")},
                             status=401)
    assert "authentication failed for user 'mallory'" in caplog.text
    assert "hunter2" not in caplog.text


def test_credentials_are_checked_before_the_input(anonymous_api_client):
    anonymous_api_client.get("/api/v1.0?nonsense=1", status=401)


# --- POST /api/v1.0/predict ------------------------------------------------------------------------------------


def test_batch_of_lists_and_objects(api_client):
    body = api_client.post_json("/api/v1.0/predict", {"instances": [list(SETOSA.values()), VIRGINICA]}).json
    assert [answer["prediction"] for answer in body["predictions"]] == ["setosa", "virginica"]
    assert body["model"]["name"] == "iris-classifier"


def test_batch_row_equals_the_single_answer(api_client):
    rows = [[1, 1, 1, 1], list(SETOSA.values()), list(VIRGINICA.values()), [6.0, 2.7, 4.2, 1.3], [50, 0.1, 9, 3]]
    batch = api_client.post_json("/api/v1.0/predict", {"instances": rows}).json["predictions"]
    for row, answer in zip(rows, batch, strict=True):
        single = api_client.get("/api/v1.0?" + query(**dict(zip(FEATURES, row, strict=True)))).json
        assert answer == {key: single[key] for key in ("prediction", "probabilities", "warnings")}


def test_largest_batch_is_answered(api_client):
    rows = [list(SETOSA.values())] * model.MAX_ROWS
    body = api_client.post_json("/api/v1.0/predict", {"instances": rows}).json
    assert len(body["predictions"]) == model.MAX_ROWS


@pytest.mark.parametrize("body, field, message", [
    ('{"instances": [[1, 2, 3', "body", "is not valid JSON"),
    ('{"instances": [[NaN, 1, 1, 1]]}', "body", "is not valid JSON"),
    ('{"instances": [[1e999, 1, 1, 1]]}', "instances[0][0]", "must be a finite number"),
    ("[[1, 1, 1, 1]]", "body", "exactly one key, 'instances'"),
    ('{"rows": [[1, 1, 1, 1]]}', "body", "exactly one key, 'instances'"),
    ('{"instances": [[1, 1, 1, 1]], "extra": 1}', "body", "exactly one key, 'instances'"),
    ('{"instances": []}', "instances", "non-empty list"),
    ('{"instances": {"a": 1}}', "instances", "non-empty list"),
    ('{"instances": [[1, 1, 1]]}', "instances[0]", "must have 4 numbers"),
    ('{"instances": [[1, 1, 1, 1, 1]]}', "instances[0]", "got 5"),
    ('{"instances": [[1, 1, 1, 1], 5]}', "instances[1]", "must be a list of 4 numbers or an object"),
    ('{"instances": [["1", 1, 1, 1]]}', "instances[0][0]", 'must be a number, got "1"'),
    ('{"instances": [[true, 1, 1, 1]]}', "instances[0][0]", "must be a number, got true"),
    ('{"instances": [[null, 1, 1, 1]]}', "instances[0][0]", "must be a number, got null"),
    ('{"instances": [[0, 1, 1, 1]]}', "instances[0][0]", "greater than 0"),
    ('{"instances": [[1, 1, 1, 101]]}', "instances[0][3]", "at most 100 cm"),
    ('{"instances": [{"sepal_length": 1, "sepal_width": 1, "petal_length": 1}]}', "instances[0]", "exactly the keys"),
    ('{"instances": [{"sepal_length": 1, "sepal_width": 1, "petal_length": 1, "petal_width": false}]}',
     "instances[0].petal_width", "must be a number"),
    ('{"instances": ' + "[" * 100_000 + "]" * 100_000 + "}", "body", "nested too deeply"),
    (b'{"instances": [["\xff", 1, 1, 1]]}', "body", "is not valid JSON"),
])
def test_bad_batch_gives_400_naming_the_row(api_client, body, field, message):
    response = api_client.post("/api/v1.0/predict", body, content_type="application/json", status=400)
    assert message in errors_of(response)[field]


def test_every_bad_row_is_named(api_client):
    errors = errors_of(api_client.post_json("/api/v1.0/predict", {"instances": [[1, 1, 1, 1], [0, 1, 1, 1], "x"]},
                                        status=400))
    assert set(errors) == {"instances[1][0]", "instances[2]"}


def test_too_many_rows_gives_413(api_client):
    too_many = {"instances": [[1, 1, 1, 1]] * (model.MAX_ROWS + 1)}
    response = api_client.post_json("/api/v1.0/predict", too_many, status=413)
    assert "at most 10000 instances" in response.json["detail"]


def test_too_large_body_gives_413_before_it_is_read(api_client):
    body = b'{"instances": [' + b"[1, 1, 1, 1], " * 100_000 + b"[1, 1, 1, 1]]}"
    assert len(body) > wsgi.MAX_BODY_BYTES
    response = api_client.post("/api/v1.0/predict", body, content_type="application/json", status=413)
    assert response.content_type == "application/problem+json"
    assert "larger than 1048576 bytes" in response.json["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"])
def test_body_not_sent_as_json_gives_415(api_client, content_type):
    response = api_client.post("/api/v1.0/predict", '{"instances": [[1, 1, 1, 1]]}', content_type=content_type,
                           status=415)
    assert "Content-Type: application/json" in response.json["detail"]


def test_json_content_type_with_charset_is_accepted(api_client):
    api_client.post("/api/v1.0/predict", '{"instances": [[1, 1, 1, 1]]}',
                    content_type="application/json; charset=utf-8")


# --- The other endpoints ---------------------------------------------------------------------------------------


def test_model_metadata_without_paths(api_client, model_path):
    body = api_client.get("/api/v1.0/model").json
    assert body["features"] == list(FEATURES)
    assert set(body["classes"]) == CLASSES
    assert body["algorithm"] == "logistic_regression"
    assert len(body["sha256"]) == 64
    assert str(model_path.parent) not in json.dumps(body)


def test_health_endpoints_need_no_credentials(anonymous_api_client):
    assert anonymous_api_client.get("/healthz").json == {"status": "ok"}
    body = anonymous_api_client.get("/readyz").json
    assert body["status"] == "ready" and body["model"]["name"] == "iris-classifier"


def test_openapi_document_is_valid_and_describes_every_endpoint(anonymous_api_client):
    response = anonymous_api_client.get("/openapi.json")
    assert response.content_type == "application/json"
    document = response.json
    file = json.loads(api.OPENAPI_PATH.read_text())
    assert document["paths"].keys() == file["paths"].keys()  # the file, with the model's inputs put in
    validate(document)  # raises if the document is not valid OpenAPI 3.1
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) >= {"/api/v1.0", "/api/v1.0/predict", "/api/v1.0/model", "/metrics", "/healthz",
                                      "/readyz", "/openapi.json", "/v2", "/v2/models/{model_name}/infer"}
    assert document["components"]["securitySchemes"]["basicAuth"] == {"type": "http", "scheme": "basic"}


def test_openapi_document_matches_the_code(anonymous_api_client):
    """The contract is a file written by hand, with the model's inputs put in: its names, limits and statuses must be
    the code's."""
    document = anonymous_api_client.get("/openapi.json").json
    schemas = document["components"]["schemas"]
    bottle_to_openapi = {"<name>": "{model_name}", "<version>": "{model_version}"}
    routes = {(functools.reduce(lambda path, pair: path.replace(*pair), bottle_to_openapi.items(), path.rstrip("/")),
               method.lower()): needs_credentials
              for method, path, _, needs_credentials in api.ROUTES}
    documented = {(path, method): operation for path, item in document["paths"].items()
                  for method, operation in item.items()}
    assert set(documented) == set(routes)
    for key, operation in documented.items():
        assert bool(operation["security"]) == ("401" in operation["responses"]) == routes[key], key
    # The features, then the options every /api/v1.0 request may carry (the version to ask, the routing key).
    options = [{"$ref": "#/components/parameters/Version"}, {"$ref": "#/components/parameters/RoutingKey"}]
    parameters = documented["/api/v1.0", "get"]["parameters"]
    assert [p["name"] for p in parameters[:-2]] == list(FEATURES) and parameters[-2:] == options
    assert document["components"]["parameters"]["Version"]["name"] == "_version"
    assert documented["/api/v1.0/predict", "post"]["parameters"] == options
    assert schemas["Features"]["required"] == list(FEATURES) == list(schemas["Features"]["properties"])
    for parameter in parameters[:-2]:
        assert parameter["schema"]["exclusiveMinimum"] == 0 and parameter["schema"]["maximum"] == 100
    row_as_list = schemas["Row"]["oneOf"][0]
    assert row_as_list["minItems"] == row_as_list["maxItems"] == len(FEATURES)
    batch = documented["/api/v1.0/predict", "post"]
    assert f"{model.MAX_ROWS} " in batch["summary"]
    assert f"{model.MAX_ROWS} rows or {wsgi.MAX_BODY_BYTES} bytes" in batch["responses"]["413"]["description"]
    assert set(batch["responses"]) == {"200", "400", "401", "404", "413", "415", "429"}
    assert set(documented["/api/v1.0", "get"]["responses"]) == {"200", "400", "401", "404", "429"}


def test_unknown_path_gives_problem_404(api_client):
    response = api_client.get("/api/v2.0", status=404)
    assert response.content_type == "application/problem+json"
    assert "/openapi.json" in response.json["detail"]


def test_wrong_method_gives_problem_405_with_allow(api_client):
    response = api_client.delete("/api/v1.0", status=405)
    assert response.content_type == "application/problem+json"
    assert "GET" in response.headers["Allow"]
    response = api_client.get("/api/v1.0/predict", status=405)
    assert response.headers["Allow"] == "POST"


def test_a_crash_is_a_logged_500_without_traceback(api_client, monkeypatch, caplog):
    def explode(loaded, rows):
        raise RuntimeError("boom in the model")
    monkeypatch.setattr(serving, "predict", explode)
    response = api_client.get(f"/api/v1.0?{README_QUERY}", status=500)
    assert response.content_type == "application/problem+json"
    assert "boom" not in response.text and "Traceback" not in response.text
    assert "Traceback" in caplog.text and "boom in the model" in caplog.text


def test_each_request_is_logged_once(api_client, caplog):
    caplog.set_level(logging.INFO, logger="api")
    api_client.get(f"/api/v1.0?{README_QUERY}")
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("GET /api/v1.0 ")]
    assert len(lines) == 1 and lines[0].split()[2] == "200" and lines[0].endswith("ms")
    assert "sepal_length" not in lines[0]


# --- Start-up refusals -----------------------------------------------------------------------------------------


def settings(**environ):
    return read_api_settings({"API_USERNAME": USERNAME, "API_PASSWORD": PASSWORD, **environ})


@pytest.mark.parametrize("environ, message", [
    ({"API_USERNAME": "", "API_PASSWORD": ""}, "must be set"),
    ({"API_USERNAME": USERNAME, "API_PASSWORD": ""}, "must be set"),
    ({"API_PASSWORD_FILE": "/nonexistent/secret"}, "both"),
    ({"PORT": "abc"}, "PORT must be an integer"),
    ({"PORT": "70000"}, "PORT must be an integer"),
    ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL must be one of"),
])
def test_bad_configuration_is_refused(environ, message):
    with pytest.raises(api.StartupError, match=message):
        settings(**environ)


def test_password_from_a_file(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    assert read_api_settings({"API_USERNAME": "u", "API_PASSWORD_FILE": str(secret)}).password == "from-a-file"
    with pytest.raises(api.StartupError, match="cannot read API_PASSWORD_FILE"):
        read_api_settings({"API_USERNAME": "u", "API_PASSWORD_FILE": str(tmp_path / "missing")})


def settings_with(model_path):
    return ApiSettings(username=USERNAME, password=PASSWORD, model_path=model_path)


def copy_model(model_path, folder):
    """A copy of the trained artifact and metadata that a test may spoil."""
    target = folder / "iris.skops"
    target.write_bytes(model_path.read_bytes())
    target.with_suffix(".json").write_text(model_path.with_suffix(".json").read_text())
    return target


def edit_metadata(path, change):
    metadata = json.loads(path.with_suffix(".json").read_text())
    change(metadata)
    path.with_suffix(".json").write_text(json.dumps(metadata))


def test_missing_model_is_refused(tmp_path):
    with pytest.raises(api.StartupError, match="not found: train a model first"):
        api.create_app(settings_with(tmp_path / "nothing.skops"))


def test_corrupt_artifact_is_refused_before_unpickling(model_path, tmp_path):
    path = copy_model(model_path, tmp_path)
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(api.StartupError, match="does not match the sha256"):
        api.create_app(settings_with(path))


def test_replaced_artifact_is_refused(model_path, tmp_path):
    path = copy_model(model_path, tmp_path)
    path.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle that would run a command
    with pytest.raises(api.StartupError, match="is a pickle, and loading a pickle runs the code it names"):
        api.create_app(settings_with(path))


def test_missing_artifact_is_refused(model_path, tmp_path):
    path = copy_model(model_path, tmp_path)
    path.unlink()
    with pytest.raises(api.StartupError, match="cannot read model artifact"):
        api.create_app(settings_with(path))


def test_other_scikit_learn_version_is_refused(model_path, tmp_path):
    path = copy_model(model_path, tmp_path)
    edit_metadata(path, lambda metadata: metadata["versions"].update({"scikit-learn": "0.24.2"}))
    with pytest.raises(api.StartupError, match="trained with scikit-learn 0.24.2"):
        api.create_app(settings_with(path))


@pytest.mark.parametrize("spoil, message", [
    (lambda metadata: metadata.pop("sha256"), "lacks sha256"),
    (lambda metadata: metadata.update({"features": ["a", "b", "c", "d"]}), "does not take the inputs its metadata"),
    (lambda metadata: metadata["inputs"].pop(), "does not take the inputs its metadata describes"),
    (lambda metadata: metadata.update({"classes": ["a", "b", "c"]}), "answers the classes setosa, versicolor"),
])
def test_inconsistent_metadata_is_refused(model_path, tmp_path, spoil, message):
    path = copy_model(model_path, tmp_path)
    edit_metadata(path, spoil)
    with pytest.raises(api.StartupError, match=message):
        api.create_app(settings_with(path))


def test_unreadable_metadata_is_refused(model_path, tmp_path):
    path = copy_model(model_path, tmp_path)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(api.StartupError, match="cannot read model metadata"):
        api.create_app(settings_with(path))


def test_a_model_failing_its_self_test_is_refused(model_path, tmp_path):
    """The reference rows must get the probabilities that train.py recorded for them."""
    path = copy_model(model_path, tmp_path)
    edit_metadata(path, lambda metadata: metadata["reference"]["probabilities"][3].__setitem__(0, 0.5))
    with pytest.raises(api.StartupError, match="self-test: its probabilities for the reference rows differ"):
        api.create_app(settings_with(path))


def test_demo_password_logs_a_warning(model_path, caplog):
    api.create_app(ApiSettings(username="my_username", password="my_password", model_path=model_path))
    assert any(record.levelname == "WARNING" and "demo password" in record.getMessage() for record in caplog.records)
    assert "my_password" not in caplog.text


def run_api(environ):
    """`python api.py` in a subprocess that is expected to refuse to start."""
    return subprocess.run([sys.executable, str(Path(api.__file__))], env=environ, capture_output=True, text=True,
                          timeout=60)


def test_api_without_credentials_refuses_to_start_with_one_line(tmp_path):
    result = run_api({"PATH": "/usr/bin:/bin", "MODEL_PATH": str(tmp_path / "x.skops")})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refuses to start" in lines[0] and "API_USERNAME" in lines[0]


def test_api_with_a_bad_model_refuses_to_start_with_one_line(tmp_path):
    result = run_api({"API_USERNAME": "u", "API_PASSWORD": "p", "MODEL_PATH": str(tmp_path / "x.skops")})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not found: train a model first" in lines[0]



# --- The prediction engines ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def knn_path(tmp_path_factory):
    """A k-nearest-neighbours model: no fast path covers it."""
    path = tmp_path_factory.mktemp("knn") / "iris.skops"
    import train
    train.main(["--model", "knn", "--output", str(path)])
    return path


def test_default_linear_model_uses_the_numpy_fast_path_and_matches_scikit_learn(model_path):
    loaded = model.load_model(model_path)
    assert loaded.engine == "numpy"
    rng = np.random.default_rng(0)
    rows = np.vstack([load_iris().data, rng.uniform(0.01, 100, size=(1000, 4))])
    assert np.abs(loaded.compute(rows) - loaded.estimator.predict_proba(rows)).max() <= 1e-9


def test_a_two_class_linear_model_uses_the_fast_path_too(tmp_path):
    """scikit-learn 1.9 gives two classes the logistic function of one score; the fast path had the softmax of
    (-s, s), twice too steep, and so never passed its check: breast cancer went through scikit-learn."""
    import train
    train.main(["--dataset", "breast_cancer", "--output", str(tmp_path / "bc.skops")])
    loaded = model.load_model(tmp_path / "bc.skops")
    assert loaded.engine == "numpy"
    rows = np.random.default_rng(1).uniform(0, 30, size=(2000, 30))
    assert np.abs(loaded.compute(rows) - loaded.estimator.predict_proba(rows)).max() <= 1e-9


def test_other_estimators_go_through_scikit_learn_unchanged(knn_path):
    loaded = model.load_model(knn_path)
    assert loaded.engine == "scikit-learn"
    rows = load_iris().data
    assert (loaded.compute(rows) == loaded.estimator.predict_proba(rows)).all()
    api_client = webtest.TestApp(api.create_app(settings_with(knn_path)))
    api_client.authorization = ("Basic", (USERNAME, PASSWORD))
    assert api_client.get("/readyz").json["engine"] == "scikit-learn"
    assert api_client.get(f"/api/v1.0?{query(**VIRGINICA)}").json["prediction"] == "virginica"
    batch = api_client.post_json("/api/v1.0/predict", {"instances": [list(SETOSA.values())]}).json
    assert batch["predictions"][0]["prediction"] == "setosa"


def test_a_fast_path_that_disagrees_with_scikit_learn_is_not_used(model_path, monkeypatch, caplog):
    def skewed(estimator):
        return lambda rows: np.full((len(rows), 3), 1 / 3)
    monkeypatch.setattr(fastpaths, "linear_predictor", skewed)
    loaded = model.load_model(model_path)
    assert loaded.engine == "scikit-learn"
    assert "differs from scikit-learn" in caplog.text
    rows = load_iris().data
    assert (loaded.compute(rows) == loaded.estimator.predict_proba(rows)).all()


def test_readiness_names_the_engine(anonymous_api_client):
    assert anonymous_api_client.get("/readyz").json["engine"] == "numpy"


def test_batch_mixing_row_forms_and_number_types(api_client):
    rows = [[1, 1, 1, 1], {"sepal_length": 2, "sepal_width": 2.5, "petal_length": 2, "petal_width": 2}, [1.5, 2, 3, 4]]
    assert len(api_client.post_json("/api/v1.0/predict", {"instances": rows}).json["predictions"]) == 3


def test_an_integer_too_large_for_a_float_is_named(api_client):
    body = json.dumps({"instances": [[1, 1, 1, 1], [1, 1, 1, 10 ** 400]]})
    response = api_client.post("/api/v1.0/predict", body, content_type="application/json", status=400)
    assert errors_of(response)["instances[1][3]"] == "must be a finite number"


def test_refused_requests_do_not_accumulate_memory(anonymous_api_client):
    url = f"/api/v1.0?{README_QUERY}"
    for _ in range(100):
        anonymous_api_client.get(url, status=401)
    logging.disable(logging.WARNING)  # pytest keeps every log record it captures: not what is measured here
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(1000):
            anonymous_api_client.get(url, status=401)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        logging.disable(logging.NOTSET)
    assert grown < 250_000, f"{grown} bytes kept after 1000 refused requests"


def test_empty_settings_count_as_unset():
    """Compose files and Makefiles pass empty strings for variables nobody set: those mean the default."""
    empty = {name: "" for name in ("PORT", "HOST", "LOG_LEVEL", "LOG_FORMAT", "ACCESS_LOG", "MODEL_PATH")}
    settings = read_api_settings({"API_USERNAME": "u", "API_PASSWORD": "p", **empty})
    assert (settings.port, settings.host, settings.log_level, settings.log_format, settings.access_log,
            settings.model_path) == (8000, "127.0.0.1", "INFO", "text", "errors", DEFAULT_MODEL_PATH)


# --- The model's refusals, as HTTP answers -----------------------------------------------------------------------


@pytest.mark.parametrize("refusal, status, header", [
    (Overloaded("The model is busy: 64 requests are waiting. Try again in a moment.", 1), 503, ("Retry-After", "1")),
    (Unpredictable("The model cannot compute probabilities for row 0 (of 1 such rows)"), 400, None),
], ids=["overloaded", "unpredictable"])
def test_the_models_refusals_are_answered_in_each_protocols_form(api_client, monkeypatch, refusal, status, header):
    def refuse(model, rows):
        raise refusal
    monkeypatch.setattr(serving, "predict", refuse)
    answer = api_client.get(f"/api/v1.0?{query(**SETOSA)}", status=status)
    assert answer.content_type == "application/problem+json" and answer.json["detail"] == str(refusal)
    tensor = {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": list(SETOSA.values())}
    v2_answer = api_client.post_json("/v2/models/iris-classifier/infer", {"inputs": [tensor]}, status=status)
    assert v2_answer.json == {"error": str(refusal)}
    for response in (answer, v2_answer):
        assert header is None or response.headers[header[0]] == header[1]
