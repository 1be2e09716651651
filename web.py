"""Iris web page: a form for four measurements that asks the API and shows its answer on a shareable URL.

Run it locally beside the API (Bottle's development server):
    API_USERNAME=my_username API_PASSWORD=my_password python web.py
In production (what the container runs):
    API_USERNAME=my_username API_PASSWORD=my_password python serve.py web

Environment, read once at start-up:
    API_URL            base URL of the API (default: http://localhost:8000)
    API_USERNAME       user name for the API (required)
    API_PASSWORD       password for the API (this or API_PASSWORD_FILE is required)
    API_PASSWORD_FILE  file holding the password, e.g. a Docker secret under /run/secrets
    API_TIMEOUT        seconds to wait for the API before showing "unavailable" (default: 5)
    HOST, PORT         where `python web.py` listens (default: 127.0.0.1 and 5000)
    LOG_LEVEL          DEBUG, INFO, WARNING or ERROR (default: INFO)
    LOG_FORMAT         text or json (default: text)
    ACCESS_LOG         errors, all or off: which requests get a log line (default: errors)

The API is the one place where the validation rules live: this app forwards the values as typed and shows the API's
messages. The pages are Bottle templates in views/; GET /metrics (Prometheus, behind basic auth with the API's
credentials) counts page views, predictions asked, API failures by kind and the API calls' latency. It needs Bottle,
prometheus_client and the standard library (through service.py): no NumPy or scikit-learn.
"""

import functools
import hashlib
import http.client
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import bottle
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram

import service
from service import StartupError

# Label and typical range in cm (the span of Fisher's 150 flowers), shown as a hint beside each input.
FIELDS = {
    "sepal_length": ("Sepal length", 4.3, 7.9),
    "sepal_width": ("Sepal width", 2.0, 4.4),
    "petal_length": ("Petal length", 1.0, 6.9),
    "petal_width": ("Petal width", 0.1, 2.5),
}
FEATURES = tuple(FIELDS)
EXAMPLES = {
    "setosa": (5.1, 3.5, 1.4, 0.2),
    "versicolor": (6.0, 2.8, 4.4, 1.4),
    "virginica": (6.9, 3.1, 5.4, 2.1),
}
DEFAULT_API_URL = "http://localhost:8000"
DEFAULT_TIMEOUT = 5.0
DEFAULT_PORT = 5000
READINESS_TIMEOUT = 2.0
API_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HERE = Path(__file__).resolve().parent
VIEWS = HERE / "views"
STATIC_ROOT = HERE / "static"
# The stylesheet's URL carries a hash of its content, so browsers may cache it for a year.
STATIC_MAX_AGE = 365 * 24 * 3600
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
HTML_TYPE = "text/html; charset=UTF-8"
CRASH_PAGE = b"<!doctype html><title>Error</title><h1>Something went wrong</h1><p>The error was logged.</p>"

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Settings(service.Settings):
    """What the web app is configured with; read_settings() makes one from the environment."""

    port: int = DEFAULT_PORT
    api_url: str = DEFAULT_API_URL
    timeout: float = DEFAULT_TIMEOUT


def read_settings(environ):
    """Validated settings from environment variables; StartupError names the first bad one."""
    common = service.read_common_settings(environ, DEFAULT_PORT, "the web app needs them to call the API")
    api_url = (environ.get("API_URL") or DEFAULT_API_URL).rstrip("/")
    if urlsplit(api_url).scheme not in ("http", "https") or not urlsplit(api_url).hostname:
        raise StartupError(f"API_URL must be an http:// or https:// URL, got {api_url!r}")
    timeout = environ.get("API_TIMEOUT") or str(DEFAULT_TIMEOUT)
    try:
        seconds = float(timeout)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= 300:
        raise StartupError(f"API_TIMEOUT must be a number of seconds from 0 to 300, got {timeout!r}")
    return Settings(api_url=api_url, timeout=seconds, **common)


# --- Calling the API -------------------------------------------------------------------------------------------


