"""The plumbing both services share: settings, credentials, logs with request IDs, metrics and start-up.

api.py and web.py each keep only what is their own; what they would otherwise both write lives here, once. It needs
only the standard library, Bottle and prometheus_client, so the web image carries no NumPy or scikit-learn.
"""

import base64
import contextvars
import functools
import gc
import hmac
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import bottle
import prometheus_client
from prometheus_client import CollectorRegistry, multiprocess

DEFAULT_HOST = "127.0.0.1"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
# Which requests get a line of their own: all, those answered with an error status (4xx, 5xx), or none. Failed logins
# and crashes are logged whatever this says. See docs/watching.md for what each costs.
ACCESS_LOGS = ("all", "errors", "off")
DEFAULT_ACCESS_LOG = "errors"
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# A client's own X-Request-ID is kept when it is short and plain; anything else is replaced, never logged as sent.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
LOG_BATCH_SECONDS = 0.1
MAX_BODY_BYTES = 1024 * 1024  # read_body() refuses more, before reading it
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

request_id = contextvars.ContextVar("request_id", default="-")


class StartupError(Exception):
    """A configuration or model problem that must stop a service before it serves anything."""


class RequestError(Exception):
    """A request a service refuses: the status, a sentence for the client and each bad field. Each protocol answers
    it in its own format: problem+json on /api/v1.0, {"error": ...} on /v2 (open_inference.py)."""

    def __init__(self, status, detail, errors=(), headers=None):
        super().__init__(detail)
        self.status, self.detail, self.errors, self.headers = status, detail, list(errors), headers or {}


# --- Settings --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What both services are configured with; api.Settings and web.Settings add their own."""

    username: str
    password: str = field(repr=False)
    host: str = DEFAULT_HOST
    port: int
    log_level: str = "INFO"
    log_format: str = "text"
    access_log: str = DEFAULT_ACCESS_LOG


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


