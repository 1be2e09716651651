"""The prediction API: serves the model trained by train.py (iris by default) as JSON, behind HTTP basic auth.

    API_USERNAME=my_username API_PASSWORD=my_password python api.py         # one worker, on 127.0.0.1:8000
    API_USERNAME=my_username API_PASSWORD=my_password python serve.py api   # what the image runs: WORKERS workers
    python api.py --hash-password                                           # a line for the users file

Both run the production server (granian, tabserve/server.py). The environment variables it reads, once at
start-up, are in docs/configuration.md (the one table of them).

This file is the API's routes and how a request flows through them: read (tabserve/v1.py, tabserve/tensors.py),
predict (tabserve/serving.py, which asks tabserve/model.py), answer (v1.py, or tabserve/v2.py for the Open Inference
Protocol under /v2). The model raises domain errors; refusal_of() says what each means in HTTP. See docs/api.md.
"""

import getpass
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import bottle
import prometheus_client

from tabserve import openapi, server, v1, v2
from tabserve.batching import Overloaded
from tabserve.card import public_view
from tabserve.feedback import read_feedback, record
from tabserve.metrics import ApiMetrics, exposition
from tabserve.model import ModelError, Unpredictable, load_checked, self_test
from tabserve.monitoring import Monitor
from tabserve.predictionlog import PredictionLog
from tabserve.serving import Serving, with_batching
from tabserve.settings import StartupError, read_api_settings
from tabserve.stores import StoreError, open_store
from tabserve.users import USER_KEY, Users, UsersFileError, hash_password
from tabserve.v1 import EXTRA_QUERY_FIELDS, parse_instances, parse_query, read_query
from tabserve.versions import UnknownVersion, Versions
from tabserve.wsgi import (
    RequestError,
    answering,
    field_error,
    handle_requests,
    invalid,
    media_type,
    parse_json,
    read_body,
    shorten,
)

DEMO_PASSWORD = "my_password"
OPENAPI_PATH = Path(__file__).resolve().parent / "tabserve" / "openapi.json"
JSON_TYPE = "application/json"

logger = logging.getLogger(__name__)


def load_users(settings, metrics, realm):
    """The users the API knows (users.py), counted by name in the metrics."""
    hooks = {"per_minute": settings.failures_per_minute, "proxies": settings.trusted_proxies,
             "on_failure": lambda user: metrics.failed_logins(user).inc()}
    try:
        if settings.users_file:
            users = Users(logger, realm, path=settings.users_file, **hooks)
        else:
            users = Users(logger, realm, users={settings.username: (hash_password(settings.password),)}, **hooks)
            users.remember_password(settings.username, settings.password)
    except UsersFileError as err:
        raise StartupError(str(err)) from None
    logger.info("%d API users, %s; at most %d failed logins a minute per address", len(users.users),
                f"from {settings.users_file}, followed" if settings.users_file else "from API_USERNAME",
                settings.failures_per_minute)
    return users


# --- The routes ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Api:
    """What the routes answer from, built once by create_app()."""

    serving: Serving  # the versions, predicting and explaining, counted
    metrics: ApiMetrics
    monitor: Monitor  # drift and feedback
    documents: dict = field(default_factory=dict)  # (what, version): bytes, built the first time each is asked

    def document(self, what, model):
        """The served contract (openapi.json with this version's inputs put in, openapi.py) or GET /api/v1.0/model's
        card (less the rows kept for the self-test and the neighbours) of a version, as JSON bytes."""
        key = (what, model.card["version"])
        if key not in self.documents:
            if what == "openapi":
                self.documents[key] = openapi.served_document(OPENAPI_PATH, model.card,
                                                              self.monitor.settings.drift_window)
            else:
                self.documents[key] = json.dumps({**public_view(model.card), "artifact": model.artifact}).encode()
        bottle.response.content_type = JSON_TYPE
        return self.documents[key]


def read_request(api, routed=True, options=("_version",), features=True):
    """(the version that answers, the query's features, its options): the version named by _version, else the
    routing's (or the default, when not routed). An endpoint that takes no features refuses any with a 400."""
    environ = bottle.request.environ
    found, given = read_query(environ.get("QUERY_STRING", ""), api.serving.versions.widest + EXTRA_QUERY_FIELDS,
                              options)
    if given and not features:
        raise RequestError(400, f"The query takes only the options {', '.join(options)}, got "
                                f"{shorten(next(iter(given)))!r}.")
    return api.serving.pick(environ, found.get("_version"), routed), given, found


def predict_one(api):
    choice, given, _ = read_request(api)
    model = choice.model
    features = parse_query(model.schema, given)
    rows = model.schema.matrix([list(features.values())])
    return v1.answer(model, features, rows, api.serving.predict(choice, rows))


def explain_one(api):
    """/api/v1.0's answer, and why: each feature's contribution and the nearest training rows (explain.py)."""
    choice, given, _ = read_request(api)
    model = choice.model
    features = parse_query(model.schema, given)
    rows = model.schema.matrix([list(features.values())])
    predictions = api.serving.predict(choice, rows)
    contributions = api.serving.contributions(model, rows, predictions)[0]
    why = v1.explanation(model, contributions, model.explainer.neighbours(rows[0]))
    return {**v1.answer(model, features, rows, predictions), **why}


def predict_batch(api):
    environ = bottle.request.environ
    if media_type(environ) != JSON_TYPE:
        raise RequestError(415, f"Send the body as JSON with 'Content-Type: {JSON_TYPE}'.")
    choice, _, _ = read_request(api, features=False)  # the rows go in the body
    model = choice.model
    rows = parse_instances(model.schema, parse_json(read_body(environ)))
    return v1.batch_answer(model, rows, api.serving.predict(choice, rows))


