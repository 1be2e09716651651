"""Metrics, request IDs and logs of both services: exact counts through the server's workers, IDs followed from the
web app to the API, JSON log lines."""

import io
import json
import logging
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import webtest
from prometheus_client.parser import text_string_to_metric_families

import api
from tabserve import logs, model, wsgi
from tabserve.settings import ApiSettings, StartupError, read_api_settings
from tests.support import FLOWERS, PASSWORD, USERNAME, Server, api_server, auth_header, query, wait_ready

AUTH = auth_header()
SETOSA = FLOWERS["setosa"]
ODD = FLOWERS["odd"]  # sepal length, sepal width and petal length outside the training range
BATCH = [(6.9, 3.1, 5.4, 2.1), (6.0, 2.8, 4.4, 1.4), (5.0, 3.4, 1.5, 0.2), (7.7, 2.6, 6.9, 2.3), (1, 1, 1, 9)]


def samples(text):
    """{(sample name, frozenset of labels): value} from a Prometheus text exposition."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(parsed, name, **labels):
    return parsed.get((name, frozenset(labels.items())), 0)


def call(url, headers=None, body=None):
    request = urllib.request.Request(url, data=body, headers={**(headers or {}),
                                                              **({"Content-Type": "application/json"} if body else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        with err:
            return err.code


# --- Exact counts under the production server settings ---------------------------------------------------------


def test_api_counters_are_exact_across_server_workers(model_path):
    loaded = model.load_model(model_path)
    expected_classes = {}
    for rows, times in (([SETOSA], 60), ([ODD], 40), (BATCH, 10)):
        for label in model.predict(loaded, np.array(rows, dtype=float)).labels():
            expected_classes[label] = expected_classes.get(label, 0) + times
    server = api_server(model_path)  # exactly one request to /readyz: the port opens once the app is built
    try:
        batch = json.dumps({"instances": BATCH}).encode()
        jobs = ([(f"{server.url}/api/v1.0?{query(SETOSA)}", AUTH, None)] * 60
                + [(f"{server.url}/api/v1.0?{query(ODD)}", AUTH, None)] * 40
                + [(f"{server.url}/api/v1.0?sepal_length=abc", AUTH, None)] * 30
                + [(f"{server.url}/api/v1.0?{query(SETOSA)}", {}, None)] * 20
                + [(f"{server.url}/api/v1.0/predict", AUTH, batch)] * 10
                + [(f"{server.url}/no/such/path", {}, None)] * 5)
        with ThreadPoolExecutor(16) as pool:  # a new connection per request: both workers get their share
            statuses = list(pool.map(lambda job: call(*job), jobs))
        assert sorted(set(statuses)) == [200, 400, 401, 404]
        with urllib.request.urlopen(urllib.request.Request(f"{server.url}/metrics", headers=AUTH)) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            parsed = samples(response.read().decode())
    finally:
        server.stop()

    requests = "tabserve_api_requests_total"
    # A request that was not authenticated has no user, and one refused before a version was chosen no version.
    user, none, version = USERNAME, "none", loaded.card["version"]
    assert value(parsed, requests, endpoint="/api/v1.0", method="GET", status="200", user=user,
                 version=version) == 100
    assert value(parsed, requests, endpoint="/api/v1.0", method="GET", status="400", user=user,
                 version=version) == 30
    assert value(parsed, requests, endpoint="/api/v1.0", method="GET", status="401", user=none, version=none) == 20
    assert value(parsed, requests, endpoint="/api/v1.0/predict", method="POST", status="200", user=user,
                 version=version) == 10
    assert value(parsed, requests, endpoint="unmatched", method="GET", status="404", user=none, version=none) == 5
    assert value(parsed, requests, endpoint="/readyz", method="GET", status="200", user=none, version=none) == 1
    assert sum(v for (name, _), v in parsed.items() if name == requests) == 166
    duration = "tabserve_api_request_duration_seconds"
    assert value(parsed, f"{duration}_count", endpoint="/api/v1.0", version=version) == 130
    assert value(parsed, f"{duration}_bucket", endpoint="/api/v1.0", le="+Inf", version=version) == 130
    assert value(parsed, f"{duration}_count", endpoint="/api/v1.0", version=none) == 20
    for name, count in expected_classes.items():
        assert value(parsed, "tabserve_api_predictions_total", version=version, **{"class": name}) == count
    assert sum(v for (name, _), v in parsed.items() if name == "tabserve_api_predictions_total") == 150
    out_of_range = "tabserve_api_inputs_out_of_range_total"
    # The ODD flower, and (1, 1, 1, 9)
    assert value(parsed, out_of_range, feature="sepal_length", version=version) == 40 + 10
    assert value(parsed, out_of_range, feature="sepal_width", version=version) == 40 + 10
    assert value(parsed, out_of_range, feature="petal_length", version=version) == 40 + 10
    assert value(parsed, out_of_range, feature="petal_width", version=version) == 10
    info = [labels for (name, labels), v in parsed.items() if name == "tabserve_model_info" and v == 1]
    assert [dict(labels)["algorithm"] for labels in info] == ["logistic_regression"]
    assert value(parsed, "tabserve_model_version_state", version=version, state="READY") == 1
    assert value(parsed, "tabserve_model_version_state", version=version, state="LOADING") == 0
    assert value(parsed, "tabserve_api_start_time_seconds") > 1.7e9


def test_metrics_need_credentials(anonymous_api_client):
    response = anonymous_api_client.get("/metrics", status=401)
    assert response.content_type == "application/problem+json"


def test_in_process_metrics_count_this_app(model_path):
    client = webtest.TestApp(api.create_app(ApiSettings(username=USERNAME, password=PASSWORD,
                                                         model_path=model_path)))
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    client.get(f"/api/v1.0?{query(SETOSA)}")
    parsed = samples(client.get("/metrics").text)
    version = model.load_model(model_path).card["version"]
    assert value(parsed, "tabserve_api_predictions_total", version=version, **{"class": "setosa"}) == 1
    assert value(parsed, "tabserve_api_requests_total", endpoint="/api/v1.0", method="GET", status="200",
                 user=USERNAME, version=version) == 1


# --- Request IDs and logs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sent, kept", [
    ("abc-123_X.y:z", True),
    ("a" * 64, True),
    ("a" * 65, False),
    ("has space", False),
    ("new\nline", False),
    ("<script>", False),
    ("", False),
])
def test_api_keeps_a_sane_request_id_and_replaces_others(api_client, sent, kept, caplog):
    caplog.set_level(logging.INFO)
    response = api_client.get(f"/api/v1.0?{query(SETOSA)}", headers={"X-Request-ID": sent} if sent else {})
    answered = response.headers["X-Request-ID"]
    assert (answered == sent) is kept
    assert wsgi.SANE_REQUEST_ID.fullmatch(answered)
    assert any(getattr(record, "request_id", None) == answered for record in caplog.records)


def test_every_api_response_has_a_request_id(api_client):
    for path, status in (("/healthz", 200), ("/nowhere", 404), ("/api/v1.0", 400)):
        assert api_client.get(path, status=status).headers["X-Request-ID"]


def test_the_web_app_passes_its_request_id_to_the_api(web_client, caplog):
    caplog.set_level(logging.INFO)
    response = web_client.get(f"/prediction?{query(SETOSA)}", headers={"X-Request-ID": "click-42"})
    assert response.headers["X-Request-ID"] == "click-42"
    lines = [(record.name, record.getMessage()) for record in caplog.records if record.request_id == "click-42"]
    assert ("api", next(m for n, m in lines if n == "api" and m.startswith("GET /api/v1.0/explain 200"))) in lines
    assert any(name == "web" and message.startswith("GET /prediction 200") for name, message in lines)


def test_json_log_lines_carry_the_request_fields(api_client, caplog):
    caplog.set_level(logging.INFO, logger="api")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RequestIdFilter())
    handler.setFormatter(logs.JsonFormatter())
    logging.getLogger("api").addHandler(handler)
    try:
        api_client.get(f"/api/v1.0?{query(SETOSA)}&secret=1", headers={"X-Request-ID": "json-1"}, status=400)
    finally:
        logging.getLogger("api").removeHandler(handler)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = entries[-1]
    assert access["request_id"] == "json-1" and access["method"] == "GET" and access["path"] == "/api/v1.0"
    assert access["status"] == 400 and access["duration_ms"] >= 0 and access["level"] == "INFO" and access["time"]
    assert "secret" not in stream.getvalue() and PASSWORD not in stream.getvalue()


def test_log_format_must_be_known():
    with pytest.raises(StartupError, match="LOG_FORMAT must be one of"):
        read_api_settings({"API_USERNAME": "u", "API_PASSWORD": "p", "LOG_FORMAT": "xml"})


# --- The web app's metrics -------------------------------------------------------------------------------------


def test_web_metrics_count_pages_predictions_and_failures(live_api, new_web_client):
    client = new_web_client(live_api)
    client.get("/")
    client.get(f"/prediction?{query(SETOSA)}")
    client.get("/prediction?sepal_length=abc", status=400)
    client.get("/static/style.css")
    refused = new_web_client(live_api, password="wrong")
    refused.get(f"/prediction?{query(SETOSA)}", status=502)

    client.get("/metrics", status=401)
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    parsed = samples(client.get("/metrics").text)
    assert value(parsed, "tabserve_web_page_views_total", page="/", status="200") == 1
    assert value(parsed, "tabserve_web_page_views_total", page="/prediction", status="200") == 1
    assert value(parsed, "tabserve_web_page_views_total", page="/prediction", status="400") == 1
    assert sum(v for (name, _), v in parsed.items() if name == "tabserve_web_page_views_total") == 3  # not the CSS
    assert value(parsed, "tabserve_web_predictions_total", outcome="answered") == 1
    assert value(parsed, "tabserve_web_predictions_total", outcome="invalid") == 1
    assert value(parsed, "tabserve_web_api_call_duration_seconds_count") == 3  # learning the form, then 2 predictions
    refused.authorization = ("Basic", (USERNAME, "wrong"))
    parsed = samples(refused.get("/metrics").text)
    assert value(parsed, "tabserve_web_api_failures_total", kind="credentials refused") == 1
    assert value(parsed, "tabserve_web_predictions_total", outcome="failed") == 1


def test_web_metrics_count_an_unreachable_api(new_web_client, closed_port_url):
    client = new_web_client(closed_port_url, timeout=1)
    client.get(f"/prediction?{query(SETOSA)}", status=503)
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    parsed = samples(client.get("/metrics").text)
    assert value(parsed, "tabserve_web_api_failures_total", kind="unavailable") == 1
    assert value(parsed, "tabserve_web_page_views_total", page="/prediction", status="503") == 1


@pytest.mark.parametrize("app", ["api", "web"])
def test_json_logs_under_the_production_server_are_json_lines_only(model_path, app):
    server = Server(app, {"API_USERNAME": USERNAME, "API_PASSWORD": PASSWORD, "LOG_FORMAT": "json", "ACCESS_LOG": "all",
                          "MODEL_PATH": str(model_path), "API_URL": "http://127.0.0.1:9"})
    try:
        wait_ready(server.url + "/healthz")
        call(f"{server.url}/healthz", {"X-Request-ID": "json-under-serve-py"})
        server.process.terminate()
        server.process.wait(timeout=15)
        lines = server.log_text().splitlines()
    finally:
        server.stop()
    entries = [json.loads(line) for line in lines]  # every line, the server's own included, is JSON
    assert any(e.get("request_id") == "json-under-serve-py" and e.get("path") == "/healthz" for e in entries)
    assert any("worker" in e["message"].lower() for e in entries)  # the server's own messages


@pytest.mark.parametrize("access_log, logged", [("all", {200, 400, 401}), ("errors", {400, 401}), ("off", set())])
def test_access_log_chooses_which_requests_get_a_line(model_path, caplog, access_log, logged):
    caplog.set_level(logging.INFO)
    settings = ApiSettings(username=USERNAME, password=PASSWORD, model_path=model_path, access_log=access_log)
    client = webtest.TestApp(api.create_app(settings))
    client.get(f"/api/v1.0?{query(SETOSA)}", headers=AUTH)
    client.get("/api/v1.0?sepal_length=abc", headers=AUTH, status=400)
    client.get(f"/api/v1.0?{query(SETOSA)}", headers=auth_header("mallory", "guess"), status=401)
    assert {record.status for record in caplog.records if hasattr(record, "status")} == logged
    assert "authentication failed for user 'mallory'" in caplog.text  # failed logins are logged whatever it says


def test_access_log_is_errors_unless_set():
    """The default, chosen by measurement: a line per request cost about 18 % of the container's rate (README)."""
    assert read_api_settings({"API_USERNAME": "u", "API_PASSWORD": "p"}).access_log == "errors"
    assert read_api_settings({"API_USERNAME": "u", "API_PASSWORD": "p", "ACCESS_LOG": "ALL"}).access_log == "all"


def test_access_log_must_be_known():
    with pytest.raises(StartupError, match="ACCESS_LOG must be one of all, errors, off"):
        read_api_settings({"API_USERNAME": "u", "API_PASSWORD": "p", "ACCESS_LOG": "some"})


def test_no_log_line_is_lost_by_a_graceful_stop(model_path):
    """Lines are written in batches (logs.BatchingStreamHandler): a SIGTERM must still let every one out."""
    server = api_server(model_path, LOG_LEVEL="INFO", ACCESS_LOG="all")
    try:
        for number in range(200):
            call(f"{server.url}/healthz", {"X-Request-ID": f"line-{number}"})
        server.process.terminate()
        server.process.wait(timeout=15)
        text = server.log_text()
    finally:
        server.stop()
    missing = [number for number in range(200) if f"[line-{number}] GET /healthz 200" not in text]
    assert missing == []