def read_common_settings(environ, default_port, why_credentials, credentials_required=True):
    """Credentials, HOST, PORT, LOG_LEVEL and LOG_FORMAT, checked; StartupError names the first bad one."""
    username, password = environ.get("API_USERNAME"), read_password(environ)
    if credentials_required and (not username or not password):
        raise StartupError(f"API_USERNAME and API_PASSWORD (or API_PASSWORD_FILE) must be set: {why_credentials}")
    # An empty value counts as unset: compose files and Makefiles pass empty strings for variables nobody set.
    port = environ.get("PORT") or str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise StartupError(f"PORT must be an integer from 1 to 65535, got {port!r}")
    level = (environ.get("LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise StartupError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    log_format = (environ.get("LOG_FORMAT") or "text").lower()
    if log_format not in LOG_FORMATS:
        raise StartupError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    access_log = (environ.get("ACCESS_LOG") or DEFAULT_ACCESS_LOG).lower()
    if access_log not in ACCESS_LOGS:
        raise StartupError(f"ACCESS_LOG must be one of {', '.join(ACCESS_LOGS)}, got {access_log!r}")
    return {"username": username or "", "password": password or "", "host": environ.get("HOST") or DEFAULT_HOST,
            "port": int(port), "log_level": level, "log_format": log_format, "access_log": access_log}


# --- Credentials -----------------------------------------------------------------------------------------------


def basic_authorization(username, password):
    """The Authorization header value of HTTP basic auth for these credentials."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


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


def credentials_checker(username, password, log):
    """A function that says whether an Authorization header carries these credentials, logging each refusal."""
    expected_user, expected_password = username.encode(), password.encode()

    def check(header):
        given = parse_basic_auth(header)
        if given is None:
            log.warning("authentication failed: missing or malformed Authorization header")
            return False
        user, secret = given
        # Both comparisons always run (& not `and`), so a wrong user costs what a wrong password costs.
        ok = hmac.compare_digest(user.encode(), expected_user) & hmac.compare_digest(secret.encode(), expected_password)
        if not ok:
            log.warning("authentication failed for user %r", user)
        return ok

    return check


# --- Requests --------------------------------------------------------------------------------------------------


def invalid(errors):
    """A 400 naming every bad field."""
    count = f"{len(errors)} problems" if len(errors) > 1 else "1 problem"
    return RequestError(400, f"The request has {count}; see 'errors'.", errors)


def field_error(field, message):
    return {"field": field, "message": message}


def shorten(text, limit=40):
    return text if len(text) <= limit else text[:limit] + "…"


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


def media_type(environ):
    """The request's Content-Type without its parameters, in lower case; "" when there is none."""
    return environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()


def read_body(environ):
    """The request body as bytes, refusing more than MAX_BODY_BYTES before reading it."""
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
    return RequestError(413, f"The body is larger than {MAX_BODY_BYTES} bytes; split the batch.")


def answering(route, context, authenticate, render):
    """A Bottle callback: route(context, ...), after authenticate(environ) when it is given (which raises a
    RequestError, 401 or 429, for credentials it refuses), and each RequestError answered by render(error)."""
    @functools.wraps(route)
    def callback(*args, **kwargs):
        try:
            if authenticate:
                authenticate(bottle.request.environ)
            return route(context, *args, **kwargs)
        except RequestError as error:
            # Answered, not raised again: re-raising one exception object would chain every traceback onto it and
            # keep all those frames alive (a leak found by the load test).
            return render(error)
    return callback


# --- Logs and metrics ------------------------------------------------------------------------------------------


class BatchingStreamHandler(logging.StreamHandler):
    """A StreamHandler that writes its lines in batches, from a thread of its own, at most LOG_BATCH_SECONDS late.

    One write per line cost about 40 % of the API container's throughput: every write to the container's stdout
    pipe wakes Docker's reader. Here a request only appends its line to a list; the writer thread writes what has
    gathered in one go, at once for a WARNING or worse. The writer ends after a last write when its process's main
    thread ends (forked workers included), so a graceful stop loses no line; a SIGKILL may lose the last batch.
    """

    def __init__(self, stream=None):
        super().__init__(stream)
        self.pending = []
        self.wake = threading.Event()  # set by the first line of a batch, so that an idle writer sleeps
        self.urgent = threading.Event()  # set by a WARNING or worse: write it now
        self.writer_pid = None

    def emit(self, record):  # called with self.lock held (logging.Handler.handle)
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        if self.writer_pid != os.getpid():  # the first line of this process: a forked worker starts its own writer
            self.writer_pid, self.pending = os.getpid(), []  # lines copied from the parent are the parent's to write
            threading.Thread(target=self.write_batches, name="log-writer").start()
        if not self.pending:
            self.wake.set()
        self.pending.append(line)
        if record.levelno >= logging.WARNING:
            self.urgent.set()

    def write_batches(self):
        main = threading.main_thread()
        while main.is_alive():  # checked every second: when it ends, the last lines are written and so is this
            if self.wake.wait(1.0):
                self.wake.clear()
                self.urgent.wait(LOG_BATCH_SECONDS)  # let the batch gather, unless a WARNING is waiting
                self.urgent.clear()
            self.flush()
        self.flush()

    def flush(self):
        with self.lock:
            lines, self.pending = self.pending, []
        if lines:
            self.stream.write("".join(lines))
            self.stream.flush()


class RequestIdFilter(logging.Filter):
    """Stamp every log record with the ID of the request being answered ("-" outside a request)."""

    def filter(self, record):
        record.request_id = request_id.get()
        return True


class Formatter(logging.Formatter):
    """logging's Formatter, the time text made once a second rather than for every line (same output)."""

    last_second = (None, "")

    def formatTime(self, record, datefmt=None):
        second, text = self.last_second
        if second != int(record.created):
            second, text = int(record.created), time.strftime(self.default_time_format, self.converter(record.created))
            self.last_second = second, text
        return self.default_msec_format % (text, record.msecs)


class JsonFormatter(Formatter):
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
    # logging's own optimisations (its HOWTO, "Optimization"): no line names its caller's file, thread or process.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    formatter = JsonFormatter() if log_format == "json" else Formatter(TEXT_LOG_FORMAT)
    handler = BatchingStreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler], force=True)


