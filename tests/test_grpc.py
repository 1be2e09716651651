"""The Open Inference Protocol over gRPC: NVIDIA's own client, tritonclient.grpc (which always sends tensors raw and
reads numbers only from raw_output_contents), and the protocol's typed contents through a stub of Triton's own proto
(ours, proto/inference.proto, cannot share a process with it: the same names), against the API served as its image
serves it (serve.py, GRPC_PORT)."""

import base64
import json
import re
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sklearn.datasets import load_iris
from tritonclient.grpc import service_pb2 as pb  # Triton's own proto: ours must be the same on the wire
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

import tabserve
import train
from tests.support import FLOWERS, PASSWORD, USERNAME, Server, api_server, auth_header, query, write_fruit_csv

MODEL = "iris-classifier"
AUTH = {"authorization": "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()}
FLOWER_ROWS = np.array([FLOWERS["setosa"], FLOWERS["versicolor"], FLOWERS["virginica"], FLOWERS["odd"]])


@pytest.fixture(scope="module")
def client(served_api):
    client = triton.InferenceServerClient(f"127.0.0.1:{served_api.grpc_port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def version(model_path):
    return json.loads(model_path.with_suffix(".json").read_text())["version"]


def get(server, path):
    request = urllib.request.Request(server.url + path, headers=auth_header())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def infer(client, rows, datatype="FP32", name="input-0", model=MODEL, headers=AUTH, **kwargs):
    tensor = triton.InferInput(name, list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows.astype(triton.triton_to_np_dtype(datatype)))
    return client.infer(model, [tensor], headers=headers, **kwargs)


def refusal(call):
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def test_health_and_metadata(client, version):
    assert client.is_server_live() and client.is_server_ready()  # probes need no credentials, as over REST
    assert client.is_model_ready(MODEL, headers=AUTH) and client.is_model_ready(MODEL, version, headers=AUTH)
    assert client.is_model_ready(MODEL, "0000", headers=AUTH) is False
    server = client.get_server_metadata(headers=AUTH)
    assert (server.name, server.version) == ("tabserve", tabserve.__version__)
    metadata = client.get_model_metadata(MODEL, headers=AUTH, as_json=True)
    assert metadata["name"] == MODEL and metadata["versions"] == [version] and metadata["platform"] == "sklearn_skops"
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert [output["name"] for output in metadata["outputs"]] == ["predict", "predict_proba", "out_of_range",
                                                                   "contributions"]
    index = client.get_model_repository_index(headers=AUTH, as_json=True)["models"]
    assert index == [{"name": MODEL, "version": version, "state": "READY"}]


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_several_rows_get_the_answers_of_api_v1(client, served_api, datatype, version):
    rows = load_iris().data[::10]
    result = infer(client, rows, datatype, request_id="g-1")
    labels, probabilities = result.as_numpy("predict"), result.as_numpy("predict_proba")
    assert result.as_numpy("out_of_range").shape == (len(rows), 4)
    for row, label, row_probabilities in zip(rows, labels, probabilities, strict=True):
        sent = row.astype(np.float32).astype(float) if datatype == "FP32" else row
        answer = get(served_api, "/api/v1.0?" + query(tuple(float(value) for value in sent)))
        assert label.decode() == answer["prediction"]
        assert dict(zip(("setosa", "versicolor", "virginica"), row_probabilities.tolist(), strict=True)) == \
            pytest.approx(answer["probabilities"], abs=1e-6)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("g-1", MODEL, version)


def test_a_named_version_and_outputs_in_the_order_asked(client, version):
    outputs = [triton.InferRequestedOutput(name) for name in ("contributions", "predict")]
    result = infer(client, FLOWER_ROWS[:2], model_version=version, outputs=outputs)
    assert [output.name for output in result.get_response().outputs] == ["contributions", "predict"]
    assert result.as_numpy("contributions").shape == (2, 4)


@pytest.mark.parametrize("rows, datatype, name, words", [
    (FLOWER_ROWS[:, :3], "FP32", "input-0", "inputs[0].shape must be [N, 4] or [4]"),
    (FLOWER_ROWS.astype(str), "BYTES", "input-0", "inputs[0].datatype"),
])
def test_a_wrong_shape_or_datatype_names_the_input(client, rows, datatype, name, words):
    status, message = refusal(lambda: infer(client, rows, datatype, name))
    assert status == "StatusCode.INVALID_ARGUMENT" and words in message, message


def test_no_credentials_and_unknown_models(client):
    status, message = refusal(lambda: infer(client, FLOWER_ROWS, headers={}))
    assert status == "StatusCode.UNAUTHENTICATED" and "credentials" in message
    status, _ = refusal(lambda: infer(client, FLOWER_ROWS, headers={"authorization": "Basic " + "x" * 12}))
    assert status == "StatusCode.UNAUTHENTICATED"
    status, message = refusal(lambda: infer(client, FLOWER_ROWS, model="no-such-model"))
    assert status == "StatusCode.NOT_FOUND" and "there is no model 'no-such-model'" in message
    status, _ = refusal(lambda: infer(client, FLOWER_ROWS, model_version="0000"))
    assert status == "StatusCode.NOT_FOUND"


def test_typed_contents_are_answered_typed(served_api):
    """A client of the proto that sends typed contents (not raw) gets typed contents back, as the protocol says."""
    with grpc.insecure_channel(f"127.0.0.1:{served_api.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP64", shape=[2, 4])
        tensor.contents.fp64_contents.extend(FLOWER_ROWS[:2].ravel().tolist())
        metadata = tuple(AUTH.items())
        response = stub.ModelInfer(pb.ModelInferRequest(model_name=MODEL, inputs=[tensor]), metadata=metadata)
        assert not response.raw_output_contents
        assert list(response.outputs[0].contents.bytes_contents) == [b"setosa", b"versicolor"]
        assert len(response.outputs[1].contents.fp64_contents) == 6
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(pb.ModelInferRequest(model_name=MODEL, inputs=[tensor], raw_input_contents=[b"x"]),
                            metadata=tuple(AUTH.items()))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Traceback" not in caught.value.details()


def test_the_health_service_answers_serving_without_credentials(served_api):
    with grpc.insecure_channel(f"127.0.0.1:{served_api.grpc_port}") as channel:
        checks = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = checks.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_calls_are_counted_per_method_and_version(client, served_api, version):
    infer(client, FLOWER_ROWS)
    request = urllib.request.Request(served_api.url + "/metrics", headers=auth_header())
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    assert re.search(r'tabserve_api_requests_total\{[^}]*endpoint="grpc ModelInfer"[^}]*status="200"', text), \
        [line for line in text.splitlines() if "grpc" in line][:5]
    assert re.search(rf'tabserve_api_predictions_total\{{[^}}]*version="{version}"', text)


@pytest.fixture(scope="module")
def other_models(tmp_path_factory):
    """A regressor (diabetes) and a table with categories (fruit), each served with gRPC."""
    folder = tmp_path_factory.mktemp("grpc-models")
    fruit = write_fruit_csv(folder / "fruit.csv")
    train.main(["--dataset", "diabetes", "--output", str(folder / "diabetes.skops")])
    train.main(["--csv", str(fruit), "--target", "Fruit", "--drop", "ID", "--output", str(folder / "fruit.skops")])
    servers = {name: api_server(folder / f"{name}.skops") for name in ("diabetes", "fruit")}
    yield servers
    for server in servers.values():
        server.stop()


def test_a_regressor_answers_its_interval(other_models):
    server = other_models["diabetes"]
    card = get(server, "/api/v1.0/model")
    with triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:
        example = next(iter(card["examples"].values()))
        rows = np.array([[example[name] for name in card["features"]]])
        result = infer(client, rows, "FP64", model=card["name"])
        answer = get(server, "/api/v1.0?" + "&".join(f"{n}={v}" for n, v in example.items()))
        assert result.as_numpy("predict")[0, 0] == pytest.approx(answer["prediction"])
        low, high = result.as_numpy("interval")[0]
        assert (low, high) == pytest.approx((answer["interval"]["low"], answer["interval"]["high"]))


def test_a_table_with_categories_takes_a_bytes_tensor_per_input(other_models):
    server = other_models["fruit"]
    card = get(server, "/api/v1.0/model")
    example = next(iter(card["examples"].values()))
    with triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:
        tensors = []
        for item in card["inputs"]:
            number = item["kind"] == "number"
            tensor = triton.InferInput(item["name"], [1], "FP64" if number else "BYTES")
            tensor.set_data_from_numpy(np.array([example[item["name"]]], dtype=np.float64 if number else object))
            tensors.append(tensor)
        result = client.infer(card["name"], tensors, headers=AUTH)
        answer = get(server, "/api/v1.0?" + "&".join(f"{k}={v}" for k, v in example.items()))
        assert result.as_numpy("predict")[0].decode() == answer["prediction"]
        place = next(i for i, item in enumerate(card["inputs"]) if item["kind"] == "category")
        bad = triton.InferInput(tensors[place].name(), [1], "BYTES")
        bad.set_data_from_numpy(np.array(["no such value"], dtype=object))
        tensors[place] = bad
        status, message = refusal(lambda: client.infer(card["name"], tensors, headers=AUTH))
        assert status == "StatusCode.INVALID_ARGUMENT" and "no such value" in message, message


def test_grpc_port_off_serves_http_only(model_path):
    server = api_server(model_path, GRPC_PORT="off")
    try:
        assert "over gRPC" not in server.log_text()
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel, pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    finally:
        server.stop()


def test_a_taken_grpc_port_stops_the_api_in_one_line(served_api, model_path):
    server = Server("api", {"API_USERNAME": USERNAME, "API_PASSWORD": PASSWORD, "MODEL_PATH": str(model_path),
                            "GRPC_PORT": str(served_api.grpc_port)})
    try:
        assert server.process.wait(timeout=60) == 1
        assert f"GRPC_PORT {served_api.grpc_port} on 127.0.0.1 is taken" in server.log_text()
    finally:
        server.stop()
