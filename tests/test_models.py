"""The contract for more than one model: iris, a bundled dataset (wine) and a CSV with categories that the test writes
itself. Every part follows the model's own features and classes: /api/v1.0, its batch, /v2 (with tritonclient), the
served OpenAPI document (fuzzed) and the web page."""

import csv
import json

import numpy as np
import pytest
import tritonclient.http as triton
import webtest
from sklearn.datasets import load_iris, load_wine
from tritonclient.http.auth import BasicAuth

import api
import train
import web
from tabserve.settings import ApiSettings, WebSettings
from tests.support import FRUIT_FEATURES, PASSWORD, USERNAME, api_server, load_artifact, serve_in_thread
from tests.test_fuzz import AUTHORIZATION, run_schemathesis

MODELS = ("iris", "wine", "fruit")


def table_rows(name, model_files):
    """(rows as {feature: value}, classes) of a model's whole table, read here without train.py."""
    if name in ("iris", "wine"):
        data = (load_iris if name == "iris" else load_wine)()
        features = json.loads(model_files[name].with_suffix(".json").read_text())["features"]
        rows = [dict(zip(features, map(float, row), strict=True)) for row in data.data]
        return rows, list(data.target_names[data.target])
    with open(model_files[name].with_name("fruit.csv"), encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    rows = [{"weight_g": float(record["Weight (g)"]), "colour": record["Colour"], "origin": record["Origin"]}
            for record in records]
    return rows, [record["Fruit"] for record in records]


def api_of(model_files, name):
    """(name, metadata, WebTest client of the API) for this model."""
    app = api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=model_files[name]))
    client = webtest.TestApp(app)
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    return name, json.loads(model_files[name].with_suffix(".json").read_text()), client


@pytest.fixture(scope="module", params=MODELS)
def served(request, model_files):
    """(name, metadata, WebTest client of the API) for each model."""
    return api_of(model_files, request.param)


def v2_request(metadata, rows):
    """An inference request for these rows as the model's metadata says its inputs are sent."""
    inputs = metadata["inputs"]
    if all(item["kind"] == "number" for item in inputs):
        return {"inputs": [{"name": "input-0", "shape": [len(rows), len(inputs)], "datatype": "FP64",
                            "data": [[row[item["name"]] for item in inputs] for row in rows]}]}
    return {"inputs": [{"name": item["name"], "shape": [len(rows)], "datatype":
                        "BYTES" if item["kind"] == "category" else "FP64",
                        "data": [row[item["name"]] for row in rows]} for item in inputs]}


def test_every_training_row_gets_one_answer_from_get_the_batch_and_v2(served, model_files):
    name, metadata, client = served
    rows, _ = table_rows(name, model_files)
    batch = client.post_json("/api/v1.0/predict", {"instances": rows}).json["predictions"]
    by_list = client.post_json("/api/v1.0/predict", {"instances": [list(row.values()) for row in rows]}).json
    assert by_list["predictions"] == batch
    outputs = client.post_json(f"/v2/models/{metadata['name']}/infer", v2_request(metadata, rows)).json["outputs"]
    labels, probabilities = outputs[0]["data"], np.array(outputs[1]["data"]).reshape(len(rows), -1)
    for index, row in enumerate(rows):
        answer = client.get("/api/v1.0", params=row).json
        assert {key: answer[key] for key in ("prediction", "probabilities", "warnings")} == batch[index]
        assert answer["features"] == row
        assert labels[index] == answer["prediction"]
        assert dict(zip(metadata["classes"], probabilities[index].tolist(), strict=True)) == answer["probabilities"]


def test_the_model_is_good_at_its_own_table(served, model_files):
    name, _, client = served
    rows, classes = table_rows(name, model_files)
    predicted = [answer["prediction"] for answer in client.post_json("/api/v1.0/predict",
                                                                     {"instances": rows}).json["predictions"]]
    assert np.mean(np.array(predicted) == np.array(classes)) > 0.9


