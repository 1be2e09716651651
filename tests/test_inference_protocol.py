"""The Open Inference Protocol (/v2): NVIDIA's own client, tritonclient, against the API served as its image serves
it (serve.py), and every error class through WebTest."""

import json
import re
import struct
import urllib.request

import numpy as np
import pytest
import tritonclient.http as triton
import webtest
from sklearn.datasets import load_iris
from tritonclient.http.auth import BasicAuth
from tritonclient.utils import InferenceServerException

import api
import tabserve
from tabserve.settings import ApiSettings
from tests.support import FEATURES, FLOWERS, PASSWORD, ROOT, USERNAME, auth_header, query

MODEL = "iris-classifier"
CLASSES = ["setosa", "versicolor", "virginica"]
FLOWER_ROWS = np.array([FLOWERS["setosa"], FLOWERS["versicolor"], FLOWERS["virginica"], FLOWERS["odd"]])


@pytest.fixture(scope="module")
def triton_client(served_api):
    """tritonclient's HTTP client, with basic auth, pointed at the served API."""
    client = triton.InferenceServerClient(url=f"127.0.0.1:{served_api.port}")
    client.register_plugin(BasicAuth(USERNAME, PASSWORD))
    yield client
    client.close()


@pytest.fixture(scope="module")
def version(model_path):
    return json.loads(model_path.with_suffix(".json").read_text())["version"]


def infer(client, rows, datatype="FP32", binary_in=True, binary_out=None, outputs=None, **kwargs):
    """tritonclient's infer() with one input tensor of these rows; binary_out None asks for no output by name."""
    tensor = triton.InferInput("input-0", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows.astype(triton.triton_to_np_dtype(datatype)), binary_data=binary_in)
    requested = None if binary_out is None else [triton.InferRequestedOutput(name, binary_data=binary_out)
                                                 for name in (outputs or ("predict", "predict_proba", "out_of_range"))]
    return client.infer(MODEL, [tensor], outputs=requested, **kwargs)


# --- tritonclient against the served API -----------------------------------------------------------------------


