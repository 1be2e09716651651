"""The contract for models that predict a quantity: diabetes (scikit-learn's bundled table) and a CSV of homes with
numbers and a category that the test writes itself. Every answer carries a split conformal interval; every part
follows the model's task: /api/v1.0, its batch and explanations, /v2 (with tritonclient), the served OpenAPI document
(fuzzed), the metrics and the web page."""

import csv
import json

import numpy as np
import pytest
import tritonclient.http as triton
import webtest
from sklearn.datasets import load_diabetes
from tritonclient.http.auth import BasicAuth

import api
import train
import web
from tabserve import model
from tabserve.settings import ApiSettings, WebSettings
from tests.support import (
    HOMES_FEATURES,
    PASSWORD,
    USERNAME,
    api_server,
    homes,
    load_artifact,
    serve_in_thread,
    write_homes_csv,
)
from tests.test_fuzz import AUTHORIZATION, run_schemathesis

MODELS = ("diabetes", "homes")


@pytest.fixture(scope="module")
def regression_files(tmp_path_factory):
    """name -> artifact: diabetes (ridge, the default) and the homes CSV, trained as the README says."""
    folder = tmp_path_factory.mktemp("regressors")
    table = write_homes_csv(folder / "homes.csv")
    commands = {"diabetes": ["--dataset", "diabetes"],
                "homes": ["--csv", str(table), "--target", "Price (k€)", "--drop", "ID"]}
    for name, arguments in commands.items():
        train.main([*arguments, "--output", str(folder / f"{name}.skops")])
    return {name: folder / f"{name}.skops" for name in commands}


