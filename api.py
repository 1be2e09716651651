"""The prediction API: serves the model trained by train.py (iris by default) as JSON, behind HTTP basic auth.

Run it locally (Bottle's development server):
    API_USERNAME=my_username API_PASSWORD=my_password python api.py
In production (what the container runs):
    API_USERNAME=my_username API_PASSWORD=my_password python serve.py api

The environment variables it reads, once at start-up, are in docs/configuration.md (the one table of them).

Endpoints: GET /api/v1.0 (one prediction from the query string: the model's inputs by name), POST
/api/v1.0/predict (a batch), GET /api/v1.0/model (metadata), GET /metrics (Prometheus), GET /healthz, GET /readyz
and GET /openapi.json (the contract: openapi.json beside this file with the model's inputs put in, openapi.py),
and the Open Inference Protocol under /v2 (v2.py); see docs/api.md. The model itself is model.py's job,
the rules its inputs follow inputs.py's; the plumbing shared with web.py (settings, credentials, requests, logs,
metrics exposition, start-up) is service.py's.
"""

import dataclasses
import getpass
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import bottle
import numpy as np
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tabserve import openapi
from tabserve import devserver
from tabserve import v2
from tabserve import service
from tabserve.batching import Batcher
from tabserve.users import USER_KEY, Users, UsersFileError, hash_password, trusted_networks
from tabserve.model import answers, load_model, predict_all, self_test
from tabserve.v1 import parse_instances, parse_query
from tabserve.service import RequestError, StartupError, parse_json

MAX_REPORTED_ERRORS = 20
DEMO_PASSWORD = "my_password"
DEFAULT_FAILURES_PER_MINUTE = 10
HERE = Path(__file__).resolve().parent
DEFAULT_MODEL_PATH = HERE / "model" / "iris.joblib"
OPENAPI_PATH = HERE / "tabserve" / "openapi.json"
DEFAULT_PORT = 8000
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
JSON_TYPE = "application/json"
BATCHING_CHOICES = ("auto", "on", "off")
BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 1024, 10_000)
PROBLEM_TYPE = "application/problem+json"

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Settings(service.Settings):
    """What the API is configured with; read_settings() makes one from the environment."""

    port: int = DEFAULT_PORT
    model_path: Path = DEFAULT_MODEL_PATH
    batching: str = "auto"
    users_file: Path = None  # API_USERS_FILE: name:hash lines (users.py); else API_USERNAME + API_PASSWORD
    failures_per_minute: int = DEFAULT_FAILURES_PER_MINUTE
    trusted_proxies: tuple = ()


def read_settings(environ):
    """Validated settings from environment variables; StartupError names the first bad one."""
    users_file = environ.get("API_USERS_FILE")
    common = service.read_common_settings(environ, DEFAULT_PORT, "the API does not start without credentials (or "
                                          "API_USERS_FILE)", credentials_required=not users_file)
    if users_file and common["username"]:
        raise StartupError("set API_USERS_FILE or API_USERNAME and API_PASSWORD, not both")
    batching = (environ.get("BATCHING") or "auto").lower()
    if batching not in BATCHING_CHOICES:
        raise StartupError(f"BATCHING must be one of {', '.join(BATCHING_CHOICES)}, got {batching!r}")
    failures = environ.get("LOGIN_FAILURES_PER_MINUTE") or str(DEFAULT_FAILURES_PER_MINUTE)
    if not failures.isdigit() or int(failures) < 1:
        raise StartupError(f"LOGIN_FAILURES_PER_MINUTE must be a whole number of at least 1, got {failures!r}")
    try:
        proxies = trusted_networks(environ.get("TRUSTED_PROXIES"))
    except ValueError as err:
        raise StartupError(str(err)) from None
    return Settings(model_path=Path(environ.get("MODEL_PATH") or DEFAULT_MODEL_PATH), batching=batching,
                    users_file=Path(users_file) if users_file else None, failures_per_minute=int(failures),
                    trusted_proxies=proxies, **common)