def metrics_exposition(registry):
    """The metrics in the Prometheus text format.

    Under the production server, serve.py sets PROMETHEUS_MULTIPROC_DIR before the app is imported: every worker
    then writes its counts to files there, and this adds up all the workers' files, so the figures are exact for the
    whole service. Without it (python api.py, tests) the metrics live in the app's own registry.
    """
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return prometheus_client.generate_latest(registry)


def handle_requests(app, log, crash, on_finish, headers=(), access_log=DEFAULT_ACCESS_LOG):
    """Wrap a WSGI app: a request ID and `headers` on every response, on_finish(environ, status, content type,
    seconds) for every request, a log line for those that access_log asks for, and for any crash a logged 500 whose
    (content type, body) crash(environ) gives."""
    lowest_logged_status = {"all": "000", "errors": "400", "off": "999"}[access_log]  # status codes compare as text

    def handled_app(environ, start_response):
        started, answered = time.perf_counter(), ["500", ""]  # status code and content type, once known
        given = environ.get("HTTP_X_REQUEST_ID", "")
        token = request_id.set(given if SANE_REQUEST_ID.fullmatch(given) else secrets.token_hex(16))

        def identified_start_response(line, response_headers, exc_info=None):
            answered[:] = line[:3], next((v for k, v in response_headers if k.lower() == "content-type"), "")
            return start_response(line, [*response_headers, *headers, ("X-Request-ID", request_id.get())], exc_info)

        try:
            return app(environ, identified_start_response)
        except Exception:
            log.exception("unhandled error on %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            crash_type, crash_body = crash(environ)
            identified_start_response("500 Internal Server Error", [("Content-Type", crash_type)], sys.exc_info())
            return [crash_body]
        finally:
            seconds = time.perf_counter() - started
            on_finish(environ, answered[0], answered[1], seconds)
            if answered[0] >= lowest_logged_status:
                log_request(log, environ, answered[0], seconds)
            request_id.reset(token)

    return handled_app


def log_request(log, environ, status, seconds):
    """The request's line: method, path (never the query: it may hold what a client typed), status and duration."""
    method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
    log.info("%s %s %s %.1fms", method, path, status, seconds * 1000,
             extra={"request_id": request_id.get(), "method": method, "path": path, "status": int(status),
                    "duration_ms": round(seconds * 1000, 2)})


def endpoint_of(environ):
    """The route that answered, for metric labels: never the raw path, or clients could invent labels."""
    route = environ.get("bottle.route")
    return route.rule if route else "unmatched"


def method_of(environ):
    """The request's method, for metric labels: any other token a client sends is counted as "other"."""
    method = environ.get("REQUEST_METHOD")
    return method if method in KNOWN_METHODS else "other"


def cached_labels(metric):
    """metric.labels, remembered: prometheus_client checks and looks up the labels on every call. Only for labels
    from a small, fixed set (routes, methods, status codes, classes), since every value is kept."""
    return functools.lru_cache(maxsize=None)(metric.labels)


# --- Start-up --------------------------------------------------------------------------------------------------


def start(name, log, read_settings, create_app):
    """Logging set up from the environment, then settings and app, or one clear line and exit 1 (StartupError)."""
    environ = os.environ
    level, log_format = (environ.get("LOG_LEVEL") or "INFO").upper(), (environ.get("LOG_FORMAT") or "text").lower()
    configure_logging(level if level in LOG_LEVELS else "INFO", log_format if log_format in LOG_FORMATS else "text")
    try:
        settings = read_settings(environ)
        app = create_app(settings)
    except StartupError as err:
        log.critical("%s refuses to start: %s", name, err)
        raise SystemExit(1) from None
    log.info("settings: user %r, log level %s, log format %s, access log %s, metrics %s", settings.username,
             settings.log_level, settings.log_format, settings.access_log,
             "summed over the workers" if "PROMETHEUS_MULTIPROC_DIR" in environ else "in-process")
    # Everything loaded so far (libraries, templates, the model) lives as long as the process: keep the garbage
    # collector from scanning it again and again (a large batch allocates many objects), and keep its pages shared
    # after the server forks its workers.
    gc.freeze()
    return settings, app