class ApiUnavailable(Exception):
    """The API could not be reached or did not answer in time."""


class KeepAliveHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """urllib's HTTP(S) handler over one kept-alive http.client connection per thread and API address.

    urllib's own handler sends 'Connection: close' and opens a new TCP connection for every call, which cost about
    twice the client CPU of a call on a kept-alive connection. A connection the API has closed meanwhile (idle, or
    restarted) is replaced transparently: a GET that fails on a reused connection is sent once more on a new one.
    """

    def __init__(self):
        super().__init__()
        self.local = threading.local()

    def http_open(self, request):
        return self.send(http.client.HTTPConnection, request)

    def https_open(self, request):
        return self.send(functools.partial(http.client.HTTPSConnection, context=self._context), request)

    def connection(self, factory, request, fresh):
        """This thread's connection to the request's address, and whether it has served a request before."""
        connections = self.local.__dict__.setdefault("connections", {})
        key = (request.type, request.host)
        connection, last_response = connections.get(key, (None, None))
        # Reuse only after a response that was read to its end: anything left unread would be taken for the next
        # response.
        reusable = connection is not None and last_response is not None and last_response.length == 0
        if fresh or not reusable:
            if connection is not None:
                connection.close()
            connection = factory(request.host, timeout=request.timeout)
        connection.timeout = request.timeout
        if connection.sock is not None:
            connection.sock.settimeout(request.timeout)
        connections[key] = (connection, None)
        return connection, reusable and not fresh

    def send(self, factory, request):
        headers = {**request.headers, **request.unredirected_hdrs}
        fresh = False
        while True:
            connection, reused = self.connection(factory, request, fresh)
            try:
                connection.request(request.get_method(), request.selector, request.data, headers)
                response = connection.getresponse()
            except (ConnectionResetError, BrokenPipeError, http.client.BadStatusLine) as err:
                connection.close()
                if reused and request.get_method() == "GET":  # the API closed it while it sat idle: once more
                    fresh = True
                    continue
                raise urllib.error.URLError(err) from None
            except OSError as err:  # refused, unresolvable or timed out
                connection.close()
                raise urllib.error.URLError(err) from None
            self.local.connections[(request.type, request.host)] = (connection, response)
            response.msg, response.url = response.reason, request.full_url  # what urllib's own handler sets
            return response


