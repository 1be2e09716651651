"""Watching the model: the card's reference distributions, drift on live traffic (GET /api/v1.0/monitoring and the
metrics), live accuracy from feedback (POST /api/v1.0/feedback) and the prediction log (PREDICTION_LOG)."""

import json
import math
import shutil
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import webtest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

import api
import train
import web
from tabserve import monitoring
from tabserve.settings import ApiSettings, WebSettings
from tests.support import (
    FEATURES,
    FLOWERS,
    PASSWORD,
    USERNAME,
    api_server,
    auth_header,
    query,
    write_homes_csv,
    write_penguins_csv,
)

AUTH = auth_header()
INCH = 2.54  # cm: the drifted traffic gives the petal width in inches, as a client with a bug might


def card_of(path):
    return json.loads(path.with_suffix(".json").read_text())


def client_of(path, **settings):
    client = webtest.TestApp(api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=path,
                                                        **settings)))
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    return client


def call(url, body=None):
    """(status, JSON answer) of an authenticated GET, or a POST of a JSON body."""
    headers = {**AUTH, **({"Content-Type": "application/json"} if body is not None else {})}
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.load(err)


def bin_of(value, edges):
    """A number's bin as the card defines them: (-inf, e0], (e0, e1], ..., (e_last, +inf)."""
    return sum(value > edge for edge in edges)


def independent_psi(reference, counts):
    """PSI as the docs define it, written here again: an empty share counts as 0.0001."""
    total = sum(counts)
    live = [max(count / total, 0.0001) for count in counts]
    return sum((lv - max(rf, 0.0001)) * math.log(lv / max(rf, 0.0001)) for rf, lv in zip(reference, live, strict=True))


# --- The reference distributions in the card ------------------------------------------------------------------------


def test_the_card_holds_the_training_deciles_and_the_held_out_predictions_shares(model_path):
    card = card_of(model_path)
    iris = load_iris()
    X_train, _, _, y_test = train_test_split(iris.data, iris.target, test_size=0.25, stratify=iris.target,
                                             random_state=42)  # the split train.py makes (its seed, its size)
    reference = card["distributions"]
    assert reference["rows"] == len(X_train)
    assert [entry["name"] for entry in reference["inputs"]] == list(FEATURES)
    for column, entry in enumerate(reference["inputs"]):
        values = X_train[:, column]
        deciles = np.unique(np.round(np.quantile(values, np.linspace(0.1, 0.9, 9)), 6))
        assert entry["edges"] == pytest.approx(deciles.tolist(), abs=1e-6)
        counts = [sum(bin_of(v, entry["edges"]) == b for v in values) for b in range(len(entry["edges"]) + 1)]
        assert entry["shares"] == pytest.approx([c / len(values) for c in counts], abs=1e-6)
    output = reference["output"]
    assert output["rows"] == len(y_test)
    assert sum(output["shares"]) == pytest.approx(1, abs=1e-5)
    assert len(output["shares"]) == len(card["classes"])


def test_a_table_with_categories_and_holes_has_a_bin_for_each_category_and_for_missing(tmp_path):
    path = tmp_path / "penguins.skops"
    train.main(["--csv", str(write_penguins_csv(tmp_path / "penguins.csv")), "--target", "species",
                "--output", str(path)])
    card = card_of(path)
    inputs = {item["name"]: item for item in card["inputs"]}
    for entry in card["distributions"]["inputs"]:
        item = inputs[entry["name"]]
        assert sum(entry["shares"]) == pytest.approx(1, abs=1e-5), entry["name"]
        bins = len(item["categories"]) if item["kind"] == "category" else len(entry["edges"]) + 1
        assert len(entry["shares"]) == bins + (1 if item.get("optional") else 0), entry["name"]
    sex = next(entry for entry in card["distributions"]["inputs"] if entry["name"] == "sex")
    assert 0 < sex["shares"][-1] < 0.1  # 11 of 344 rows have no sex: the missing bin's share


# --- Drift on live traffic, through two server workers -------------------------------------------------------------