def test_the_model_endpoint_describes_every_input_and_an_example_per_class(served):
    name, metadata, client = served
    description = client.get("/api/v1.0/model").json
    assert description["features"] == [item["name"] for item in description["inputs"]]
    assert description["classes"] == metadata["classes"] and "reference" not in description
    for item in description["inputs"]:
        assert item["kind"] in ("number", "category") and item["label"]
        assert ("categories" in item) == (item["kind"] == "category")
        assert ("training_range" in item) == (item["kind"] == "number")
    assert set(description["examples"]) == set(description["classes"])
    for species, row in description["examples"].items():
        assert client.get("/api/v1.0", params=row).json["prediction"] == species
    if name == "fruit":
        assert description["features"] == list(FRUIT_FEATURES)
        assert description["inputs"][0]["label"] == "Weight (g)"
        assert description["inputs"][1]["categories"] == ["dark red", "green", "red", "yellow"]
    if name == "wine":
        assert "od280_od315_of_diluted_wines" in description["features"]


def typical(metadata):
    return dict(next(iter(metadata["examples"].values())))


def test_every_bad_input_is_named_with_its_own_rule(served):
    _, metadata, client = served
    row = typical(metadata)
    number = next(item for item in metadata["inputs"] if item["kind"] == "number")
    errors = {error["field"]: error["message"] for error in client.get(
        "/api/v1.0", params={**row, number["name"]: "abc", "extra": "1"}, status=400).json["errors"]}
    assert errors[number["name"]].startswith("must be a decimal number")
    assert "is not a parameter of this endpoint" in errors["extra"]
    missing = dict(row)
    del missing[metadata["features"][-1]]
    errors = client.get("/api/v1.0", params=missing, status=400).json["errors"]
    assert errors == [{"field": metadata["features"][-1], "message": "is required"}]
    for item in metadata["inputs"]:
        if item["kind"] == "category":
            error = client.get("/api/v1.0", params={**row, item["name"]: "purple"}, status=400).json["errors"][0]
            assert error == {"field": item["name"], "message": f"must be one of {', '.join(item['categories'])}, "
                                                               "got 'purple'"}
            error = client.post_json("/api/v1.0/predict", {"instances": [{**row, item["name"]: 3}]}, status=400)
            assert error.json["errors"][0]["field"] == f"instances[0].{item['name']}"


@pytest.mark.parametrize("name", ["wine", "fruit"])  # iris bounds its own: greater than 0, at most 100 cm
def test_a_number_without_bounds_of_its_own_takes_values_far_beyond_training_and_warns(model_files, name):
    _, metadata, client = api_of(model_files, name)
    number = next(item for item in metadata["inputs"] if item["kind"] == "number")
    answer = client.get("/api/v1.0", params={**typical(metadata), number["name"]: "-1e6"}).json
    assert answer["warnings"] == [f"{number['name']} -1e+06 lies outside the {number['training_range']['min']:g} to "
                                  f"{number['training_range']['max']:g} seen in training, so the answer is an "
                                  "extrapolation."]
    error = client.get("/api/v1.0", params={**typical(metadata), number["name"]: "1e999"}, status=400).json
    assert error["errors"] == [{"field": number["name"], "message": "must be a finite number"}]


def test_v2_metadata_lists_the_tensors_the_model_takes(served):
    _, metadata, client = served
    tensors = client.get(f"/v2/models/{metadata['name']}").json["inputs"]
    if all(item["kind"] == "number" for item in metadata["inputs"]):
        assert tensors == [{"name": "input-0", "datatype": "FP32", "shape": [-1, len(metadata["inputs"])],
                            "parameters": {"features": ",".join(metadata["features"])}}]
    else:
        assert [(t["name"], t["datatype"]) for t in tensors] == [("weight_g", "FP64"), ("colour", "BYTES"),
                                                                 ("origin", "BYTES")]


@pytest.mark.parametrize("change, words", [
    (lambda request: request["inputs"].pop(), "inputs must hold one tensor per input"),
    (lambda request: request["inputs"][1].update(datatype="FP64"), "inputs[1].datatype must be one of BYTES"),
    (lambda request: request["inputs"][1].update(data=["purple"]), "inputs[1].data[0] must be one of dark red"),
    (lambda request: request["inputs"][0].update(shape=[2], data=[1.0, 2.0]), "inputs[0].shape says 2 rows"),
    (lambda request: request["inputs"].append(dict(request["inputs"][0])), "each once"),
    (lambda request: request["inputs"][0].update(datatype="FP32", data=[1e39]), "inputs[0].data[0] must be at least "),
    (lambda request: request["inputs"][0].update(datatype="FP32", data=[1e39]), "got inf as FP32"),
])
def test_a_bad_tensor_of_a_model_with_categories_is_named(model_files, change, words):
    _, metadata, client = api_of(model_files, "fruit")
    request = v2_request(metadata, [typical(metadata)])
    change(request)
    if words == "inputs[0].shape says 2 rows":  # the first tensor sets N; move the changed one behind the others
        request["inputs"] = request["inputs"][1:] + request["inputs"][:1]
        words = "inputs[2].shape says 2 rows"
    response = client.post_json(f"/v2/models/{metadata['name']}/infer", request, status=400)
    assert words in response.json["error"]


