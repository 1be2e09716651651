"""Iris web page: a form for four measurements that asks the API and shows its answer on a shareable URL.

Run it locally beside the API (Bottle's development server):
    API_USERNAME=my_username API_PASSWORD=my_password python web.py
In production (what the container runs):
    gunicorn --config gunicorn.conf.py 'web:app_from_env()'

Environment, read once at start-up:
    API_URL            base URL of the API (default: http://localhost:8000)
    API_USERNAME       user name for the API (required)
    API_PASSWORD       password for the API (this or API_PASSWORD_FILE is required)
    API_PASSWORD_FILE  file holding the password, e.g. a Docker secret under /run/secrets
    API_TIMEOUT        seconds to wait for the API before showing "unavailable" (default: 5)
    HOST, PORT         where `python web.py` listens (default: 127.0.0.1 and 5000)
    LOG_LEVEL          DEBUG, INFO, WARNING or ERROR (default: INFO)
    LOG_FORMAT         text or json (default: text)

GET /metrics (Prometheus, behind basic auth with the API's credentials) counts page views, predictions asked,
API failures by kind and the API calls' latency. The API is the one place where the validation rules live: this app forwards the values as typed and shows the
API's messages. It needs only Bottle and the standard library.
"""

import base64
import contextvars
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
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import parse_qsl, urlencode, urlsplit
from urllib.request import Request, urlopen

import bottle
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
# Label and typical range in cm (the span of Fisher's 150 flowers), shown as a hint beside each input.
FIELDS = {
    "sepal_length": ("Sepal length", 4.3, 7.9),
    "sepal_width": ("Sepal width", 2.0, 4.4),
    "petal_length": ("Petal length", 1.0, 6.9),
    "petal_width": ("Petal width", 0.1, 2.5),
}
EXAMPLES = {
    "setosa": (5.1, 3.5, 1.4, 0.2),
    "versicolor": (6.0, 2.8, 4.4, 1.4),
    "virginica": (6.9, 3.1, 5.4, 2.1),
}
DEFAULT_API_URL = "http://localhost:8000"
DEFAULT_TIMEOUT = 5.0
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
READINESS_TIMEOUT = 2.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# A client's own X-Request-ID is kept when it is short and plain; anything else is replaced.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
API_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATIC_ROOT = Path(__file__).resolve().parent / "static"
# The stylesheet's URL carries a hash of its content, so browsers may cache it for a year.
STATIC_MAX_AGE = 365 * 24 * 3600
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
]

# One template for every page. The inputs say step="any" and min="0" so that the browser lets any positive decimal
# through and the API, the one place where the validation rules live, decides.
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}} · Iris classifier</title>
<link rel="stylesheet" href="{{stylesheet}}">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
</head>
<body>
<header class="top"><a href="/" class="brand">Iris classifier</a></header>
<main>
% if view == "form":
  <h1>Which iris is this?</h1>
  <p class="lead">Enter four measurements of one flower, in centimetres, and the model names its species.</p>
  <p class="examples">Or start from a typical
  % for i, (species, link) in enumerate(examples):
    <a href="{{link}}">{{species}}</a>{{"," if i < len(examples) - 2 else (" or" if i == len(examples) - 2 else ".")}}
  % end
  </p>
  % if general_errors:
  <div class="alert" role="alert">
    <p>The service could not use this request:</p>
    <ul>
    % for message in general_errors:
      <li>{{message}}</li>
    % end
    </ul>
  </div>
  % end
  <form action="/prediction" method="get" class="measurements">
  % for name, (label, low, high) in fields:
    <div class="field{{" invalid" if name in errors else ""}}">
      <label for="{{name}}">{{label}} <span class="unit">(cm)</span></label>
      % if name in errors:
      <input id="{{name}}" name="{{name}}" type="number" inputmode="decimal" step="any" min="0" required
             value="{{values.get(name, "")}}" aria-invalid="true" aria-describedby="{{name}}-hint {{name}}-error">
      <p class="error" id="{{name}}-error">{{label}} {{errors[name]}}</p>
      % else:
      <input id="{{name}}" name="{{name}}" type="number" inputmode="decimal" step="any" min="0" required
             value="{{values.get(name, "")}}" aria-describedby="{{name}}-hint">
      % end
      <p class="hint" id="{{name}}-hint">Typically {{low}} to {{high}} cm</p>
    </div>
  % end
    <button type="submit">Predict the species</button>
  </form>
