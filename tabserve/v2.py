"""The Open Inference Protocol ("V2", spoken by KServe, NVIDIA Triton and Seldon MLServer) beside /api/v1.0: the same
loaded model, for the industry's standard clients (tritonclient, KServe's client, gateways, benchmarks).

    GET  /v2/health/live, /v2/health/ready                       probes, without credentials
    GET  /v2                                                      server metadata
    GET  /v2/models/{name}[/versions/{version}]                   model metadata: its input, outputs and classes
    GET  /v2/models/{name}[/versions/{version}]/ready             model readiness
    POST /v2/models/{name}[/versions/{version}]/infer             inference
    POST /v2/repository/index                                     every version and its state (Triton's extension)

A route that names no version is answered by the routing's (versions.py: the default, or a canary for a share of the
clients); one that names a version not ready is a 404.

The specification: kserve/open-inference-protocol (specification/protocol/inference_rest.md), and Triton's binary
tensor data extension (docs/protocol/extension_binary_data.md), which Triton's clients use by default: a JSON header,
its length in Inference-Header-Content-Length, followed by raw little-endian tensors. The inputs are read by
tensors.py: one tensor of shape [N, n] for a model of numbers only, one tensor per input for a model with
categories; the model metadata lists them. The outputs are named as MLServer's scikit-learn runtime names them:
predict (a classifier's class names as BYTES, a regressor's numbers as FP64 [N, 1]), predict_proba (a column per
class, in the model's order) or a regressor's interval (FP64 [N, 2]: low, high), out_of_range (/api/v1.0's drift
signal, counted in the same metrics) and contributions (when asked for). Errors are {"error": "..."} naming the
tensor or field; the limits and the value rules are /api/v1.0's. The routes are in api.ROUTES, beside /api/v1.0's.
"""

import functools
import json
import struct

import bottle
import numpy as np

from tabserve import __version__, wsgi
from tabserve.tensors import INPUT_NAME, MAX_REPORTED, bad, check_parameters, expect, read_inputs
from tabserve.versions import READY
from tabserve.wsgi import RequestError, shorten

# model_repository: its index only; versions are loaded by publishing them, not by a request (versions.py).
SERVER_METADATA = {"name": "tabserve", "version": __version__, "extensions": ["binary_tensor_data", "model_repository"]}
PLATFORM = "sklearn"  # followed by the artifact's format: sklearn_skops (or sklearn_pickle, under ALLOW_PICKLE)
# Each task's outputs; the last, contributions (explain.py), costs n + 1 predictions a row: sent only when asked for.
OUTPUTS = {"classification": ("predict", "predict_proba", "out_of_range", "contributions"),
           "regression": ("predict", "interval", "out_of_range", "contributions")}
REQUEST_FIELDS = {"id", "parameters", "inputs", "outputs", "model_name", "model_version"}
JSON_TYPE, BINARY_TYPE = "application/json", "application/octet-stream"
HEADER_LENGTH = "HTTP_INFERENCE_HEADER_CONTENT_LENGTH"


# --- Errors ----------------------------------------------------------------------------------------------------


def error_body(message):
    return json.dumps({"error": message})


def error_response(error):
    """A RequestError as the protocol's error: {"error": message}, the message naming each bad field."""
    message = "; ".join(f"{e['field']} {e['message']}" for e in error.errors[:MAX_REPORTED]) or error.detail
    return bottle.HTTPResponse(error_body(message), error.status, headers={"Content-Type": JSON_TYPE, **error.headers})


# --- Metadata and readiness ------------------------------------------------------------------------------------


def find_model(api, name, version=None):
    """The version that answers at this name (the one named, else the routing's): a serving.Choice, or a 404 that
    says what is served."""
    served = api.serving.versions.model_name
    if name != served:
        raise RequestError(404, f"there is no model {shorten(name)!r}; this server serves {served!r}")
    return api.serving.pick(bottle.request.environ, version)


def live(api):
    return {"live": True}


def ready(api):
    # This app exists only once the model is loaded and has passed its self-test (see api.readyz).
    return {"ready": True}


def server_metadata(api):
    return SERVER_METADATA


def model_ready(api, name, version=None):
    find_model(api, name, version)  # a version that is not ready is a 404, as Triton answers
    return {"name": name, "ready": True}