def iris_rows(unit=1.0):
    """Iris's 150 flowers, the petal width divided by unit."""
    return [(a, b, c, round(d / unit, 2)) for a, b, c, d in load_iris().data.tolist()]


def send(url, rows):
    """Each row asked once: half one by one (GET, concurrently, over both workers), half in batches of 25 (POST).
    The predicted classes, in the order of rows."""
    half = len(rows) // 2

    def ask_one(row):
        status, answer = call(f"{url}/api/v1.0?{query(tuple(float(v) for v in row))}")
        assert status == 200, answer
        return [answer["prediction"]]

    def ask_batch(start):
        status, answer = call(f"{url}/api/v1.0/predict", {"instances": [list(r) for r in rows[start:start + 25]]})
        assert status == 200, answer
        return [item["prediction"] for item in answer["predictions"]]

    with ThreadPoolExecutor(8) as pool:  # a new connection per request: both workers get their share
        parts = list(pool.map(ask_one, rows[:half])) + list(pool.map(ask_batch, range(half, len(rows), 25)))
    return [name for part in parts for name in part]


def report(url, expected_count, options=""):
    """The monitoring answer once it counts expected_count predictions (each worker adds its counts every second)."""
    deadline = time.monotonic() + 10
    while True:
        status, answer = call(f"{url}/api/v1.0/monitoring{options}")
        assert status == 200, answer
        if answer["output"]["count"] >= expected_count or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def check_drift(answer, card, rows, predictions):
    """Every input's and the output's count, bins and PSI equal to those computed here from the rows sent."""
    for column, entry in enumerate(card["distributions"]["inputs"]):
        counts = [0] * len(entry["shares"])
        for row in rows:
            counts[bin_of(row[column], entry["edges"])] += 1
        judged = answer["inputs"][entry["name"]]
        assert judged["count"] == len(rows)
        assert [b["count"] for b in judged["bins"]] == counts, entry["name"]
        assert [b["reference"] for b in judged["bins"]] == entry["shares"]
        assert judged["psi"] == pytest.approx(independent_psi(entry["shares"], counts), abs=1e-4), entry["name"]
    counts = [predictions.count(name) for name in card["classes"]]
    output = answer["output"]
    assert [b["count"] for b in output["bins"]] == counts
    assert output["psi"] == pytest.approx(independent_psi(card["distributions"]["output"]["shares"], counts),
                                          abs=1e-4)


def verdicts(answer):
    return {name: judged["verdict"] for name, judged in answer["inputs"].items()}, answer["output"]["verdict"]


def test_drift_is_stable_on_training_like_traffic_and_shows_on_the_input_that_moved(model_path):
    card = card_of(model_path)
    # DRIFT_WINDOW of 8 s, snapshots a second apart: after 10 idle seconds the shifted traffic is alone in the last
    # 8 seconds while it takes less than 8 to send and count.
    server = api_server(model_path, DRIFT_MIN_COUNT="200", DRIFT_WINDOW="8")
    try:
        rows = iris_rows()
        sent = send(server.url, rows[:100])
        answer = report(server.url, 100)
        assert set(verdicts(answer)[0].values()) == {"too few"}  # 100 values: below DRIFT_MIN_COUNT
        sent += send(server.url, rows[100:] + rows[:100])
        answer = report(server.url, 250)
        check_drift(answer, card, rows + rows[:100], sent)
        assert verdicts(answer) == ({name: "stable" for name in FEATURES}, "stable")
        time.sleep(10)
        shifted = iris_rows(INCH)
        moved = send(server.url, shifted + shifted[:100])
        window = report(server.url, 250, "?_window=8")
        assert window["window"]["seconds"] == 8
        check_drift(window, card, shifted + shifted[:100], moved)
        inputs, output = verdicts(window)
        assert inputs == {**{name: "stable" for name in FEATURES}, "petal_width": "drifted"}
        assert output == "drifted"
        since_start = report(server.url, 500)
        assert since_start["output"]["count"] == 500 and since_start["window"] is None
        assert since_start["traffic"] == {card["version"]: 500}
        metrics = text_string_to_metric_families(urllib.request.urlopen(urllib.request.Request(
            f"{server.url}/metrics", headers=AUTH)).read().decode())
    finally:
        server.stop()
    gauges = {(sample.name, sample.labels.get("input"), sample.labels.get("span")): sample.value
              for family in metrics for sample in family.samples if sample.name.endswith("_drift_psi")}
    for name in FEATURES:
        assert gauges["tabserve_model_input_drift_psi", name, "since_start"] == \
            pytest.approx(since_start["inputs"][name]["psi"], abs=1e-4)
    assert gauges["tabserve_model_output_drift_psi", None, "since_start"] == \
        pytest.approx(since_start["output"]["psi"], abs=1e-4)


