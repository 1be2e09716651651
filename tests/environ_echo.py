"""A WSGI app that answers with its request's environ: what serve.py hands to apps, for test_serve.py."""

import json


def app_from_env():
    def echo(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({key: str(value) for key, value in environ.items()}).encode()]
    return echo