def input_metadata(schema):
    """The tensors the model takes, as its metadata lists them."""
    if schema.numeric:
        return [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, len(schema.inputs)],
                 "parameters": {"features": ",".join(schema.names)}}]
    return [{"name": item.name, "datatype": "FP64" if item.kind == "number" else "BYTES", "shape": [-1],
             "parameters": {"content_type": "np" if item.kind == "number" else "str",
                            **({"format": item.form} if item.kind == "date" else {})}} for item in schema.inputs]


def outputs_of(model):
    """The outputs a version answers: its task's, but a regressor's interval when it has none (a model fitted
    elsewhere that could not be calibrated)."""
    return tuple(name for name in OUTPUTS[model.task] if name != "interval" or model.card.get("interval"))


def answer_metadata(model):
    """The outputs that say the answer: a classifier's class and probabilities, or a regressor's number and
    interval (at the card's level), where it has one."""
    if model.task == "regression":
        interval = model.card.get("interval")
        return [{"name": "predict", "datatype": "FP64", "shape": [-1, 1]}] + ([
            {"name": "interval", "datatype": "FP64", "shape": [-1, 2],
             "parameters": {"columns": "low,high", "level": str(interval["level"])}}] if interval else [])
    return [{"name": "predict", "datatype": "BYTES", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(model.classes)],
             "parameters": {"classes": ",".join(model.classes)}}]


def model_metadata(api, name, version=None):
    model = find_model(api, name, version).model
    features = ",".join(model.schema.names)
    ready = [entry.name for entry in api.serving.versions.index() if entry.state == READY]
    return {
        "name": model.card["name"], "versions": ready, "platform": f"{PLATFORM}_{model.artifact['format']}",
        # The artifact's format and signature, as MLServer's metadata carries parameters
        "parameters": {"artifact_format": model.artifact["format"], "signature": model.artifact["signature"]},
        "inputs": input_metadata(model.schema),
        "outputs": [*answer_metadata(model),
                    {"name": "out_of_range", "datatype": "BOOL", "shape": [-1, len(model.schema.inputs)],
                     "parameters": {"features": features}},
                    {"name": "contributions", "datatype": "FP64", "shape": [-1, len(model.schema.inputs)],
                     "parameters": {"features": features, "sent": "when asked for"}}],
    }


# --- Reading an inference request ------------------------------------------------------------------------------


