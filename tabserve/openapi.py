"""The contract the API serves at /openapi.json: openapi.json beside this file (what holds for every model), with the
served model's inputs put in at start-up, so that clients and fuzzers see the real rules of whatever model is loaded.

    document = served_document(Path("openapi.json"), metadata, 3600)  # bytes; 3600: DRIFT_WINDOW

From the metadata's inputs (inputs.py's rules, in JSON Schema's words) it writes: the query parameters of GET
/api/v1.0, the Features and Row schemas of the batch, and the input tensors of /v2: one tensor of shape [N, n] for a
model of numbers only, one tensor per feature (named by it) for a model with categories (open_inference.py).
"""

import json

from tabserve.card import task_of
from tabserve.dates import EXAMPLE
from tabserve.inputs import Schema
from tabserve.levels import MAX_TEXT
from tabserve.model import MAX_ROWS
from tabserve.v2 import OUTPUTS

NUMBER_TYPES = ["FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]


def value_schema(item, missing=None):
    """One input's values in JSON Schema: a number with its bounds, or a string among its categories; for an
    optional input, also what says it is missing (missing: null in JSON, "" in a query or a BYTES tensor)."""
    if item.kind == "category" and item.open:
        values = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "examples": list(item.categories),
                  "description": f"{item.label}: any text; one outside these frequent levels is answered as a rare one"}
    elif item.kind == "category":
        values = {"type": "string", "enum": list(item.categories), "description": item.label}
    elif item.kind == "date":
        values = {"type": "string", "format": item.form, "description": f"{item.label}: ISO 8601, as "
                                                                       f"{EXAMPLE[item.form]}"}
    else:
        values = {"type": "number", **dict(item.allowed), "description": f"{item.label}{item.in_unit}"}
    if not item.optional or missing is ...:
        return values
    return {"anyOf": [values, {"type": "null"} if missing is None else {"const": missing}],
            "description": f"{values.pop('description')}; optional: missing, the model assumes {item.assumed}"}


def query_parameter(item):
    return {"name": item.name, "in": "query", "required": not item.optional, "schema": value_schema(item, ""),
            "description": f"{item.label}{item.in_unit}: {item.rule()[len('must be '):]}"
                           + (", or left out (missing)" if item.optional else "")}


def rows_schemas(schema):
    """Features (an object by name) and Row (that, or a list in input order) of the batch."""
    values = [value_schema(item) for item in schema.inputs]
    required = [item.name for item in schema.inputs if not item.optional]
    features = {"type": "object", "required": required, "additionalProperties": False,
                "properties": dict(zip(schema.names, values, strict=True))}
    as_list = {"type": "array", "prefixItems": values, "minItems": len(values), "maxItems": len(values),
               "description": f"The inputs in the order {', '.join(schema.names)}"}
    return features, {"oneOf": [as_list, {"$ref": "#/components/schemas/Features"}]}


def common_number(schema):
    """The number rule of a tensor holding every input: theirs when they share one, else any number."""
    rules = {item.allowed for item in schema.inputs}
    return {"type": "number", **dict(rules.pop())} if len(rules) == 1 else {"type": "number"}


def matrix_tensor(schema):
    """The one tensor of a model of numbers only: shape [N, n] (or [n] for one row), data flat or a list per row."""
    columns, number = len(schema.inputs), common_number(schema)
    integer = {**number, "type": "integer"}
    if schema.optional:  # null stands for a missing value of an optional input
        number, integer = {"anyOf": [number, {"type": "null"}]}, {"anyOf": [integer, {"type": "null"}]}

    def data(item):
        return {"oneOf": [{"type": "array", "minItems": columns, "maxItems": columns * MAX_ROWS, "items": item},
                          {"type": "array", "minItems": 1, "maxItems": MAX_ROWS,
                           "items": {"type": "array", "minItems": columns, "maxItems": columns, "items": item}}]}

    return {
        "type": "object", "required": ["name", "shape", "datatype", "data"], "additionalProperties": False,
        "description": f"Shape [N, {columns}] (N at most {MAX_ROWS}) or [{columns}]: the inputs "
                       f"{', '.join(schema.names)} in this order, data flat or one list per row, row-major; FP32, "
                       "FP64, or an INT or UINT type (converted). Every value follows its input's rule "
                       "(GET /api/v1.0/model).",
        "properties": {
            "name": {"type": "string"},
            "shape": {"oneOf": [
                {"type": "array", "prefixItems": [{"const": columns}], "minItems": 1, "maxItems": 1},
                {"type": "array", "prefixItems": [{"type": "integer", "minimum": 1, "maximum": MAX_ROWS},
                                                  {"const": columns}], "minItems": 2, "maxItems": 2}]},
            "datatype": {"enum": NUMBER_TYPES},
            "parameters": {"allOf": [{"$ref": "#/components/schemas/Parameters"},
                                     {"not": {"required": ["binary_data_size"]}}],
                           "description": "binary_data_size belongs to the binary extension only"},
            "data": data(number),
        },
        "if": {"properties": {"datatype": {"enum": [name for name in NUMBER_TYPES if "INT" in name]}}},
        "then": {"properties": {"data": data(integer)}},
    }


