"""The web page: a form made for the served model that asks the API and shows its answer on a shareable URL.

    API_USERNAME=my_username API_PASSWORD=my_password python web.py         # one worker, on 127.0.0.1:5000
    API_USERNAME=my_username API_PASSWORD=my_password python serve.py web   # what the image runs: WORKERS workers

Both run the production server (granian, tabserve/server.py). The environment variables it reads, once at
start-up, are in docs/configuration.md (the one table of them).

The form is learnt from the API's GET /api/v1.0/model (tabserve/forms.py). Until the API has answered once, the pages
say the service is unavailable; the app itself starts and stays up. The API is the one place where the validation
rules live: this app forwards the values as typed and shows the API's messages. The pages are Bottle templates in
views/ beside this file (where Bottle looks for them), with their stylesheet in static/. GET /metrics (Prometheus,
behind basic auth with the API's credentials) counts page views, predictions asked, API failures by kind and the
API calls' latency. It needs Bottle, prometheus_client and the standard library: no NumPy or scikit-learn.
"""

import functools
import hashlib
import logging
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import bottle
import prometheus_client

from tabserve import server
from tabserve.client import ApiUnavailable, api_opener, basic_authorization, call_api
from tabserve.figures import interval_picture, number_text, percent, unit_suffix, why_rows
from tabserve.forms import FormSource, query_link, value_text
from tabserve.metrics import WebMetrics, exposition
from tabserve.settings import WebSettings, read_web_settings
from tabserve.users import credentials_checker
from tabserve.watchview import monitoring_view, span_links
from tabserve.wsgi import handle_requests

READINESS_TIMEOUT = 2.0
UNKNOWN_MODEL_TITLE = "Prediction service"  # the brand of the pages shown before the form is learnt
UNKNOWN_MODEL_DESCRIPTION = "A prediction service: its form appears as soon as its model answers."
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


# --- The pages -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """What the pages are made from, built once by create_app()."""

    settings: WebSettings
    metrics: WebMetrics
    opener: urllib.request.OpenerDirector  # calls the API over kept-alive connections
    authorization: str  # the header the web app sends to the API
    is_authorised: object  # checks the credentials of a request for /metrics
    templates: dict  # name -> bottle.SimpleTemplate
    common: dict  # what every template is given
    forms: FormSource  # the form of the model the API serves


def form_values(query_string, names):
    """The model's inputs as typed, from a raw query string; anything else the browser sent is dropped."""
    # No max_num_fields: it raises on a long query, and the server's request-line limit already bounds it.
    pairs = parse_qsl(query_string, keep_blank_values=True, errors="replace")
    return [(name, value) for name, value in pairs if name in names]


class Template(bottle.SimpleTemplate):
    """Bottle's SimpleTemplate, escaping each {{value}} in one call rather than two.

    Bottle's own escape first passes the value through touni() (bytes to text, None to "") and then html_escape();
    these pages print only text, numbers and None, and a result page prints about 60 values: the call saved measured
    about 3 % of the page's CPU (tools/bench_web.py). prepare() is where SimpleTemplate itself sets its escape, and
    include() and rebase() make their templates of this class too, so the layout escapes the same way.
    """

    def prepare(self, **settings):
        super().prepare(**settings)
        self._escape = escape_text


def escape_text(value):
    return bottle.html_escape(value if type(value) is str else "" if value is None else str(value))


def render(site, form, name, title, **context):
    """A page; before the form is learnt, in the plain dress of a service whose model is not known yet."""
    model = form.context if form else {"inputs": [], "examples": [], "class_labels": {},
                                       "texts": {"title": UNKNOWN_MODEL_TITLE}, "task": "classification", "target": {},
                                       "description": UNKNOWN_MODEL_DESCRIPTION}
    return site.templates[name].render(title=title, **site.common, **model, **context)


def render_form(site, form, values=(), errors=None, general_errors=()):
    return render(site, form, "form", form.context["texts"]["submit"], values=dict(values), errors=errors or {},
                  general_errors=list(general_errors))


def failure(site, form, status, title, heading, advice, retry_link=None):
    bottle.response.status = status
    return render(site, form, "failure", title, heading=heading, advice=advice, retry_link=retry_link)


def unavailable(site, form, values, path):
    return failure(site, form, 503, "Service unavailable", "The prediction service is unavailable",
                   "It did not answer in time. Your values are kept in this page's address: try again in a moment.",
                   retry_link=query_link(path, values))


def query_string():
    return bottle.request.environ.get("QUERY_STRING", "")


def no_form_page(site, path):
    """What a page says while the form cannot be learnt: why, as for a failed prediction."""
    values = parse_qsl(query_string())[:64]
    if site.forms.problem in (None, "unavailable"):
        return unavailable(site, None, values, path)
    return api_failure_page(site, None, site.forms.problem, values)


