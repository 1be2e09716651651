"""The Open Inference Protocol ("V2", spoken by KServe, NVIDIA Triton and Seldon MLServer) beside /api/v1.0: the same
loaded model, for the industry's standard clients (tritonclient, KServe's client, gateways, benchmarks).

    GET  /v2/health/live, /v2/health/ready                       probes, without credentials
    GET  /v2                                                      server metadata
    GET  /v2/models/{name}[/versions/{version}]                   model metadata: its input, outputs and classes
    GET  /v2/models/{name}[/versions/{version}]/ready             model readiness
    POST /v2/models/{name}[/versions/{version}]/infer             inference

The specification: kserve/open-inference-protocol (specification/protocol/inference_rest.md), and Triton's binary
tensor data extension (docs/protocol/extension_binary_data.md), which Triton's clients use by default: a JSON header,
its length in Inference-Header-Content-Length, followed by raw little-endian tensors. The input is one tensor of
shape [N, 4] (or [4]), the four measurements in /api/v1.0's order, FP32 or FP64 (INT and UINT types converted). The
outputs are named as MLServer's scikit-learn runtime names them: predict (the class names), predict_proba (a column
per class, in the model's order) and out_of_range (/api/v1.0's drift signal, counted in the same metrics). Errors
are {"error": "..."} naming the tensor or field; the limits and the value rules are /api/v1.0's. The routes are
in api.ROUTES, beside /api/v1.0's.
"""

import functools
import json
import struct

import bottle
import numpy as np

import service
from model import FEATURES, MAX_CM, MAX_ROWS, predict_all
from service import RequestError, shorten

SERVER_METADATA = {"name": "iris-api", "version": "1.0", "extensions": ["binary_tensor_data"]}
PLATFORM = "sklearn_joblib"
INPUT_NAME = "input-0"
OUTPUTS = ("predict", "predict_proba", "out_of_range")
# The little-endian NumPy type of each datatype an input may have; every one is converted to float64.
DATATYPES = {"FP32": "<f4", "FP64": "<f8", "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
             "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8"}
REQUEST_FIELDS = {"id", "parameters", "inputs", "outputs", "model_name", "model_version"}
TENSOR_FIELDS = {"name", "shape", "datatype", "parameters", "data"}
JSON_TYPE, BINARY_TYPE = "application/json", "application/octet-stream"
HEADER_LENGTH = "HTTP_INFERENCE_HEADER_CONTENT_LENGTH"
FP32_DECIMALS = 5  # decimal places an FP32 measurement is rounded to (see shortest_decimals)
MAX_REPORTED = 5


# --- Errors ----------------------------------------------------------------------------------------------------


def error_body(message):
    return json.dumps({"error": message})


def error_response(error):
    """A RequestError as the protocol's error: {"error": message}, the message naming each bad field."""
    message = "; ".join(f"{e['field']} {e['message']}" for e in error.errors[:MAX_REPORTED]) or error.detail
    return bottle.HTTPResponse(error_body(message), error.status, headers={"Content-Type": JSON_TYPE, **error.headers})


def bad(field, message):
    return service.invalid([service.field_error(field, message)])