def test_the_counts_are_added_once_enough_requests_wait_not_only_once_a_second(model_path, monkeypatch):
    """Binning a second's requests at once held the GIL 3-6 ms every second at 4,000 requests/s, a stall for the
    request that came meanwhile: the worker's thread bins them once FLUSH_ROWS wait."""
    monkeypatch.setattr(monitoring, "FLUSH_SECONDS", 3600)
    ours, binned, create, flush = [], [], monitoring.Monitor.__init__, monitoring.Monitor.flush

    def watched_create(monitor, *args):
        ours.append(monitor)
        create(monitor, *args)

    def watched_flush(monitor):  # what this app's thread finds waiting each time it bins: other tests' threads bin too
        if monitor in ours and threading.current_thread().name == "monitoring":
            binned.append(sum(counts.kept for counts in monitor.counts.values() if counts))
        flush(monitor)

    monkeypatch.setattr(monitoring.Monitor, "__init__", watched_create)
    monkeypatch.setattr(monitoring.Monitor, "flush", watched_flush)
    client = client_of(model_path)
    for _ in range(monitoring.FLUSH_ROWS - 1):  # one row each
        client.get(f"/api/v1.0?{query(FLOWERS['setosa'])}")
    time.sleep(0.5)
    assert len(binned) == 1  # the thread's first look, at start; then it waits while fewer wait than the bound
    client.get(f"/api/v1.0?{query(FLOWERS['setosa'])}")
    deadline = time.monotonic() + 10
    while len(binned) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(binned) == 2 and sum(binned) == monitoring.FLUSH_ROWS  # the first look may have found the first


def test_requests_that_find_the_kept_rows_full_are_counted_at_once(model_path, monkeypatch):
    """Small requests' rows wait in a buffer of FLUSH_ROWS + SMALL_REQUEST rows for the worker's thread; when the
    thread is late (here it never runs), a request that finds no room is binned on its own: none is left out."""
    monkeypatch.setattr(monitoring.Monitor, "run", lambda monitor: None)
    client = client_of(model_path)
    batch = [{name: FLOWERS["virginica"][index] for index, name in enumerate(FEATURES)}] * monitoring.SMALL_REQUEST
    for _ in range(2):
        client.post_json("/api/v1.0/predict", {"instances": batch})
    for _ in range(5):
        client.get(f"/api/v1.0?{query(FLOWERS['setosa'])}")
    report = client.get("/api/v1.0/monitoring").json
    bins = {row["label"]: row["count"] for row in report["output"]["bins"]}
    assert bins == {"setosa": 5, "versicolor": 0, "virginica": 2 * monitoring.SMALL_REQUEST}


@pytest.mark.parametrize("shared", [True, False], ids=["files", "memory"])
def test_snapshots_answer_the_latest_at_or_before_a_time_and_forget_what_no_window_needs(tmp_path, monkeypatch,
                                                                                        shared):
    """The recent window's snapshots: a file each under the server (an hour of them in one file, read and written
    whole at every snapshot, held a worker's GIL 100 ms), kept as long as a window can ask for them."""
    if shared:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    else:
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    snapshots = monitoring.Snapshots(keep_seconds=100)
    key = ("tabserve_api_predictions_total", (("version", "1"),))
    assert snapshots.at(1000.0) is None
    for when in range(1000, 1250, 10):
        snapshots.add(float(when), {key: float(when - 1000)})
    assert snapshots.at(1185.5) == (1180.0, {key: 180.0})
    assert snapshots.at(1240.0) == (1240.0, {key: 240.0})
    assert snapshots.at(1145.0) == (1140.0, {key: 140.0})  # 1240 - 100 is kept, and all after it
    assert snapshots.at(1139.0) is None  # older ones are gone
    if shared:
        assert len(list(tmp_path.glob("monitoring-snapshot-*.json"))) == 11 and not list(tmp_path.glob("*.tmp"))