def feature_tensor(item):
    """The tensor of one input of a model with categories: named by the input, shape [N] or [N, 1]."""
    return {
        "type": "object", "required": ["name", "shape", "datatype", "data"], "additionalProperties": False,
        "description": f"{item.label}: one value per row",
        "properties": {
            "name": {"const": item.name},
            "shape": {"type": "array", "minItems": 1, "maxItems": 2,
                      "prefixItems": [{"type": "integer", "minimum": 1, "maximum": MAX_ROWS}, {"const": 1}]},
            "datatype": {"enum": ["FP32", "FP64"] if item.kind == "number" else ["BYTES"]},
            "parameters": {"allOf": [{"$ref": "#/components/schemas/Parameters"},
                                     {"not": {"required": ["binary_data_size"]}}]},
            "data": {"type": "array", "minItems": 1, "maxItems": MAX_ROWS,
                     "items": value_schema(item, None if item.kind == "number" else "")},
        },
    }


def inputs_schema(schema):
    """The inference request's `inputs`."""
    if schema.numeric:
        return {"type": "array", "minItems": 1, "maxItems": 1, "items": {"$ref": "#/components/schemas/InputTensor"},
                "description": f"Exactly one tensor: the {len(schema.inputs)} inputs of each row"}
    return {"type": "array", "minItems": len(schema.inputs), "maxItems": len(schema.inputs),
            "items": {"oneOf": [feature_tensor(item) for item in schema.inputs]},
            "description": f"One tensor per input, named by it ({', '.join(schema.names)}), each of the same N rows"}


def answer_schema(metadata, schema):
    """One row's answer: a classifier's class and probabilities, or a regressor's number and interval; with at
    most a warning per number (and, for a regressor, one for a prediction beyond the target's range)."""
    # A number or date out of range, an open category's value none of its levels, or a value missing: one at most.
    numbers = sum(item.kind != "category" or item.open or item.optional for item in schema.inputs)
    warnings = {"type": "array", "items": {"type": "string"}, "maxItems": numbers,
                "description": "One sentence per input outside the range seen in training or missing (at most one "
                               "per input)"}
    if task_of(metadata) == "classification":
        classes = metadata["classes"]
        return {"type": "object", "required": ["prediction", "probabilities", "warnings"], "properties": {
            "prediction": {"enum": classes},
            "probabilities": {"type": "object", "required": classes, "additionalProperties": False,
                              "properties": {name: {"type": "number", "minimum": 0, "maximum": 1} for name in classes}},
            "warnings": warnings}}
    interval = metadata["interval"]
    if interval:
        bounds = {"type": "object", "required": ["low", "high", "level"], "additionalProperties": False,
                  "description": f"Holds the true value for {interval['level']:.0%} of rows like the training data "
                                 "(conformal prediction: docs/models.md)",
                  "properties": {"low": {"type": "number"}, "high": {"type": "number"},
                                 "level": {"const": interval["level"]}}}
    else:  # a model fitted elsewhere that could not be calibrated: no interval, and a warning saying so
        bounds, numbers = {"type": "null", "description": "This model has no interval"}, numbers + 1
    return {"type": "object", "required": ["prediction", "interval", "warnings"], "properties": {
        "prediction": {"type": "number", "description": f"The predicted {metadata['target']['label']}"},
        "interval": bounds,
        "warnings": {**warnings, "maxItems": numbers + 1,
                     "description": "One sentence per input outside the range seen in training, and one when the "
                                    "prediction lies outside the target's"}}}


def explanation_schema(metadata):
    """The explain endpoint's additions: contributions (probability points, or the target's unit) and neighbours
    (with their class, or their target's value)."""
    regression = task_of(metadata) == "regression"
    contribution = {"type": "number"} if regression else {"type": "number", "minimum": -1, "maximum": 1}
    answer = ("target", {"type": "number"}) if regression else ("class", {"type": "string"})
    return {"type": "object", "required": ["contributions", "neighbours"], "properties": {
        "contributions": {"type": "object", "additionalProperties": contribution,
                          "description": "Feature name -> contribution, in feature order"},
        "neighbours": {"type": "array", "maxItems": 3, "items": {
            "type": "object", "required": ["features", answer[0], "distance"],
            "properties": {"features": {"$ref": "#/components/schemas/Features"}, answer[0]: answer[1],
                           "distance": {"type": "number", "minimum": 0}}}}}}


def served_document(path, metadata, drift_window):
    """The OpenAPI document for the model this metadata describes (and the monitoring's window, DRIFT_WINDOW), as the
    bytes /openapi.json answers."""
    document = json.loads(path.read_text(encoding="utf-8"))
    document["components"]["parameters"]["Window"]["schema"]["maximum"] = drift_window
    schema = Schema(metadata["inputs"])
    schemas = document["components"]["schemas"]
    document["info"]["title"] = metadata.get("texts", {}).get("title", document["info"]["title"])
    for path in ("/api/v1.0", "/api/v1.0/explain"):
        operation = document["paths"][path]["get"]
        operation["parameters"] = [query_parameter(item) for item in schema.inputs] + operation["parameters"]
    schemas["Features"], schemas["Row"] = rows_schemas(schema)
    schemas["Answer"] = answer_schema(metadata, schema)
    schemas["Explanation"]["allOf"][1] = explanation_schema(metadata)
    schemas["OutputTensor"]["properties"]["name"] = {"enum": [name for name in OUTPUTS[task_of(metadata)]
                                                              if name != "interval" or metadata.get("interval")]}
    schemas["InferenceRequest"]["properties"]["inputs"] = inputs_schema(schema)
    if schema.numeric:
        schemas["InputTensor"] = matrix_tensor(schema)
    feedback = schemas["FeedbackItem"]["properties"]
    answer = {"type": "number"} if task_of(metadata) == "regression" else {"enum": list(metadata["classes"])}
    for key in ("prediction", "truth"):
        feedback[key] = {**feedback[key], **answer}
    if task_of(metadata) == "classification":
        del feedback["interval"]
    return json.dumps(document, indent=2, ensure_ascii=False).encode()
