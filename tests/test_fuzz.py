"""Generated bad input: Schemathesis from the API's own /openapi.json, and Hypothesis on the validation rules."""

import json
import math
import urllib.request
from urllib.parse import urlencode

import pytest
import schemathesis
import webtest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import api
import web
from tests.support import PASSWORD, USERNAME, auth_header

AUTHORIZATION = auth_header()
# Enough cases over the two operations that take input to pass 500 with credentials alone.
CASES_PER_OPERATION = 300
FUZZ = settings(max_examples=CASES_PER_OPERATION, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])
cases_run = {"with credentials": 0, "without credentials": 0}


# The document the API serves at /openapi.json (test_the_fuzzed_document_is_the_served_one proves it). Loaded at
# import, because Schemathesis' lazy fixture loader does not work with this pytest; the calls go to the real API.
schema = schemathesis.openapi.from_path(api.OPENAPI_PATH)


def test_the_fuzzed_document_is_the_served_one(live_api):
    with urllib.request.urlopen(f"{live_api}/openapi.json") as response:
        assert response.read() == api.OPENAPI_PATH.read_bytes()


@pytest.fixture(scope="session")
def model_version(model_path):
    return json.loads(model_path.with_suffix(".json").read_text())["version"]


def as_a_client_sends_it(case, model_version):
    """A positive case with the served model's name and version in its path, and each input's shape made to match
    its data (JSON Schema cannot tie the one to the other), so that the API must answer 200. Negative cases, which
    the API must refuse, are left as generated."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    parameters = case.path_parameters or {}
    for name, value in (("model_name", "iris-classifier"), ("model_version", model_version)):
        if name in parameters:
            parameters[name] = value
    if isinstance(case.body, dict) and case.body.get("inputs"):
        tensor = case.body["inputs"][0]
        data = tensor["data"]
        if isinstance(data[0], list):
            tensor["shape"] = [len(data), 4]
        else:
            del data[len(data) // 4 * 4:]
            tensor["shape"] = [4] if tensor["shape"] == [4] and len(data) == 4 else [len(data) // 4, 4]


@schema.parametrize()
@FUZZ
def test_api_keeps_its_document_with_credentials(case, live_api, model_version):
    cases_run["with credentials"] += 1
    as_a_client_sends_it(case, model_version)
    case.call_and_validate(base_url=live_api, headers=AUTHORIZATION)


@schema.parametrize()
@FUZZ
def test_api_keeps_its_document_without_credentials(case, live_api, model_version):
    cases_run["without credentials"] += 1
    as_a_client_sends_it(case, model_version)
    case.call_and_validate(base_url=live_api)


def test_enough_cases_were_generated():
    """Runs after the two above (pytest keeps file order): proves the fuzzing was not vacuous."""
    assert cases_run["with credentials"] >= 500, cases_run
    assert cases_run["without credentials"] >= 500, cases_run


# --- Hypothesis on the validation ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed_api_client(api_app):
    client = webtest.TestApp(api_app)
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    return client


def expected_value(text):
    """What the API must make of one query value: a float it accepts, or None."""
    if not api.DECIMAL.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) and 0 < value <= api.MAX_CM else None


numbers_as_text = st.floats(min_value=1e-3, max_value=150, allow_nan=False).map(repr)
text = st.text(alphabet=st.characters(exclude_categories=("Cs",)))  # anything a URL can carry
query_values = st.one_of(text, numbers_as_text, st.sampled_from(["", "nan", "inf", "1e999", "0x10", "1_0", "-1"]))
names = st.one_of(st.sampled_from(api.FEATURES), text.filter(bool))


@given(params=st.lists(st.tuples(names, query_values), max_size=6))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_query_gives_a_prediction_or_a_400_naming_the_problem(fuzzed_api_client, params):
    response = fuzzed_api_client.get("/api/v1.0?" + urlencode(params), expect_errors=True)
    seen = {}
    for name, value in params:
        seen.setdefault(name, []).append(value)
    valid = set(seen) == set(api.FEATURES) and all(
        len(values) == 1 and expected_value(values[0]) is not None for values in seen.values())
    if valid:
        assert response.status_int == 200
        assert response.json["features"] == {name: expected_value(values[0]) for name, values in seen.items()}
        assert response.json["prediction"] in ("setosa", "versicolor", "virginica")
    else:
        assert response.status_int == 400, response.text
        assert response.content_type == "application/problem+json"
        fields = {error["field"] for error in response.json["errors"]}
        assert fields, response.json
        assert fields <= {*api.FEATURES, "query"} | {api.shorten(name) for name in seen}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(), children, max_size=6),
    max_leaves=30,
)
rows = st.one_of(
    st.lists(st.floats(min_value=-10, max_value=200, allow_nan=False) | st.integers(-5, 200), min_size=3, max_size=5),
    st.fixed_dictionaries({name: st.floats(min_value=0.01, max_value=100) for name in api.FEATURES}),
    json_values,
)
bodies = st.one_of(json_values, st.fixed_dictionaries({"instances": st.lists(rows, max_size=5)}))


@given(body=bodies)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_json_body_gives_predictions_or_a_4xx_naming_the_problem(fuzzed_api_client, body):
    response = fuzzed_api_client.post("/api/v1.0/predict", json.dumps(body), content_type="application/json",
                                      expect_errors=True)
    if response.status_int == 200:
        assert len(response.json["predictions"]) == len(body["instances"])
        return
    assert response.status_int == 400, response.text
    assert response.content_type == "application/problem+json"
    assert all(error["field"] and error["message"] for error in response.json["errors"])


@given(raw=st.binary(max_size=200))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_bytes_as_a_body_give_a_400(fuzzed_api_client, raw):
    response = fuzzed_api_client.post("/api/v1.0/predict", raw, content_type="application/json", expect_errors=True)
    assert response.status_int in (200, 400)


@pytest.fixture(scope="module")
def fuzzed_web_client(live_api):
    """The web app, talking to the real API."""
    return webtest.TestApp(web.create_app(web.Settings(api_url=live_api, username=USERNAME, password=PASSWORD)))


@given(params=st.lists(st.tuples(names, query_values), max_size=80))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_query_gives_the_web_page_or_the_form_with_errors(fuzzed_web_client, params):
    query = urlencode(params)
    assert fuzzed_web_client.get(f"/?{query}").status_int == 200
    response = fuzzed_web_client.get(f"/prediction?{query}", expect_errors=True)
    assert response.status_int in (200, 400), response.text[:500]
    assert response.content_type == "text/html"


tensors = st.fixed_dictionaries({
    "name": st.text(max_size=8),
    "shape": st.one_of(st.lists(st.integers(-2, 20), max_size=3), st.just([2, 4]), st.just([4])),
    "datatype": st.sampled_from(["FP32", "FP64", "INT32", "UINT8", "BYTES", "BOOL"]),
    "parameters": st.fixed_dictionaries({"binary_data_size": st.one_of(st.integers(-1, 80), st.just(32),
                                                                           st.booleans(), st.text(max_size=3))}),
})


@given(tensor=tensors, raw=st.binary(max_size=80), length_change=st.integers(-3, 3),
       outputs=st.one_of(st.none(), st.lists(st.fixed_dictionaries({"name": st.sampled_from(
           ["predict", "predict_proba", "out_of_range", "other"])}), max_size=3)))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_binary_request_gives_outputs_or_an_error_naming_the_problem(fuzzed_api_client, tensor, raw,
                                                                         length_change, outputs):
    header = json.dumps({"inputs": [tensor], **({"outputs": outputs} if outputs is not None else {})}).encode()
    length = str(max(len(header) + length_change, 0))
    response = fuzzed_api_client.post("/v2/models/iris-classifier/infer", header + raw, expect_errors=True,
                                      headers={"Inference-Header-Content-Length": length},
                                      content_type="application/octet-stream")
    if response.status_int == 200:
        assert response.content_type in ("application/json", "application/octet-stream")
        return
    assert response.status_int in (400, 413), response.text
    assert response.content_type == "application/json" and set(response.json) == {"error"}
