"""Generated input: Schemathesis from the API's own /openapi.json and from the Open Inference Protocol's published
document, each under both servers, and Hypothesis on the validation rules."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import pytest
import webtest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import web
from tabserve import client, inputs, wsgi
from tabserve.settings import WebSettings
from tests.support import FEATURES, PASSWORD, USERNAME

AUTHORIZATION = client.basic_authorization(USERNAME, PASSWORD)
SCHEMATHESIS = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()"]
CONFIG = Path(__file__).parent / "schemathesis.toml"
PROTOCOL_DOCUMENT = Path(__file__).parent / "open-inference-protocol" / "open_inference_rest.yaml"
SEEDS = (1, 2, 3)  # several seeds, each printed by the run, so that a failure can be replayed with --seed
DRAWN_PHASES = "examples,fuzzing,stateful"  # the phases whose cases the seed draws: all but coverage
# What our own document promises is checked in full. The protocol's document describes any model (any datatype, any
# shape) and only the statuses 200 and 400, so a run from it checks what it can promise of every server: no 5xx,
# every answer in the content type it names and matching its response schemas, and every request that violates it
# refused. (Statuses it does not list, such as 401, 404 and 413, are in our document; its valid requests are
# mostly not this model's input, so "schema-valid request rejected" cannot hold for it.)
PROTOCOL_CHECKS = ("not_a_server_error,content_type_conformance,response_schema_conformance,"
                   "response_headers_conformance,negative_data_rejection")


@pytest.fixture(scope="module")
def model_identity(model_path):
    """The environment that tests/schemathesis.toml reads: the served model's name and version."""
    metadata = json.loads(model_path.with_suffix(".json").read_text())
    return {"MODEL_NAME": metadata["name"], "MODEL_VERSION": metadata["version"]}


def run_schemathesis(document, base_url, seed, model_identity, workdir, *options, examples=60, at_least=500):
    """`schemathesis run` over every phase with tests/schemathesis.toml; its summary, after asserting it passed."""
    argv = [*SCHEMATHESIS, "--config-file", str(CONFIG), "run", str(document), "--url", base_url, "--seed", str(seed),
            "--max-examples", str(examples), *options]
    result = subprocess.run(argv, cwd=workdir, env={**os.environ, **model_identity}, capture_output=True, text=True,
                            timeout=600)
    summary = result.stdout[result.stdout.rfind("SUMMARY"):]
    failures = "\n".join(line[:300] for line in result.stdout.splitlines()
                         if line.startswith(("___", "- ", "[", "    `")))
    assert result.returncode == 0, failures + summary + result.stderr[-2000:]
    assert "No issues found" in summary or "passed" in summary, summary
    generated = re.search(r"(\d+) generated", summary)
    assert generated and int(generated.group(1)) >= at_least, summary  # the fuzzing was not vacuous
    return summary


@pytest.mark.parametrize("seed", SEEDS)
def test_api_keeps_its_document_with_credentials(served_api, seed, model_identity, tmp_path):
    """Every Schemathesis check (no --checks: the configuration's default is all of them, "schema-valid request
    rejected" and "schema-violating request accepted" included; --checks all would override its one exception).
    The coverage phase (each parameter's boundary values) runs with the first seed only: it sent the same 1,080
    requests with seeds 1, 2 and 3 (compared in HAR reports), so the other seeds would repeat it."""
    run_schemathesis(f"{served_api.url}/openapi.json", served_api.url, seed, model_identity, tmp_path,
                     "-H", f"Authorization: {AUTHORIZATION}", *(() if seed == SEEDS[0] else ("--phases", DRAWN_PHASES)))


def test_api_keeps_its_document_without_credentials(served_api, model_identity, tmp_path):
    """Without the coverage phase: its boundary values of each parameter reach no parameter here, since the 401
    comes before any is read, and it was the slowest run of the suite (40-70 s of its 60-118 s). The fuzzing and
    stateful phases still send every operation random requests without credentials."""
    run_schemathesis(f"{served_api.url}/openapi.json", served_api.url, 1, model_identity, tmp_path,
                     "--phases", DRAWN_PHASES)


@pytest.fixture(scope="module")
def protocol_document(tmp_path_factory):
    """The protocol's published document, its path parameters written as OpenAPI's {MODEL_NAME} instead of the
    ${MODEL_NAME} of its prose (tests/open-inference-protocol/README.md)."""
    document = yaml.safe_load(PROTOCOL_DOCUMENT.read_text())
    document["paths"] = {path.replace("${", "{"): item for path, item in document["paths"].items()}
    path = tmp_path_factory.mktemp("protocol") / "open_inference_rest.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("seed", SEEDS)
def test_api_keeps_the_protocols_published_document(served_api, protocol_document, seed, model_identity, tmp_path):
    run_schemathesis(protocol_document, served_api.url, seed, model_identity, tmp_path, "--checks", PROTOCOL_CHECKS,
                     "-H", f"Authorization: {AUTHORIZATION}", examples=200, at_least=300)


# --- Hypothesis on the validation ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed_api_client(api_app):
    client = webtest.TestApp(api_app)
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    return client


def expected_value(text):
    """What the API must make of one query value: a float it accepts, or None."""
    if not inputs.DECIMAL.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) and 0 < value <= 100 else None  # iris: greater than 0, at most 100 cm


numbers_as_text = st.floats(min_value=1e-3, max_value=150, allow_nan=False).map(repr)
text = st.text(alphabet=st.characters(exclude_categories=("Cs",)))  # anything a URL can carry
query_values = st.one_of(text, numbers_as_text, st.sampled_from(["", "nan", "inf", "1e999", "0x10", "1_0", "-1"]))
names = st.one_of(st.sampled_from(FEATURES), text.filter(bool))


@given(params=st.lists(st.tuples(names, query_values), max_size=6))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_query_gives_a_prediction_or_a_400_naming_the_problem(fuzzed_api_client, params):
    response = fuzzed_api_client.get("/api/v1.0?" + urlencode(params), expect_errors=True)
    seen = {}
    for name, value in params:
        seen.setdefault(name, []).append(value)
    valid = set(seen) == set(FEATURES) and all(
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
        assert fields <= {*FEATURES, "query"} | {wsgi.shorten(name) for name in seen}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(), children, max_size=6),
    max_leaves=30,
)
rows = st.one_of(
    st.lists(st.floats(min_value=-10, max_value=200, allow_nan=False) | st.integers(-5, 200), min_size=3, max_size=5),
    st.fixed_dictionaries({name: st.floats(min_value=0.01, max_value=100) for name in FEATURES}),
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
    return webtest.TestApp(web.create_app(WebSettings(api_url=live_api, username=USERNAME, password=PASSWORD)))


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
