"""Bottle's development server, as `python api.py` and `python web.py` run it: for trying things out (serve.py is the
production server). Its request handler hands the apps the environ that the production server hands them.
"""

import io
from wsgiref.simple_server import WSGIRequestHandler

import bottle

from tabserve.server import start
from tabserve.wsgi import MAX_BODY_BYTES


def read_chunked(stream, limit):
    """A body in HTTP/1.1 chunked transfer encoding, decoded; reading stops once it holds more than limit bytes.
    ValueError when the framing is broken."""
    body = bytearray()
    while len(body) <= limit:
        size = int(stream.readline(1024).split(b";")[0], 16)  # a chunk extension after ";" is ignored
        if size < 0:
            raise ValueError("negative chunk size")
        if size == 0:
            break
        body += stream.read(size)
        stream.readline()  # the CRLF after the chunk
    return bytes(body)


class DevelopmentRequestHandler(WSGIRequestHandler):
    """wsgiref's request handler, made to hand the app the environ that the production server (granian) hands it.

    wsgiref alone differs in two ways that clients meet: it sets CONTENT_TYPE to text/plain when the request has none
    (so /v2 refused tritonclient, which sends its JSON without one, with a 415), and it passes a chunked body on
    undecoded, so the app read an empty body. tests/test_serve.py checks these and others against both servers.
    """

    chunked = False

    def address_string(self):
        return self.client_address[0]  # no reverse DNS look-up

    def log_request(self, *args):
        pass  # handle_requests logs the requests, as under the production server

    def parse_request(self):
        if not super().parse_request():
            return False
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            try:
                self.rfile = io.BytesIO(read_chunked(self.rfile, MAX_BODY_BYTES))
            except ValueError:
                self.send_error(400, "Bad chunked body")
                return False
            self.chunked = True
        return True

    def get_environ(self):
        environ = super().get_environ()
        if self.headers.get("Content-Type") is None:
            environ.pop("CONTENT_TYPE", None)
        if self.chunked:
            environ["wsgi.input_terminated"] = True
        return environ


def run_development_server(name, log, read_settings, create_app):
    """`python api.py` / `python web.py`: Bottle's own server, for trying things out."""
    settings, app = start(name, log, read_settings, create_app)
    log.info("serving on http://%s:%s (Bottle's development server; use serve.py in production)",
             settings.host, settings.port)
    bottle.run(app, host=settings.host, port=settings.port, quiet=True, handler_class=DevelopmentRequestHandler)
