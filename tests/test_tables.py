"""Real tables as spreadsheets and databases give them: any separator and a decimal comma, a date column learnt from
its parts and answered for any date, identifiers left out with a word, a category of a long tail that takes any text,
and an adopted regressor whose interval holds its level on rows it never saw, whichever rows the table holds."""

import contextlib
import io
import json
import math
import re

import joblib
import numpy as np
import pandas as pd
import pytest
import webtest
from sklearn.compose import make_column_transformer
from sklearn.ensemble import RandomForestRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

import api
import train
import web
from tabserve.settings import ApiSettings, WebSettings
from tests.support import PASSWORD, USERNAME, serve_in_thread, weather, write_weather_csv

DAY = {"date": "2014-07-01", "precipitation_mm": "0", "temp_max_c": "24.5", "wind": "3", "city": "City 0"}
NUMBERS = {**DAY, "precipitation_mm": 0.0, "temp_max_c": 24.5, "wind": 3.0}  # as JSON gives them


def run_train(*arguments):
    """train.py's report of this command line (SystemExit and TableError propagate)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train.main([str(argument) for argument in arguments])
    return out.getvalue()


def refusal(*arguments):
    """train.py's one line refusing this command line."""
    with pytest.raises(SystemExit) as refused:
        run_train(*arguments)
    return str(refused.value.code)


def client_of(artifact):
    client = webtest.TestApp(api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=artifact)))
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    return json.loads(artifact.with_suffix(".json").read_text()), client


@pytest.fixture(scope="module")
def weather_model(tmp_path_factory):
    """(card, API client, report, folder) of the weather table as Europe's spreadsheets write it."""
    folder = tmp_path_factory.mktemp("weather")
    table = write_weather_csv(folder / "weather.csv")
    report = run_train("--csv", table, "--target", "Weather", "--output", folder / "weather.skops")
    return (*client_of(folder / "weather.skops"), report, folder)


def inputs_of(card):
    return {item["name"]: item for item in card["inputs"]}


# Reading the file

def test_a_semicolon_file_with_decimal_commas_is_read_as_written(weather_model):
    card, _, report, _ = weather_model
    assert "read with separator ';', decimal ','" in report.splitlines()[0]
    assert card["training"]["read"] == "separator ';', decimal ','"
    temperature = inputs_of(card)["temp_max_c"]
    assert temperature["kind"] == "number" and temperature["label"] == "Temp max (°C)"
    assert temperature["training_range"] == {"min": min(day[2] for day in weather()),
                                             "max": max(day[2] for day in weather())}


@pytest.mark.parametrize("separator, shown", [("\t", "'\\t'"), ("|", "'|'"), (",", "','")])
def test_tabs_pipes_and_commas_are_found(tmp_path, separator, shown):
    rows = weather(days=200)
    lines = [separator.join(("Date", "Rain", "Temp", "Wind", "City", "Weather"))]
    lines += [separator.join(str(cell) for cell in row) for row in rows]
    (tmp_path / "days.csv").write_text("\n".join(lines) + "\n")
    report = run_train("--csv", tmp_path / "days.csv", "--target", "Weather", "--output", tmp_path / "days.skops")
    assert f"read with separator {shown}, decimal '.'" in report
    card = json.loads((tmp_path / "days.json").read_text())
    assert [(item["name"], item["kind"]) for item in card["inputs"]] == [
        ("date", "date"), ("rain", "number"), ("temp", "number"), ("wind", "number"), ("city", "category")]


def test_sep_and_decimal_override_what_is_found(tmp_path):
    table = write_weather_csv(tmp_path / "weather.csv", days=200)
    assert refusal("--csv", table, "--target", "Weather", "--sep", ",", "--output", tmp_path / "w.skops").endswith(
        "it needs a header row and data rows of at least two columns (separated by commas)")
    # With a decimal point, "5,4" is no number: the columns of measures become text, and the report says so.
    report = run_train("--csv", table, "--target", "Weather", "--sep", "semicolon", "--decimal", ".",
                       "--output", tmp_path / "w.skops")
    assert "read with separator ';', decimal '.'" in report
    assert inputs_of(json.loads((tmp_path / "w.json").read_text()))["wind"]["kind"] == "category"
    with pytest.raises(SystemExit):
        train.parse_args(["--csv", str(table), "--target", "Weather", "--sep", ":"])


