"""What the tests and the tools share: credentials, typical flowers, free ports, readiness waits, and a service started
exactly as its image starts it (the production server with the project's one server configuration).

Imported as `tests.support` from the repository root: by the tests (pytest puts the root on sys.path, see
pytest.ini) and by `python -m tools.bench` / `python -m tools.load`.
"""

import json
import os
import shlex
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from tabserve import client

ROOT = Path(__file__).resolve().parent.parent
USERNAME = "tester"
PASSWORD = "s3cret-test-password"
TESTS_FAILURES_PER_MINUTE = 100_000
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
# Typical flowers of each species, and one far outside anything the model saw.
FLOWERS = {
    "setosa": (5.1, 3.5, 1.4, 0.2),
    "versicolor": (6.0, 2.8, 4.4, 1.4),
    "virginica": (6.9, 3.1, 5.4, 2.1),
    "odd": (1.0, 1.0, 1.0, 1.0),
}
# The CSV model of the contract suites: a table with numbers and categories, written by the tests themselves.
FRUIT_COLUMNS = ("ID", "Weight (g)", "Colour", "Origin", "Fruit")
FRUIT_FEATURES = ("weight_g", "colour", "origin")  # the column names as train.py normalises them (ID is dropped)


def write_fruit_csv(path, rows=120):
    """A deterministic table of fruit: weight in grams, colour and origin (categories), and the fruit (the target)."""
    lines = [",".join(FRUIT_COLUMNS)]
    colours = {"apple": ("red", "green"), "banana": ("yellow",), "cherry": ("red", "dark red")}
    weights = {"apple": 150, "banana": 120, "cherry": 8}
    for index in range(rows):
        fruit = ("apple", "banana", "cherry")[index % 3]
        spread = (index * 7919 % 41 - 20) * (0.2 if fruit == "cherry" else 1)  # grams either side of the typical
        colour = colours[fruit][index // 3 % len(colours[fruit])]
        lines.append(f"{index},{weights[fruit] + spread:.1f},{colour},{('Spain', 'Chile')[index % 2]},{fruit}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# The regression CSV of the contract suites: homes with an area, rooms and a district (a category), and a price.
HOMES_COLUMNS = ("ID", "Area (m2)", "Rooms", "District", "Price (k€)")
HOMES_FEATURES = ("area_m2", "rooms", "district")
DISTRICTS = {"centre": 120.0, "north": 40.0, "south": 0.0}


def homes(rows, seed=0):
    """Deterministic homes: (area, rooms, district, price), the price linear in them plus noise of 25 k€."""
    import numpy as np
    rng = np.random.default_rng(seed)
    area = np.round(rng.uniform(30, 200, rows), 1)
    rooms = rng.integers(1, 7, rows)
    district = rng.choice(sorted(DISTRICTS), rows)
    price = 50 + 3.2 * area + 15 * rooms + np.array([DISTRICTS[d] for d in district]) + rng.normal(0, 25, rows)
    return [(float(a), int(r), str(d), round(float(p), 1)) for a, r, d, p in zip(area, rooms, district, price,
                                                                                  strict=True)]


def write_homes_csv(path, rows=300, seed=0):
    """A CSV of homes() for train.py, with an ID column to drop."""
    lines = [",".join(HOMES_COLUMNS)] + [f"{index},{a},{r},{d},{p}" for index, (a, r, d, p) in
                                         enumerate(homes(rows, seed))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# A table with holes, like the Palmer penguins exported from R: sex missing here and there (NA), two rows with no
# measurement at all, and a few empty cells; island and year are always there.
PENGUIN_COLUMNS = ("species", "island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex",
                   "year")
PENGUIN_FEATURES = ("island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex", "year")
SPECIES = {  # islands; mean and spread of bill length, bill depth, flipper length, body mass
    "Adelie": (("Biscoe", "Dream", "Torgersen"), (38.8, 2.7), (18.3, 1.2), (190.0, 6.5), (3700.0, 460.0)),
    "Chinstrap": (("Dream",), (48.8, 3.3), (18.4, 1.1), (196.0, 7.0), (3733.0, 384.0)),
    "Gentoo": (("Biscoe",), (47.5, 3.1), (15.0, 1.0), (217.0, 6.5), (5076.0, 504.0)),
}


def penguins(rows=344, seed=0):
    """Deterministic penguin rows as CSV cells (strings): NA where R writes it, "" where a cell is empty."""
    import numpy as np
    rng = np.random.default_rng(seed)
    lines = []
    for index in range(rows):
        species = ("Adelie", "Gentoo", "Chinstrap")[index % 3]
        islands, *measures = SPECIES[species]
        cells = [species, islands[index % len(islands)],
                 *(f"{rng.normal(mean, spread):.1f}" for mean, spread in measures), ("male", "female")[index % 2],
                 str(2007 + index % 3)]
        if index % 31 == 5:
            cells[6] = "NA"  # sex unknown: 11 rows
        if index in (3, 271):
            cells[2:7] = ["NA"] * 5  # nothing measured
        if index % 97 == 40:
            cells[3] = ""  # an empty cell
        lines.append(cells)
    return lines


def write_penguins_csv(path, rows=344, seed=0):
    path.write_text("\n".join(",".join(row) for row in [list(PENGUIN_COLUMNS), *penguins(rows, seed)]) + "\n",
                    encoding="utf-8")
    return path


# A table as a spreadsheet in much of Europe writes it: ";"-separated, decimal commas, a row counter, a date column
# and a city of a long tail, Seattle's weather (1,461 days, 2012-2015) in shape: a dull day is fog in winter and
# drizzle in summer, which only the date tells apart.
WEATHER_COLUMNS = ("Row", "Date", "Precipitation (mm)", "Temp max (°C)", "Wind", "Ticket", "City", "Weather")
CITIES = 400  # levels of the City column, most of them seen a few times


def weather(days=1461, start="2012-01-01", seed=0):
    """Deterministic days: (date, precipitation, maximum temperature, wind, city, weather), the weather following
    the season (the day of the year) and the rain."""
    import datetime

    import numpy as np
    rng = np.random.default_rng(seed)
    zipf = 1 / np.arange(1, CITIES + 1)  # City 0 the most frequent, then a long tail: nearly 300 seen in 1,461 days
    cities = np.random.default_rng(seed + 1).choice(CITIES, days, p=zipf / zipf.sum())
    first = datetime.date.fromisoformat(start)
    rows = []
    for day in range(days):
        date = first + datetime.timedelta(days=day)
        winter = np.cos(2 * np.pi * (date.timetuple().tm_yday - 15) / 365.25)  # 1 in January, -1 in July
        temp = 15 - 8 * winter + rng.normal(0, 3)
        rain = max(0.0, rng.normal(3 + 3 * winter, 4))
        city = f"City {cities[day]}"
        kind = "rain" if rain > 4 else "sun" if temp > 16 - 6 * winter else "fog" if winter > 0 else "drizzle"
        rows.append((date.isoformat(), round(rain, 1), round(temp, 1), round(rng.uniform(1, 8), 1), city, kind))
    return rows


def write_weather_csv(path, days=1461, start="2012-01-01", seed=0):
    """weather() as a ";"-separated file with decimal commas, a row counter and a ticket code of each row's own."""
    def comma(number):
        return f"{number}".replace(".", ",")
    lines = [";".join(WEATHER_COLUMNS)] + [
        f"{index + 1};{date};{comma(rain)};{comma(temp)};{comma(wind)};T-{index * 7919 % 100003:05d};{city};{kind}"
        for index, (date, rain, temp, wind, city, kind) in enumerate(weather(days, start, seed))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# As in Dockerfile.api and Dockerfile.web; THREADS and friends pass through from the environment.
SERVER_SETTINGS = {"WORKERS": "2", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def load_artifact(path):
    """The estimator in an artifact train.py wrote, built as the API builds it (skops, our trust list)."""
    from tabserve.artifacts import from_bytes
    return from_bytes(Path(path).read_bytes(), path)


def auth_header(username=USERNAME, password=PASSWORD):
    """{"Authorization": ...} for HTTP basic auth."""
    return {"Authorization": client.basic_authorization(username, password)}


def query(values):
    """A query string with the four measurements, in order: query(FLOWERS["setosa"])."""
    return "&".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                    for name, value in zip(FEATURES, values, strict=True))


def require(available, reason):
    """Skip a test that needs a missing part, but fail it in CI, which must exercise the real stack."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def docker_available():
    """A Docker engine answers, and the Compose plugin is there."""
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0 and \
        subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def untagged_images():
    """IDs of the images Docker keeps without a name, such as the earlier stages of a multi-stage build (its cache)."""
    listed = subprocess.run(["docker", "images", "-q", "--no-trunc", "--filter", "dangling=true"],
                            capture_output=True, text=True)
    return set(listed.stdout.split())


def remove_untagged_images(keep):
    """Remove the untagged images that are not in keep; their parent layers go with them unless still in use."""
    added = untagged_images() - keep
    if added:
        subprocess.run(["docker", "image", "rm", *added], capture_output=True)


def readme_curl(port):
    """The exact curl command of the README's quick start, pointed at this API port."""
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines()
                   if line.startswith('curl -i -H "Content-Type:application/json"'))
    assert "localhost:8000/api/v1.0?sepal_length=1&sepal_width=1&petal_length=1&petal_width=1" in command
    return shlex.split(command.replace("localhost:8000", f"localhost:{port}"))


# Every port free_ports has handed out in this process.
_GIVEN = set()


def free_ports(count):
    """count different TCP ports on 127.0.0.1 that nothing listens on now, and that this process has not been given
    before. Held together while they are chosen: one at a time, the kernel may give the same port twice, and a
    container publishing it twice does not start; and a port given to one caller (the Server's, say) but not yet
    listened on must not go to the next (MLServer's gRPC port, an S3 server's)."""
    sockets, ports = [], []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
            if (port := sock.getsockname()[1]) not in _GIVEN:
                ports.append(port)
        _GIVEN.update(ports)
        return ports
    finally:
        for sock in sockets:
            sock.close()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    return free_ports(1)[0]


def wait_ready(url, timeout=60.0):
    """Seconds until url answers 200; RuntimeError after timeout."""
    started = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{url} not ready after {timeout} s")
        time.sleep(0.01)


def rss_mib(pid):
    """Resident memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """wsgiref's handler without its stderr line per request or a reverse DNS look-up."""

    def address_string(self):
        return self.client_address[0]

    def log_request(self, *args):
        pass


@contextmanager
def serve_in_thread(app, port=0):
    """Serve a WSGI app on 127.0.0.1 (on a free port unless one is given) in a thread of the tests' own process, for
    the tests that call an app built in it (the web app's GET calls to the API); yields its base URL and stops it
    afterwards. The services themselves are tested under the production server (Server, api_server)."""
    server = make_server("127.0.0.1", port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


class Server:
    """`python serve.py <module>` (`api`, `web` or the benchmark's `tools.hello`): a service under the production
    server, as its image runs it, on a free loopback port, its log going to a file as in a container.

    command(port), when given, starts something else in its place (the benchmark's other servers).
    """

    def __init__(self, module, env=None, command=None):
        self.port, self.grpc_port = free_ports(2)  # the API serves gRPC beside HTTP (GRPC_PORT)
        self.url = f"http://127.0.0.1:{self.port}"
        log, self.log_path = tempfile.mkstemp(prefix="tabserve-server-", suffix=".log")
        # Its temporary files in a folder of its own, removed at stop(): a worker ends with os._exit (multiprocessing),
        # so what one of its threads held then (a version being fetched from S3, say) is never cleaned up by it.
        self.tmp = tempfile.mkdtemp(prefix="tabserve-server-tmp-")
        environ = {**os.environ, **SERVER_SETTINGS, "HOST": "127.0.0.1", "PORT": str(self.port),
                   "GRPC_PORT": str(self.grpc_port), "TMPDIR": self.tmp, **(env or {})}
        argv = command(self.port) if command else [sys.executable, "serve.py", module]
        # A session of its own: stop() can end its workers too, should the main process not (see there).
        self.process = subprocess.Popen(argv, cwd=ROOT, env=environ, stdout=log, stderr=log,
                                        start_new_session=True)
        os.close(log)  # the server has its own copy

    def workers(self):
        """The pids of the server's worker processes (its main process's children)."""
        children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in children.split()]

    def rss_mib(self):
        """Resident memory of the main process and of each worker, in MiB."""
        return [rss_mib(pid) for pid in [self.process.pid, *self.workers()]]

    def log_text(self):
        return Path(self.log_path).read_text()

    def stop(self):
        """Stop the server (SIGTERM, as docker stop does) and remove its log and temporary files."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        # A main process killed that way left its worker running, waiting for a stop that never came (seen once in
        # CI, after test_a_graceful_stop_answers_every_queued_request): whatever is left of the session goes too.
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        Path(self.log_path).unlink(missing_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def api_server(model_path, server="serve.py", **env):
    """The API served as its image serves it (or, with server="api.py", as `python api.py` does: the same server with
    one worker), ready to answer.
    The tests send wrong passwords by the hundred from 127.0.0.1: the limit on failed logins is lifted unless env
    sets it (test_users.py tests it)."""
    command = (lambda port: [sys.executable, "api.py"]) if server == "api.py" else None
    server = Server("api", {"API_USERNAME": USERNAME, "API_PASSWORD": PASSWORD, "MODEL_PATH": str(model_path),
                            "LOG_LEVEL": "WARNING", "LOGIN_FAILURES_PER_MINUTE": str(TESTS_FAILURES_PER_MINUTE),
                            **env}, command)
    wait_ready(server.url + "/readyz")
    return server


class Traffic:
    """Clients asking a served API, each with a routing key of its own, until the block ends: every status and every
    version that answered, to show that what happened meanwhile (a promotion, a store gone) lost no request.

        with Traffic(server.url, query(FLOWERS["setosa"])) as traffic:
            ...
        assert traffic.failed() == {} and traffic.versions == {"1", "2"}
    """

    def __init__(self, url, query_string, clients=8):
        self.url, self.query, self.clients = url, query_string, clients
        self.statuses, self.versions, self.stopping = [], set(), threading.Event()
        self.threads = [threading.Thread(target=self.ask, args=(number,), daemon=True) for number in range(clients)]

    def ask(self, number):
        while not self.stopping.is_set():
            request = urllib.request.Request(f"{self.url}/api/v1.0?{self.query}",
                                             headers={**auth_header(), "X-Routing-Key": f"client-{number}"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    self.statuses.append(response.status)
                    self.versions.add(json.loads(response.read())["model"]["version"])
            except urllib.error.HTTPError as err:
                self.statuses.append(err.code)
            except OSError as err:  # no answer at all
                self.statuses.append(type(err).__name__)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=15)

    def failed(self):
        """{status: count} of the answers that were not a 200."""
        return {status: self.statuses.count(status) for status in set(self.statuses) if status != 200}


def web_server(api_url, **env):
    """The web app served as its image serves it, calling the API at api_url, up (its /healthz answers)."""
    server = Server("web", {"API_USERNAME": USERNAME, "API_PASSWORD": PASSWORD, "API_URL": api_url,
                                           "LOG_LEVEL": "WARNING", **env})
    wait_ready(server.url + "/healthz")
    return server
