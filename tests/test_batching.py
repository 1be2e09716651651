"""Adaptive batching (batching.py): concurrent requests share model calls, each gets exactly its own rows back, a lone
client waits for nothing, a failing row fails only its request, a full queue refuses with 503, a stop drains it."""

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import train
from tabserve import batching
from tabserve.batching import Batcher, Overloaded
from tabserve.settings import ApiSettings, read_api_settings
from tests.support import api_server, auth_header, load_artifact, query


@pytest.fixture(scope="module")
def forest(tmp_path_factory):
    """A random forest (100 trees): its predict_proba costs about the same for 1 row as for 16."""
    path = tmp_path_factory.mktemp("forest") / "forest.skops"
    train.main(["--model", "random_forest", "--output", str(path)])
    return path


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    """A calibrated support-vector classifier: no fast path, so every call goes through scikit-learn."""
    path = tmp_path_factory.mktemp("svc") / "svc.skops"
    train.main(["--model", "svc", "--output", str(path)])
    return path


def slow(seconds, poison=None):
    """A predict_proba that takes this long per call, and raises for a row holding the poison value."""
    calls = []

    def predict_proba(rows):
        calls.append(len(rows))
        time.sleep(seconds)
        if poison is not None and (rows == poison).any():
            raise ValueError("the model cannot take this row")
        return np.column_stack([rows[:, 0], -rows[:, 0]])

    return predict_proba, calls


def concurrently(function, arguments, threads=16):
    """function(argument) for each argument from this many threads at once: results or exceptions, in order."""
    def attempt(argument):
        try:
            return function(argument)
        except Exception as err:  # noqa: BLE001 - the test looks at which ones failed
            return err
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(attempt, arguments))


def test_a_lone_request_is_predicted_at_once_with_no_window():
    predict_proba, calls = slow(0.0)
    waits = []
    batcher = Batcher(predict_proba, on_wait=waits.append)
    for value in range(5):
        assert batcher(np.array([[value, 1.0]]))[0].tolist() == [value, -value]
    assert calls == [1] * 5 and max(waits) < 0.001


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    predict_proba, calls = slow(0.02)
    batcher = Batcher(predict_proba)
    rows = [np.array([[float(i), 1.0]] * (1 + i % 3)) for i in range(64)]
    answers = concurrently(batcher, rows)
    for request, answer in zip(rows, answers, strict=True):
        assert answer.tolist() == np.column_stack([request[:, 0], -request[:, 0]]).tolist()
    assert len(calls) < 64 / 2 and sum(calls) == sum(map(len, rows))  # combined, and nothing lost or doubled


def test_a_row_that_makes_the_model_fail_fails_only_its_own_request():
    predict_proba, calls = slow(0.02, poison=-1.0)
    batcher = Batcher(predict_proba)
    rows = [np.array([[-1.0 if i == 5 else float(i), 1.0]]) for i in range(32)]
    answers = concurrently(batcher, rows)
    assert isinstance(answers[5], ValueError)
    assert all(answer.tolist() == [[i, -i]] for i, answer in enumerate(answers) if i != 5)
    assert batcher(np.array([[7.0, 1.0]])).tolist() == [[7.0, -7.0]]  # and it keeps serving


def test_past_the_queue_limit_a_request_is_refused_as_overloaded_and_the_batcher_recovers(monkeypatch):
    monkeypatch.setattr(batching, "MAX_QUEUED", 4)
    predict_proba, _ = slow(0.2)
    refused = []
    batcher = Batcher(predict_proba, on_refused=lambda: refused.append(1))
    answers = concurrently(batcher, [np.array([[float(i), 1.0]]) for i in range(12)], threads=12)
    errors = [answer for answer in answers if isinstance(answer, Overloaded)]
    assert errors and len(errors) == len(refused) and len(errors) <= 12 - 5  # one running, four queued
    assert all(error.retry_after == 1 for error in errors)  # the API answers 503 with Retry-After: 1 (test_api.py)
    assert all(isinstance(answer, np.ndarray) for answer in answers if not isinstance(answer, Overloaded))
    assert batcher(np.array([[3.0, 1.0]])).tolist() == [[3.0, -3.0]]


def test_a_combined_call_holds_at_most_max_batch_rows(monkeypatch):
    monkeypatch.setattr(batching, "MAX_BATCH_ROWS", 10)
    predict_proba, calls = slow(0.02)
    batcher = Batcher(predict_proba)
    concurrently(batcher, [np.array([[1.0, 1.0]] * 4) for _ in range(24)])
    assert max(calls) <= 10 and sum(calls) == 96