@pytest.mark.parametrize("text, message", [
    ("a;b;y\n1;2;x\n\n3;4;y\n5;6;7;z\n", r"line 5 has 4 cells, the header 3 \(separator ';'\)"),
    ('a,b,y\n1,"two\nlines",x\n3,4\n', r"line 4 has 2 cells, the header 3 \(separator ','\)"),
    ("just one column\n1\n2\n", r"no separator \(comma, semicolon, tab, pipe\) splits its header into two cells"),
])
def test_a_file_that_cannot_be_read_says_where_in_the_file(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    assert re.search(message, refusal("--csv", tmp_path / "bad.csv", "--target", "y", "--output",
                                      tmp_path / "bad.skops"))
    assert not (tmp_path / "bad.skops").exists()


# Identifiers

def test_identifiers_are_left_out_with_a_line_saying_why(weather_model):
    card, _, report, _ = weather_model
    assert "Left out column 'Row': it counts the rows (1, 2, 3, ...)" in report
    assert "Left out column 'Ticket': every value is distinct" in report
    assert [entry["column"] for entry in card["training"]["left_out"]] == ["Row", "Ticket"]
    assert set(inputs_of(card)) == {"date", "precipitation_mm", "temp_max_c", "wind", "city"}


def test_keep_learns_from_a_column_that_would_be_left_out(tmp_path):
    table = write_weather_csv(tmp_path / "weather.csv", days=300)
    report = run_train("--csv", table, "--target", "Weather", "--keep", "Row", "--output", tmp_path / "w.skops")
    assert "'Row'" not in report and "Left out column 'Ticket'" in report
    assert inputs_of(json.loads((tmp_path / "w.json").read_text()))["row"]["kind"] == "number"


# Dates

def test_a_date_column_is_a_date_learnt_from_its_parts(weather_model):
    card, _, report, _ = weather_model
    date = inputs_of(card)["date"]
    assert (date["kind"], date["format"]) == ("date", "date")
    low, high = date["training_range"]["min"], date["training_range"]["max"]  # of the training split's days
    assert "2012-01-01" <= low < "2012-01-15" and "2015-12-15" < high <= "2015-12-31"
    assert f"Date: a date ({low} to {high}), learnt from its year, day of the year, day of the week." in report


def test_the_date_makes_the_model_better_than_without_it(weather_model, tmp_path):
    card, _, _, folder = weather_model
    run_train("--csv", folder / "weather.csv", "--target", "Weather", "--drop", "Date", "--output",
              tmp_path / "nodate.skops")
    without = json.loads((tmp_path / "nodate.json").read_text())["metrics"]["test_accuracy"]
    assert card["metrics"]["test_accuracy"] > without + 0.05  # fog or drizzle: the season says which


def test_any_date_is_answered_and_one_after_training_is_warned(weather_model):
    _, client, _, _ = weather_model
    inside = client.get("/api/v1.0", params=DAY).json
    assert inside["prediction"] in ("sun", "rain", "fog", "drizzle")
    assert not any("date" in warning for warning in inside["warnings"])
    later = client.get("/api/v1.0", params={**DAY, "date": "2017-07-01"}).json
    assert any("date" in warning and "2017-07-01" in warning for warning in later["warnings"]), later
    timed = client.get("/api/v1.0", params={**DAY, "date": "2014-07-01T12:00:00"}, status=400).json
    assert timed["errors"] == [{"field": "date", "message": "must be a date in ISO 8601 form, as 2017-03-05, got "
                                                            "'2014-07-01T12:00:00'"}]


@pytest.mark.parametrize("bad", ["01/07/2014", "2014-13-01", "yesterday", ""])
def test_a_date_not_in_iso_form_is_refused_naming_the_field_and_the_form(weather_model, bad):
    _, client, _, _ = weather_model
    answer = client.get("/api/v1.0", params={**DAY, "date": bad}, status=400).json
    assert [error["field"] for error in answer["errors"]] == ["date"], answer
    assert "must be a date in ISO 8601 form, as 2017-03-05" in answer["errors"][0]["message"]


def test_dates_in_the_batch_v2_explanations_and_the_document(weather_model):
    card, client, _, _ = weather_model
    rows = [{**NUMBERS, "date": day, "precipitation_mm": 9.0} for day in ("2013-01-05", "2027-01-05")]
    answers = client.post_json("/api/v1.0/predict", {"instances": rows}).json["predictions"]
    assert [answer["prediction"] for answer in answers] == ["rain", "rain"]
    assert any("2027-01-05" in warning for warning in answers[1]["warnings"])
    metadata = client.get(f"/v2/models/{card['name']}").json
    date = next(tensor for tensor in metadata["inputs"] if tensor["name"] == "date")
    assert date["datatype"] == "BYTES" and date["parameters"]["format"] == "date"
    tensors = [{"name": name, "datatype": "BYTES" if name in ("date", "city") else "FP64", "shape": [2, 1],
                "data": [str(row[name]) if name in ("date", "city") else float(row[name]) for row in rows]}
               for name in ("date", "precipitation_mm", "temp_max_c", "wind", "city")]
    inferred = client.post_json(f"/v2/models/{card['name']}/infer", {"inputs": tensors}).json
    assert inferred["outputs"][0]["data"] == ["rain", "rain"]
    tensors[0]["data"][1] = "next week"
    refused = client.post_json(f"/v2/models/{card['name']}/infer", {"inputs": tensors}, status=400).json
    assert "date" in refused["error"]
    explained = client.get("/api/v1.0/explain", params=DAY).json
    assert set(explained["contributions"]) == set(inputs_of(card))  # the date one contribution, not its parts
    document = client.get("/openapi.json").json
    parameter = next(p for p in document["paths"]["/api/v1.0"]["get"]["parameters"] if p.get("name") == "date")
    assert (parameter["schema"]["type"], parameter["schema"]["format"]) == ("string", "date")


def test_date_times_learn_the_hour_and_day_first_dates_are_read(tmp_path):
    lines = ["When;Load;Day"]
    for hour in range(24 * 40):
        day, at = divmod(hour, 24)
        lines.append(f"2020-03-{1 + day % 28:02d}T{at:02d}:00;{'high' if 8 <= at < 20 else 'low'};"
                     f"{1 + day % 28:02d}/03/2020")
    (tmp_path / "load.csv").write_text("\n".join(lines) + "\n")
    report = run_train("--csv", tmp_path / "load.csv", "--target", "Load", "--output", tmp_path / "load.skops")
    assert "learnt from its year, day of the year, day of the week, hour of the day" in report
    card, client = client_of(tmp_path / "load.skops")
    assert inputs_of(card)["when"]["format"] == "date-time"
    assert inputs_of(card)["day"]["format"] == "date"
    assert inputs_of(card)["day"]["training_range"]["max"] == "2020-03-28"
    noon = client.get("/api/v1.0", params={"when": "2020-03-05T12:00", "day": "2020-03-05"}).json
    night = client.get("/api/v1.0", params={"when": "2020-03-05T02:00:00Z", "day": "2020-03-05"}).json
    assert (noon["prediction"], night["prediction"]) == ("high", "low")


# Many levels

def test_a_long_tail_of_levels_keeps_the_frequent_ones_and_groups_the_rest(weather_model):
    card, _, report, _ = weather_model
    city = inputs_of(card)["city"]
    seen = {row[4] for row in weather()}
    assert city["open"] is True and len(city["categories"]) == 20 and set(city["categories"]) < seen
    levels = int(re.search(r"City has ([0-9]+) levels in training; the 20 seen most are kept", report).group(1))
    assert city["rare"]["levels"] == levels - 20 > 20 and levels <= len(seen)


def test_an_unseen_level_is_answered_as_the_rare_group_with_a_warning(weather_model):
    _, client, _, _ = weather_model
    answer = client.get("/api/v1.0", params={**DAY, "city": "Atlantis"}).json
    assert any("city" in warning and "Atlantis" in warning for warning in answer["warnings"]), answer
    rare = client.get("/api/v1.0", params={**DAY, "city": "City 398"}).json
    assert rare["prediction"] == answer["prediction"]
    too_long = client.get("/api/v1.0", params={**DAY, "city": "x" * 1000}, status=400).json
    assert too_long["errors"][0]["field"] == "city"
    assert too_long["errors"][0]["message"].startswith("must be text of at most 200 characters")


def test_the_form_has_a_date_input_and_suggests_the_frequent_levels(weather_model):
    card, client, _, _ = weather_model
    with serve_in_thread(client.app) as url:
        site = webtest.TestApp(web.create_app(WebSettings(api_url=url, username=USERNAME, password=PASSWORD)))
        form = site.get("/")
        assert form.html.find(id="date")["type"] == "date"
        city = form.html.find(id="city")
        assert city.name == "input" and city["type"] == "text" and not form.html.find("select", id="city")
        suggested = form.html.find("datalist", id=city["list"]).find_all("option")
        assert [option["value"] for option in suggested] == inputs_of(card)["city"]["categories"]
        page = site.get("/prediction", params={**DAY, "city": "Atlantis", "date": "2017-01-01"})
        assert page.html.find("h1").text in ("sun", "rain", "fog", "drizzle")
        assert "Atlantis" in page.html.select_one(".alert").text


def test_drift_bins_dates_by_time_and_new_levels_together(weather_model):
    card, client, _, _ = weather_model
    rows = [{**NUMBERS, "date": f"20{year}-06-01", "city": city}
            for year in (13, 30) for city in ("City 0", "Atlantis", "City 398")] * 50
    before = client.get("/api/v1.0/monitoring").json["inputs"]  # the other tests' requests, counted too
    client.post_json("/api/v1.0/predict", {"instances": rows})
    answer = client.get("/api/v1.0/monitoring").json["inputs"]

    def added(name, index):
        return answer[name]["bins"][index]["count"] - before[name]["bins"][index]["count"]
    labels = [b["label"] for b in answer["city"]["bins"]]
    assert labels[-1] == "rare or new" and added("city", -1) == 200 and added("city", labels.index("City 0")) == 100
    assert len(answer["date"]["bins"]) == len(card["distributions"]["inputs"][0]["shares"])
    assert added("date", -1) == 150  # 2030 is after the last decile of the training days
    assert answer["date"]["psi"] > 0.25  # the usual threshold of drift: half the days after any seen in training


# Intervals of adopted regressors

def numbers_table(rows, seed):
    """A quantity that a forest fits closely on its own rows: y = a smooth function of three numbers, plus noise."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.uniform(0, 10, (rows, 3)), columns=["a", "b", "c"]).round(3)
    frame["y"] = (np.sin(frame.a) * 5 + frame.b * 2 + rng.normal(0, 3, rows)).round(3)
    return frame


@pytest.fixture(scope="module")
def adopted(tmp_path_factory):
    """The table a notebook fitted a forest on, the forest (fitted on all of it), and new rows from the same world."""
    folder = tmp_path_factory.mktemp("adopted")
    table = numbers_table(600, seed=1)
    table.to_csv(folder / "table.csv", index=False)
    forest = RandomForestRegressor(100, random_state=0).fit(table[["a", "b", "c"]].to_numpy(), table.y)
    joblib.dump(forest, folder / "forest.joblib")
    return folder, table, forest, numbers_table(3000, seed=2)


def coverage(client, new):
    """The share of new rows whose truth the served intervals hold, and the level they promise."""
    answers = client.post_json("/api/v1.0/predict", {"instances": new[["a", "b", "c"]].to_dict("records")}).json
    held = [answer["interval"]["low"] <= truth <= answer["interval"]["high"]
            for answer, truth in zip(answers["predictions"], new.y, strict=True)]
    return np.mean(held), answers["predictions"][0]["interval"]["level"]


def tolerance(calibration_rows, new_rows, level=0.9):
    """Three standard deviations of the share of new rows covered: the calibration quantile's spread (a conformal
    interval's coverage, over calibration sets, has the variance of a binomial share of their rows) and the binomial
    spread of the new rows' share."""
    return 3 * math.sqrt(level * (1 - level) * (1 / calibration_rows + 1 / new_rows))


def test_an_adopted_regressor_given_its_own_rows_still_keeps_its_promise(adopted):
    folder, table, forest, new = adopted
    report = run_train("--csv", folder / "table.csv", "--target", "y", "--fitted", folder / "forest.joblib",
                       "--output", folder / "cv.skops")
    card, client = client_of(folder / "cv.skops")
    interval = card["interval"]
    assert interval["method"].startswith("cross-conformal") and interval["folds"] == 5
    assert interval["calibration_rows"] == 600 and "1 - 2 x (1 - level)" in interval["guarantee"]
    assert "cross-conformal" in report
    held, level = coverage(client, new)
    assert level == 0.9 and held >= level - tolerance(600, len(new)), held
    # What calibrating on the rows the forest was fitted on would have promised: far narrower, and false.
    own = np.sort(np.abs(table.y - forest.predict(table[["a", "b", "c"]].to_numpy())))
    naive = own[int(np.ceil(601 * 0.9)) - 1]
    assert np.mean(np.abs(new.y - forest.predict(new[["a", "b", "c"]].to_numpy())) <= naive) < 0.75
    assert interval["half_width"] > 1.5 * naive


def test_calibration_rows_the_model_never_saw_give_a_split_conformal_interval(adopted):
    folder, _, _, new = adopted
    numbers_table(400, seed=3).to_csv(folder / "unseen.csv", index=False)
    run_train("--csv", folder / "table.csv", "--target", "y", "--fitted", folder / "forest.joblib",
              "--calibration", folder / "unseen.csv", "--output", folder / "split.skops")
    card, client = client_of(folder / "split.skops")
    interval = card["interval"]
    assert interval["method"].startswith("split conformal on the 400 rows of --calibration unseen.csv")
    assert interval["calibration_rows"] == 400
    held, level = coverage(client, new)
    assert held >= level - tolerance(400, len(new)), held


def test_the_calibration_rows_must_have_the_tables_columns(adopted):
    folder, table, _, _ = adopted
    table.drop(columns=["c"]).to_csv(folder / "narrow.csv", index=False)
    assert "'c' is not a column of" in refusal(
        "--csv", folder / "table.csv", "--target", "y", "--fitted", folder / "forest.joblib", "--calibration",
        folder / "narrow.csv", "--output", folder / "narrow.skops")
    with pytest.raises(SystemExit):
        train.parse_args(["--csv", str(folder / "table.csv"), "--target", "y", "--calibration", "x.csv"])


def test_a_model_that_cannot_be_refitted_is_served_without_an_interval_and_says_so(tmp_path):
    """A pipeline whose encoder refuses levels it did not see: a copy fitted without the one row of a level fails on
    it, so no interval can be calibrated on the table; the answers say there is none, never a false one."""
    frame = numbers_table(300, seed=4)
    frame.insert(0, "site", ["north", "south"] * 149 + ["east", "west"])  # east and west: one row each
    frame.to_csv(tmp_path / "sites.csv", index=False)
    model = make_pipeline(make_column_transformer((OneHotEncoder(handle_unknown="error"), ["site"]),
                                                  remainder="passthrough"), RandomForestRegressor(20, random_state=0))
    joblib.dump(model.fit(frame.drop(columns=["y"]), frame.y), tmp_path / "strict.joblib")
    report = run_train("--csv", tmp_path / "sites.csv", "--target", "y", "--fitted", tmp_path / "strict.joblib",
                       "--output", tmp_path / "strict.skops")
    assert "without an interval" in report and "--calibration" in report
    card, client = client_of(tmp_path / "strict.skops")
    assert card["interval"] is None
    assert "could not be copied and refitted" in card["metrics"]["interval_unavailable"]
    answer = client.get("/api/v1.0", params={"site": "north", "a": "1", "b": "2", "c": "3"}).json
    assert answer["interval"] is None
    assert any("no prediction interval" in warning for warning in answer["warnings"])
    metadata = client.get(f"/v2/models/{card['name']}").json
    assert "interval" not in [output["name"] for output in metadata["outputs"]]