def test_categories_and_missing_values_are_counted_in_their_bins(tmp_path):
    path = tmp_path / "penguins.skops"
    table = write_penguins_csv(tmp_path / "penguins.csv")
    train.main(["--csv", str(table), "--target", "species", "--output", str(path)])
    client = client_of(path, drift_min_count=10)
    header, *cells = [line.split(",") for line in table.read_text().splitlines()]
    features = [name for name in header if name != "species"]
    rows = [{name: (None if value in ("NA", "") else float(value) if name not in ("island", "sex") else value)
             for name, value in zip(header, line, strict=True) if name != "species"} for line in cells]
    client.post_json("/api/v1.0/predict", {"instances": rows[:300]})  # binned at once: a large request
    client.post_json("/api/v1.0/predict", {"instances": rows[300:]})  # binned later, with the other small ones
    answer = client.get("/api/v1.0/monitoring").json
    islands = answer["inputs"]["island"]
    assert {b["label"]: b["count"] for b in islands["bins"]} == \
        {name: sum(row["island"] == name for row in rows) for name in {row["island"] for row in rows}}
    sex = answer["inputs"]["sex"]["bins"]
    assert sex[-1]["label"] == "not given" and sex[-1]["count"] == sum(row["sex"] is None for row in rows) > 0
    mass = answer["inputs"]["body_mass_g"]["bins"]
    assert mass[-1]["count"] == sum(row["body_mass_g"] is None for row in rows) > 0
    assert set(answer["inputs"]) == set(features)


def test_the_monitoring_options_are_checked(api_client, anonymous_api_client):
    assert anonymous_api_client.get("/api/v1.0/monitoring", status=401)
    for bad in ("0", "3601", "1.5", "abc"):
        answer = api_client.get(f"/api/v1.0/monitoring?_window={bad}", status=400).json
        assert [error["field"] for error in answer["errors"]] == ["_window"]
    assert "sepal_length" in api_client.get("/api/v1.0/monitoring?sepal_length=1", status=400).json["detail"]
    assert api_client.get("/api/v1.0/monitoring?_version=nope", status=404)
    answer = api_client.get("/api/v1.0/monitoring?_window=60").json
    # Snapshots are DRIFT_WINDOW / 60 = 60 s apart: the one the window starts from is up to that much older.
    assert answer["window"]["seconds"] == 60 and 0 <= answer["window"]["covered"] <= 60 + 60


def test_a_card_from_before_the_distributions_still_reports_feedback(model_path, tmp_path):
    path = tmp_path / "old.skops"
    shutil.copy(model_path, path)
    card = card_of(model_path)
    del card["distributions"]
    path.with_suffix(".json").write_text(json.dumps(card))
    client = client_of(path)
    client.get(f"/api/v1.0?{query((5.1, 3.5, 1.4, 0.2))}")
    client.post_json("/api/v1.0/feedback", {"prediction": "setosa", "truth": "setosa"})
    answer = client.get("/api/v1.0/monitoring").json
    assert "train it again" in answer["drift"] and "inputs" not in answer
    assert answer["feedback"]["count"] == 1 and answer["feedback"]["accuracy"] == 1


# --- Feedback --------------------------------------------------------------------------------------------------------

PAIRS = [("setosa", "setosa")] * 5 + [("versicolor", "versicolor")] * 3 + [("versicolor", "virginica")] * 2 + \
    [("virginica", "virginica")] * 4 + [("virginica", "versicolor")]