# --- tritonclient and Schemathesis against the served CSV model ------------------------------------------------


@pytest.fixture(scope="module")
def fruit_api(model_files):
    server = api_server(model_files["fruit"])
    yield server
    server.stop()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "JSON"])
def test_tritonclient_sends_a_table_with_categories_one_tensor_per_column(fruit_api, model_files, binary):
    rows, classes = table_rows("fruit", model_files)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{fruit_api.port}")
    client.register_plugin(BasicAuth(USERNAME, PASSWORD))
    try:
        tensors = []
        for name in FRUIT_FEATURES:
            values = np.array([row[name] for row in rows], dtype=object if name != "weight_g" else np.float64)
            tensor = triton.InferInput(name, [len(rows)], "FP64" if name == "weight_g" else "BYTES")
            tensor.set_data_from_numpy(values, binary_data=binary)
            tensors.append(tensor)
        outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("predict", "predict_proba")]
        result = client.infer("fruit-classifier", tensors, outputs=outputs)
        predicted = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("predict")]
        assert np.mean(np.array(predicted) == np.array(classes)) > 0.9
        assert result.as_numpy("predict_proba").shape == (len(rows), 3)
    finally:
        client.close()


def test_schemathesis_keeps_the_served_document_of_a_model_with_categories(fruit_api, model_files, tmp_path):
    metadata = json.loads(model_files["fruit"].with_suffix(".json").read_text())
    identity = {"MODEL_NAME": metadata["name"], "MODEL_VERSION": metadata["version"]}
    run_schemathesis(f"{fruit_api.url}/openapi.json", fruit_api.url, 1, identity, tmp_path,
                     "-H", f"Authorization: {AUTHORIZATION}")


def test_schemathesis_keeps_the_served_document_of_a_bundled_dataset(model_files, tmp_path):
    metadata = json.loads(model_files["wine"].with_suffix(".json").read_text())
    server = api_server(model_files["wine"])
    try:
        run_schemathesis(f"{server.url}/openapi.json", server.url, 1,
                         {"MODEL_NAME": metadata["name"], "MODEL_VERSION": metadata["version"]}, tmp_path,
                         "-H", f"Authorization: {AUTHORIZATION}")
    finally:
        server.stop()


# --- The web page, made for each model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(served):
    """(metadata, WebTest client of the web app) in front of each model's API."""
    _, metadata, client = served
    with serve_in_thread(client.app) as url:
        settings = WebSettings(api_url=url, username=USERNAME, password=PASSWORD)
        yield metadata, webtest.TestApp(web.create_app(settings))


def test_the_form_has_an_input_or_a_select_per_feature_and_an_example_per_class(site):
    metadata, client = site
    page = client.get("/")
    assert page.html.find("h1").text == metadata["texts"]["question"]
    for item in metadata["inputs"]:
        field = page.html.find(id=item["name"])
        assert page.html.find("label", attrs={"for": item["name"]}).text.startswith(item["label"])
        if item["kind"] == "category":
            assert field.name == "select" and [o.text for o in field.find_all("option")][1:] == item["categories"]
        else:
            assert field.name == "input" and field["type"] == "number"
    assert [a.text for a in page.html.select(".examples a")] == list(metadata["examples"])


def test_each_example_link_gives_its_class_on_the_result_page(site):
    metadata, client = site
    page = client.get("/")
    for species in metadata["examples"]:
        form = client.get(page.html.find("a", string=species)["href"]).forms[0]
        result = form.submit()
        assert result.html.find("h1").text == metadata["class_labels"][species]
        assert result.html.find("title").text.endswith(metadata["texts"]["title"])


