"""train.py: the report, the artifact and metadata it writes, determinism and the CLI's errors."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import joblib
import pytest
from sklearn.datasets import load_iris

import train

TRAIN = str(Path(train.__file__))


def run_train(tmp_path, *args):
    output = tmp_path / "iris.joblib"
    train.main(["--output", str(output), *args])
    return output, json.loads(output.with_suffix(".json").read_text())


@pytest.mark.parametrize("algorithm", sorted(train.ALGORITHMS))
def test_each_algorithm_trains_and_reports(tmp_path, capsys, algorithm):
    output, metadata = run_train(tmp_path, "--model", algorithm)
    report = capsys.readouterr().out
    for heading in ("Held-out accuracy", "5-fold CV accuracy", "precision", "recall", "Confusion matrix"):
        assert heading in report
    assert metadata["algorithm"] == algorithm
    assert metadata["metrics"]["test_accuracy"] > 0.85
    estimator = joblib.load(output)
    assert set(estimator.predict(load_iris().data)) == {"setosa", "versicolor", "virginica"}


def test_metadata_describes_the_artifact(tmp_path):
    output, metadata = run_train(tmp_path, "--seed", "3", "--test-size", "0.3")
    assert metadata["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    assert metadata["version"] == metadata["sha256"][:12]
    assert metadata["name"] == "iris-classifier"
    assert metadata["estimator"] == "Pipeline(StandardScaler, LogisticRegression)"
    assert metadata["parameters"]["logisticregression__random_state"] == 3
    assert metadata["features"] == list(train.FEATURES)
    assert metadata["classes"] == ["setosa", "versicolor", "virginica"]
    for name in train.FEATURES:
        low, high = metadata["feature_ranges"][name]["min"], metadata["feature_ranges"][name]["max"]
        assert 0 < low < high < 10
    metrics = metadata["metrics"]
    assert set(metrics) >= {"test_accuracy", "cv_accuracy_mean", "cv_accuracy_std", "per_class", "confusion_matrix"}
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 45  # 30% of 150 held out
    assert metadata["training"]["seed"] == 3 and metadata["training"]["training_seconds"] > 0
    assert set(metadata["versions"]) >= {"python", "scikit-learn", "joblib"}
    assert str(tmp_path) not in json.dumps(metadata)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iris.joblib", "iris.json"]  # no temporary files left


def test_same_seed_same_predictions_other_seed_other_version(tmp_path):
    first, first_meta = run_train(tmp_path / "a")
    second, second_meta = run_train(tmp_path / "b")
    third, third_meta = run_train(tmp_path / "c", "--seed", "7")
    X = load_iris().data
    assert (joblib.load(first).predict_proba(X) == joblib.load(second).predict_proba(X)).all()
    assert first_meta["version"] == second_meta["version"]
    assert third_meta["version"] != first_meta["version"]


def test_unknown_model_is_one_clear_error(tmp_path):
    result = subprocess.run([sys.executable, TRAIN, "--model", "deep_learning", "--output", str(tmp_path / "m.joblib")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "invalid choice: 'deep_learning'" in result.stderr
    assert not (tmp_path / "m.joblib").exists()


def test_unwritable_output_is_one_clear_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = subprocess.run([sys.executable, TRAIN, "--output", str(blocker / "iris.joblib")],
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