def read_request(environ):
    """(the request's JSON header as a dict, the binary tensor data after it), refusing what cannot be read."""
    encoding = environ.get("HTTP_CONTENT_ENCODING", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise RequestError(415, f"Content-Encoding {shorten(encoding)!r} is not supported: send the body uncompressed")
    if wsgi.media_type(environ) not in ("", JSON_TYPE, BINARY_TYPE):
        raise RequestError(415, f"send the request as {JSON_TYPE}, or as {BINARY_TYPE} (or with no Content-Type) with "
                                "Triton's binary tensor extension")
    body = wsgi.read_body(environ)
    length = environ.get(HEADER_LENGTH)
    if length is None:
        return parse_header(body), b""
    if not length.isdigit() or int(length) > len(body):
        raise bad("Inference-Header-Content-Length", f"must be the length of the JSON header, at most the body's "
                                                     f"{len(body)} bytes, got {shorten(length)!r}")
    return parse_header(body[:int(length)]), body[int(length):]


def parse_header(text):
    """The inference request object, with its fields checked for type."""
    header = wsgi.parse_json(text)
    if not isinstance(header, dict):
        raise bad("body", "must be a JSON object with an 'inputs' list")
    unknown = sorted(set(header) - REQUEST_FIELDS)
    if unknown:
        raise bad(shorten(unknown[0]), "is not a field of an inference request; they are "
                                       f"{', '.join(sorted(REQUEST_FIELDS))}")
    for field in ("id", "model_name", "model_version"):
        if field in header:
            expect(field, header[field], str)
    check_parameters("parameters", header.get("parameters", {}), "binary_data_output")
    return header


def requested_outputs(header, model):
    """[(output name, as binary data?)] in the order asked, every output but contributions when none is named."""
    default_binary = header.get("parameters", {}).get("binary_data_output", False)
    names = outputs_of(model)
    if "outputs" not in header:
        return [(name, default_binary) for name in names[:-1]]
    outputs = expect("outputs", header["outputs"], list)
    if len(outputs) > len(names):
        raise bad("outputs", f"names at most {len(names)} outputs, got {len(outputs)}")
    requested = []
    for index, output in enumerate(outputs):
        where = f"outputs[{index}]"
        unknown = sorted(set(expect(where, output, dict)) - {"name", "parameters"})
        if unknown:
            raise bad(f"{where}.{shorten(unknown[0])}", "is not a field of a requested output; they are name and "
                                                        "parameters")
        if expect(f"{where}.name", output.get("name"), str) not in names:
            got = shorten(json.dumps(output["name"]))
            raise bad(f"{where}.name", f"must be one of {', '.join(names)}, got {got}")
        parameters = check_parameters(f"{where}.parameters", output.get("parameters", {}), "binary_data")
        requested.append((output["name"], parameters.get("binary_data", default_binary)))
    return requested


# --- Answering -------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def length_prefixed(classes):
    """Each class name as a BYTES element of the binary extension: a 4-byte little-endian length, then UTF-8."""
    return [struct.pack("<I", len(text)) + text for text in (label.encode() for label in classes)]


def output_data(name, predictions, contributions, binary):
    """(datatype, shape, data) of one output: data as bytes when binary, else as a flat list for JSON."""
    if name == "predict" and predictions.task == "regression":
        values, datatype, dtype = predictions.values.reshape(-1, 1), "FP64", "<f8"
    elif name == "interval":
        values, datatype, dtype = np.column_stack([predictions.low, predictions.high]), "FP64", "<f8"
    elif name == "predict":
        indices = predictions.best.tolist()
        if binary:
            return "BYTES", [len(indices)], b"".join(map(length_prefixed(predictions.classes).__getitem__, indices))
        return "BYTES", [len(indices)], predictions.labels()
    elif name == "predict_proba":
        values, datatype, dtype = predictions.probabilities, "FP64", "<f8"
    elif name == "contributions":
        values, datatype, dtype = contributions, "FP64", "<f8"
    else:
        values, datatype, dtype = predictions.outside, "BOOL", np.uint8  # a BOOL element is one byte
    return datatype, list(values.shape), values.astype(dtype).tobytes() if binary else values.ravel().tolist()


def respond(model, header, predictions, contributions, requested):
    """The inference response: JSON, or its JSON header followed by the outputs asked for as binary data."""
    outputs, chunks = [], []
    for name, binary in requested:
        datatype, shape, data = output_data(name, predictions, contributions, binary)
        tensor = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            chunks.append(data)
            tensor["parameters"] = {"binary_data_size": len(data)}
        else:
            tensor["data"] = data
        outputs.append(tensor)
    answer = {"model_name": model.card["name"], "model_version": model.card["version"], "outputs": outputs}
    if "id" in header:
        answer = {"id": header["id"], **answer}
    text = json.dumps(answer).encode()
    if not chunks:
        bottle.response.content_type = JSON_TYPE
        return text
    bottle.response.content_type = BINARY_TYPE
    bottle.response.set_header("Inference-Header-Content-Length", str(len(text)))
    return b"".join([text, *chunks])


def infer(api, name, version=None):
    choice = find_model(api, name, version)
    model = choice.model
    header, binary = read_request(bottle.request.environ)
    rows = read_inputs(model.schema, header, binary)
    requested = requested_outputs(header, model)
    predictions = api.serving.predict(choice, rows)
    contributions = None
    if any(output == "contributions" for output, _ in requested):  # n + 1 predictions a row: only when asked
        contributions = api.serving.contributions(model, rows, predictions)
    return respond(model, header, predictions, contributions, requested)


# --- Triton's model repository extension ------------------------------------------------------------------------


def repository_index(api):
    """POST /v2/repository/index: every version known and its state (READY, LOADING, UNAVAILABLE with its reason),
    as Triton lists them; {"ready": true} in the body lists only those ready."""
    body = wsgi.read_body(bottle.request.environ)
    request = wsgi.parse_json(body) if body.strip() else {}
    if not isinstance(request, dict) or set(request) - {"ready"}:
        raise bad("body", 'must be empty or a JSON object with at most the field "ready"')
    only_ready = expect("ready", request.get("ready", False), bool)
    api.serving.versions.refresh()  # a version published since the last request is listed LOADING at once
    name = api.serving.versions.model_name
    bottle.response.content_type = JSON_TYPE
    return json.dumps([{"name": name, "version": entry.name, "state": entry.state, "reason": entry.reason}
                       for entry in api.serving.versions.index() if entry.state == READY or not only_ready])
