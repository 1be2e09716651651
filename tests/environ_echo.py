"""A WSGI app that answers with its request's environ, and with what service.py makes of it (media type, body): what
a server hands to apps, for test_serve.py."""

import json

from tabserve import wsgi


def echo(environ, start_response):
    seen = {key: str(value) for key, value in environ.items()}
    seen["as read"] = {"media type": wsgi.media_type(environ), "body": wsgi.read_body(environ).decode()}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(seen).encode()]


def app_from_env():
    return echo