def load_users(settings, metrics):
    """The users the API knows (users.py), counted by name in the metrics."""
    hooks = {"per_minute": settings.failures_per_minute, "proxies": settings.trusted_proxies,
             "on_failure": lambda user: metrics.failed_logins(user).inc()}
    try:
        if settings.users_file:
            users = Users(logger, path=settings.users_file, **hooks)
        else:
            users = Users(logger, users={settings.username: (hash_password(settings.password),)}, **hooks)
    except UsersFileError as err:
        raise StartupError(str(err)) from None
    users.follow()
    logger.info("%d API users, %s; at most %d failed logins a minute per address", len(users.users),
                f"from {settings.users_file}, followed" if settings.users_file else "from API_USERNAME",
                settings.failures_per_minute)
    return users


def with_batching(model, setting, metrics):
    """The model, its predictions combined across concurrent requests (batching.py) where that pays: BATCHING=auto
    batches every model but the linear fast path, whose direct call of a few µs measured faster than any queue (a
    forest's 0.2 ms call measured 30 % faster batched at 16 connections)."""
    wanted = setting == "on" or (setting == "auto" and model.engine != "numpy")
    logger.info("adaptive batching %s (BATCHING=%s, predictions by %s)", "on" if wanted else "off", setting,
                model.engine)
    if not wanted:
        return model
    batched = Batcher(model.predict_proba, metrics.batch_rows.observe, metrics.batch_wait.observe,
                      metrics.batch_refused.inc)
    return dataclasses.replace(model, predict_proba=batched)


# --- Answers and input -----------------------------------------------------------------------------------------


def problem_body(status, detail, errors=None):
    """An RFC 9457 problem+json document, as text."""
    body = {"type": "about:blank", "title": bottle.HTTP_CODES.get(status, "Error"), "status": status, "detail": detail}
    if errors:
        body["errors"] = errors[:MAX_REPORTED_ERRORS]
    return json.dumps(body)


def problem(error):
    """A RequestError as a problem+json response."""
    return bottle.HTTPResponse(problem_body(error.status, error.detail, error.errors), error.status,
                               headers={"Content-Type": PROBLEM_TYPE, **error.headers})


# --- Metrics ---------------------------------------------------------------------------------------------------


