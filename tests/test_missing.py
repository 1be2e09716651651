"""Real tables have holes: a CSV with NA and empty cells (penguins, as R exports them) trains a model whose missing
inputs are optional, and every protocol takes a missing value and says what the model assumed of it."""

import json
import struct
import urllib.request

import numpy as np
import pytest
import webtest

import api
import train
import web
from tabserve.settings import ApiSettings, WebSettings
from tests.support import (
    PASSWORD,
    PENGUIN_FEATURES,
    USERNAME,
    api_server,
    load_artifact,
    penguins,
    serve_in_thread,
    write_penguins_csv,
)
from tests.test_fuzz import AUTHORIZATION, run_schemathesis

OPTIONAL = {"bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex"}  # those with holes


@pytest.fixture(scope="module")
def penguin_files(tmp_path_factory):
    """name -> artifact: species by logistic regression and by gradient boosting, and body mass (a regressor)."""
    folder = tmp_path_factory.mktemp("penguins")
    table = write_penguins_csv(folder / "penguins.csv")
    commands = {"species": ["--target", "species"],
                "species-boosted": ["--target", "species", "--model", "gradient_boosting"],
                "mass": ["--target", "body_mass_g"]}
    for name, arguments in commands.items():
        train.main(["--csv", str(table), *arguments, "--output", str(folder / f"{name}.skops")])
    return {name: folder / f"{name}.skops" for name in commands}


def api_of(files, name):
    client = webtest.TestApp(api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=files[name])))
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    return json.loads(files[name].with_suffix(".json").read_text()), client


@pytest.fixture(scope="module", params=["species", "species-boosted", "mass"])
def served(request, penguin_files):
    return (request.param, *api_of(penguin_files, request.param))


def table_rows(card):
    """The table's rows as the model's inputs: {feature: value or None}, a missing cell None."""
    kinds = {item["name"]: item["kind"] for item in card["inputs"]}
    rows = []
    for cells in penguins():
        record = dict(zip(("species", *PENGUIN_FEATURES), cells, strict=True))
        if record.get(card["target"]["name"]) in ("NA", ""):
            continue  # a row without the target is not in the table
        rows.append({name: None if record[name] in ("NA", "") else float(record[name]) if kinds[name] == "number"
                     else record[name] for name in card["features"]})
    return rows


def test_a_column_keeps_its_kind_whatever_holes_it_has_and_the_card_says_what_the_model_assumes(penguin_files):
    card = json.loads(penguin_files["species"].with_suffix(".json").read_text())
    inputs = {item["name"]: item for item in card["inputs"]}
    assert inputs["bill_length_mm"]["kind"] == "number" and inputs["sex"]["categories"] == ["female", "male"]
    assert {name for name, item in inputs.items() if item["optional"]} == OPTIONAL
    assert inputs["sex"]["missing"] == {"rows": 13, "value": "(missing)",
                                        "assumed": "a level of its own for a missing value"}
    imputer = load_artifact(penguin_files["species"])[0].named_transformers_["numbers"][0]  # fitted on the split
    numbers = [item["name"] for item in card["inputs"] if item["kind"] == "number"]
    for name, statistic in zip(numbers, imputer.statistics_, strict=True):
        if inputs[name]["optional"]:
            assert inputs[name]["missing"]["value"] == pytest.approx(statistic)
    boosted = json.loads(penguin_files["species-boosted"].with_suffix(".json").read_text())
    assert boosted["inputs"][1]["missing"]["assumed"] == "handled by the model, which learnt where a missing value goes"


def test_rows_without_a_target_are_left_out_and_the_report_says_how_many(tmp_path, capsys):
    train.main(["--csv", str(write_penguins_csv(tmp_path / "p.csv")), "--target", "body_mass_g",
                "--output", str(tmp_path / "m.skops")])
    report = capsys.readouterr().out
    assert "Left out 2 rows without a value of body_mass_g." in report
    assert "Missing: sex in 11 rows; the model assumes a level of its own for a missing value." in report
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["training"]["rows_without_target"] == 2 and card["training"]["dataset"].endswith(
        "(342 rows, 2 more without a body_mass_g)")


