"""train.py: the report, the artifact and metadata it writes, determinism and the CLI's errors."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris

import train
from tests.support import FEATURES, homes, load_artifact, write_fruit_csv, write_homes_csv

TRAIN = str(Path(train.__file__))


def run_train(tmp_path, *args):
    output = tmp_path / "iris.skops"
    train.main(["--output", str(output), *args])
    return output, json.loads(output.with_suffix(".json").read_text())


@pytest.mark.parametrize("algorithm", sorted(train.ALGORITHMS["classification"]))
def test_each_algorithm_trains_and_reports(tmp_path, capsys, algorithm):
    output, metadata = run_train(tmp_path, "--model", algorithm)
    report = capsys.readouterr().out
    for heading in ("Held-out accuracy", "5-fold CV accuracy", "precision", "recall", "Confusion matrix"):
        assert heading in report
    assert metadata["algorithm"] == algorithm
    assert metadata["metrics"]["test_accuracy"] > 0.85
    estimator = load_artifact(output)
    assert set(estimator.predict(load_iris().data)) == {"setosa", "versicolor", "virginica"}


def test_metadata_describes_the_artifact(tmp_path):
    output, metadata = run_train(tmp_path, "--seed", "3", "--test-size", "0.3")
    assert metadata["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    assert metadata["version"] == metadata["sha256"][:12]
    assert metadata["name"] == "iris-classifier"
    assert metadata["estimator"] == "Pipeline(StandardScaler, LogisticRegression)"
    assert metadata["parameters"]["logisticregression__random_state"] == 3
    assert metadata["features"] == list(FEATURES)
    assert metadata["classes"] == ["setosa", "versicolor", "virginica"]
    for item in metadata["inputs"]:
        low, high = item["training_range"]["min"], item["training_range"]["max"]
        assert 0 < low < high < 10
    metrics = metadata["metrics"]
    assert set(metrics) >= {"test_accuracy", "cv_accuracy_mean", "cv_accuracy_std", "per_class", "confusion_matrix"}
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 45  # 30% of 150 held out
    assert metadata["training"]["seed"] == 3 and metadata["training"]["training_seconds"] > 0
    assert set(metadata["versions"]) >= {"python", "scikit-learn", "skops"} and metadata["format"] == "skops"
    assert str(tmp_path) not in json.dumps(metadata)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iris.json", "iris.skops"]  # no temporary files left


def test_same_seed_same_predictions_other_seed_other_version(tmp_path):
    first, first_meta = run_train(tmp_path / "a")
    second, second_meta = run_train(tmp_path / "b")
    third, third_meta = run_train(tmp_path / "c", "--seed", "7")
    X = load_iris().data
    assert (load_artifact(first).predict_proba(X) == load_artifact(second).predict_proba(X)).all()
    assert first_meta["version"] == second_meta["version"]
    assert third_meta["version"] != first_meta["version"]


def test_unknown_model_is_one_clear_error(tmp_path):
    result = subprocess.run([sys.executable, TRAIN, "--model", "deep_learning", "--output", str(tmp_path / "m.skops")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "invalid choice: 'deep_learning'" in result.stderr
    assert not (tmp_path / "m.skops").exists()


def test_unwritable_output_is_one_clear_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = subprocess.run([sys.executable, TRAIN, "--output", str(blocker / "iris.skops")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("train.py: cannot write")


@pytest.mark.parametrize("size", ["0", "1", "1.5", "-0.2"])
def test_test_size_must_be_a_fraction(size):
    with pytest.raises(SystemExit):
        train.parse_args(["--test-size", size])


def test_every_option_has_help():
    parser_help = subprocess.run([sys.executable, TRAIN, "--help"], capture_output=True, text=True).stdout
    for option in ("--model", "--output", "--seed", "--test-size"):
        assert option in parser_help
    assert parser_help.count("(default:") >= 4


# --- Other tables: bundled datasets, a CSV of one's own, a classifier fitted elsewhere -------------------------


def run_cli(tmp_path, *args):
    """train.py as a user runs it, writing into tmp_path/out; (exit code, stderr, files written)."""
    output = tmp_path / "out" / "model.skops"
    result = subprocess.run([sys.executable, TRAIN, *args, "--output", str(output)], capture_output=True, text=True,
                            timeout=300)
    written = sorted(p.name for p in output.parent.iterdir()) if output.parent.exists() else []
    return result.returncode, result.stderr, written


def csv_file(tmp_path, text, name="table.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def rows_of(header, make, count=30):
    return header + "\n" + "\n".join(make(i) for i in range(count)) + "\n"


@pytest.mark.parametrize("text, args, message", [
    (rows_of("size,price", lambda i: f"{i},{i * 1.5}"), ["--target", "price", "--task", "classification"],
     "target 'price' has 30 distinct values in 30 rows: too many to be classes"),
    (rows_of("size,price", lambda i: f"{i},{i * 1.5}"), ["--target", "price"],
     "target 'price' has 30 rows; a regression needs at least 40"),
    (rows_of("size,kind", lambda i: f"{i},{'ab'[i % 2]}"), ["--target", "kind", "--task", "regression"],
     "target 'kind' holds 'a' on line 2: a regression predicts numbers"),
    (rows_of("size,kind", lambda i: f"{i},a"), ["--target", "kind"], "target 'kind' has 1 distinct value"),
    (rows_of("size,colour,kind", lambda i: f"{i},NA,{'ab'[i % 2]}"), ["--target", "kind"],
     "column 'colour' has no value in any row: --drop it"),
    (rows_of("size,kind", lambda i: f"{i},"), ["--target", "kind"], "target 'kind' has no value in any row"),
    (rows_of("Mean radius,mean_radius,kind", lambda i: f"{i},{i},{'ab'[i % 2]}"), ["--target", "kind"],
     "columns 'Mean radius' and 'mean_radius' both become the feature name 'mean_radius'"),
    (rows_of("size,kind", lambda i: f"{i},{'ab'[i % 2]}"), ["--target", "Kind"], "'Kind' is not a column of"),
    (rows_of("size,kind", lambda i: f"{i},{'ab'[i % 2]}"), ["--target", "kind", "--drop", "id"],
     "'id' is not a column of"),
    ("just one line\n", ["--target", "kind"], "is not a table: it needs a header row and data rows"),
    (rows_of("size,kind", lambda i: f"{i},{'ab'[i % 2]}") + "1,2,3\n", ["--target", "kind"],
     "is not a table: line 32 has 3 cells, the header 2"),
    (rows_of("size,kind", lambda i: f"{i},{'a' if i < 3 else 'b'}"), ["--target", "kind"],
     "class 'a' of target 'kind' has 3 rows; each class needs at least 10"),
])
def test_a_table_that_cannot_make_a_model_is_refused_in_one_line_and_nothing_is_written(tmp_path, text, args, message):
    code, stderr, written = run_cli(tmp_path, "--csv", str(csv_file(tmp_path, text)), *args)
    assert code == 1 and message in stderr, stderr
    assert stderr.startswith("train.py: ") and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert written == []


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    path = csv_file(tmp_path, rows_of("größe,kind", lambda i: f"{i},{'ab'[i % 2]}"), encoding="latin-1")
    code, stderr, written = run_cli(tmp_path, "--csv", str(path), "--target", "kind")
    assert code == 1 and "is not UTF-8 text" in stderr and stderr.count("\n") == 1 and written == []


@pytest.mark.parametrize("args, message", [
    (["--csv", "x.csv"], "--csv needs --target"),
    (["--target", "y"], "--target, --drop, --keep, --missing, --sep, --decimal and --fitted go with --csv"),
    (["--dataset", "mnist"], "invalid choice: 'mnist'"),
    (["--name", "My Model"], "must be lower-case letters, digits and '-'"),
    (["--task", "clustering"], "invalid choice: 'clustering'"),
    (["--interval", "1"], "--interval: must be between 0 and 1, got 1"),
    (["--csv", "x.csv", "--target", "y", "--fitted", "m.joblib", "--model", "ridge"], "--fitted adopts a model"),
])
def test_a_bad_command_line_is_one_line(tmp_path, args, message):
    code, stderr, written = run_cli(tmp_path, *args)
    assert code == 2 and message in stderr and stderr.count("\n") == 1 and written == []


def test_a_csv_with_categories_becomes_a_model_that_takes_the_raw_values(tmp_path):
    table = write_fruit_csv(tmp_path / "Fruit Basket.csv")
    output = tmp_path / "fruit.skops"
    train.main(["--csv", str(table), "--target", "Fruit", "--drop", "ID", "--output", str(output)])
    metadata = json.loads(output.with_suffix(".json").read_text())
    assert metadata["name"] == "fruit-basket-classifier"
    assert [(item["name"], item["label"], item["kind"]) for item in metadata["inputs"]] == [
        ("weight_g", "Weight (g)", "number"), ("colour", "Colour", "category"), ("origin", "Origin", "category")]
    assert metadata["classes"] == ["apple", "banana", "cherry"]
    assert metadata["texts"]["question"] == "Which fruit is this?"
    estimator = load_artifact(output)
    assert list(estimator.predict(np.array([[150.0, "green", "Spain"], [8.0, "dark red", "Chile"]], dtype=object))) \
        == ["apple", "cherry"]


@pytest.mark.parametrize("dataset, features, classes", [
    ("wine", 13, ["class_0", "class_1", "class_2"]),
    ("breast_cancer", 30, ["benign", "malignant"]),
])
def test_bundled_datasets_keep_their_names_normalised(tmp_path, dataset, features, classes):
    output = tmp_path / f"{dataset}.skops"
    train.main(["--dataset", dataset, "--output", str(output)])
    metadata = json.loads(output.with_suffix(".json").read_text())
    assert len(metadata["features"]) == features and metadata["classes"] == classes
    assert metadata["name"] == f"{dataset.replace('_', '-')}-classifier"
    labels = {item["name"]: item["label"] for item in metadata["inputs"]}
    assert labels.get("od280_od315_of_diluted_wines", "od280/od315_of_diluted_wines") == \
        "od280/od315_of_diluted_wines"
    assert labels.get("mean_radius", "mean radius") == "mean radius"
    assert all(item["unit"] is None for item in metadata["inputs"])


def test_a_classifier_fitted_elsewhere_is_adopted_with_the_tables_metadata(tmp_path):
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder
    table = write_fruit_csv(tmp_path / "fruit.csv")
    data = np.genfromtxt(table, delimiter=",", dtype=str, skip_header=1)
    X = np.array([[float(row[1]), row[2], row[3]] for row in data], dtype=object)
    mine = make_pipeline(make_column_transformer((OneHotEncoder(), [1, 2]), remainder="passthrough"),
                         RandomForestClassifier(random_state=0)).fit(X, data[:, 4])
    joblib.dump(mine, tmp_path / "mine.joblib")
    output = tmp_path / "adopted.skops"
    train.main(["--csv", str(table), "--target", "Fruit", "--drop", "ID", "--fitted", str(tmp_path / "mine.joblib"),
                "--output", str(output)])
    metadata = json.loads(output.with_suffix(".json").read_text())
    assert metadata["algorithm"] == "fitted elsewhere" and metadata["metrics"]["table_accuracy"] == 1.0
    assert metadata["features"] == ["weight_g", "colour", "origin"]
    assert (load_artifact(output).predict(X) == mine.predict(X)).all()


def test_a_fitted_file_that_cannot_predict_the_table_is_refused(tmp_path):
    table = write_fruit_csv(tmp_path / "fruit.csv")
    iris_model, _ = run_train(tmp_path)  # takes four numbers, not this table's three columns
    code, stderr, written = run_cli(tmp_path, "--csv", str(table), "--target", "Fruit", "--drop", "ID",
                                    "--fitted", str(iris_model))
    assert code == 1 and "cannot predict this table's rows" in stderr and stderr.count("\n") == 1 and written == []


# --- A quantity to predict ----------------------------------------------------------------------------------------


def test_a_numeric_target_with_many_values_is_a_regression_and_the_report_says_so(tmp_path, capsys):
    table = write_homes_csv(tmp_path / "homes.csv")
    output = tmp_path / "homes.skops"
    train.main(["--csv", str(table), "--target", "Price (k€)", "--drop", "ID", "--output", str(output)])
    report = capsys.readouterr().out
    distinct = len({price for *_, price in homes(300)})
    assert (f"Task: regression (target 'Price (k€)' holds {distinct} distinct numbers; --task classification "
            "overrides)") in report
    for words in ("Held-out MAE", "Held-out RMSE", "Held-out R²", "the mean", "5-fold CV R²", "Prediction interval: ±",
                  "for 90% of rows", "Its coverage on the held-out rows"):
        assert words in report
    card = json.loads(output.with_suffix(".json").read_text())
    assert (card["task"], card["name"], card["algorithm"]) == ("regression", "homes-regressor", "ridge")
    assert card["target"]["name"] == "price_k" and card["target"]["label"] == "Price (k€)"
    assert set(card["target"]["quantiles"]) == {"p05", "p25", "p50", "p75", "p95"}
    interval = card["interval"]
    assert interval["level"] == 0.9 and interval["calibration_rows"] == 75  # a quarter of 300 held out
    assert set(card["metrics"]) >= {"test_mae", "test_rmse", "test_r2", "baseline_mae", "baseline_rmse",
                                    "baseline_r2", "cv_r2_mean", "cv_r2_std", "interval_width", "interval_coverage"}
    assert len(card["reference"]["predictions"]) == len(card["reference"]["rows"])
    assert "row_targets" in card["explanation"] and card["classes"] == []


def test_the_interval_is_the_finite_sample_quantile_of_the_held_out_residuals(tmp_path):
    """Recomputed here from the held-out split: the ceil((n + 1) x 0.8)-th smallest absolute residual."""
    from sklearn.model_selection import train_test_split
    train.main(["--dataset", "diabetes", "--interval", "0.8", "--output", str(tmp_path / "d.skops")])
    card = json.loads((tmp_path / "d.json").read_text())
    data = load_diabetes(scaled=False)
    _, X_test, _, y_test = train_test_split(data.data, data.target, test_size=0.25, random_state=42)
    residuals = np.sort(np.abs(y_test - load_artifact(tmp_path / "d.skops").predict(X_test)))
    rank = int(np.ceil((len(residuals) + 1) * 0.8))
    assert card["interval"]["half_width"] == pytest.approx(residuals[rank - 1])
    assert residuals[rank - 2] < card["interval"]["half_width"]  # not the plain quantile one place lower


@pytest.mark.parametrize("args, message", [
    (["--dataset", "diabetes", "--model", "svc"], "--model svc does not predict a quantity: for this regression, "
                                                  "choose gradient_boosting, knn, random_forest, ridge"),
    (["--model", "ridge"], "--model ridge does not predict a class: for this classification, choose "
                           "gradient_boosting, knn, logistic_regression, random_forest, svc"),
    (["--dataset", "diabetes", "--task", "classification"], "the diabetes table is a regression, not a classification"),
    (["--dataset", "diabetes", "--test-size", "0.01"], "5 held-out rows are too few for a 90% interval: it needs at "
                                                        "least 9"),
])
def test_an_algorithm_or_task_that_does_not_fit_is_refused_in_one_line(tmp_path, args, message):
    code, stderr, written = run_cli(tmp_path, *args)
    assert code == 1 and message in stderr and stderr.count("\n") == 1 and written == []


@pytest.mark.parametrize("algorithm", sorted(train.ALGORITHMS["regression"]))
def test_each_regression_algorithm_trains_on_numbers_and_categories(tmp_path, algorithm):
    table = write_homes_csv(tmp_path / "homes.csv")
    output = tmp_path / "homes.skops"
    train.main(["--csv", str(table), "--target", "Price (k€)", "--drop", "ID", "--model", algorithm,
                "--output", str(output)])
    card = json.loads(output.with_suffix(".json").read_text())
    assert card["metrics"]["test_r2"] > 0.8 and card["metrics"]["test_mae"] < card["metrics"]["baseline_mae"]
    estimator = load_artifact(output)
    assert estimator.predict(np.array([[100.0, 3.0, "centre"]], dtype=object))[0] > 300  # 50 + 320 + 45 + 120


def test_gradient_boosting_splits_on_categories_natively(tmp_path):
    table = write_homes_csv(tmp_path / "homes.csv")
    train.main(["--csv", str(table), "--target", "Price (k€)", "--drop", "ID", "--model", "gradient_boosting",
                "--output", str(tmp_path / "homes.skops")])
    booster = load_artifact(tmp_path / "homes.skops")[-1]
    assert booster.is_categorical_.tolist() == [True, False, False]  # district, then area and rooms


def test_a_regressor_fitted_elsewhere_is_adopted_and_calibrated_on_the_table(tmp_path):
    from sklearn.ensemble import RandomForestRegressor

    from tests.support import homes
    fitted_on = homes(600, seed=3)
    X = np.array([[a, r, d == "centre", d == "north"] for a, r, d, _ in fitted_on], dtype=float)
    mine = RandomForestRegressor(n_estimators=20, random_state=0).fit(X, [p for *_, p in fitted_on])
    joblib.dump(mine, tmp_path / "mine.joblib")
    lines = ["area,rooms,centre,north,price"] + [f"{a},{r},{int(d == 'centre')},{int(d == 'north')},{p}"
                                                 for a, r, d, p in homes(200, seed=4)]
    (tmp_path / "unseen.csv").write_text("\n".join(lines) + "\n")
    output = tmp_path / "adopted.skops"
    train.main(["--csv", str(tmp_path / "unseen.csv"), "--target", "price", "--fitted", str(tmp_path / "mine.joblib"),
                "--output", str(output)])
    card = json.loads(output.with_suffix(".json").read_text())
    assert card["task"] == "regression" and card["algorithm"] == "fitted elsewhere"
    assert card["interval"]["calibration_rows"] == 200 and card["metrics"]["table_r2"] > 0.8
    code, stderr, _ = run_cli(tmp_path, "--csv", str(tmp_path / "unseen.csv"), "--target", "price", "--fitted",
                              str(tmp_path / "mine.joblib"), "--task", "classification")
    assert code == 1 and "is a regressor, but --task says classification" in stderr