# --- The API serving a random forest under the production server ---------------------------------------------


def expected_answers(forest, rows):
    """What /api/v1.0 must answer for these rows: the forest's own predict_proba, rounded as the API rounds."""
    estimator = load_artifact(forest)
    probabilities = np.round(estimator.predict_proba(np.array(rows)), 6)
    return [dict(zip(estimator.classes_, row, strict=True)) for row in probabilities.tolist()]


def test_rows_of_thousands_of_concurrent_requests_never_mix(forest):
    server = api_server(forest, BATCHING="on")
    try:
        generator = np.random.default_rng(7)
        rows = np.round(generator.uniform([4, 2, 1, 0.1], [8, 4.5, 7, 2.5], size=(3000, 4)), 2).tolist()
        expected = expected_answers(forest, rows)

        def ask(index):
            if index % 5 == 0:  # a batch of three rows, checked row by row
                body = json.dumps({"instances": [rows[index], rows[index - 1], rows[index - 2]]}).encode()
                request = urllib.request.Request(f"{server.url}/api/v1.0/predict", data=body, headers={
                    **auth_header(), "Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as response:
                    got = [answer["probabilities"] for answer in json.load(response)["predictions"]]
                return got == [expected[index], expected[index - 1], expected[index - 2]]
            request = urllib.request.Request(f"{server.url}/api/v1.0?{query(tuple(rows[index]))}",
                                             headers=auth_header())
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)["probabilities"] == expected[index]

        results = concurrently(ask, range(len(rows)))
        assert results.count(True) == len(rows), [r for r in results if r is not True][:3]
        metrics = urllib.request.urlopen(urllib.request.Request(f"{server.url}/metrics", headers=auth_header()))
        text = metrics.read().decode()
        calls = float(next(line.split()[-1] for line in text.splitlines()
                           if line.startswith("tabserve_api_batch_rows_count")))
        assert calls < len(rows)  # requests shared model calls
    finally:
        server.stop()


def test_a_graceful_stop_answers_every_queued_request(forest):
    server = api_server(forest, BATCHING="on", WORKERS="1")
    flower = query((5.1, 3.5, 1.4, 0.2))
    answered, failed = [], []

    def ask(_):
        request = urllib.request.Request(f"{server.url}/api/v1.0?{flower}", headers=auth_header())
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answered.append(response.status)
        except (urllib.error.URLError, ConnectionError) as err:
            failed.append(err)

    try:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.05)  # the requests are in flight, most of them queued behind the running call
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
    finally:
        server.stop()
    # Every request that reached the worker before the stop was answered; none got a broken connection.
    assert answered and all(status == 200 for status in answered)
    assert len(answered) + len(failed) == 8 and not [f for f in failed if "reset" in str(f).lower()]


@pytest.mark.parametrize("setting, engine, expected", [("auto", "numpy", "off"), ("auto", "numpy forest", "on"),
                                                        ("auto", "scikit-learn", "on"), ("off", "scikit-learn", "off"),
                                                        ("on", "numpy", "on")])
def test_the_batching_choice_is_made_and_logged_at_start_up(model_path, forest, svc, caplog, setting, engine,
                                                            expected):
    import api
    path = {"numpy": model_path, "numpy forest": forest, "scikit-learn": svc}[engine]
    app_settings = ApiSettings(username="u", password="p", model_path=path, batching=setting)
    caplog.set_level("INFO", logger="tabserve.serving")
    api.create_app(app_settings)
    assert f"adaptive batching {expected} (BATCHING={setting}, predictions by {engine})" in caplog.text


def test_a_bad_batching_setting_stops_the_api_with_one_line():
    import api
    with pytest.raises(api.StartupError, match="BATCHING must be one of auto, on, off, got 'maybe'"):
        read_api_settings({"API_USERNAME": "u", "API_PASSWORD": "p", "BATCHING": "maybe"})


def test_the_forest_fast_path_answers_what_scikit_learn_answers(forest):
    from tabserve import model
    loaded = model.load_model(forest)
    assert loaded.engine == "numpy forest"
    rows = np.random.default_rng(3).uniform(0, 10, size=(500, 4))
    assert np.abs(loaded.compute(rows) - load_artifact(forest).predict_proba(rows)).max() <= 1e-9