def test_other_missing_markers_are_named_on_the_command_line(tmp_path):
    text = (tmp_path / "p.csv")
    write_penguins_csv(text)
    text.write_text(text.read_text().replace("NA", "?"))
    train.main(["--csv", str(text), "--target", "species", "--missing", "?", "--output", str(tmp_path / "m.skops")])
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["inputs"][1]["kind"] == "number" and card["inputs"][1]["optional"]


def test_every_row_gets_one_answer_from_get_the_batch_and_v2_holes_and_all(served):
    name, card, client = served
    rows = table_rows(card)
    by_object = client.post_json("/api/v1.0/predict", {"instances": [
        {key: value for key, value in row.items() if value is not None} for row in rows]}).json["predictions"]
    by_list = client.post_json("/api/v1.0/predict", {"instances": [list(row.values()) for row in rows]}).json
    assert by_list["predictions"] == by_object and len(by_object) == len(rows)
    tensors = [{"name": item["name"], "shape": [len(rows)], "datatype": "BYTES" if item["kind"] == "category"
                else "FP64", "data": [("" if row[item["name"]] is None and item["kind"] == "category"
                                       else row[item["name"]]) for row in rows]} for item in card["inputs"]]
    outputs = client.post_json(f"/v2/models/{card['name']}/infer", {"inputs": tensors}).json["outputs"]
    for index, row in enumerate(rows[::9]):
        index *= 9
        answer = client.get("/api/v1.0", params={k: v for k, v in row.items() if v is not None}).json
        assert answer["features"] == row
        assert {key: answer[key] for key in by_object[index]} == by_object[index]
        assert outputs[0]["data"][index] == answer["prediction"]
        missing = [key for key, value in row.items() if value is None]
        assert [w.split(" was not given")[0] for w in answer["warnings"] if " was not given" in w] == missing


def test_an_optional_value_left_out_is_answered_with_a_warning_and_a_required_one_is_a_400(penguin_files):
    card, client = api_of(penguin_files, "species")
    row = {"island": "Biscoe", "bill_length_mm": "47", "bill_depth_mm": "15", "flipper_length_mm": "217",
           "body_mass_g": "5000", "year": "2008"}
    for query in (row, {**row, "sex": ""}):  # absent, or an empty value
        answer = client.get("/api/v1.0", params=query).json
        assert answer["prediction"] == "Gentoo" and answer["features"]["sex"] is None
        assert answer["warnings"] == ["sex was not given: the model assumed a level of its own for a missing value."]
    error = client.get("/api/v1.0", params={k: v for k, v in row.items() if k != "island"}, status=400).json
    assert error["errors"] == [{"field": "island", "message": "is required"}]
    error = client.post_json("/api/v1.0/predict", {"instances": [{**row, "island": None}]}, status=400).json
    assert error["errors"][0]["field"] == "instances[0].island"