def api_opener():
    """A urllib opener that calls the API over KeepAliveHandler's connections, directly: not through an HTTP proxy
    named in the environment (the API is an internal service), and never following a redirect."""
    opener = urllib.request.OpenerDirector()
    for handler in (KeepAliveHandler(), urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def call_api(opener, url, authorization, timeout):
    """GET a URL of the API: (status, parsed JSON body or None). ApiUnavailable when it does not answer."""
    # The API logs the same request ID, so one click can be followed through both services' logs.
    request = urllib.request.Request(url, headers={"Authorization": authorization, "Accept": "application/json",
                                                   "X-Request-ID": service.request_id.get()})
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        with err:
            try:
                return err.code, json.load(err)
            except ValueError:
                return err.code, None
    except (urllib.error.URLError, OSError) as err:  # refused, unresolvable, reset or timed out
        raise ApiUnavailable(str(getattr(err, "reason", err))) from None
    except ValueError:  # a 200 whose body is not JSON
        return 200, None


# --- The pages -------------------------------------------------------------------------------------------------


class Metrics:
    """The web app's Prometheus metrics, exposed by service.metrics_exposition() (exact across server workers)."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.page_views = service.cached_labels(Counter(
            "iris_web_page_views", "HTML pages served, by page and status code", ["page", "status"],
            registry=registry))
        self.predictions = service.cached_labels(Counter(
            "iris_web_predictions", "Predictions asked of the API, by outcome", ["outcome"], registry=registry))
        self.api_failures = service.cached_labels(Counter(
            "iris_web_api_failures", "Failed calls to the API, by kind", ["kind"], registry=registry))
        self.api_latency = Histogram("iris_web_api_call_duration_seconds", "Time the API took to answer",
                                     buckets=API_LATENCY_BUCKETS, registry=registry)

    def count_page(self, environ, status, content_type, seconds):
        if content_type.startswith("text/html"):
            self.page_views(service.endpoint_of(environ), status).inc()


@dataclass(frozen=True)
class Site:
    """What the pages are made from, built once by create_app()."""

    settings: Settings
    metrics: Metrics
    opener: urllib.request.OpenerDirector  # calls the API over kept-alive connections
    authorization: str  # the header the web app sends to the API
    is_authorised: object  # checks the credentials of a request for /metrics
    templates: dict  # name -> bottle.SimpleTemplate
    common: dict  # what every template is given


def form_values(query_string):
    """The four measurements as typed, from a raw query string; anything else the browser sent is dropped."""
    # No max_num_fields: it raises on a long query, and the server's request-line limit already bounds it.
    pairs = parse_qsl(query_string, keep_blank_values=True, errors="replace")
    return [(name, value) for name, value in pairs if name in FIELDS]


def percent(probability):
    return f"{100 * probability:.1f}\u00a0%"  # a no-break space keeps "91.8 %" on one line


def query_link(path, pairs):
    return f"{path}?{urlencode(pairs)}" if pairs else path


def render(site, name, title, **context):
    return site.templates[name].render(title=title, **site.common, **context)


def render_form(site, values=(), errors=None, general_errors=()):
    return render(site, "form", "Predict the species", values=dict(values), errors=errors or {},
                  general_errors=list(general_errors))


def failure(site, status, title, heading, advice, retry_link=None):
    bottle.response.status = status
    return render(site, "failure", title, heading=heading, advice=advice, retry_link=retry_link)


def form_page(site):
    return render_form(site, form_values(bottle.request.environ.get("QUERY_STRING", "")))


def ask_api(site, values):
    """The API's (status, body) for these form values, with the call timed and its failures counted."""
    started = time.perf_counter()
    try:
        status, body = call_api(site.opener, f"{site.settings.api_url}/api/v1.0?{urlencode(values)}",
                                site.authorization, site.settings.timeout)
    except ApiUnavailable:
        site.metrics.api_failures("unavailable").inc()
        raise
    site.metrics.api_latency.observe(time.perf_counter() - started)
    if status not in (200, 400):
        site.metrics.api_failures("credentials refused" if status == 401 else "error").inc()
    return status, body


def result_page(site, answer):
    edit_link = query_link("/", [(name, f"{answer['features'][name]:g}") for name in FEATURES])
    return render(site, "result", f"Iris {answer['prediction']}", answer=answer, edit_link=edit_link)


def form_with_errors(site, values, errors):
    """The form again, status 400, with the API's message beside each bad field and the values kept."""
    bottle.response.status = 400
    field_errors = {e["field"]: e["message"] for e in errors if e.get("field") in FIELDS}
    other = [f"{e['field']} {e['message']}" for e in errors if e.get("field") not in FIELDS]
    return render_form(site, values, field_errors, other)


def api_failure_page(site, status, values):
    if status == 401:
        logger.error("the API refused the web app's credentials for user %r: check API_USERNAME and "
                     "API_PASSWORD", site.settings.username)
        return failure(site, 502, "Configuration error", "This web app is misconfigured",
                       "The prediction service did not accept this web app's credentials. "
                       "Please tell the people who run this site.")
    logger.error("the API answered %s (at %s)", status, site.settings.api_url)
    return failure(site, 502, "Service error", "The prediction service failed",
                   "It answered with an error. Try again later; if it keeps happening, tell the people who run "
                   "this site.", retry_link=query_link("/prediction", values))


def prediction_page(site):
    values = form_values(bottle.request.environ.get("QUERY_STRING", ""))
    try:
        status, body = ask_api(site, values)
    except ApiUnavailable as err:
        site.metrics.predictions("failed").inc()
        logger.error("prediction service unavailable at %s: %s", site.settings.api_url, err)
        return failure(site, 503, "Service unavailable", "The prediction service is unavailable",
                       "It did not answer in time. Your measurements are kept in this page's address: "
                       "try again in a moment.", retry_link=query_link("/prediction", values))
    if status == 200 and body:
        site.metrics.predictions("answered").inc()
        return result_page(site, body)
    if status == 400 and body and "errors" in body:
        site.metrics.predictions("invalid").inc()
        return form_with_errors(site, values, body["errors"])
    site.metrics.predictions("failed").inc()
    return api_failure_page(site, status, values)


def static_file(site, filename):
    return bottle.static_file(filename, root=STATIC_ROOT,
                              headers={"Cache-Control": f"public, max-age={STATIC_MAX_AGE}, immutable"})


def metrics_page(site):
    """Prometheus metrics, behind basic auth with the credentials this app uses for the API."""
    if not site.is_authorised(bottle.request.environ.get("HTTP_AUTHORIZATION", "")):
        bottle.response.status = 401
        bottle.response.set_header("WWW-Authenticate", 'Basic realm="iris-web", charset="UTF-8"')
        return {"status": 401, "detail": "Send the service credentials with HTTP basic authentication."}
    bottle.response.content_type = prometheus_client.CONTENT_TYPE_LATEST
    return service.metrics_exposition(site.metrics.registry)


def healthz(site):
    return {"status": "ok"}


def readyz(site):
    """Ready when the API is: the page is useless without it."""
    try:
        status, _ = call_api(site.opener, f"{site.settings.api_url}/readyz", site.authorization,
                             min(site.settings.timeout, READINESS_TIMEOUT))
    except ApiUnavailable as err:
        status = f"unreachable ({err})"
    if status != 200:
        bottle.response.status = 503
        return {"status": "not ready", "api": str(status)}
    return {"status": "ready"}


def error_page(site, error):
    headings = {404: "There is no page here", 405: "This page cannot be used that way"}
    return failure(site, error.status, "Not found" if error.status_code == 404 else "Error",
                   headings.get(error.status_code, "Something went wrong"), "Start again from the form.")


ROUTES = (
    ("GET", "/", form_page),
    ("GET", "/prediction", prediction_page),
    ("GET", "/static/<filename:path>", static_file),
    ("GET", "/metrics", metrics_page),
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
)


def create_app(settings):
    """The web app as a WSGI app, talking to the API at settings.api_url with settings' credentials."""
    stylesheet_hash = hashlib.sha256((STATIC_ROOT / "style.css").read_bytes()).hexdigest()[:12]
    site = Site(
        settings=settings,
        metrics=Metrics(),
        opener=api_opener(),
        authorization=service.basic_authorization(settings.username, settings.password),
        is_authorised=service.credentials_checker(settings.username, settings.password, logger),
        templates={name: bottle.SimpleTemplate(name=f"{name}.tpl", lookup=[str(VIEWS)])
                   for name in ("form", "result", "failure")},
        common={"stylesheet": f"/static/style.css?v={stylesheet_hash}", "fields": list(FIELDS.items()),
                "examples": [(species, query_link("/", list(zip(FEATURES, map(str, values)))))
                             for species, values in EXAMPLES.items()],
                "percent": percent},
    )
    app = bottle.Bottle()
    app.catchall = False  # crashes go to service.handle_requests, which logs them once
    for method, path, page in ROUTES:
        app.route(path, method, functools.partial(page, site))
    app.default_error_handler = functools.partial(error_page, site)
    logger.info("calling the API at %s, timeout %gs", settings.api_url, settings.timeout)
    return service.handle_requests(app, logger, lambda environ: (HTML_TYPE, CRASH_PAGE), site.metrics.count_page,
                                   SECURITY_HEADERS,
                                   settings.access_log)


def app_from_env():
    """The app as the production server loads it: 'web:app_from_env()'."""
    return service.start("web", logger, read_settings, create_app)[1]


if __name__ == "__main__":
    service.run_development_server("web", logger, read_settings, create_app)