def test_feedback_gives_the_exact_accuracy_recall_and_confusion(model_path):
    client = client_of(model_path)
    items = [{"prediction": p, "truth": t, "request_id": f"r{i}"} for i, (p, t) in enumerate(PAIRS)]
    assert client.post_json("/api/v1.0/feedback", items[:-1]).json == {"received": 14}
    client.post_json("/api/v1.0/feedback", items[-1])  # one object alone
    feedback = client.get("/api/v1.0/monitoring").json["feedback"]
    assert feedback["count"] == 15
    assert feedback["accuracy"] == round(12 / 15, 4)
    assert feedback["recall"] == {"setosa": 1.0, "versicolor": 0.75, "virginica": round(4 / 6, 4)}
    assert feedback["confusion"]["versicolor"] == {"setosa": 0, "versicolor": 3, "virginica": 2}
    assert feedback["confusion"]["virginica"] == {"setosa": 0, "versicolor": 1, "virginica": 4}
    assert feedback["training"]["accuracy"] == card_of(model_path)["metrics"]["test_accuracy"]


def test_bad_feedback_is_refused_by_field_and_none_of_it_counted(model_path):
    client = client_of(model_path)
    items = [{"prediction": "setosa", "truth": "setosa"}, {"prediction": "rose", "truth": "setosa", "colour": 1},
             {"truth": "setosa"}, {"prediction": "setosa", "truth": "setosa", "version": ""},
             {"prediction": "setosa", "truth": "setosa", "interval": {"low": 1, "high": 2}}, "setosa"]
    errors = client.post_json("/api/v1.0/feedback", items, status=400).json["errors"]
    assert [error["field"] for error in errors] == ["[1].colour", "[1].prediction", "[2].prediction", "[3].version",
                                                    "[4].interval", "[5]"]
    unknown = client.post_json("/api/v1.0/feedback", [items[0], {**items[0], "version": "9"}], status=404).json
    assert unknown["detail"].startswith("[1].version: model 'iris-classifier' has no version '9'")
    assert client.post("/api/v1.0/feedback", "prediction=setosa", status=415)
    assert client.post_json("/api/v1.0/feedback", [], status=400)
    assert client.post_json("/api/v1.0/feedback", [items[0]] * 10_001, status=413)
    assert client.get("/api/v1.0/monitoring").json["feedback"]["count"] == 0
    assert webtest.TestApp(client.app).post_json("/api/v1.0/feedback", items[0], status=401)


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("homes")
    path = folder / "homes.skops"
    train.main(["--csv", str(write_homes_csv(folder / "homes.csv")), "--target", "Price (k€)", "--drop", "ID",
                "--output", str(path)])
    return path