% elif view == "result":
  <p class="eyebrow">The model says this is</p>
  <h1 class="species">Iris {{answer["prediction"]}}</h1>
  <p class="lead">with a probability of {{percent(answer["probabilities"][answer["prediction"]])}}.</p>
  % if answer["warnings"]:
  <div class="alert" role="note">
    <p><strong>Take this answer with care.</strong> Some measurements lie outside what the model was trained on:</p>
    <ul>
    % for warning in answer["warnings"]:
      <li>{{warning}}</li>
    % end
    </ul>
  </div>
  % end
  <h2>Probabilities</h2>
  <ul class="chart">
  % for species, probability in answer["probabilities"].items():
    <li class="{{"best" if species == answer["prediction"] else "other"}}">
      <span class="label">{{species}}</span>
      <svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true" focusable="false">
        <rect class="track" width="100" height="10"></rect>
        <rect class="fill" width="{{"%.2f" % (100 * probability)}}" height="10"></rect>
      </svg>
      <span class="value">{{percent(probability)}}</span>
    </li>
  % end
  </ul>
  <h2>Measurements</h2>
  <dl class="measured">
  % for name, (label, low, high) in fields:
    <dt>{{label}}</dt><dd>{{"%g" % answer["features"][name]}} cm</dd>
  % end
  </dl>
  <p class="actions"><a class="button" href="{{edit_link}}">Change these measurements</a> <a href="/">Start again</a></p>
  <p class="meta">Model {{answer["model"]["name"]}}, version {{answer["model"]["version"]}}</p>
% else:
  <h1>{{heading}}</h1>
  <p class="lead">{{advice}}</p>
  <p class="actions">
  % if retry_link:
    <a class="button" href="{{retry_link}}">Try again</a>
  % end
    <a href="/">Back to the form</a>
  </p>
% end
</main>
<footer><p>Predictions from a scikit-learn model trained on Fisher's iris data.</p></footer>
</body>
</html>
"""

logger = logging.getLogger(__name__)
request_id = contextvars.ContextVar("request_id", default="-")


class StartupError(Exception):
    """A configuration problem that must stop the service before it serves anything."""


class ApiUnavailable(Exception):
    """The API could not be reached or did not answer in time."""


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
        raise StartupError("API_USERNAME and API_PASSWORD (or API_PASSWORD_FILE) must be set: "
                           "the web app needs them to call the API")
    api_url = environ.get("API_URL", DEFAULT_API_URL).rstrip("/")
    if urlsplit(api_url).scheme not in ("http", "https") or not urlsplit(api_url).hostname:
        raise StartupError(f"API_URL must be an http:// or https:// URL, got {api_url!r}")
    timeout = environ.get("API_TIMEOUT", str(DEFAULT_TIMEOUT))
    try:
        seconds = float(timeout)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= 300:
        raise StartupError(f"API_TIMEOUT must be a number of seconds from 0 to 300, got {timeout!r}")
    port = environ.get("PORT", str(DEFAULT_PORT))
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise StartupError(f"PORT must be an integer from 1 to 65535, got {port!r}")
    level = environ.get("LOG_LEVEL", "INFO").upper()
    if level not in LOG_LEVELS:
        raise StartupError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    log_format = environ.get("LOG_FORMAT", "text").lower()
    if log_format not in LOG_FORMATS:
        raise StartupError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    return {"api_url": api_url, "username": username, "password": password, "timeout": seconds,
            "host": environ.get("HOST", DEFAULT_HOST), "port": int(port), "log_level": level,
            "log_format": log_format}


# --- Talking to the API ----------------------------------------------------------------------------------------


def form_values(query_string):
    """The four measurements as typed, from a raw query string; anything else the browser sent is dropped."""
    # No max_num_fields: it raises on a long query, and the server's request-line limit already bounds it.
    pairs = parse_qsl(query_string, keep_blank_values=True, errors="replace")
    return [(name, value) for name, value in pairs if name in FIELDS]


def call_api(url, authorization, timeout):
    """GET a URL of the API: (status, parsed JSON body or None). ApiUnavailable when it does not answer."""
    # The API logs the same request ID, so one click can be followed through both services' logs.
    request = Request(url, headers={"Authorization": authorization, "Accept": "application/json",
                                    "X-Request-ID": request_id.get()})
    try:
        with urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except HTTPError as err:
        with err:
            try:
                return err.code, json.load(err)
            except ValueError:
                return err.code, None
    except (URLError, OSError) as err:  # refused, unresolvable, reset or timed out (TimeoutError is an OSError)
        raise ApiUnavailable(str(getattr(err, "reason", err))) from None
    except ValueError:  # a 200 whose body is not JSON
        return 200, None


def percent(probability):
    return f"{100 * probability:.1f}\u00a0%"  # a no-break space keeps "91.8 %" on one line


def query_link(path, pairs):
    return f"{path}?{urlencode(pairs)}" if pairs else path


# --- The application -------------------------------------------------------------------------------------------


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
    """The web app's Prometheus metrics; summed over gunicorn's workers as in api.py (see gunicorn.conf.py)."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.page_views = Counter("iris_web_page_views", "HTML pages served, by page and status code",
                                  ["page", "status"], registry=registry)
        self.predictions = Counter("iris_web_predictions", "Predictions asked of the API, by outcome",
                                   ["outcome"], registry=registry)
        self.api_failures = Counter("iris_web_api_failures", "Failed calls to the API, by kind", ["kind"],
                                    registry=registry)
        self.api_latency = Histogram("iris_web_api_call_duration_seconds", "Time the API took to answer",
                                     buckets=API_LATENCY_BUCKETS, registry=registry)

    def exposition(self):
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return prometheus_client.generate_latest(registry)
        return prometheus_client.generate_latest(self.registry)