def test_beyond_the_bounds_train_py_sets_a_number_is_refused_not_answered_with_nan(model_files):
    """A number with no bounds of its own gets some in the metadata, so the model's arithmetic stays finite."""
    _, metadata, client = api_of(model_files, "wine")
    alcohol = next(item for item in metadata["inputs"] if item["name"] == "alcohol")
    assert alcohol["allowed"] == {"minimum": -1e8, "maximum": 1e8}  # up to 14.83 in training: 2 digits + 6
    error = client.get("/api/v1.0", params={**typical(metadata), "alcohol": "1e300"}, status=400).json["errors"]
    assert error == [{"field": "alcohol", "message": "must be at least -1e+08 and at most 1e+08, got 1e+300"}]


# --- Explanations, recomputed independently ----------------------------------------------------------------------


def baselines_of(rows, metadata):
    """Each feature's baseline, from the table: NumPy's median of a number, the most frequent category (ties: the
    first in category order)."""
    baselines = {}
    for item in metadata["inputs"]:
        values = [row[item["name"]] for row in rows]
        if item["kind"] == "number":
            baselines[item["name"]] = float(np.median(values))
        else:
            counts = {category: values.count(category) for category in item["categories"]}
            baselines[item["name"]] = max(item["categories"], key=counts.get)
    return baselines


def distance(metadata, rows, x, t):
    total = 0.0
    for item in metadata["inputs"]:
        name = item["name"]
        if item["kind"] == "category":
            total += x[name] != t[name]
            continue
        deviation = float(np.std([row[name] for row in rows]))
        if deviation > 0:
            total += ((x[name] - t[name]) / deviation) ** 2
    return total ** 0.5


def as_matrix(metadata, rows):
    kinds = [item["kind"] for item in metadata["inputs"]]
    return np.array([[row[name] for name in metadata["features"]] for row in rows],
                    dtype=float if "category" not in kinds else object)


def test_explanations_are_what_anyone_recomputes_from_the_table(served, model_files):
    name, metadata, client = served
    rows, classes = table_rows(name, model_files)
    estimator = load_artifact(model_files[name])
    baselines = baselines_of(rows, metadata)
    for x in rows[::17]:
        answer = client.get("/api/v1.0/explain", params=x).json
        assert list(answer["contributions"]) == metadata["features"]
        k = metadata["classes"].index(answer["prediction"])
        variants = [x] + [{**x, name: baselines[name]} for name in metadata["features"]]
        probabilities = estimator.predict_proba(as_matrix(metadata, variants))[:, k]
        for index, feature in enumerate(metadata["features"]):
            assert answer["contributions"][feature] == pytest.approx(probabilities[0] - probabilities[index + 1],
                                                                     abs=1e-6)
        distances = [distance(metadata, rows, x, t) for t in rows]
        nearest = sorted(range(len(rows)), key=lambda i: distances[i])[:3]  # sorted() is stable: table order
        assert [n["features"] for n in answer["neighbours"]] == [rows[i] for i in nearest]
        assert [n["class"] for n in answer["neighbours"]] == [classes[i] for i in nearest]
        assert [n["distance"] for n in answer["neighbours"]] == pytest.approx([distances[i] for i in nearest],
                                                                              abs=1e-4)
        without = {key: value for key, value in answer.items() if key not in ("contributions", "neighbours")}
        assert without == client.get("/api/v1.0", params=x).json


def test_v2_sends_contributions_only_when_asked_json_or_binary(served, model_files):
    name, metadata, client = served
    rows, _ = table_rows(name, model_files)
    request = v2_request(metadata, rows[:5])
    path = f"/v2/models/{metadata['name']}/infer"
    assert [o["name"] for o in client.post_json(path, request).json["outputs"]] == ["predict", "predict_proba",
                                                                                   "out_of_range"]
    asked = client.post_json(path, {**request, "outputs": [{"name": "contributions"}]}).json["outputs"][0]
    assert asked["datatype"] == "FP64" and asked["shape"] == [5, len(metadata["features"])]
    for row, values in zip(rows[:5], np.array(asked["data"]).reshape(5, -1), strict=True):
        expected = client.get("/api/v1.0/explain", params=row).json["contributions"]
        assert values.tolist() == list(expected.values())
    binary = client.post_json(path, {**request, "outputs": [{"name": "contributions",
                                                             "parameters": {"binary_data": True}}]})
    length = int(binary.headers["Inference-Header-Content-Length"])
    assert np.frombuffer(binary.body[length:], dtype="<f8").tolist() == asked["data"]