def test_a_regressors_feedback_gives_the_exact_mae_rmse_and_coverage(homes):
    client = client_of(homes)
    items = [{"prediction": 300.0, "truth": 310.0, "interval": {"low": 280.0, "high": 320.0}},
             {"prediction": 200.0, "truth": 150.0, "interval": {"low": 180.0, "high": 220.0}},
             {"prediction": 250.0, "truth": 250.5, "interval": {"low": 230.0, "high": 270.0}},
             {"prediction": 100.0, "truth": 96.0}]
    client.post_json("/api/v1.0/feedback", items)
    feedback = client.get("/api/v1.0/monitoring").json["feedback"]
    errors = [10.0, -50.0, 0.5, -4.0]
    assert feedback["count"] == 4
    assert feedback["mae"] == pytest.approx(sum(map(abs, errors)) / 4, abs=1e-6)
    assert feedback["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 4), abs=1e-6)
    assert feedback["with_interval"] == 3 and feedback["coverage"] == round(2 / 3, 4)
    assert feedback["level"] == card_of(homes)["interval"]["level"]
    refused = client.post_json("/api/v1.0/feedback", [{"prediction": "a", "truth": None},
                                                      {"prediction": 1, "truth": 2, "interval": {"low": 3, "high": 1}}],
                               status=400).json["errors"]
    assert [error["field"] for error in refused] == ["[0].prediction", "[0].truth", "[1].interval"]


# --- The prediction log ----------------------------------------------------------------------------------------------


def logged_lines(server):
    time.sleep(0.5)  # lines are written in batches, at most 0.1 s after they were logged
    return [json.loads(line) for line in server.log_text().splitlines() if line.startswith('{"time"')]


def test_the_prediction_log_has_a_line_per_row_matching_the_answers_and_no_secret(model_path):
    server = api_server(model_path, PREDICTION_LOG="stdout")
    try:
        flowers = [(5.1, 3.5, 1.4, 0.2), (6.9, 3.1, 5.4, 2.1), (1.0, 1.0, 1.0, 1.0)]
        request = urllib.request.Request(f"{server.url}/api/v1.0?{query(flowers[0])}",
                                         headers={**AUTH, "X-Request-ID": "log-1"})
        with urllib.request.urlopen(request) as response:
            single = json.load(response)
        _, batch = call(f"{server.url}/api/v1.0/predict", {"instances": [list(f) for f in flowers[1:]]})
        call(f"{server.url}/api/v1.0/feedback", {"prediction": "setosa", "truth": "setosa"})
        lines = logged_lines(server)
        text = server.log_text()
    finally:
        server.stop()
    predictions = [line for line in lines if "inputs" in line]
    assert len(predictions) == 3
    assert predictions[0]["request_id"] == "log-1"
    assert all(line["user"] == USERNAME and line["model"] == single["model"] for line in lines)
    for line, flower, answer in zip(predictions, flowers, [single, *batch["predictions"]], strict=True):
        assert line["inputs"] == dict(zip(FEATURES, flower, strict=True))
        assert (line["prediction"], line["probabilities"], line["warnings"]) == \
            (answer["prediction"], answer["probabilities"], answer["warnings"])
    assert [line["feedback"] for line in lines if "feedback" in line] == [{"prediction": "setosa", "truth": "setosa"}]
    assert PASSWORD not in text and "Basic " not in text


@pytest.mark.parametrize("sample", ["0", "0.3"])
def test_the_prediction_log_keeps_the_share_it_is_told(model_path, sample):
    server = api_server(model_path, PREDICTION_LOG="stdout", PREDICTION_LOG_SAMPLE=sample)
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: call(f"{server.url}/api/v1.0?{query((5.1, 3.5, 1.4, 0.2))}"), range(400)))
        kept = len(logged_lines(server))
    finally:
        server.stop()
    # 0.3 of 400: 120 expected, 9 the standard deviation; 70 to 170 is more than five of them either side.
    assert kept == 0 if sample == "0" else 70 <= kept <= 170


# --- The web page (in Chromium: tests/test_browser.py) ---------------------------------------------------------------


def web_client_of(api_url, credentials=(USERNAME, PASSWORD)):
    client = webtest.TestApp(web.create_app(WebSettings(api_url=api_url, username=USERNAME, password=PASSWORD)))
    if credentials:
        client.authorization = ("Basic", credentials)
    return client


def test_the_page_forwards_the_window_and_the_version_and_shows_the_apis_refusals(live_api, model_path):
    client = web_client_of(live_api)
    page = client.get("/monitoring?window=600")
    assert page.headers["Cache-Control"] == "no-store"
    assert "over the last 10 minutes" in page.text and 'aria-current="page">The last hour' not in page.text
    assert "since the service started" in client.get("/monitoring").text
    version = card_of(model_path)["version"]
    assert f"version {version}" in client.get(f"/monitoring?version={version}").text
    assert "has no version &#039;nope&#039;" in client.get("/monitoring?version=nope", status=404).text
    assert "window must be a whole number of seconds" in client.get("/monitoring?window=0", status=400).text
    assert web_client_of(live_api, (USERNAME, "wrong")).get("/monitoring", status=401)
    assert web_client_of(live_api, None).get("/monitoring", status=401).headers["WWW-Authenticate"]


def test_the_page_says_when_the_api_is_unavailable(closed_port_url):
    page = web_client_of(closed_port_url).get("/monitoring?window=60", status=503)
    assert 'href="/monitoring?window=60"' in page.text