def test_health_metadata_and_readiness(triton_client, version):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready(MODEL) and triton_client.is_model_ready(MODEL, model_version=version)
    server = triton_client.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"]
    assert (server["name"], server["version"]) == ("tabserve", tabserve.__version__)  # the product, not the model
    metadata = triton_client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL and metadata["versions"] == [version]
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 4],
                                   "parameters": {"features": ",".join(FEATURES)}}]
    outputs = {output["name"]: output for output in metadata["outputs"]}
    assert list(outputs) == ["predict", "predict_proba", "out_of_range", "contributions"]
    assert outputs["predict_proba"]["parameters"]["classes"] == ",".join(CLASSES)
    assert triton_client.get_model_metadata(MODEL, model_version=version)["name"] == MODEL


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary input", "JSON input"])
@pytest.mark.parametrize("binary_out", [None, True, False], ids=["default outputs", "binary outputs", "JSON outputs"])
def test_infer_as_tritonclient_sends_it(triton_client, binary_in, binary_out, version):
    result = infer(triton_client, FLOWER_ROWS, binary_in=binary_in, binary_out=binary_out, request_id="r-7")
    assert [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("predict")] == \
        ["setosa", "versicolor", "virginica", "setosa"]
    probabilities = result.as_numpy("predict_proba")
    assert probabilities.shape == (4, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    outside = result.as_numpy("out_of_range")
    assert outside.dtype == bool and outside.tolist() == [[False] * 4] * 3 + [[True, True, True, False]]
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == ("r-7", MODEL, version)


@pytest.mark.parametrize("datatype", ["FP64", "INT32", "UINT8", "INT64"])
def test_other_datatypes_are_converted(triton_client, datatype):
    rows = np.array([[5, 3, 1, 1], [7, 3, 6, 2]])
    labels = infer(triton_client, rows, datatype).as_numpy("predict")
    assert [label.decode() for label in labels] == ["setosa", "virginica"]


def test_outputs_in_the_order_asked(triton_client):
    result = infer(triton_client, FLOWER_ROWS[:1], binary_out=True, outputs=["out_of_range", "predict"])
    assert [output["name"] for output in result.get_response()["outputs"]] == ["out_of_range", "predict"]
    assert result.as_numpy("predict_proba") is None


def test_a_versioned_path_and_one_row_of_shape_4(served_api, version):
    body = {"inputs": [{"name": "input-0", "shape": [4], "datatype": "FP64", "data": list(FLOWERS["setosa"])}]}
    response = call(served_api, f"/v2/models/{MODEL}/versions/{version}/infer", body)
    assert response["outputs"][0] == {"name": "predict", "datatype": "BYTES", "shape": [1], "data": ["setosa"]}


@pytest.mark.parametrize("change, status, words", [
    (lambda client: client.infer("no-such-model", [triton.InferInput("input-0", [1, 4], "FP32")]), 404,
     "there is no model 'no-such-model'"),
    (lambda client: client.is_model_ready(MODEL, model_version="0000"), None, None),
])
def test_unknown_models_and_versions(triton_client, change, status, words):
    if status is None:
        assert change(triton_client) is False
        return
    with pytest.raises(InferenceServerException) as caught:
        change(triton_client)
    assert caught.value.status() == str(status) and words in caught.value.message()


def test_wrong_credentials_are_refused(served_api):
    client = triton.InferenceServerClient(url=f"127.0.0.1:{served_api.port}")
    client.register_plugin(BasicAuth(USERNAME, "wrong"))
    try:
        assert client.is_server_live()  # probes need no credentials
        with pytest.raises(InferenceServerException) as caught:
            infer(client, FLOWER_ROWS)
        assert caught.value.status() == "401" and "credentials" in caught.value.message()
    finally:
        client.close()


def test_every_iris_flower_gets_the_answer_of_api_v1(triton_client, served_api):
    """predict and predict_proba from /v2 equal /api/v1.0's answer for each of the 150 flowers (FP64: no rounding)."""
    rows = load_iris().data
    result = infer(triton_client, rows, "FP64")
    labels, probabilities = result.as_numpy("predict"), result.as_numpy("predict_proba")
    for row, label, row_probabilities in zip(rows, labels, probabilities, strict=True):
        answer = get(served_api, "/api/v1.0?" + query(tuple(float(value) for value in row)))
        assert label.decode() == answer["prediction"]
        assert dict(zip(CLASSES, row_probabilities.tolist(), strict=True)) == answer["probabilities"]


def test_fp32_inputs_at_the_edge_of_the_training_range_are_not_out_of_range(triton_client, model_path):
    inputs = json.loads(model_path.with_suffix(".json").read_text())["inputs"]
    edges = np.array([[item["training_range"][end] for item in inputs] for end in ("min", "max")])
    assert not infer(triton_client, edges, "FP32").as_numpy("out_of_range").any()


def call(server, path, body, headers=None):
    request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(),
                                     headers={**auth_header(), "Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def get(server, path):
    with urllib.request.urlopen(urllib.request.Request(server.url + path, headers=auth_header()), timeout=10) as r:
        return json.load(r)


# --- Every error, through WebTest ------------------------------------------------------------------------------

INFER = f"/v2/models/{MODEL}/infer"
SETOSA_TENSOR = {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": list(FLOWERS["setosa"])}


def error_of(response):
    """The protocol's error message, after checking the error's form."""
    assert response.content_type == "application/json"
    assert set(response.json) == {"error"} and "Traceback" not in response.text
    return response.json["error"]


def with_tensor(**changes):
    return {"inputs": [{**SETOSA_TENSOR, **changes}]}


@pytest.mark.parametrize("body, words", [
    (b'{"inputs": [', "body is not valid JSON"),
    (b'{"inputs": [{"data": [NaN, 1, 1, 1]}]}', "not a number JSON allows"),
    (b"[]", "body must be a JSON object"),
    ({"inputs": [SETOSA_TENSOR], "model": "x"}, "model is not a field of an inference request"),
    ({"id": 7, "inputs": [SETOSA_TENSOR]}, "id must be a string"),
    ({}, "inputs is required"),
    ({"inputs": [SETOSA_TENSOR, SETOSA_TENSOR]}, "inputs must hold exactly one tensor"),
    (with_tensor(datatype="FP16"), "inputs[0].datatype must be one of FP32, FP64"),
    (with_tensor(datatype="BYTES"), "got \"BYTES\""),
    (with_tensor(shape=[1, 3], data=[1, 1, 1]), "inputs[0].shape must be [N, 4] or [4]"),
    (with_tensor(shape=[0, 4], data=[]), "inputs[0].shape must be [N, 4]"),
    (with_tensor(shape="1,4"), "inputs[0].shape must be"),
    (with_tensor(shape=[2, 4]), "inputs[0].data has 4 values; its shape says 8"),
    (with_tensor(data=[[5.1, 3.5], [1.4, 0.2]]), "inputs[0].data must hold 1 lists of 4 numbers"),
    (with_tensor(data=[5.1, "3.5", 1.4, 0.2]), 'inputs[0].data[1] must be a number for FP64, got "3.5"'),
    (with_tensor(data=[5.1, True, 1.4, 0.2]), "inputs[0].data[1] must be a number for FP64, got true"),
    (with_tensor(datatype="INT32", data=[5.1, 3, 1, 1]), "inputs[0].data[0] must be an integer for INT32"),
    (with_tensor(data=[5.1, 3.5, 0, 0.2]), "inputs[0][0][2] (petal_length) must be greater than 0 and at most 100"),
    (with_tensor(data=[101, 3.5, 1.4, 0.2]),
     "inputs[0][0][0] (sepal_length) must be greater than 0 and at most 100 cm, got 101"),
    (b'{"inputs": [{"name": "x", "shape": [4], "datatype": "FP64", "data": [1e999, 3.5, 1.4, 0.2]}]}', "got inf"),
    # An FP32 tensor holds what the client's own FP32 array would: 5e-324 is 0 there (it was refused as "got nan").
    (with_tensor(datatype="FP32", data=[5e-324, 3.5, 1.4, 0.2]),
     "inputs[0][0][0] (sepal_length) must be greater than 0 and at most 100 cm, got 0 as FP32"),
    (with_tensor(datatype="FP32", data=[5.1, 3.5, 1e39, 0.2]),
     "(petal_length) must be greater than 0 and at most 100 cm, got inf as FP32"),
    (with_tensor(extra=1), "inputs[0].extra is not a field of a tensor"),
    (with_tensor(parameters={"binary_data_size": 32}), "inputs[0].data must be absent when the tensor's bytes follow"),
    ({"inputs": [SETOSA_TENSOR], "outputs": [{"name": "probability"}]},
     "outputs[0].name must be one of predict, predict_proba, out_of_range, contributions, got \"probability\""),
    ({"inputs": [SETOSA_TENSOR], "outputs": {"name": "predict"}}, "outputs must be an array, got an object"),
    ({"inputs": [SETOSA_TENSOR], "parameters": {"binary_data_output": "yes"}},
     "parameters.binary_data_output must be true or false"),
    ({"inputs": [SETOSA_TENSOR], "parameters": {"deep": {"a": 1}}},
     "parameters.deep must be a string, a number or a boolean, got an object"),
])
def test_a_bad_inference_request_gets_a_400_naming_the_field(api_client, body, words):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = api_client.post(INFER, raw, content_type="application/json", status=400)
    assert words in error_of(response)


# Every field of an inference request, where it sits in VALID_REQUEST, the field the error must name, and the JSON
# kinds it may have: each other kind of JSON value put there must give a 400 that names that field.
JSON_VALUES = {"an object": {"a": 1}, "an array": [1], "a string": "x", "a number": 1.5, "an integer": 3,
               "a boolean": True, "null": None}
VALID_REQUEST = {"id": "r-1", "model_name": MODEL, "model_version": "1", "parameters": {"binary_data_output": False},
                 "inputs": [{**SETOSA_TENSOR, "parameters": {"custom": "x"}}],
                 "outputs": [{"name": "predict", "parameters": {"binary_data": False}}]}
REQUEST_FIELDS = [
    (("id",), "id", {"a string"}),
    (("model_name",), "model_name", {"a string"}),
    (("model_version",), "model_version", {"a string"}),
    (("parameters",), "parameters", {"an object"}),
    (("parameters", "binary_data_output"), "parameters.binary_data_output", {"a boolean"}),
    (("parameters", "custom"), "parameters.custom", {"a string", "a number", "an integer", "a boolean"}),
    (("inputs",), "inputs", {"an array"}),
    (("inputs", 0), "inputs[0]", {"an object"}),
    (("inputs", 0, "name"), "inputs[0].name", {"a string"}),
    (("inputs", 0, "shape"), "inputs[0].shape", {"an array"}),
    (("inputs", 0, "shape", 0), "inputs[0].shape", {"an integer"}),
    (("inputs", 0, "datatype"), "inputs[0].datatype", {"a string"}),
    (("inputs", 0, "parameters"), "inputs[0].parameters", {"an object"}),
    (("inputs", 0, "parameters", "custom"), "inputs[0].parameters.custom",
     {"a string", "a number", "an integer", "a boolean"}),
    (("inputs", 0, "parameters", "binary_data_size"), "inputs[0].parameters.binary_data_size", {"an integer"}),
    (("inputs", 0, "data"), "inputs[0].data", {"an array"}),
    (("inputs", 0, "data", 0), "inputs[0].data[0]", {"a number", "an integer"}),
    (("outputs",), "outputs", {"an array"}),
    (("outputs", 0), "outputs[0]", {"an object"}),
    (("outputs", 0, "name"), "outputs[0].name", {"a string"}),
    (("outputs", 0, "parameters"), "outputs[0].parameters", {"an object"}),
    (("outputs", 0, "parameters", "binary_data"), "outputs[0].parameters.binary_data", {"a boolean"}),
]


def with_value(path, value):
    """VALID_REQUEST with the value at path replaced."""
    body = json.loads(json.dumps(VALID_REQUEST))
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return body


def test_the_valid_request_of_the_type_table_is_answered(api_client):
    response = api_client.post(INFER, json.dumps(VALID_REQUEST), content_type="application/json")
    assert response.json["outputs"][0]["data"] == ["setosa"]


@pytest.mark.parametrize("path, field, kind", [
    (path, field, kind) for path, field, allowed in REQUEST_FIELDS for kind in JSON_VALUES if kind not in allowed
], ids=lambda value: value if isinstance(value, str) else ".".join(map(str, value)))
def test_every_field_of_the_wrong_json_type_gets_a_400_naming_it(api_client, path, field, kind):
    body = with_value(path, JSON_VALUES[kind])
    response = api_client.post(INFER, json.dumps(body), content_type="application/json", status=400)
    assert error_of(response).startswith(f"{field} "), (kind, response.json)


def test_the_outside_judges_request_gets_a_400_naming_the_datatype(api_client):
    body = {"inputs": [{"name": "", "shape": [], "datatype": {}, "parameters": {}, "data": []}]}
    response = api_client.post(INFER, json.dumps(body), content_type="application/json", status=400)
    assert error_of(response) == "inputs[0].datatype must be a string, got an object"


def binary_request(rows, header_extra=None, size=None, tail=b""):
    """A request in Triton's binary tensor extension: (body, headers)."""
    raw = np.asarray(rows, dtype="<f4").tobytes()
    tensor = {"name": "input-0", "shape": list(np.shape(rows)), "datatype": "FP32",
              "parameters": {"binary_data_size": len(raw) if size is None else size}}
    header = json.dumps({"inputs": [tensor], **(header_extra or {})}).encode()
    return header + raw + tail, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize("size, tail, header_length, words", [
    (12, b"", None, "binary_data_size must be 16 (1 x 4 x 4 bytes), got 12"),
    (None, b"extra", None, "body has 21 bytes after the JSON header; binary_data_size says 16"),
    (None, b"", "x", "Inference-Header-Content-Length must be the length of the JSON header"),
    (None, b"", "999999", "Inference-Header-Content-Length must be the length of the JSON header"),
])
def test_binary_sizes_that_do_not_add_up_get_a_400(api_client, size, tail, header_length, words):
    body, headers = binary_request([FLOWERS["setosa"]], size=size, tail=tail)
    if header_length:
        headers["Inference-Header-Content-Length"] = header_length
    response = api_client.post(INFER, body, headers=headers, content_type="application/octet-stream", status=400)
    assert words in error_of(response)


def test_binary_data_without_a_size_gets_a_400(api_client):
    header = json.dumps(with_tensor()).encode()
    response = api_client.post(INFER, header + b"\x00" * 16,
                               headers={"Inference-Header-Content-Length": str(len(header))},
                               content_type="application/octet-stream", status=400)
    assert "no input names a binary_data_size" in error_of(response)


def test_binary_request_and_binary_answer(api_client, version):
    body, headers = binary_request([FLOWERS["setosa"], FLOWERS["virginica"]],
                                   {"outputs": [{"name": "predict", "parameters": {"binary_data": True}},
                                                {"name": "out_of_range"}]})
    response = api_client.post(INFER, body, headers=headers, content_type="application/octet-stream")
    assert response.content_type == "application/octet-stream"
    length = int(response.headers["Inference-Header-Content-Length"])
    header, raw = json.loads(response.body[:length]), response.body[length:]
    assert header["outputs"][0] == {"name": "predict", "datatype": "BYTES", "shape": [2],
                                    "parameters": {"binary_data_size": len(raw)}}
    assert raw == struct.pack("<I", 6) + b"setosa" + struct.pack("<I", 9) + b"virginica"
    assert header["outputs"][1]["data"] == [False] * 8 and header["model_version"] == version


def test_the_limits_of_the_batch_endpoint_apply(api_client):
    many = with_tensor(shape=[10_001, 4], data=[1.0] * 40_004)
    response = api_client.post(INFER, json.dumps(many), content_type="application/json", status=413)
    assert "at most 10000" in error_of(response)
    huge = b'{"inputs": [{"name": "x", "shape": [4], "datatype": "FP64", "data": [' + b"1, " * 400_000 + b"1]}]}"
    response = api_client.post(INFER, huge, content_type="application/json", status=413)
    assert "larger than 1048576 bytes" in error_of(response)


@pytest.mark.parametrize("headers, content_type, words", [
    ({}, "text/plain", "send the request as application/json"),
    ({"Content-Encoding": "gzip"}, "application/json", "Content-Encoding 'gzip' is not supported"),
])
def test_bodies_that_cannot_be_read_get_a_415(api_client, headers, content_type, words):
    response = api_client.post(INFER, json.dumps(with_tensor()), headers=headers, content_type=content_type,
                               status=415)
    assert words in error_of(response)


def test_a_json_body_without_a_content_type_is_accepted(anonymous_api_client):
    environ = {"CONTENT_TYPE": ""}
    response = anonymous_api_client.post(INFER, json.dumps(with_tensor()), headers=auth_header(),
                                         extra_environ=environ)
    assert response.json["outputs"][0]["data"] == ["setosa"]


@pytest.mark.parametrize("method, path", [("GET", "/v2"), ("GET", f"/v2/models/{MODEL}"),
                                          ("GET", f"/v2/models/{MODEL}/ready"), ("POST", INFER)])
def test_everything_but_the_probes_needs_credentials(anonymous_api_client, method, path):
    response = anonymous_api_client.request(path, method=method, status=401)
    assert response.headers["WWW-Authenticate"].startswith('Basic realm="iris-classifier"')
    assert "credentials" in error_of(response)


def test_probes_answer_without_credentials(anonymous_api_client):
    assert anonymous_api_client.get("/v2/health/live").json == {"live": True}
    assert anonymous_api_client.get("/v2/health/ready").json == {"ready": True}


@pytest.mark.parametrize("path, words", [
    ("/v2/models/other", "there is no model 'other'; this server serves 'iris-classifier'"),
    (f"/v2/models/{MODEL}/versions/000000000000", "has no version '000000000000'"),
    (f"/v2/models/{MODEL}/versions/000000000000/ready", "has no version"),
    ("/v2/nothing/here", "There is nothing at this path"),
])
def test_unknown_models_versions_and_paths_get_a_404(api_client, path, words):
    assert words in error_of(api_client.get(path, status=404))


def test_a_wrong_method_gets_a_405_in_the_protocols_form(api_client):
    response = api_client.post("/v2/health/live", status=405)
    assert "accepts GET" in error_of(response) and response.headers["Allow"] == "GET"


def test_v2_requests_and_predictions_are_counted(model_path):
    client = webtest.TestApp(api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=model_path)))
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    rows = [FLOWERS["setosa"], FLOWERS["virginica"], FLOWERS["odd"]]
    client.post(INFER, json.dumps(with_tensor(shape=[3, 4], data=rows)), content_type="application/json")
    client.post(INFER, "{", content_type="application/json", status=400)
    metrics = client.get("/metrics").text
    version = client.get("/api/v1.0/model").json["version"]
    for status in (200, 400):
        assert ('tabserve_api_requests_total{endpoint="/v2/models/<name>/infer",method="POST",'
                f'status="{status}",user="tester",version="{version}"}} 1.0') in metrics
    assert f'tabserve_api_predictions_total{{class="setosa",version="{version}"}} 2.0' in metrics
    assert f'tabserve_api_predictions_total{{class="virginica",version="{version}"}} 1.0' in metrics
    assert f'tabserve_api_inputs_out_of_range_total{{feature="sepal_length",version="{version}"}} 1.0' in metrics


def test_the_docs_tritonclient_example_runs_as_written(served_api, capsys):
    """docs/api.md's Python example, word for word but for the address and the credentials, under both servers."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)
    example = next(block for block in blocks if "tritonclient" in block)
    assert 'url="localhost:8000"' in example and 'BasicAuth("my_username", "my_password")' in example
    example = example.replace('url="localhost:8000"', f'url="127.0.0.1:{served_api.port}"').replace(
        'BasicAuth("my_username", "my_password")', f"BasicAuth({USERNAME!r}, {PASSWORD!r})")
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "[b'setosa' b'virginica']", printed