def form_page(site):
    form = site.forms.current()
    if form is None:
        return no_form_page(site, "/")
    return render_form(site, form, form_values(query_string(), form.names))


def counted_call(settings, opener, authorization, metrics, path):
    """The API's (status, body) at this path, with the call timed and its failures counted."""
    started = time.perf_counter()
    try:
        status, body = call_api(opener, f"{settings.api_url}{path}", authorization, settings.timeout)
    except ApiUnavailable:
        metrics.api_failures("unavailable").inc()
        raise
    metrics.api_latency.observe(time.perf_counter() - started)
    if status not in (200, 400):
        metrics.api_failures("credentials refused" if status == 401 else "error").inc()
    return status, body


def ask_api(site, form, values):
    """The API's (status, body) for these form values: the prediction with its explanation, asked of the version
    the form was learnt from (the API's default then), whatever the API routes to others meanwhile."""
    return counted_call(site.settings, site.opener, site.authorization, site.metrics,
                        f"/api/v1.0/explain?{urlencode([*values, ('_version', form.version)])}")


def result_page(site, answer):
    """The answer; a new model version that gave it is learnt first, so the page names its own inputs."""
    site.forms.notice(answer["model"]["version"])
    form = site.forms.form
    edit_link = query_link("/", [(name, value_text(value)) for name, value in answer["features"].items()
                                 if value is not None])
    context = form.context
    if context["task"] == "regression":
        label = f"{number_text(answer['prediction'])}{unit_suffix(context['target'])}"
        picture = interval_picture(context["target"], answer)
    else:
        label, picture = context["class_labels"].get(answer["prediction"], answer["prediction"]), None
    return render(site, form, "result", label, answer=answer, label=label, edit_link=edit_link,
                  why=why_rows(context, answer), picture=picture)


def form_with_errors(site, form, values, errors):
    """The form again, status 400, with the API's message beside each bad field and the values kept."""
    bottle.response.status = 400
    field_errors = {e["field"]: e["message"] for e in errors if e.get("field") in form.names}
    other = [f"{e['field']} {e['message']}" for e in errors if e.get("field") not in form.names]
    return render_form(site, form, values, field_errors, other)


def api_failure_page(site, form, status, values):
    if status == 401:
        logger.error("the API refused the web app's credentials for user %r: check API_USERNAME and "
                     "API_PASSWORD", site.settings.username)
        return failure(site, form, 502, "Configuration error", "This web app is misconfigured",
                       "The prediction service did not accept this web app's credentials. "
                       "Please tell the people who run this site.")
    logger.error("the API answered %s (at %s)", status, site.settings.api_url)
    return failure(site, form, 502, "Service error", "The prediction service failed",
                   "It answered with an error. Try again later; if it keeps happening, tell the people who run "
                   "this site.", retry_link=query_link("/prediction", values))


def prediction_page(site):
    form = site.forms.current()
    if form is None:
        site.metrics.predictions("failed").inc()
        return no_form_page(site, "/prediction")
    values = form_values(query_string(), form.names)
    try:
        status, body = ask_api(site, form, values)
    except ApiUnavailable as err:
        site.metrics.predictions("failed").inc()
        logger.error("prediction service unavailable at %s: %s", site.settings.api_url, err)
        return unavailable(site, form, values, "/prediction")
    if status == 200 and body:
        site.metrics.predictions("answered").inc()
        return result_page(site, body)
    if status == 404 and site.forms.changed():
        return prediction_page(site)  # the form's version is no longer served: ask the default's with its form
    if status == 400 and body and "errors" in body:
        if any(error.get("field") not in form.names for error in body["errors"]) and site.forms.changed():
            return prediction_page(site)  # the API serves another model now: ask again with its own form
        site.metrics.predictions("invalid").inc()
        return form_with_errors(site, form, values, body["errors"])
    site.metrics.predictions("failed").inc()
    return api_failure_page(site, form, status, values)


def ask_for_credentials(site, form):
    """401 with the header that makes a browser ask for a name and password."""
    bottle.response.set_header("WWW-Authenticate", 'Basic realm="tabserve monitoring", charset="UTF-8"')
    return failure(site, form, 401, "Sign in", "Sign in to see the monitoring",
                   "The monitoring page is for the people who run the model: sign in as a user of the API.")


