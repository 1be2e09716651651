"""Iris prediction API: serves the model trained by train.py as JSON, behind HTTP basic auth.

Run it locally (Bottle's development server):
    API_USERNAME=my_username API_PASSWORD=my_password python api.py
In production (what the container runs):
    gunicorn --config gunicorn.conf.py 'api:app_from_env()'

Environment, read once at start-up:
    API_USERNAME       user name that clients must send (required)
    API_PASSWORD       password that clients must send (this or API_PASSWORD_FILE is required)
    API_PASSWORD_FILE  file holding the password, e.g. a Docker secret under /run/secrets
    MODEL_PATH         joblib artifact written by train.py (default: model/iris.joblib beside this file)
    HOST, PORT         where `python api.py` listens (default: 127.0.0.1 and 8000)
    LOG_LEVEL          DEBUG, INFO, WARNING or ERROR (default: INFO)
    LOG_FORMAT         text or json (default: text)

Endpoints: GET /api/v1.0 (one prediction from the query string), POST /api/v1.0/predict (a batch),
GET /api/v1.0/model (metadata), GET /metrics (Prometheus), GET /healthz, GET /readyz and GET /openapi.json;
see README.md.
"""

import base64
import collections
import contextvars
import functools
import gc
import hashlib
import hmac
import json
import logging
import math
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes

import bottle
import joblib
import numpy as np
import prometheus_client
import sklearn
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
MAX_CM = 100.0
MAX_ROWS = 10_000
MAX_BODY_BYTES = 1024 * 1024
MAX_QUERY_FIELDS = 16
MAX_REPORTED_ERRORS = 20
PROBABILITY_DIGITS = 6
FAST_PATH_TOLERANCE = 1e-9
DEMO_PASSWORD = "my_password"
REALM = "iris-api"
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "model" / "iris.joblib"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# A client's own X-Request-ID is kept when it is short and plain; anything else is replaced, never logged as sent.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
JSON_TYPE = "application/json"
PROBLEM_TYPE = "application/problem+json"
# Plain decimal notation only: float() alone would also take 'nan', 'inf', '1_0' and surrounding spaces.
DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # ASCII digits only
REQUIRED_METADATA = ("name", "version", "algorithm", "features", "classes", "feature_ranges", "versions", "sha256")

logger = logging.getLogger(__name__)
request_id = contextvars.ContextVar("request_id", default="-")


class StartupError(Exception):
    """A configuration or model problem that must stop the service before it serves anything."""


@dataclass(frozen=True)
class Model:
    """A loaded estimator with what the API needs from its metadata, computed once."""

    estimator: object
    metadata: dict
    classes: tuple
    low: np.ndarray
    high: np.ndarray
    predict_proba: object  # rows -> probabilities, see choose_predictor()
    engine: str  # "numpy" (the fast path) or "scikit-learn"

    @property
    def reference(self):
        return {"name": self.metadata["name"], "version": self.metadata["version"]}


# --- Configuration -------------------------------------------------------------------------------------------


def read_password(environ):
    """The password from API_PASSWORD or the file named by API_PASSWORD_FILE (exactly one of them)."""
    password, password_file = environ.get("API_PASSWORD"), environ.get("API_PASSWORD_FILE")
    if password and password_file:
        raise StartupError("set API_PASSWORD or API_PASSWORD_FILE, not both")
    if password_file:
        try:
            return Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeError) as err:
            raise StartupError(f"cannot read API_PASSWORD_FILE {password_file}: {err}") from None
    return password


def read_settings(environ):
    """Validated settings from environment variables; StartupError names the first bad one."""
    username, password = environ.get("API_USERNAME"), read_password(environ)
    if not username or not password:
        raise StartupError("API_USERNAME and API_PASSWORD (or API_PASSWORD_FILE) must be set; "
                           "the API does not start without credentials")
    port = environ.get("PORT", str(DEFAULT_PORT))
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise StartupError(f"PORT must be an integer from 1 to 65535, got {port!r}")
    level = environ.get("LOG_LEVEL", "INFO").upper()
    if level not in LOG_LEVELS:
        raise StartupError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    log_format = environ.get("LOG_FORMAT", "text").lower()
    if log_format not in LOG_FORMATS:
        raise StartupError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    return {
        "username": username,
        "password": password,
        "model_path": Path(environ.get("MODEL_PATH", DEFAULT_MODEL_PATH)),
        "host": environ.get("HOST", DEFAULT_HOST),
        "port": int(port),
        "log_level": level,
        "log_format": log_format,
    }