def test_a_constant_column_contributes_nothing_and_is_left_out_of_the_distance(tmp_path):
    lines = ["size,colour,constant,kind"] + [f"{i},{'red' if i % 3 else 'blue'},7,{'ab'[i % 2]}" for i in range(40)]
    (tmp_path / "constant.csv").write_text("\n".join(lines) + "\n")
    # size counts the rows, so it would be left out as an identifier: kept, to stand for a measurement here.
    train.main(["--csv", str(tmp_path / "constant.csv"), "--target", "kind", "--keep", "size", "--output",
                str(tmp_path / "c.skops")])
    _, metadata, client = api_of({"c": tmp_path / "c.skops"}, "c")
    answer = client.get("/api/v1.0/explain", params={"size": "4", "colour": "red", "constant": "7"}).json
    assert answer["contributions"]["constant"] == 0
    assert answer["neighbours"][0] == {"features": {"size": 4.0, "colour": "red", "constant": 7.0}, "class": "a",
                                       "distance": 0.0}
    answer = client.get("/api/v1.0/explain", params={"size": "4", "colour": "red", "constant": "1000"}).json
    assert answer["neighbours"][0]["distance"] == 0.0  # a column with no spread cannot tell rows apart


def test_a_table_whose_only_number_is_constant_is_explained(tmp_path):
    lines = ["colour,constant,kind"] + [f"{'red' if i % 3 else 'blue'},7,{'ab'[i % 2]}" for i in range(40)]
    (tmp_path / "constant.csv").write_text("\n".join(lines) + "\n")
    train.main(["--csv", str(tmp_path / "constant.csv"), "--target", "kind", "--output", str(tmp_path / "c.skops")])
    _, metadata, client = api_of({"c": tmp_path / "c.skops"}, "c")
    answer = client.get("/api/v1.0/explain", params={"colour": "red", "constant": "7"}).json
    assert answer["contributions"]["constant"] == 0 and answer["neighbours"][0]["distance"] == 0.0


def test_without_rows_explanations_have_contributions_and_no_neighbours(tmp_path):
    train.main(["--no-rows", "--output", str(tmp_path / "iris.skops")])
    _, metadata, client = api_of({"iris": tmp_path / "iris.skops"}, "iris")
    assert metadata["explanation"]["neighbours"] is False and "rows" not in metadata["explanation"]
    answer = client.get("/api/v1.0/explain", params=typical(metadata)).json
    assert answer["neighbours"] == [] and len(answer["contributions"]) == 4
    assert client.get("/api/v1.0/model").json["explanation"]["neighbours"] is False


def test_explanations_are_counted_like_predictions(model_files):
    _, metadata, client = api_of(model_files, "iris")
    client.get("/api/v1.0/explain", params=metadata["examples"]["setosa"])
    client.post_json("/v2/models/iris-classifier/infer", {**v2_request(metadata, [metadata["examples"]["virginica"]]),
                                                          "outputs": [{"name": "contributions"}]})
    metrics, version = client.get("/metrics").text, metadata["version"]
    assert f'tabserve_api_explanations_total{{class="setosa",version="{version}"}} 1.0' in metrics
    assert f'tabserve_api_explanations_total{{class="virginica",version="{version}"}} 1.0' in metrics
    assert ('tabserve_api_requests_total{endpoint="/api/v1.0/explain",method="GET",status="200",user="tester",'
            f'version="{version}"}} 1.0' in metrics)


def test_the_result_page_shows_why_and_the_most_similar_rows(site):
    metadata, client = site
    species, row = next(iter(metadata["examples"].items()))
    page = client.get("/prediction", params=row)
    why = page.html.select(".why li")
    assert len(why) == len(metadata["features"])
    points = [float(li.select_one(".value").text.split()[0]) for li in why]
    assert points == sorted(points, key=abs, reverse=True)  # largest first
    assert all(("toward" in li["class"]) == (p >= 0) for li, p in zip(why, points, strict=True))
    neighbours = page.html.select(".neighbours tbody tr")
    assert len(neighbours) == 3 and neighbours[0].find("td").text == species