def monitoring_page(site):
    """Drift and live accuracy, for the people who run the model: asked of the API with the visitor's own
    credentials (the users the API knows, checked there: this app holds no list of them), so the page shows nothing
    its visitor could not ask the API for."""
    bottle.response.set_header("Cache-Control", "no-store")  # what a signed-in visitor saw stays with them
    form = site.forms.current()
    header = bottle.request.environ.get("HTTP_AUTHORIZATION")
    if not header:
        return ask_for_credentials(site, form)
    asked = [(name, value) for name, value in parse_qsl(query_string()) if name in ("window", "version")]
    try:
        status, body = call_api(site.opener, f"{site.settings.api_url}/api/v1.0/monitoring?"
                                f"{urlencode([(f'_{name}', value) for name, value in asked])}", header,
                                site.settings.timeout)
    except ApiUnavailable as err:
        logger.error("prediction service unavailable at %s: %s", site.settings.api_url, err)
        return unavailable(site, form, asked, "/monitoring")
    if status == 401:
        return ask_for_credentials(site, form)
    if status == 200 and body:
        labels = {item["name"]: item["label"] for item in form.context["inputs"]} if form else {}
        view = monitoring_view(body, labels)
        links, span = span_links(view, dict(asked))
        return render(site, form, "monitoring", "Monitoring", view=view, spans=links, span=span)
    if status in (400, 404, 429) and body:
        problems = [f"{error['field'].lstrip('_')} {error['message']}" for error in body.get("errors", [])]
        return failure(site, form, status, "Monitoring", "The monitoring cannot be shown so",
                       "; ".join(problems) or body.get("detail", ""), retry_link="/monitoring")
    return api_failure_page(site, form, status, asked)


def static_file(site, filename):
    return bottle.static_file(filename, root=STATIC_ROOT,
                              headers={"Cache-Control": f"public, max-age={STATIC_MAX_AGE}, immutable"})


def metrics_page(site):
    """Prometheus metrics, behind basic auth with the credentials this app uses for the API."""
    if not site.is_authorised(bottle.request.environ.get("HTTP_AUTHORIZATION", "")):
        bottle.response.status = 401
        bottle.response.set_header("WWW-Authenticate", 'Basic realm="tabserve", charset="UTF-8"')
        return {"status": 401, "detail": "Send the service credentials with HTTP basic authentication."}
    bottle.response.content_type = prometheus_client.CONTENT_TYPE_LATEST
    return exposition(site.metrics.registry)


def healthz(site):
    return {"status": "ok"}


def readyz(site):
    """Ready when the API is, and the form is learnt: the page is useless without them."""
    if site.forms.current() is None:
        bottle.response.status = 503
        return {"status": "not ready", "api": "the form is not learnt yet"}
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
    return failure(site, site.forms.form, error.status, "Not found" if error.status_code == 404 else "Error",
                   headings.get(error.status_code, "Something went wrong"), "Start again from the form.")


ROUTES = (
    ("GET", "/", form_page),
    ("GET", "/prediction", prediction_page),
    ("GET", "/monitoring", monitoring_page),
    ("GET", "/static/<filename:path>", static_file),
    ("GET", "/metrics", metrics_page),
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
)


def create_app(settings):
    """The web app as a WSGI app, talking to the API at settings.api_url with settings' credentials."""
    stylesheet_hash = hashlib.sha256((STATIC_ROOT / "style.css").read_bytes()).hexdigest()[:12]
    opener, authorization = api_opener(), basic_authorization(settings.username, settings.password)
    metrics = WebMetrics()
    site = Site(
        settings=settings,
        metrics=metrics,
        opener=opener,
        authorization=authorization,
        is_authorised=credentials_checker(settings.username, settings.password, logger),
        templates={name: Template(name=f"{name}.tpl", lookup=[str(VIEWS)])
                   for name in ("form", "result", "failure", "monitoring")},
        common={"stylesheet": f"/static/style.css?v={stylesheet_hash}", "percent": percent,
                "value_text": value_text, "number_text": number_text},
        forms=FormSource(functools.partial(counted_call, settings, opener, authorization, metrics, "/api/v1.0/model")),
    )
    site.forms.current()  # learnt now if the API answers; the pages say it is unavailable until it does
    app = bottle.Bottle()
    app.catchall = False  # crashes go to wsgi.handle_requests, which logs them once
    for method, path, page in ROUTES:
        app.route(path, method, functools.partial(page, site))
    app.default_error_handler = functools.partial(error_page, site)
    logger.info("calling the API at %s, timeout %gs", settings.api_url, settings.timeout)
    return handle_requests(app, logger, lambda environ: (HTML_TYPE, CRASH_PAGE), site.metrics.count_page,
                           settings.access_log, SECURITY_HEADERS)


def app_from_env():
    """The app as the production server loads it: 'web:app_from_env()'."""
    return server.start("web", logger, read_web_settings, create_app)[1]


if __name__ == "__main__":
    server.serve("web", default_workers=1)