def test_v2_takes_null_nan_and_an_empty_string_as_missing_where_a_value_may_be(penguin_files):
    card, client = api_of(penguin_files, "species-boosted")
    values = {"island": "Dream", "bill_length_mm": 49.0, "bill_depth_mm": None, "flipper_length_mm": 196.0,
              "body_mass_g": 3700.0, "sex": "", "year": 2008.0}
    raw, tensors = b"", []
    for item in card["inputs"]:  # each number as binary FP64 (NaN where missing), each category as JSON
        value = values[item["name"]]
        if item["kind"] == "number":
            data = struct.pack("<d", np.nan if value is None else value)
            tensors.append({"name": item["name"], "shape": [1], "datatype": "FP64",
                            "parameters": {"binary_data_size": 8}})
            raw += data
        else:
            tensors.append({"name": item["name"], "shape": [1], "datatype": "BYTES", "data": [value]})
    header = json.dumps({"inputs": tensors, "outputs": [{"name": "predict"}]}).encode()
    response = client.post(f"/v2/models/{card['name']}/infer", header + raw, content_type="application/octet-stream",
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.json["outputs"][0]["data"] == ["Chinstrap"]
    tensors[-1] = {"name": "year", "shape": [1], "datatype": "FP64", "data": [None]}  # year may not be missing
    tensors = [t for t in tensors if "parameters" not in t] + [
        {"name": item["name"], "shape": [1], "datatype": "FP64", "data": [values[item["name"]]]}
        for item in card["inputs"] if item["kind"] == "number" and item["name"] != "year"]
    error = client.post_json(f"/v2/models/{card['name']}/infer", {"inputs": tensors}, status=400).json["error"]
    assert "must be a number for FP64, got null" in error


def test_explanations_take_a_missing_value_as_a_value(penguin_files):
    card, client = api_of(penguin_files, "species")
    answer = client.get("/api/v1.0/explain", params={"island": "Dream", "bill_length_mm": "49",
                                                     "flipper_length_mm": "196", "year": "2008"}).json
    assert all(np.isfinite(list(answer["contributions"].values())))
    assert answer["contributions"]["sex"] != 0 or answer["contributions"]["bill_depth_mm"] != 0
    assert all(np.isfinite(n["distance"]) for n in answer["neighbours"])


def test_the_form_marks_optional_inputs_and_the_page_shows_them_as_not_given(penguin_files):
    card, client = api_of(penguin_files, "species")
    with serve_in_thread(client.app) as url:
        site = webtest.TestApp(web.create_app(WebSettings(api_url=url, username=USERNAME, password=PASSWORD)))
        form = site.get("/")
        for item in card["inputs"]:
            field = form.html.find(id=item["name"])
            assert field.has_attr("required") != item["optional"], item["name"]
            label = form.html.find("label", attrs={"for": item["name"]}).text
            assert ("(optional)" in label) == item["optional"]
        assert form.html.find(id="sex").find("option").text == "Not given"
        assert "if not given, the model assumes" in form.html.find(id="bill_depth_mm-hint").text
        page = site.get("/prediction", params={"island": "Dream", "bill_length_mm": "49", "bill_depth_mm": "",
                                               "flipper_length_mm": "196", "body_mass_g": "3700", "sex": "",
                                               "year": "2008"})
        assert page.html.find("h1").text == "Chinstrap"
        why = [li.select_one(".label").text for li in page.html.select(".why li")]
        assert "sex not given" in why and "bill_depth_mm not given" in why
        assert "sex was not given" in page.html.select_one(".alert").text
        assert "sex=" not in page.html.select_one(".actions a")["href"]  # the edit link leaves it out


def test_schemathesis_keeps_the_served_document_of_a_model_with_optional_inputs(penguin_files, tmp_path):
    """The document says which inputs may be left out or null, and what a warning count may reach."""
    card = json.loads(penguin_files["species"].with_suffix(".json").read_text())
    server = api_server(penguin_files["species"])
    try:
        document = json.loads(urllib.request.urlopen(f"{server.url}/openapi.json").read())
        parameters = {p["name"]: p["required"] for p in document["paths"]["/api/v1.0"]["get"]["parameters"]
                      if "name" in p}  # the features (the options are references)
        assert {name for name, required in parameters.items() if not required} == OPTIONAL
        assert set(document["components"]["schemas"]["Features"]["required"]) == {"island", "year"}
        run_schemathesis(f"{server.url}/openapi.json", server.url, 1,
                         {"MODEL_NAME": card["name"], "MODEL_VERSION": card["version"]}, tmp_path,
                         "-H", f"Authorization: {AUTHORIZATION}")
    finally:
        server.stop()