def describe_model(api):
    """The default version's card (where the web page learns its form), or the card of the version named."""
    choice, _, _ = read_request(api, routed=False, features=False)
    return api.document("card", choice.model)


def monitoring(api):
    """Drift of each input and of the output, and live accuracy from feedback, since start or over the last
    _window seconds (at most DRIFT_WINDOW), for the default version or the one named (monitoring.py)."""
    choice, _, options = read_request(api, routed=False, options=("_version", "_window"), features=False)
    window, limit = options.get("_window"), api.monitor.settings.drift_window
    if window is not None and (not window.isdigit() or not 0 < int(window) <= limit):
        raise invalid([field_error("_window", f"must be a whole number of seconds from 1 to {limit} (DRIFT_WINDOW), "
                                              f"got {shorten(window)!r}")])
    return api.monitor.report(choice.model, int(window) if window else None)


def feedback(api):
    """What clients learned after their answers: the true class or number, counted per version (feedback.py)."""
    environ = bottle.request.environ
    if media_type(environ) != JSON_TYPE:
        raise RequestError(415, f"Send the body as JSON with 'Content-Type: {JSON_TYPE}'.")
    versions = api.serving.versions
    items = read_feedback(parse_json(read_body(environ)), lambda v: versions.named(v) if v else versions.active.default)
    for model, item in items:
        record(api.metrics, model, item)
        api.serving.prediction_log.feedback(model, item, environ.get(USER_KEY))
    return {"received": len(items)}


def metrics_page(api):
    api.monitor.update_gauges([entry.model for entry in api.serving.versions.index() if entry.model is not None])
    bottle.response.content_type = prometheus_client.CONTENT_TYPE_LATEST
    return exposition(api.metrics.registry)


def healthz(api):
    return {"status": "ok"}


def readyz(api):
    # This app exists only once the default version is loaded and has passed its self-test; before that the server
    # does not answer at all, so a readiness probe fails.
    default = api.serving.default
    return {"status": "ready", "model": default.identity, "engine": default.engine}


def openapi_json(api):
    """The contract of the default version (the one a request that names none gets, canary aside)."""
    return api.document("openapi", api.serving.default)


def refusal_of(error):
    """The model's domain errors as the HTTP answers they mean (None: not a refusal, a crash)."""
    if isinstance(error, Unpredictable):
        return RequestError(400, str(error))
    if isinstance(error, UnknownVersion):
        return RequestError(404, str(error))
    if isinstance(error, Overloaded):
        return RequestError(503, str(error), headers={"Retry-After": str(error.retry_after)})
    return None


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
    return v1.PROBLEM_TYPE, v1.problem_body(status, detail)


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
    ("GET", "/api/v1.0/monitoring", monitoring, True),
    ("POST", "/api/v1.0/feedback", feedback, True),
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
    ("POST", "/v2/repository/index", v2.repository_index, True),
)


def load_versions(settings, metrics):
    """The versions to serve: one artifact (MODEL_PATH) or a repository's (versions.py), or StartupError."""
    def load(artifact, whole_folder=False):
        model = load_checked(artifact, settings.allow_pickle, settings.signing_keys, whole_folder)
        self_test(model)
        return with_batching(model, settings.batching, metrics)

    def on_state(version):
        metrics.version_changed(version.name, version.state, version.model)

    try:
        if settings.model_repository is None:
            versions = Versions.single(settings.model_path, load, logger, on_state)
        else:
            store = open_store(settings.model_repository, settings.model_name)
            versions = Versions.repository(store, load, logger, on_state, settings.repository_poll,
                                           lambda outcome: metrics.repository_looks(outcome).inc())
    except (ModelError, StoreError) as err:
        raise StartupError(str(err)) from None
    default = versions.active.default
    logger.info("model %s version %s (%s) is the default, from %s; predictions computed by %s; artifact: %s, "
                "signature %s", default.card["name"], default.card["version"], default.card["algorithm"],
                settings.model_repository or settings.model_path, default.engine, default.artifact["format"],
                default.artifact["signature"])
    if not settings.signing_keys:
        logger.info("model signatures are not verified: set MODEL_SIGNING_PUBLIC_KEY to serve only models signed by "
                    "a key you trust (docs/running.md)")
    return versions


def create_app(settings):
    """The API as a WSGI app; loads and self-tests the model now, or raises StartupError."""
    if settings.password == DEMO_PASSWORD:
        logger.warning("the demo password is in use: set API_PASSWORD or API_PASSWORD_FILE to a secret of your own")
    metrics = ApiMetrics()
    monitor = Monitor(metrics, settings)
    log = PredictionLog(settings.prediction_log, settings.prediction_log_sample)
    api = Api(Serving(load_versions(settings, metrics), metrics, monitor, log), metrics, monitor)
    authenticate = load_users(settings, metrics, api.serving.versions.model_name).authenticate
    app = bottle.Bottle()
    # Crashes go to wsgi.handle_requests, which logs them once with their traceback and answers in kind.
    app.catchall = False
    app.default_error_handler = error_page
    for method, path, route, needs_credentials in ROUTES:
        render = v2.error_response if is_open_inference(path) else v1.problem
        app.route(path, method, answering(route, api, authenticate if needs_credentials else None, render,
                                          refusal_of))
    return handle_requests(app, logger, crash_document, api.metrics.count_request, settings.access_log)


def app_from_env():
    """The app as the production server loads it: 'api:app_from_env()'."""
    return server.start("api", logger, read_api_settings, create_app)[1]


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
        server.serve("api", default_workers=1)