# --- The model -----------------------------------------------------------------------------------------------


def read_metadata(metadata_path):
    """The JSON metadata train.py wrote beside the artifact."""
    try:
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StartupError(f"model metadata {metadata_path} not found: train a model first with "
                           "'python train.py'") from None
    except (OSError, ValueError) as err:
        raise StartupError(f"cannot read model metadata {metadata_path}: {err}") from None
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise StartupError(f"model metadata {metadata_path} lacks {', '.join(missing)}: retrain with 'python train.py'")
    return metadata


def verify_artifact(model_path, metadata):
    """Refuse an artifact built by another scikit-learn or whose bytes are not the ones train.py recorded."""
    trained_with = metadata["versions"].get("scikit-learn")
    if trained_with != sklearn.__version__:
        raise StartupError(f"model {model_path} was trained with scikit-learn {trained_with} but "
                           f"{sklearn.__version__} is installed: retrain it with 'python train.py'")
    try:
        with open(model_path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as err:
        raise StartupError(f"cannot read model artifact {model_path}: {err.strerror}") from None
    if not hmac.compare_digest(digest, str(metadata["sha256"])):
        raise StartupError(f"model artifact {model_path} does not match the sha256 in its metadata "
                           "(corrupt or replaced): refusing to load it")


def load_model(model_path):
    """Load and check the artifact once, at start-up."""
    model_path = Path(model_path)
    metadata = read_metadata(model_path.with_suffix(".json"))
    verify_artifact(model_path, metadata)
    # A joblib file is a pickle, and unpickling runs code: only our own artifact, whose hash matched, gets here.
    try:
        estimator = joblib.load(model_path)
    except Exception as err:
        raise StartupError(f"cannot load model artifact {model_path}: {err}") from None
    classes = tuple(str(name) for name in getattr(estimator, "classes_", ()))
    if tuple(metadata["features"]) != FEATURES or list(classes) != metadata["classes"]:
        raise StartupError(f"model {model_path} does not take {', '.join(FEATURES)} or its classes differ "
                           "from its metadata: retrain it with 'python train.py'")
    ranges = metadata["feature_ranges"]
    predict_proba, engine = choose_predictor(estimator)
    return Model(
        estimator=estimator,
        metadata=metadata,
        classes=classes,
        low=np.array([ranges[name]["min"] for name in FEATURES]),
        high=np.array([ranges[name]["max"] for name in FEATURES]),
        predict_proba=predict_proba,
        engine=engine,
    )


def sklearn_predictor(estimator):
    """predict_proba through scikit-learn, skipping the input checks that the API has already made."""
    def predict_proba(rows):
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            return estimator.predict_proba(rows)
    return predict_proba


def linear_predictor(estimator):
    """The default model, StandardScaler + multinomial LogisticRegression, as one matrix product and a softmax.

    scikit-learn spends about 400 µs per call on checks and dispatch that are useless for a 4x3 linear model whose
    input the API has validated; this is the same arithmetic in a few µs. None for any other estimator.
    """
    if type(estimator) is not Pipeline or [type(step) for _, step in estimator.steps] != [StandardScaler,
                                                                                          LogisticRegression]:
        return None
    scaler, classifier = estimator[0], estimator[1]
    if len(classifier.classes_) < 3:  # two classes use the logistic function, not the softmax
        return None
    mean = scaler.mean_ if scaler.mean_ is not None else np.zeros(len(FEATURES))
    scale = scaler.scale_ if scaler.scale_ is not None else np.ones(len(FEATURES))
    # Fold the scaling into the weights: ((x - mean) / scale) @ coef.T + b == x @ weights.T + bias.
    weights = classifier.coef_ / scale
    bias = classifier.intercept_ - weights @ mean

    def predict_proba(rows):
        scores = rows @ weights.T + bias
        scores -= scores.max(axis=1, keepdims=True)  # exp() of the largest score is 1: no overflow
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores

    return predict_proba


def choose_predictor(estimator):
    """The fast path where there is one and it matches scikit-learn within 1e-9 on the iris data, else scikit-learn."""
    reference = sklearn_predictor(estimator)
    fast = linear_predictor(estimator)
    if fast is None:
        return reference, "scikit-learn"
    flowers = load_iris().data  # bundled with scikit-learn: the training data and the rest of the 150 flowers
    gap = float(np.abs(fast(flowers) - reference(flowers)).max())
    if not gap <= FAST_PATH_TOLERANCE:
        logger.warning("the NumPy fast path differs from scikit-learn by %g on the iris data; serving through "
                       "scikit-learn instead", gap)
        return reference, "scikit-learn"
    return fast, "numpy"


def range_warnings(model, row, outside):
    """One sentence for each feature of a row that lies outside what the model saw in training."""
    return [
        f"{FEATURES[i]} {row[i]:g} cm lies outside the {model.low[i]:g} to {model.high[i]:g} cm seen in training, "
        "so the answer is an extrapolation."
        for i in np.flatnonzero(outside)
    ]


def predict(model, rows):
    """Predictions for an (n, 4) array of validated rows, computed with one vectorised call."""
    probabilities = model.predict_proba(rows)
    best = probabilities.argmax(axis=1).tolist()
    rounded = np.round(probabilities, PROBABILITY_DIGITS).tolist()
    outside = (rows < model.low) | (rows > model.high)
    unusual = outside.any(axis=1).tolist()
    classes = model.classes
    return [
        {
            "prediction": classes[choice],
            "probabilities": dict(zip(classes, row_probabilities)),
            "warnings": range_warnings(model, rows[i], outside[i]) if unusual[i] else [],
        }
        for i, (choice, row_probabilities) in enumerate(zip(best, rounded))
    ]


def self_test(model):
    """Predict once at the middle of the training ranges; a model that cannot do that must not serve."""
    try:
        answer = predict(model, ((model.low + model.high) / 2).reshape(1, -1))[0]
        total = sum(answer["probabilities"].values())
    except Exception as err:
        raise StartupError(f"the model failed its self-test prediction: {err}") from None
    if not math.isclose(total, 1.0, abs_tol=1e-3):
        raise StartupError(f"the model failed its self-test: probabilities sum to {total}")


# --- Input -----------------------------------------------------------------------------------------------------


def problem(status, detail, errors=None, headers=None):
    """An RFC 9457 problem+json response, ready to be raised."""
    body = {"type": "about:blank", "title": bottle.HTTP_CODES[status], "status": status, "detail": detail}
    if errors:
        body["errors"] = errors[:MAX_REPORTED_ERRORS]
    return bottle.HTTPResponse(json.dumps(body), status, headers={"Content-Type": PROBLEM_TYPE, **(headers or {})})


def invalid(errors):
    """A 400 naming every bad field."""
    count = f"{len(errors)} problems" if len(errors) > 1 else "1 problem"
    return problem(400, f"The request has {count}; see 'errors'.", errors)


def field_error(field, message):
    return {"field": field, "message": message}


def shorten(text, limit=40):
    return text if len(text) <= limit else text[:limit] + "…"


def check_measurement(value):
    """A measurement in cm as the API accepts it; ValueError says what is wrong."""
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    if not 0 < value <= MAX_CM:
        raise ValueError(f"must be greater than 0 and at most {MAX_CM:g} cm, got {value:g}")
    return value


def parse_measurement(text):
    """A query-string value as a measurement in cm."""
    if not DECIMAL.fullmatch(text):
        raise ValueError(f"must be a decimal number in cm, got {shorten(text)!r}")
    return check_measurement(float(text))


def unquote_utf8(raw):
    """A percent-encoded query component (bytes) as text; UnicodeDecodeError when it is not UTF-8."""
    if b"%" in raw or b"+" in raw:
        raw = unquote_to_bytes(raw.replace(b"+", b" "))
    return raw.decode("utf-8")


def parse_query(query_string):
    """The four features from a raw WSGI query string, or a 400 naming every problem."""
    # WSGI hands the query over as latin-1; the bytes a client sent must be UTF-8.
    parts = [part for part in query_string.encode("latin-1").split(b"&") if part]
    if len(parts) > MAX_QUERY_FIELDS:
        raise invalid([field_error("query", f"has more than {MAX_QUERY_FIELDS} parameters")])
    try:
        pairs = [(unquote_utf8(key), unquote_utf8(value)) for key, _, value in (p.partition(b"=") for p in parts)]
    except UnicodeDecodeError:
        raise invalid([field_error("query", "is not valid UTF-8")]) from None
    given = {}
    for key, value in pairs:
        given.setdefault(key, []).append(value)
    errors = [field_error(shorten(key), f"is not a parameter of this endpoint; the parameters are {', '.join(FEATURES)}")
              for key in given if key not in FEATURES]
    features = {}
    for name in FEATURES:
        values = given.get(name, [])
        if len(values) != 1:
            errors.append(field_error(name, "is required" if not values else f"was given {len(values)} times; give it once"))
            continue
        try:
            features[name] = parse_measurement(values[0])
        except ValueError as err:
            errors.append(field_error(name, str(err)))
    if errors:
        raise invalid(errors)
    return features


def read_body(environ):
    """The request body as bytes, refusing more than MAX_BODY_BYTES before reading it."""
    media_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if media_type != JSON_TYPE:
        raise problem(415, f"Send the body as JSON with 'Content-Type: {JSON_TYPE}'.")
    length = environ.get("CONTENT_LENGTH") or ""
    if length.isdigit():
        if int(length) > MAX_BODY_BYTES:  # refused before a byte of it is read
            raise body_too_large()
        return environ["wsgi.input"].read(int(length))
    if not environ.get("wsgi.input_terminated"):  # no length and not chunked: no body
        return b""
    body = environ["wsgi.input"].read(MAX_BODY_BYTES + 1)  # chunked: read no more than the limit allows
    if len(body) > MAX_BODY_BYTES:
        raise body_too_large()
    return body


def body_too_large():
    return problem(413, f"The body is larger than {MAX_BODY_BYTES} bytes; split the batch.")


def reject_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(body):
    """The body as a JSON document, or a 400 that says why not."""
    try:
        return json.loads(body, parse_constant=reject_constant)
    except RecursionError:
        raise invalid([field_error("body", "is nested too deeply")]) from None
    except ValueError as err:
        raise invalid([field_error("body", f"is not valid JSON: {shorten(str(err), 120)}")]) from None


def parse_row(index, row):
    """One batch row, a list of four numbers or an object with the four names, as floats; or its errors."""
    where = f"instances[{index}]"
    if isinstance(row, dict):
        unknown = [key for key in row if key not in FEATURES]
        missing = [name for name in FEATURES if name not in row]
        if unknown or missing:
            return None, [field_error(where, f"must have exactly the keys {', '.join(FEATURES)}")]
        values, fields = [row[name] for name in FEATURES], [f"{where}.{name}" for name in FEATURES]
    elif isinstance(row, list):
        if len(row) != len(FEATURES):
            return None, [field_error(where, f"must have {len(FEATURES)} numbers ({', '.join(FEATURES)}), got {len(row)}")]
        values, fields = row, [f"{where}[{i}]" for i in range(len(FEATURES))]
    else:
        return None, [field_error(where, f"must be a list of {len(FEATURES)} numbers or an object with the four names")]
    errors = []
    for field, value in zip(fields, values):
        # bool is a subclass of int in Python, but true is not a length.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(field_error(field, f"must be a number, got {json.dumps(value)[:40]}"))
            continue
        try:
            check_measurement(float(value))
        except (ValueError, OverflowError) as err:
            errors.append(field_error(field, str(err) if isinstance(err, ValueError) else "must be a finite number"))
    return (None if errors else [float(value) for value in values]), errors


def parse_instances(document):
    """The batch body as an (n, 4) array, or a 400 naming every bad row, or a 413 when it is too long."""
    if not isinstance(document, dict) or list(document) != ["instances"]:
        raise invalid([field_error("body", "must be a JSON object with exactly one key, 'instances'")])
    rows = document["instances"]
    if not isinstance(rows, list) or not rows:
        raise invalid([field_error("instances", "must be a non-empty list of rows")])
    if len(rows) > MAX_ROWS:
        raise problem(413, f"A batch holds at most {MAX_ROWS} instances, got {len(rows)}; split it.")
    matrix = plain_matrix(rows)
    if matrix is not None:
        return matrix
    matrix, errors = [], []
    for index, row in enumerate(rows):
        values, row_errors = parse_row(index, row)
        matrix.append(values)
        errors.extend(row_errors)
    if errors:
        raise invalid(errors)
    return np.array(matrix, dtype=float)


def plain_matrix(rows):
    """The common case in one vectorised pass: every row a list of four in-range numbers. None otherwise, and
    parse_row() then names each problem."""
    if not all(type(row) is list and len(row) == len(FEATURES) for row in rows):
        return None
    # np.array would quietly turn true into 1.0 and "1" into 1.0: only JSON numbers may pass.
    if not all(type(value) is float or type(value) is int for row in rows for value in row):
        return None
    try:
        matrix = np.array(rows, dtype=float)
    except OverflowError:  # an integer too large for a float
        return None
    if not ((matrix > 0) & (matrix <= MAX_CM)).all():  # also false for nan and inf
        return None
    return matrix


# --- Credentials -----------------------------------------------------------------------------------------------


def parse_basic_auth(header):
    """(user, password) from an Authorization header, or None when it is missing or malformed."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except ValueError:  # not ASCII, not base64, or not UTF-8
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def credentials_checker(username, password):
    """A function that says whether an Authorization header carries these credentials."""
    expected_user, expected_password = username.encode(), password.encode()

    def check(header):
        given = parse_basic_auth(header)
        if given is None:
            logger.warning("authentication failed: missing or malformed Authorization header")
            return False
        user, secret = given
        # Both comparisons always run (& not `and`), so a wrong user costs what a wrong password costs.
        ok = hmac.compare_digest(user.encode(), expected_user) & hmac.compare_digest(secret.encode(), expected_password)
        if not ok:
            logger.warning("authentication failed for user %r", user)
        return ok

    return check


# --- The application -------------------------------------------------------------------------------------------


def openapi_document():
    """The OpenAPI 3.1 description of this API, served at /openapi.json."""
    number = {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_CM}
    problem_response = {"description": "A problem", "content": {PROBLEM_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    responses = {
        "400": {**problem_response, "description": "Invalid input; 'errors' names each bad field"},
        "401": {**problem_response, "description": "Missing or wrong credentials",
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}},
    }
    probabilities = {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}}
    answer = {
        "type": "object",
        "required": ["prediction", "probabilities", "warnings"],
        "properties": {
            "prediction": {"type": "string"},
            "probabilities": probabilities,
            "warnings": {"type": "array", "items": {"type": "string"}},
        },
    }
    model_reference = {"type": "object", "required": ["name", "version"],
                       "properties": {"name": {"type": "string"}, "version": {"type": "string"}}}
    features_object = {"type": "object", "required": list(FEATURES), "additionalProperties": False,
                       "properties": {name: number for name in FEATURES}}
    row = {"oneOf": [
        {"type": "array", "items": number, "minItems": len(FEATURES), "maxItems": len(FEATURES),
         "description": "The four measurements in the order " + ", ".join(FEATURES)},
        features_object,
    ]}
    status = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}

    def json_response(description, schema):
        return {"description": description, "content": {JSON_TYPE: {"schema": schema}}}

    return {
        "openapi": "3.1.0",
        "info": {"title": "Iris prediction API", "version": "1.0",
                 "description": "Predicts the species of an iris flower from four measurements in cm."},
        "components": {
            "securitySchemes": {"basicAuth": {"type": "http", "scheme": "basic"}},
            "schemas": {
                "Problem": {
                    "type": "object", "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "errors": {"type": "array", "items": {
                            "type": "object", "required": ["field", "message"],
                            "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
                    },
                },
                "Prediction": {**answer, "required": answer["required"] + ["features", "model"], "properties": {
                    **answer["properties"], "features": features_object, "model": model_reference}},
                "Batch": {"type": "object", "required": ["predictions", "model"], "properties": {
                    "predictions": {"type": "array", "items": answer}, "model": model_reference}},
            },
        },
        "paths": {
            "/api/v1.0": {"get": {
                "summary": "Predict the species of one flower (also at /api/v1.0/)",
                "security": [{"basicAuth": []}],
                "parameters": [{"name": name, "in": "query", "required": True, "schema": number,
                                "description": f"{name.replace('_', ' ')} in cm"} for name in FEATURES],
                "responses": {"200": json_response("The prediction", {"$ref": "#/components/schemas/Prediction"}),
                              **responses},
            }},
            "/api/v1.0/predict": {"post": {
                "summary": f"Predict a batch of up to {MAX_ROWS} flowers",
                "security": [{"basicAuth": []}],
                "requestBody": {"required": True, "content": {JSON_TYPE: {"schema": {
                    "type": "object", "required": ["instances"], "additionalProperties": False,
                    # The row limit is in the description, not maxItems: a longer batch is refused with 413, which
                    # is not the 400 that generic clients and test tools expect for a schema violation.
                    "properties": {"instances": {"type": "array", "minItems": 1, "items": row,
                                                 "description": f"At most {MAX_ROWS} rows; more gives 413"}},
                }}}},
                "responses": {
                    "200": json_response("One answer per instance, in order", {"$ref": "#/components/schemas/Batch"}),
                    **responses,
                    "413": {**problem_response, "description": f"More than {MAX_ROWS} rows or {MAX_BODY_BYTES} bytes"},
                    "415": {**problem_response, "description": "The body is not sent as application/json"},
                },
            }},
            "/api/v1.0/model": {"get": {
                "summary": "The model's metadata: algorithm, classes, training ranges, metrics, versions",
                "security": [{"basicAuth": []}],
                "responses": {"200": json_response("Model metadata", {"type": "object"}), "401": responses["401"]},
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics: requests, latency, predictions by class, out-of-range inputs",
                "security": [{"basicAuth": []}],
                "responses": {"200": {"description": "The Prometheus text exposition format",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                              "401": responses["401"]},
            }},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": json_response("Alive", status)}}},
            "/readyz": {"get": {"summary": "Readiness: the model is loaded and passed its self-test",
                                "responses": {"200": json_response("Ready", status)}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": json_response("OpenAPI 3.1 document", {"type": "object"})}}},
        },
    }


def error_page(error):
    """Bottle's own errors (404, 405, 500 ...) as problem+json instead of its HTML page."""
    bottle.response.content_type = PROBLEM_TYPE
    detail = {
        404: "There is nothing at this path; the endpoints are listed in /openapi.json.",
        405: f"This path does not accept {bottle.request.method}; it accepts {bottle.response.get_header('Allow')}.",
    }.get(error.status_code, str(error.body))
    return json.dumps({"type": "about:blank", "title": bottle.HTTP_CODES.get(error.status_code, "Error"),
                       "status": error.status_code, "detail": detail})


# --- Logs and metrics ------------------------------------------------------------------------------------------


class RequestIdFilter(logging.Filter):
    """Stamp every log record with the ID of the request being answered ("-" outside a request)."""

    def filter(self, record):
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (LOG_FORMAT=json)."""

    FIELDS = ("request_id", "method", "path", "status", "duration_ms")

    def format(self, record):
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        entry.update({field: getattr(record, field) for field in self.FIELDS if hasattr(record, field)})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level, log_format):
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_LOG_FORMAT)
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if log_format == "json":
        # Under gunicorn, its own messages (workers starting and stopping) become JSON lines too, so that a log
        # shipper reads one kind of line.
        for gunicorn_handler in logging.getLogger("gunicorn.error").handlers:
            gunicorn_handler.setFormatter(formatter)


class Metrics:
    """The API's Prometheus metrics.

    Under gunicorn, gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before this module is imported: every worker
    then writes its counts to files there, and /metrics adds up all the workers' files, so the figures are exact
    for the whole service. Without it (python api.py, tests) they live in this app's own registry.
    """

    def __init__(self, model):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("iris_api_requests", "Requests answered, by endpoint, method and status code",
                                ["endpoint", "method", "status"], registry=registry)
        self.latency = Histogram("iris_api_request_duration_seconds", "Time to answer a request, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        self.predictions = Counter("iris_api_predictions", "Predictions made, by predicted class", ["class"],
                                   registry=registry)
        self.out_of_range = Counter(
            "iris_api_inputs_out_of_range",
            "Input values outside the range seen in training, by feature: the drift signal", ["feature"],
            registry=registry)
        Gauge("iris_model_info", "The model being served (the value is always 1)", ["name", "version", "algorithm"],
              registry=registry, multiprocess_mode="max").labels(
            model.metadata["name"], model.metadata["version"], model.metadata["algorithm"]).set(1)
        # Set once, in the gunicorn master; the workers' copies read 0, so "max" reports the master's value.
        Gauge("iris_api_start_time_seconds", "When the service started, in seconds since the epoch",
              registry=registry, multiprocess_mode="max").set(time.time())

    def count_predictions(self, model, rows, answers):
        for name, count in collections.Counter(answer["prediction"] for answer in answers).items():
            self.predictions.labels(name).inc(count)
        if any(answer["warnings"] for answer in answers):  # rare: skip the array work for the usual flower
            outside = ((rows < model.low) | (rows > model.high)).sum(axis=0).tolist()
            for feature, count in zip(FEATURES, outside):
                if count:
                    self.out_of_range.labels(feature).inc(count)

    def exposition(self):
        """The metrics in the Prometheus text format."""
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return prometheus_client.generate_latest(registry)
        return prometheus_client.generate_latest(self.registry)


def with_request_handling(app, metrics):
    """Wrap a WSGI app: a request ID, one log line and the metrics for every request, and a logged problem+json
    500 instead of any crash."""
    crash = json.dumps({"type": "about:blank", "title": "Internal Server Error", "status": 500,
                        "detail": "The server failed to answer this request; the error was logged."}).encode()

    def handled_app(environ, start_response):
        started, status = time.perf_counter(), ["500"]
        given = environ.get("HTTP_X_REQUEST_ID", "")
        token = request_id.set(given if SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex)

        def identified_start_response(line, headers, exc_info=None):
            status[0] = line[:3]
            return start_response(line, [*headers, ("X-Request-ID", request_id.get())], exc_info)

        try:
            return app(environ, identified_start_response)
        except Exception:
            logger.exception("unhandled error on %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            identified_start_response("500 Internal Server Error", [("Content-Type", PROBLEM_TYPE)], sys.exc_info())
            return [crash]
        finally:
            seconds = time.perf_counter() - started
            method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
            route = environ.get("bottle.route")
            endpoint = route.rule if route else "unmatched"  # never the raw path: clients could invent labels
            metrics.requests.labels(endpoint, method, status[0]).inc()
            metrics.latency.labels(endpoint).observe(seconds)
            logger.info("%s %s %s %.1fms", method, path, status[0], seconds * 1000,
                        extra={"request_id": request_id.get(), "method": method, "path": path,
                               "status": int(status[0]), "duration_ms": round(seconds * 1000, 2)})
            request_id.reset(token)

    return handled_app


def create_app(username, password, model_path=DEFAULT_MODEL_PATH):
    """The API as a WSGI app; loads and self-tests the model now, or raises StartupError."""
    if not username or not password:
        raise StartupError("a user name and a password are required")
    if password == DEMO_PASSWORD:
        logger.warning("the demo password is in use: set API_PASSWORD or API_PASSWORD_FILE to a secret of your own")
    model = load_model(model_path)
    self_test(model)
    logger.info("model %s version %s (%s) loaded from %s; predictions computed by %s", model.metadata["name"],
                model.metadata["version"], model.metadata["algorithm"], model_path, model.engine)
    metrics = Metrics(model)
    is_authorised = credentials_checker(username, password)
    challenge = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
    openapi = json.dumps(openapi_document())

    app = bottle.Bottle()
    # Crashes go to with_request_handling, which logs them once with their traceback and answers problem+json.
    app.catchall = False
    app.default_error_handler = error_page

    def authenticated(callback):
        @functools.wraps(callback)
        def guarded(*args, **kwargs):
            if not is_authorised(bottle.request.environ.get("HTTP_AUTHORIZATION", "")):
                # A new response each time: re-raising one exception object would chain every traceback onto it
                # and keep all those frames alive (a leak found by load.py).
                raise problem(401, "Send valid credentials with HTTP basic authentication.", headers=challenge)
            return callback(*args, **kwargs)
        return guarded

    @app.get("/api/v1.0")
    @app.get("/api/v1.0/")
    @authenticated
    def predict_one():
        features = parse_query(bottle.request.environ.get("QUERY_STRING", ""))
        rows = np.array([[features[name] for name in FEATURES]])
        answer = predict(model, rows)[0]
        metrics.count_predictions(model, rows, [answer])
        return {"prediction": answer["prediction"], "probabilities": answer["probabilities"],
                "features": features, "warnings": answer["warnings"], "model": model.reference}

    @app.post("/api/v1.0/predict")
    @authenticated
    def predict_batch():
        rows = parse_instances(parse_json(read_body(bottle.request.environ)))
        answers = predict(model, rows)
        metrics.count_predictions(model, rows, answers)
        return {"predictions": answers, "model": model.reference}

    @app.get("/api/v1.0/model")
    @authenticated
    def describe_model():
        return model.metadata

    @app.get("/metrics")
    @authenticated
    def metrics_page():
        bottle.response.content_type = prometheus_client.CONTENT_TYPE_LATEST
        return metrics.exposition()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        # This app exists only once the model is loaded and has passed its self-test; before that the server
        # does not answer at all, so a readiness probe fails.
        return {"status": "ready", "model": model.reference, "engine": model.engine}

    @app.get("/openapi.json")
    def openapi_json():
        bottle.response.content_type = JSON_TYPE
        return openapi

    return with_request_handling(app, metrics)


def start(environ):
    """Settings and app from the environment, with logging set up; one clear line and exit 1 when they are bad."""
    level, log_format = environ.get("LOG_LEVEL", "INFO").upper(), environ.get("LOG_FORMAT", "text").lower()
    configure_logging(level if level in LOG_LEVELS else "INFO", log_format if log_format in LOG_FORMATS else "text")
    try:
        settings = read_settings(environ)
        app = create_app(settings["username"], settings["password"], settings["model_path"])
    except StartupError as err:
        logger.critical("api refuses to start: %s", err)
        raise SystemExit(1) from None
    logger.info("settings: log level %s, log format %s, user %r, metrics %s", settings["log_level"],
                settings["log_format"], settings["username"],
                "summed over the workers" if "PROMETHEUS_MULTIPROC_DIR" in environ else "in-process")
    # Everything loaded so far (libraries, the model) lives as long as the process: keep the garbage collector
    # from scanning it again and again (a large batch allocates many objects), and keep its pages shared after
    # gunicorn forks the workers.
    gc.freeze()
    return settings, app


def app_from_env():
    """The entry point for gunicorn: 'api:app_from_env()'."""
    return start(os.environ)[1]


def main():
    settings, app = start(os.environ)
    logger.info("serving on http://%s:%s (Bottle's development server; use gunicorn in production)",
                settings["host"], settings["port"])
    bottle.run(app, host=settings["host"], port=settings["port"], quiet=True)


if __name__ == "__main__":
    main()