def with_request_handling(app, metrics):
    """Wrap a WSGI app: a request ID, security headers, one log line and a page-view count for every request,
    and no crash leaks."""
    crash_page = b"<!doctype html><title>Error</title><h1>Something went wrong</h1><p>The error was logged.</p>"

    def handled_app(environ, start_response):
        started, status, content_type = time.perf_counter(), ["500"], [""]
        given = environ.get("HTTP_X_REQUEST_ID", "")
        token = request_id.set(given if SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex)

        def secure_start_response(line, headers, exc_info=None):
            status[0] = line[:3]
            content_type[0] = next((v for k, v in headers if k.lower() == "content-type"), "")
            return start_response(line, [*headers, *SECURITY_HEADERS, ("X-Request-ID", request_id.get())], exc_info)

        try:
            return app(environ, secure_start_response)
        except Exception:
            logger.exception("unhandled error on %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            secure_start_response("500 Internal Server Error", [("Content-Type", "text/html; charset=UTF-8")],
                                  sys.exc_info())
            return [crash_page]
        finally:
            seconds = time.perf_counter() - started
            method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
            if content_type[0].startswith("text/html"):
                route = environ.get("bottle.route")
                metrics.page_views.labels(route.rule if route else "unmatched", status[0]).inc()
            logger.info("%s %s %s %.1fms", method, path, status[0], seconds * 1000,
                        extra={"request_id": request_id.get(), "method": method, "path": path,
                               "status": int(status[0]), "duration_ms": round(seconds * 1000, 2)})
            request_id.reset(token)

    return handled_app


