"""The benchmark's ceiling: a hello-world Bottle app, served exactly like the API. The API cannot be faster than the
server that carries it."""

import bottle


def hello_app():
    """The WSGI app, for the production server: 'tools.hello:hello_app()'."""
    app = bottle.Bottle()
    app.route("/", callback=lambda: "hello")
    return app


def app_from_env():
    """`python serve.py tools.hello`: the same server as the API's, around nothing."""
    return hello_app()
