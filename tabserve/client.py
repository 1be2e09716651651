"""How the web app calls the API: urllib, over one kept-alive connection per thread, with the API's answer as JSON.

    opener = api_opener()
    status, body = call_api(opener, "http://api:8000/api/v1.0/model", authorization, timeout=5)

call_api raises ApiUnavailable when the API cannot be reached or does not answer in time; every answer it gets, an
error status included, comes back as (status, parsed JSON or None).
"""

import base64
import functools
import http.client
import json
import threading
import urllib.error
import urllib.request

from tabserve.logs import request_id


def basic_authorization(username, password):
    """The Authorization header value of HTTP basic auth for these credentials."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


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
    # Only the headers the API reads (Host, Authorization, X-Request-ID; http.client adds Accept-Encoding): urllib's
    # User-Agent and an Accept the API has no other answer to cost each page a few µs of http.client's header work.
    opener.addheaders = []
    for handler in (KeepAliveHandler(), urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def call_api(opener, url, authorization, timeout):
    """GET a URL of the API: (status, parsed JSON body or None). ApiUnavailable when it does not answer."""
    # The API logs the same request ID, so one click can be followed through both services' logs.
    request = urllib.request.Request(url, headers={"Authorization": authorization,
                                                   "X-Request-ID": request_id.get()})
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