def table_rows(name, files):
    """(rows as {feature: value}, targets) of a model's whole table, read here without train.py."""
    if name == "diabetes":
        data = load_diabetes(scaled=False)
        features = json.loads(files[name].with_suffix(".json").read_text())["features"]
        return [dict(zip(features, map(float, row), strict=True)) for row in data.data], list(data.target)
    with open(files[name].with_name("homes.csv"), encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    rows = [{"area_m2": float(r["Area (m2)"]), "rooms": float(r["Rooms"]), "district": r["District"]} for r in records]
    return rows, [float(record["Price (k€)"]) for record in records]


def api_of(files, name):
    """(card, WebTest client of the API) for this model."""
    client = webtest.TestApp(api.create_app(ApiSettings(username=USERNAME, password=PASSWORD,
                                                        model_path=files[name])))
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    return json.loads(files[name].with_suffix(".json").read_text()), client


@pytest.fixture(scope="module", params=MODELS)
def served(request, regression_files):
    return (request.param, *api_of(regression_files, request.param))


def v2_request(card, rows):
    inputs = card["inputs"]
    if all(item["kind"] == "number" for item in inputs):
        return {"inputs": [{"name": "input-0", "shape": [len(rows), len(inputs)], "datatype": "FP64",
                            "data": [[row[item["name"]] for item in inputs] for row in rows]}]}
    return {"inputs": [{"name": item["name"], "shape": [len(rows)],
                        "datatype": "BYTES" if item["kind"] == "category" else "FP64",
                        "data": [row[item["name"]] for row in rows]} for item in inputs]}


def test_every_row_gets_one_answer_with_its_interval_from_get_the_batch_and_v2(served, regression_files):
    name, card, client = served
    rows, _ = table_rows(name, regression_files)
    half, level = card["interval"]["half_width"], card["interval"]["level"]
    batch = client.post_json("/api/v1.0/predict", {"instances": rows}).json["predictions"]
    assert client.post_json("/api/v1.0/predict", {"instances": [list(r.values()) for r in rows]}).json[
        "predictions"] == batch
    outputs = {o["name"]: o for o in client.post_json(f"/v2/models/{card['name']}/infer",
                                                      v2_request(card, rows)).json["outputs"]}
    assert [outputs["predict"]["shape"], outputs["interval"]["shape"]] == [[len(rows), 1], [len(rows), 2]]
    assert "predict_proba" not in outputs
    intervals = np.array(outputs["interval"]["data"]).reshape(-1, 2)
    for index, row in enumerate(rows[::7]):
        index *= 7
        answer = client.get("/api/v1.0", params=row).json
        assert set(answer) == {"prediction", "interval", "features", "warnings", "model"}
        assert {key: answer[key] for key in ("prediction", "interval", "warnings")} == batch[index]
        assert answer["interval"] == {"low": pytest.approx(answer["prediction"] - half),
                                      "high": pytest.approx(answer["prediction"] + half), "level": level}
        assert outputs["predict"]["data"][index] == answer["prediction"]
        assert intervals[index].tolist() == [answer["interval"]["low"], answer["interval"]["high"]]


def test_the_model_predicts_its_own_table_better_than_the_mean(served, regression_files):
    name, _, client = served
    rows, targets = table_rows(name, regression_files)
    predicted = [a["prediction"] for a in client.post_json("/api/v1.0/predict", {"instances": rows}).json[
        "predictions"]]
    assert np.mean(np.abs(np.array(predicted) - targets)) < 0.8 * np.mean(np.abs(np.mean(targets) - targets))


def test_the_model_endpoint_says_the_task_and_describes_the_target(served):
    name, card, client = served
    description = client.get("/api/v1.0/model").json
    assert description["task"] == "regression" and description["classes"] == []
    target = description["target"]
    assert target["label"] == {"diabetes": "disease progression", "homes": "Price (k€)"}[name]
    assert target["training_range"]["min"] < target["quantiles"]["p50"] < target["training_range"]["max"]
    assert description["interval"]["level"] == 0.9 and description["interval"]["half_width"] > 0
    metrics = description["metrics"]
    assert metrics["test_mae"] < metrics["baseline_mae"] and metrics["test_r2"] > 0.3
    assert 0.75 <= metrics["interval_coverage"] <= 1 and metrics["interval_width"] == pytest.approx(
        2 * description["interval"]["half_width"], rel=1e-5)
    examples = [float(key) for key in description["examples"]]
    assert len(examples) == 3 and examples == sorted(examples)  # typical rows across the target's range
    for row in description["examples"].values():
        client.get("/api/v1.0", params=row)  # each example is a valid question


def test_a_prediction_beyond_the_targets_training_range_is_warned(regression_files):
    card, client = api_of(regression_files, "homes")
    answer = client.get("/api/v1.0", params={"area_m2": "2000", "rooms": "3", "district": "north"}).json
    top = card["target"]["training_range"]["max"]
    assert answer["prediction"] > top
    assert answer["warnings"][-1] == (f"The prediction {answer['prediction']:g} lies outside the "
                                      f"{card['target']['training_range']['min']:g} to {top:g} of Price (k€) seen in "
                                      "training.")
    assert answer["warnings"][0].startswith("area_m2 2000 lies outside")


def test_explanations_are_what_anyone_recomputes_in_the_targets_unit(served, regression_files):
    name, card, client = served
    rows, targets = table_rows(name, regression_files)
    estimator = load_artifact(regression_files[name])
    baselines = card["explanation"]["baselines"]
    kinds = [item["kind"] for item in card["inputs"]]
    for x in rows[::41]:
        answer = client.get("/api/v1.0/explain", params=x).json
        variants = [x] + [{**x, feature: baselines[feature]} for feature in card["features"]]
        matrix = np.array([[v[f] for f in card["features"]] for v in variants],
                          dtype=object if "category" in kinds else float)
        values = estimator.predict(matrix)
        for index, feature in enumerate(card["features"]):
            assert answer["contributions"][feature] == pytest.approx(values[0] - values[index + 1], abs=1e-5)
        assert set(answer["neighbours"][0]) == {"features", "target", "distance"}
        nearest = answer["neighbours"][0]
        assert targets[rows.index(nearest["features"])] == pytest.approx(nearest["target"])


def test_v2_metadata_lists_a_regressors_outputs(served):
    _, card, client = served
    outputs = client.get(f"/v2/models/{card['name']}").json["outputs"]
    assert [(o["name"], o["datatype"], o["shape"]) for o in outputs] == [
        ("predict", "FP64", [-1, 1]), ("interval", "FP64", [-1, 2]),
        ("out_of_range", "BOOL", [-1, len(card["features"])]), ("contributions", "FP64", [-1, len(card["features"])])]
    error = client.post_json(f"/v2/models/{card['name']}/infer", {**v2_request(card, [card["examples"][
        next(iter(card["examples"]))]]), "outputs": [{"name": "predict_proba"}]}, status=400).json["error"]
    assert error == 'outputs[0].name must be one of predict, interval, out_of_range, contributions, got "predict_proba"'


def test_regressor_predictions_are_counted_without_a_class(regression_files):
    card, client = api_of(regression_files, "diabetes")
    rows = list(card["examples"].values())
    client.post_json("/api/v1.0/predict", {"instances": rows})
    client.get("/api/v1.0", params=rows[0])
    # Prometheus: no class
    assert f'tabserve_api_predictions_total{{class="",version="{card["version"]}"}} 4.0' in client.get("/metrics").text


@pytest.mark.parametrize("algorithm, engine", [("ridge", "numpy"), ("random_forest", "numpy forest"),
                                               ("gradient_boosting", "scikit-learn")])
def test_the_fast_paths_cover_their_regressors_exactly(tmp_path, algorithm, engine):
    train.main(["--dataset", "diabetes", "--model", algorithm, "--output", str(tmp_path / "d.skops")])
    loaded = model.load_model(tmp_path / "d.skops")
    assert loaded.engine == engine
    rows = np.random.default_rng(5).uniform(0, 300, size=(500, 10))
    expected = loaded.estimator.predict(rows)
    assert np.abs(loaded.compute(rows) - expected).max() <= 1e-9 * np.abs(expected).max()


# --- The promise of the interval, on rows the model never saw -------------------------------------------------


@pytest.mark.parametrize("level", [0.9, 0.8])
def test_the_interval_holds_the_truth_as_often_as_it_promises_on_new_rows(tmp_path, level):
    """Train on 1,200 homes, ask for 4,000 others: the share whose price lies in its interval is the level, within
    a few points (split conformal promises at least the level, on average; 400 held-out rows calibrate it)."""
    write_homes_csv(tmp_path / "train.csv", rows=1200, seed=1)
    train.main(["--csv", str(tmp_path / "train.csv"), "--target", "Price (k€)", "--drop", "ID", "--interval",
                str(level), "--output", str(tmp_path / "homes.skops")])
    card, client = api_of({"homes": tmp_path / "homes.skops"}, "homes")
    new = homes(4000, seed=2)
    answers = client.post_json("/api/v1.0/predict", {"instances": [
        {"area_m2": a, "rooms": r, "district": d} for a, r, d, _ in new]}).json["predictions"]
    covered = np.mean([a["interval"]["low"] <= price <= a["interval"]["high"] for a, (*_, price) in
                       zip(answers, new, strict=True)])
    assert abs(covered - level) <= 0.04, covered
    assert abs(card["metrics"]["interval_coverage"] - level) <= 0.06  # what train.py reported of it


# --- tritonclient and Schemathesis against the served regressor ---------------------------------------------


@pytest.fixture(scope="module")
def homes_api(regression_files):
    server = api_server(regression_files["homes"])
    yield server
    server.stop()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "JSON"])
