"""The HTTP plumbing both apps share: a request's ID, body and JSON, the errors a route raises and how each crash
and each request is logged and counted.

    app = handle_requests(bottle_app, log, crash, on_finish)       # every request: an ID, a line, a count
    route = answering(route, context, authenticate, render)          # a Bottle callback; RequestError -> render()
"""

import functools
import json
import re
import secrets
import sys
import time

import bottle

from tabserve.logs import log_request, request_id

# A client's own X-Request-ID is kept when it is short and plain; anything else is replaced, never logged as sent.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_BODY_BYTES = 1024 * 1024  # read_body() refuses more, before reading it
GRPC_KEY = "tabserve.grpc"  # in the environ of a gRPC call answered by a route (grpcapi.py): its method
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestError(Exception):
    """A request a service refuses: the status, a sentence for the client and each bad field. Each protocol answers
    it in its own format: problem+json on /api/v1.0 (v1.py), {"error": ...} on /v2 (v2.py)."""

    def __init__(self, status, detail, errors=(), headers=None):
        super().__init__(detail)
        self.status, self.detail, self.errors, self.headers = status, detail, list(errors), headers or {}


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


def answering(route, context, authenticate, render, translate=lambda error: None):
    """A Bottle callback: route(context, ...), after authenticate(environ) when it is given (which raises a
    RequestError, 401 or 429, for credentials it refuses). Each RequestError, and each other error that
    translate(error) turns into one, is answered by render(error); any other is a crash."""
    @functools.wraps(route)
    def callback(*args, **kwargs):
        try:
            if authenticate:
                authenticate(bottle.request.environ)
            return route(context, *args, **kwargs)
        except Exception as error:
            refusal = error if isinstance(error, RequestError) else translate(error)
            if refusal is None:
                raise
            # Answered, not raised again: re-raising one exception object would chain every traceback onto it and
            # keep all those frames alive (a leak found by the load test).
            return render(refusal)
    return callback


def handle_requests(app, log, crash, on_finish, access_log, headers=()):
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


def endpoint_of(environ):
    """The route that answered, for metric labels: never the raw path, or clients could invent labels; a gRPC call's
    method (grpcapi.py), which the route answered for it."""
    if GRPC_KEY in environ:
        return environ[GRPC_KEY]
    route = environ.get("bottle.route")
    return route.rule if route else "unmatched"


def method_of(environ):
    """The request's method, for metric labels: any other token a client sends is counted as "other"."""
    method = environ.get("REQUEST_METHOD")
    return method if method in KNOWN_METHODS else "other"