def create_app(api_url, username, password, timeout=DEFAULT_TIMEOUT):
    """The web app as a WSGI app, talking to the API at api_url with these credentials."""
    api_url = api_url.rstrip("/")
    authorization = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    metrics = Metrics()
    page = bottle.SimpleTemplate(PAGE)
    stylesheet_hash = hashlib.sha256((STATIC_ROOT / "style.css").read_bytes()).hexdigest()[:12]
    common = {
        "stylesheet": f"/static/style.css?v={stylesheet_hash}",
        "fields": list(FIELDS.items()),
        "examples": [(species, query_link("/", list(zip(FEATURES, map(str, values)))))
                     for species, values in EXAMPLES.items()],
        "percent": percent,
    }

    def render(view, title, **context):
        return page.render(view=view, title=title, **common, **context)

    def render_form(values=(), errors=None, general_errors=()):
        return render("form", "Predict the species", values=dict(values), errors=errors or {},
                      general_errors=list(general_errors))

    def failure(status, title, heading, advice, retry_link=None):
        bottle.response.status = status
        return render("failure", title, heading=heading, advice=advice, retry_link=retry_link)

    app = bottle.Bottle()
    app.catchall = False  # crashes go to with_request_handling, which logs them once

    @app.get("/")
    def form():
        return render_form(form_values(bottle.request.environ.get("QUERY_STRING", "")))

    def ask_api(values):
        """The API's (status, body) for these form values, with the call timed and its failures counted."""
        started = time.perf_counter()
        try:
            status, body = call_api(f"{api_url}/api/v1.0?{urlencode(values)}", authorization, timeout)
        except ApiUnavailable:
            metrics.api_failures.labels("unavailable").inc()
            raise
        metrics.api_latency.observe(time.perf_counter() - started)
        if status not in (200, 400):
            metrics.api_failures.labels("credentials refused" if status == 401 else "error").inc()
        return status, body

    def result_page(answer):
        edit_link = query_link("/", [(name, f"{answer['features'][name]:g}") for name in FEATURES])
        return render("result", f"Iris {answer['prediction']}", answer=answer, edit_link=edit_link)

    def form_with_errors(values, errors):
        """The form again, status 400, with the API's message beside each bad field and the values kept."""
        bottle.response.status = 400
        field_errors = {e["field"]: e["message"] for e in errors if e.get("field") in FIELDS}
        other = [f"{e['field']} {e['message']}" for e in errors if e.get("field") not in FIELDS]
        return render_form(values, field_errors, other)

    def api_failure_page(status, values):
        if status == 401:
            logger.error("the API refused the web app's credentials for user %r: check API_USERNAME and "
                         "API_PASSWORD", username)
            return failure(502, "Configuration error", "This web app is misconfigured",
                           "The prediction service did not accept this web app's credentials. "
                           "Please tell the people who run this site.")
        logger.error("the API answered %s (at %s)", status, api_url)
        return failure(502, "Service error", "The prediction service failed",
                       "It answered with an error. Try again later; if it keeps happening, tell the people who run "
                       "this site.", retry_link=query_link("/prediction", values))

    @app.get("/prediction")
    def prediction():
        values = form_values(bottle.request.environ.get("QUERY_STRING", ""))
        try:
            status, body = ask_api(values)
        except ApiUnavailable as err:
            metrics.predictions.labels("failed").inc()
            logger.error("prediction service unavailable at %s: %s", api_url, err)
            return failure(503, "Service unavailable", "The prediction service is unavailable",
                           "It did not answer in time. Your measurements are kept in this page's address: "
                           "try again in a moment.", retry_link=query_link("/prediction", values))
        if status == 200 and body:
            metrics.predictions.labels("answered").inc()
            return result_page(body)
        if status == 400 and body and "errors" in body:
            metrics.predictions.labels("invalid").inc()
            return form_with_errors(values, body["errors"])
        metrics.predictions.labels("failed").inc()
        return api_failure_page(status, values)

    @app.get("/static/<filename:path>")
    def static(filename):
        return bottle.static_file(filename, root=STATIC_ROOT,
                                  headers={"Cache-Control": f"public, max-age={STATIC_MAX_AGE}, immutable"})

    @app.get("/metrics")
    def metrics_page():
        """Prometheus metrics, behind basic auth with the credentials this app uses for the API."""
        given = bottle.request.environ.get("HTTP_AUTHORIZATION", "").encode("latin-1")
        if not hmac.compare_digest(given, authorization.encode()):
            bottle.response.status = 401
            bottle.response.set_header("WWW-Authenticate", 'Basic realm="iris-web", charset="UTF-8"')
            return {"status": 401, "detail": "Send the service credentials with HTTP basic authentication."}
        bottle.response.content_type = prometheus_client.CONTENT_TYPE_LATEST
        return metrics.exposition()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        """Ready when the API is: the page is useless without it."""
        try:
            status, _ = call_api(f"{api_url}/readyz", authorization, min(timeout, READINESS_TIMEOUT))
        except ApiUnavailable as err:
            status = f"unreachable ({err})"
        if status != 200:
            bottle.response.status = 503
            return {"status": "not ready", "api": str(status)}
        return {"status": "ready"}

    def error_page(error):
        titles = {404: "There is no page here", 405: "This page cannot be used that way"}
        return failure(error.status, "Not found" if error.status_code == 404 else "Error",
                       titles.get(error.status_code, "Something went wrong"),
                       "Start again from the form.")

    app.default_error_handler = error_page
    return with_request_handling(app, metrics)


def start(environ):
    """Settings and app from the environment, with logging set up; one clear line and exit 1 when they are bad."""
    level, log_format = environ.get("LOG_LEVEL", "INFO").upper(), environ.get("LOG_FORMAT", "text").lower()
    configure_logging(level if level in LOG_LEVELS else "INFO", log_format if log_format in LOG_FORMATS else "text")
    try:
        settings = read_settings(environ)
    except StartupError as err:
        logger.critical("web refuses to start: %s", err)
        raise SystemExit(1) from None
    app = create_app(settings["api_url"], settings["username"], settings["password"], settings["timeout"])
    logger.info("settings: API %s as user %r, timeout %gs, log level %s, log format %s, metrics %s",
                settings["api_url"], settings["username"], settings["timeout"], settings["log_level"],
                settings["log_format"],
                "summed over the workers" if "PROMETHEUS_MULTIPROC_DIR" in environ else "in-process")
    return settings, app


def app_from_env():
    """The entry point for gunicorn: 'web:app_from_env()'."""
    return start(os.environ)[1]


def main():
    settings, app = start(os.environ)
    logger.info("serving on http://%s:%s (Bottle's development server; use gunicorn in production)",
                settings["host"], settings["port"])
    bottle.run(app, host=settings["host"], port=settings["port"], quiet=True)


if __name__ == "__main__":
    main()