class Metrics:
    """The API's Prometheus metrics, exposed by service.metrics_exposition() (exact across server workers)."""

    def __init__(self, model):
        self.registry = registry = CollectorRegistry()
        # The user is a label here rather than a counter of its own: one more multiprocess counter for every
        # request cost 15 % of the rate under serve.py (its values are shared files behind one lock).
        self.requests = service.cached_labels(Counter(
            "iris_api_requests", "Requests answered, by endpoint, method, status code and user (names from the "
            "users file; none for requests that were not authenticated)",
            ["endpoint", "method", "status", "user"], registry=registry))
        self.latency = service.cached_labels(Histogram(
            "iris_api_request_duration_seconds", "Time to answer a request, by endpoint", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=registry))
        self.predictions = service.cached_labels(Counter(
            "iris_api_predictions", "Predictions made, by predicted class", ["class"], registry=registry))
        self.explanations = service.cached_labels(Counter(
            "iris_api_explanations", "Predictions explained (contributions, and neighbours on /api/v1.0/explain), by "
            "predicted class", ["class"], registry=registry))
        self.out_of_range = service.cached_labels(Counter(
            "iris_api_inputs_out_of_range", "Input values outside the range seen in training, by feature: the drift "
            "signal", ["feature"], registry=registry))
        self.failed_logins = service.cached_labels(Counter(
            "iris_api_failed_logins", "Refused credentials, by user name (names not in the users file: unknown)",
            ["user"], registry=registry))
        self.batch_rows = Histogram("iris_api_batch_rows", "Rows in each model call (adaptive batching)",
                                    buckets=BATCH_ROWS_BUCKETS, registry=registry)
        self.batch_wait = Histogram("iris_api_batch_wait_seconds", "Time a request waited for its model call "
                                    "(adaptive batching)", buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_refused = Counter("iris_api_batch_refused", "Requests refused with a 503 because too many were "
                                     "waiting for the model", registry=registry)
        Gauge("iris_model_info", "The model being served (the value is always 1)", ["name", "version", "algorithm"],
              registry=registry, multiprocess_mode="max").labels(
            model.metadata["name"], model.metadata["version"], model.metadata["algorithm"]).set(1)
        # Set once, in the server's main process; the workers' copies read 0, so "max" reports the main value.
        Gauge("iris_api_start_time_seconds", "When the service started, in seconds since the epoch",
              registry=registry, multiprocess_mode="max").set(time.time())

    def count_request(self, environ, status, content_type, seconds):
        endpoint = service.endpoint_of(environ)
        self.requests(endpoint, service.method_of(environ), status, environ.get(USER_KEY, "none")).inc()
        self.latency(endpoint).observe(seconds)

    def count_predictions(self, model, predictions, counter=None):
        """Predictions (or, with counter=self.explanations, explanations) by class, and out-of-range numbers by
        feature, from any endpoint."""
        counter = counter or self.predictions
        if len(predictions.best) == 1:  # the usual request needs no tally
            counter(model.classes[predictions.best[0]]).inc()
        else:
            for index, count in enumerate(np.bincount(predictions.best, minlength=len(model.classes)).tolist()):
                if count:
                    counter(model.classes[index]).inc(count)
        if counter is self.explanations:
            return
        if predictions.outside.any():
            for feature, count in zip(model.schema.names, predictions.outside.sum(axis=0).tolist()):
                if count:
                    self.out_of_range(feature).inc(count)


# --- The routes ------------------------------------------------------------------------------------------------


def describe(metadata):
    """GET /api/v1.0/model: the metadata, less the rows kept for the self-test and the neighbours."""
    explanation = {key: value for key, value in metadata["explanation"].items() if key not in ("rows", "row_classes")}
    return {**{key: value for key, value in metadata.items() if key != "reference"}, "explanation": explanation}


@dataclass(frozen=True)
class Api:
    """What the routes answer from, built once by create_app()."""

    model: object
    metrics: Metrics
    openapi: bytes  # the served contract: openapi.json with this model's inputs put in (openapi.py)
    description: dict  # GET /api/v1.0/model: the metadata, less the reference rows kept for the self-test


def answer_query(api):
    """(rows, predictions, answer) for the one row of the query string."""
    features = parse_query(api.model.schema, bottle.request.environ.get("QUERY_STRING", ""))
    rows = api.model.schema.matrix([list(features.values())])
    predictions = predict_all(api.model, rows)
    api.metrics.count_predictions(api.model, predictions)
    answer = answers(api.model, rows, predictions)[0]
    return rows, predictions, {"prediction": answer["prediction"], "probabilities": answer["probabilities"],
                               "features": features, "warnings": answer["warnings"], "model": api.model.reference}


def predict_one(api):
    return answer_query(api)[2]


def explain_one(api):
    """/api/v1.0's answer, and why: each feature's contribution and the nearest training rows (explain.py)."""
    rows, predictions, answer = answer_query(api)
    model = api.model
    contributions = model.explainer.contributions(model.predict_proba, rows, predictions.best)[0]
    api.metrics.count_predictions(model, predictions, api.metrics.explanations)
    return {**answer, "contributions": dict(zip(model.schema.names, contributions.tolist())),
            "neighbours": model.explainer.neighbours(rows[0])}


def predict_batch(api):
    environ = bottle.request.environ
    if service.media_type(environ) != JSON_TYPE:
        raise RequestError(415, f"Send the body as JSON with 'Content-Type: {JSON_TYPE}'.")
    rows = parse_instances(api.model.schema, parse_json(service.read_body(environ)))
    predictions = predict_all(api.model, rows)
    api.metrics.count_predictions(api.model, predictions)
    return {"predictions": answers(api.model, rows, predictions), "model": api.model.reference}


def describe_model(api):
    return api.description


def metrics_page(api):
    bottle.response.content_type = prometheus_client.CONTENT_TYPE_LATEST
    return service.metrics_exposition(api.metrics.registry)


def healthz(api):
    return {"status": "ok"}


def readyz(api):
    # This app exists only once the model is loaded and has passed its self-test; before that the server does not
    # answer at all, so a readiness probe fails.
    return {"status": "ready", "model": api.model.reference, "engine": api.model.engine}


def openapi_json(api):
    bottle.response.content_type = JSON_TYPE
    return api.openapi


def error_page(error):
    """Bottle's own errors (404, 405 ...) in the API's formats instead of its HTML page."""
    detail = {
        404: "There is nothing at this path; the endpoints are listed in /openapi.json.",
        405: f"This path does not accept {bottle.request.method}; it accepts {bottle.response.get_header('Allow')}.",
    }.get(error.status_code, str(error.body))
    content_type, body = error_document(bottle.request.path, error.status_code, detail)
    bottle.response.content_type = content_type
    return body


def is_open_inference(path):
    return path == "/v2" or path.startswith("/v2/")


def error_document(path, status, detail):
    """(content type, body) of an error at this path: the Open Inference Protocol's {"error": ...} under /v2,
    problem+json elsewhere."""
    if is_open_inference(path):
        return JSON_TYPE, v2.error_body(detail)
    return PROBLEM_TYPE, problem_body(status, detail)


def crash_document(environ):
    """What a client gets when the API crashes (handle_requests logs the traceback)."""
    content_type, body = error_document(environ.get("PATH_INFO", ""), 500,
                                        "The server failed to answer this request; the error was logged.")
    return content_type, body.encode()


# (method, path, route, needs credentials). Errors are answered in problem+json, and in the Open Inference
# Protocol's own form under /v2 (v2.py).
ROUTES = (
    ("GET", "/api/v1.0", predict_one, True),
    ("GET", "/api/v1.0/", predict_one, True),
    ("POST", "/api/v1.0/predict", predict_batch, True),
    ("GET", "/api/v1.0/explain", explain_one, True),
    ("GET", "/api/v1.0/model", describe_model, True),
    ("GET", "/metrics", metrics_page, True),
    ("GET", "/healthz", healthz, False),
    ("GET", "/readyz", readyz, False),
    ("GET", "/openapi.json", openapi_json, False),
    ("GET", "/v2/health/live", v2.live, False),
    ("GET", "/v2/health/ready", v2.ready, False),
    ("GET", "/v2", v2.server_metadata, True),
    ("GET", "/v2/", v2.server_metadata, True),  # the protocol's own OpenAPI document writes it so
    ("GET", "/v2/models/<name>", v2.model_metadata, True),
    ("GET", "/v2/models/<name>/versions/<version>", v2.model_metadata, True),
    ("GET", "/v2/models/<name>/ready", v2.model_ready, True),
    ("GET", "/v2/models/<name>/versions/<version>/ready", v2.model_ready, True),
    ("POST", "/v2/models/<name>/infer", v2.infer, True),
    ("POST", "/v2/models/<name>/versions/<version>/infer", v2.infer, True),
)


def create_app(settings):
    """The API as a WSGI app; loads and self-tests the model now, or raises StartupError."""
    if settings.password == DEMO_PASSWORD:
        logger.warning("the demo password is in use: set API_PASSWORD or API_PASSWORD_FILE to a secret of your own")
    model = load_model(settings.model_path)
    self_test(model)
    logger.info("model %s version %s (%s) loaded from %s; predictions computed by %s", model.metadata["name"],
                model.metadata["version"], model.metadata["algorithm"], settings.model_path, model.engine)
    metrics = Metrics(model)
    model = with_batching(model, settings.batching, metrics)
    api = Api(model, metrics, openapi.served_document(OPENAPI_PATH, model.metadata), describe(model.metadata))
    authenticate = load_users(settings, metrics).authenticate
    app = bottle.Bottle()
    # Crashes go to service.handle_requests, which logs them once with their traceback and answers in kind.
    app.catchall = False
    app.default_error_handler = error_page
    for method, path, route, needs_credentials in ROUTES:
        render = v2.error_response if is_open_inference(path) else problem
        app.route(path, method, service.answering(route, api, authenticate if needs_credentials else None, render))
    return service.handle_requests(app, logger, crash_document, api.metrics.count_request,
                                   access_log=settings.access_log)


def app_from_env():
    """The app as the production server loads it: 'api:app_from_env()'."""
    return service.start("api", logger, read_settings, create_app)[1]


def print_password_hash(stdin=sys.stdin):
    """python api.py --hash-password: a line of the users file's hash for a password typed without echo (or, from a
    script, the first line of standard input)."""
    password = getpass.getpass("Password: ") if stdin.isatty() else stdin.readline().rstrip("\r\n")
    if not password:
        sys.exit("api.py: an empty password cannot be hashed")
    print(hash_password(password))


if __name__ == "__main__":
    if sys.argv[1:] == ["--hash-password"]:
        print_password_hash()
    else:
        devserver.run_development_server("api", logger, read_settings, create_app)