def json_kind(value):
    """What a JSON value is, in words: "an object", "null", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), "a number")


def json_integer(value):
    """The value as an int if JSON counts it an integer (4.0 is one, as in JSON Schema; true is not), else None."""
    if type(value) is int:
        return value
    return int(value) if type(value) is float and value.is_integer() else None


def expect(field, value, kind):
    """The value, if its JSON type is kind (str, list, dict, int or bool: true is no integer here); else a 400 naming
    the field. Every field is checked so before it is used, so no JSON value can reach code that assumes another."""
    if kind is int and json_integer(value) is not None:
        return json_integer(value)
    if type(value) is not kind:
        wanted = {str: "a string", list: "an array", dict: "an object", int: "an integer", bool: "true or false"}[kind]
        raise bad(field, f"must be {wanted}, got {json_kind(value)}")
    return value


# --- Metadata and readiness ------------------------------------------------------------------------------------


def find_model(api, name, version=None):
    """The model at this name and version, or a 404 that says what is served."""
    model = api.model
    if name != model.metadata["name"]:
        raise RequestError(404, f"there is no model {shorten(name)!r}; this server serves {model.metadata['name']!r}")
    if version is not None and version != model.metadata["version"]:
        raise RequestError(404, f"model {name!r} has no version {shorten(version)!r}; it has "
                                f"{model.metadata['version']!r}")
    return model


def live(api):
    return {"live": True}


def ready(api):
    # This app exists only once the model is loaded and has passed its self-test (see api.readyz).
    return {"ready": True}


def server_metadata(api):
    return SERVER_METADATA


def model_ready(api, name, version=None):
    find_model(api, name, version)
    return {"name": name, "ready": True}


def model_metadata(api, name, version=None):
    model = find_model(api, name, version)
    features, classes = ",".join(FEATURES), ",".join(model.classes)
    return {
        "name": model.metadata["name"], "versions": [model.metadata["version"]], "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, len(FEATURES)],
                    "parameters": {"features": features}}],
        "outputs": [{"name": "predict", "datatype": "BYTES", "shape": [-1]},
                    {"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(model.classes)],
                     "parameters": {"classes": classes}},
                    {"name": "out_of_range", "datatype": "BOOL", "shape": [-1, len(FEATURES)],
                     "parameters": {"features": features}}],
    }


# --- Reading an inference request ------------------------------------------------------------------------------


def read_request(environ):
    """(the request's JSON header as a dict, the binary tensor data after it), refusing what cannot be read."""
    encoding = environ.get("HTTP_CONTENT_ENCODING", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise RequestError(415, f"Content-Encoding {shorten(encoding)!r} is not supported: send the body uncompressed")
    if service.media_type(environ) not in ("", JSON_TYPE, BINARY_TYPE):
        raise RequestError(415, f"send the request as {JSON_TYPE}, or as {BINARY_TYPE} (or with no Content-Type) with "
                                "Triton's binary tensor extension")
    body = service.read_body(environ)
    length = environ.get(HEADER_LENGTH)
    if length is None:
        return parse_header(body), b""
    if not length.isdigit() or int(length) > len(body):
        raise bad("Inference-Header-Content-Length", f"must be the length of the JSON header, at most the body's "
                                                     f"{len(body)} bytes, got {shorten(length)!r}")
    return parse_header(body[:int(length)]), body[int(length):]


def parse_header(text):
    """The inference request object, with its fields checked for type."""
    header = service.parse_json(text)
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


def check_parameters(field, parameters, flag=None):
    """Parameters as the protocol has them: strings, numbers or booleans; `flag`, if there, a boolean."""
    expect(field, parameters, dict)
    wrong = next((key for key, value in parameters.items() if not isinstance(value, (str, int, float))), None)
    if wrong is not None:
        raise bad(f"{field}.{shorten(wrong)}", f"must be a string, a number or a boolean, got "
                                               f"{json_kind(parameters[wrong])}")
    if flag in parameters:
        expect(f"{field}.{flag}", parameters[flag], bool)
    return parameters


def input_rows(header, binary):
    """The one input tensor as an (N, 4) float64 array of checked measurements."""
    if "inputs" not in header:
        raise bad("inputs", f"is required: one tensor, '{INPUT_NAME}' of shape [N, {len(FEATURES)}]")
    inputs = expect("inputs", header["inputs"], list)
    if len(inputs) != 1:
        raise bad("inputs", f"must hold exactly one tensor, '{INPUT_NAME}' of shape [N, {len(FEATURES)}]")
    tensor, where = expect("inputs[0]", inputs[0], dict), "inputs[0]"
    unknown = sorted(set(tensor) - TENSOR_FIELDS)
    if unknown:
        raise bad(f"{where}.{shorten(unknown[0])}", f"is not a field of a tensor; they are "
                                                    f"{', '.join(sorted(TENSOR_FIELDS))}")
    expect(f"{where}.name", tensor.get("name"), str)
    datatype = expect(f"{where}.datatype", tensor.get("datatype"), str)
    if datatype not in DATATYPES:
        raise bad(f"{where}.datatype", f"must be one of {', '.join(DATATYPES)}, got {shorten(json.dumps(datatype))}")
    rows = tensor_rows(where, tensor.get("shape"))
    parameters = check_parameters(f"{where}.parameters", tensor.get("parameters", {}))
    if "binary_data_size" in parameters:
        values = binary_values(where, tensor, binary, parameters["binary_data_size"], datatype, rows)
    else:
        if binary:
            raise bad("body", f"has {len(binary)} bytes after the JSON header but no input names a binary_data_size")
        values = json_values(where, tensor.get("data"), datatype, rows)
    rows = check_range(where, values.reshape(rows, len(FEATURES)))
    return shortest_decimals(rows) if datatype == "FP32" else rows


def tensor_rows(where, shape):
    """N, from a shape of [N, 4] or [4]; a 413 past MAX_ROWS, before any data is read."""
    dims = [json_integer(dim) for dim in expect(f"{where}.shape", shape, list)]
    columns = len(FEATURES)
    if not (dims == [columns] or (len(dims) == 2 and dims[1] == columns and dims[0] is not None and dims[0] >= 1)):
        raise bad(f"{where}.shape", f"must be [N, {columns}] or [{columns}] ({', '.join(FEATURES)}), "
                                    f"got {shorten(json.dumps(shape))}")
    rows = dims[0] if len(dims) == 2 else 1
    if rows > MAX_ROWS:
        raise RequestError(413, f"{where} has {rows} rows; a request holds at most {MAX_ROWS}: split it")
    return rows


def json_values(where, data, datatype, rows):
    """The tensor's JSON data, flat or one list per row, as a float64 array."""
    field = f"{where}.data"
    expect(field, data, list)
    if data and all(type(row) is list for row in data):
        if len(data) != rows or any(len(row) != len(FEATURES) for row in data):
            raise bad(field, f"must hold {rows} lists of {len(FEATURES)} numbers, as its shape says")
        data = [value for row in data for value in row]
    if len(data) != rows * len(FEATURES):
        raise bad(field, f"has {len(data)} values; its shape says {rows * len(FEATURES)}")
    integers = datatype.startswith(("INT", "UINT"))
    wrong = next((i for i, value in enumerate(data) if type(value) not in (int, float)
                  or (integers and type(value) is float and not value.is_integer())), None)
    if wrong is not None:
        kind = "an integer" if integers else "a number"  # 7.0 is an integer, as JSON Schema says
        raise bad(f"{field}[{wrong}]", f"must be {kind} for {datatype}, got {shorten(json.dumps(data[wrong]))}")
    try:
        return np.array(data, dtype=np.float64)
    except OverflowError:
        raise bad(field, "holds an integer too large for a measurement") from None


def binary_values(where, tensor, binary, size, datatype, rows):
    """The tensor's bytes from the binary part of the body, as a float64 array."""
    dtype = np.dtype(DATATYPES[datatype])
    expected = rows * len(FEATURES) * dtype.itemsize
    size = expect(f"{where}.parameters.binary_data_size", size, int)
    if "data" in tensor:
        raise bad(f"{where}.data", "must be absent when the tensor's bytes follow the JSON (binary_data_size)")
    if size != expected:
        raise bad(f"{where}.parameters.binary_data_size", f"must be {expected} ({rows} x {len(FEATURES)} x "
                                                           f"{dtype.itemsize} bytes), got {shorten(json.dumps(size))}")
    if len(binary) != size:
        raise bad("body", f"has {len(binary)} bytes after the JSON header; binary_data_size says {size}")
    return np.frombuffer(binary, dtype=dtype).astype(np.float64)


def shortest_decimals(values):
    """FP32 values read as the decimals they stand for: a float32 carries about 7 significant digits, so 7.9 arrives
    as 7.900000095 and would lie beyond a training range that ends at 7.9. Rounded to FP32_DECIMALS (0.1 µm, far
    below what anyone measures a flower with), it is 7.9 again; a smaller one is left as it came."""
    rounded = np.round(values, FP32_DECIMALS)
    return np.where(rounded > 0, rounded, values)


def check_range(where, rows):
    """The rows, if every measurement is finite, greater than 0 and at most MAX_CM; else a 400 naming them."""
    valid = (rows > 0) & (rows <= MAX_CM)  # false for nan and inf too
    if valid.all():
        return rows
    wrong = np.argwhere(~valid)
    errors = [{"field": f"{where}[{row}][{column}] ({FEATURES[column]})",
               "message": f"must be greater than 0 and at most {MAX_CM:g} cm, got {rows[row, column]:g}"}
              for row, column in wrong[:MAX_REPORTED].tolist()]
    raise RequestError(400, f"{len(wrong)} measurements are out of bounds", errors)


def requested_outputs(header):
    """[(output name, as binary data?)] in the order asked, every output when none is named."""
    default_binary = header.get("parameters", {}).get("binary_data_output", False)
    if "outputs" not in header:
        return [(name, default_binary) for name in OUTPUTS]
    outputs = expect("outputs", header["outputs"], list)
    if len(outputs) > len(OUTPUTS):
        raise bad("outputs", f"names at most {len(OUTPUTS)} outputs, got {len(outputs)}")
    requested = []
    for index, output in enumerate(outputs):
        where = f"outputs[{index}]"
        unknown = sorted(set(expect(where, output, dict)) - {"name", "parameters"})
        if unknown:
            raise bad(f"{where}.{shorten(unknown[0])}", "is not a field of a requested output; they are name and "
                                                        "parameters")
        if expect(f"{where}.name", output.get("name"), str) not in OUTPUTS:
            raise bad(f"{where}.name", f"must be one of {', '.join(OUTPUTS)}, got {shorten(json.dumps(output['name']))}")
        parameters = check_parameters(f"{where}.parameters", output.get("parameters", {}), "binary_data")
        requested.append((output["name"], parameters.get("binary_data", default_binary)))
    return requested


# --- Answering -------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def length_prefixed(classes):
    """Each class name as a BYTES element of the binary extension: a 4-byte little-endian length, then UTF-8."""
    return [struct.pack("<I", len(text)) + text for text in (label.encode() for label in classes)]


def output_data(model, name, predictions, binary):
    """(datatype, shape, data) of one output: data as bytes when binary, else as a flat list for JSON."""
    if name == "predict":
        indices = predictions.best.tolist()
        if binary:
            return "BYTES", [len(indices)], b"".join(map(length_prefixed(model.classes).__getitem__, indices))
        return "BYTES", [len(indices)], [model.classes[i] for i in indices]
    if name == "predict_proba":
        values, datatype, dtype = predictions.probabilities, "FP64", "<f8"
    else:
        values, datatype, dtype = predictions.outside, "BOOL", np.uint8  # a BOOL element is one byte
    return datatype, list(values.shape), values.astype(dtype).tobytes() if binary else values.ravel().tolist()


def respond(model, header, predictions, requested):
    """The inference response: JSON, or its JSON header followed by the outputs asked for as binary data."""
    outputs, chunks = [], []
    for name, binary in requested:
        datatype, shape, data = output_data(model, name, predictions, binary)
        tensor = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            chunks.append(data)
            tensor["parameters"] = {"binary_data_size": len(data)}
        else:
            tensor["data"] = data
        outputs.append(tensor)
    answer = {"model_name": model.metadata["name"], "model_version": model.metadata["version"], "outputs": outputs}
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
    model = find_model(api, name, version)
    header, binary = read_request(bottle.request.environ)
    rows = input_rows(header, binary)
    requested = requested_outputs(header)
    predictions = predict_all(model, rows)
    api.metrics.count_predictions(model, predictions)
    return respond(model, header, predictions, requested)