def test_tritonclient_reads_the_prediction_and_its_interval(homes_api, regression_files, binary):
    rows, _ = table_rows("homes", regression_files)
    card, client = api_of(regression_files, "homes")
    expected = client.post_json("/api/v1.0/predict", {"instances": rows}).json["predictions"]
    triton_client = triton.InferenceServerClient(url=f"127.0.0.1:{homes_api.port}")
    triton_client.register_plugin(BasicAuth(USERNAME, PASSWORD))
    try:
        tensors = []
        for feature in HOMES_FEATURES:
            numeric = feature != "district"
            values = np.array([row[feature] for row in rows], dtype=np.float64 if numeric else object)
            tensor = triton.InferInput(feature, [len(rows)], "FP64" if numeric else "BYTES")
            tensor.set_data_from_numpy(values, binary_data=binary)
            tensors.append(tensor)
        outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("predict", "interval")]
        result = triton_client.infer(card["name"], tensors, outputs=outputs)
        assert result.as_numpy("predict")[:, 0].tolist() == [answer["prediction"] for answer in expected]
        assert result.as_numpy("interval").tolist() == [[a["interval"]["low"], a["interval"]["high"]]
                                                        for a in expected]
    finally:
        triton_client.close()


def test_schemathesis_keeps_the_served_document_of_a_regressor(homes_api, regression_files, tmp_path):
    card = json.loads(regression_files["homes"].with_suffix(".json").read_text())
    run_schemathesis(f"{homes_api.url}/openapi.json", homes_api.url, 1,
                     {"MODEL_NAME": card["name"], "MODEL_VERSION": card["version"]}, tmp_path,
                     "-H", f"Authorization: {AUTHORIZATION}")


def test_the_served_document_describes_a_regressors_answer(served):
    _, card, client = served
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    assert schemas["Answer"]["required"] == ["prediction", "interval", "warnings"]
    assert schemas["Answer"]["properties"]["interval"]["properties"]["level"] == {"const": 0.9}
    assert schemas["OutputTensor"]["properties"]["name"]["enum"] == ["predict", "interval", "out_of_range",
                                                                     "contributions"]


# --- The web page for a quantity ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(served):
    name, card, client = served
    with serve_in_thread(client.app) as url:
        yield name, card, webtest.TestApp(web.create_app(WebSettings(api_url=url, username=USERNAME,
                                                                     password=PASSWORD)))


def test_the_form_offers_rows_across_the_targets_range(site):
    _, card, client = site
    page = client.get("/")
    assert page.html.find("h1").text == card["texts"]["question"]
    links = page.html.select(".examples a")
    assert [a.text for a in links] == list(card["examples"])
    assert " ".join(page.html.select_one(".examples").text.split()).startswith(
        f"Or start from a training row whose {card['target']['label']} is {links[0].text},")


def test_the_result_page_shows_the_number_its_interval_why_and_similar_rows(site):
    _, card, client = site
    row = next(iter(card["examples"].values()))
    page = client.get("/prediction", params=row)
    headline = page.html.select_one("h1.answer").text
    assert headline and headline[0].isdigit()
    band, track = page.html.select_one(".interval rect.band"), page.html.select_one(".interval rect.range")
    assert float(band["x"]) >= 0 and float(band["x"]) + float(band["width"]) <= 100.01
    assert float(track["x"]) >= 0 and float(track["width"]) > 0
    marker = float(page.html.select_one(".interval rect.marker")["x"])
    assert float(band["x"]) <= marker <= float(band["x"]) + float(band["width"])  # the prediction is inside
    assert "interval" in page.html.select_one(".interval figcaption").text
    why = page.html.select(".why li")
    assert len(why) == len(card["features"]) and "points" not in page.html.select_one(".why").text
    assert page.html.select_one(".neighbours th").text == card["target"]["label"].capitalize()
