"""Train a classifier on a table and save it, with the metadata that every other part of the service reads.

Usage:
    python train.py                                     # iris, logistic regression, seed 42: model/iris.joblib
    python train.py --dataset wine                      # or breast_cancer: scikit-learn's bundled tables
    python train.py --csv my.csv --target y --drop id   # a table of your own: model/my.joblib
    python train.py --csv my.csv --target y --fitted mine.joblib   # adopt a classifier you fitted elsewhere
    python train.py --model random_forest --seed 7 --output /tmp/rf.joblib

It holds out a stratified test split, prints a report (held-out accuracy, 5-fold cross-validation, per-class
precision/recall/F1, confusion matrix), and writes two files atomically: the joblib artifact (`--output`) and beside
it a JSON metadata file with the same name and a `.json` suffix. The metadata is the one description of the model:
each input's name, label, kind, unit, allowed values and training range or categories; the classes and their
labels; a typical row per class; a reference sample with the probabilities the model gives it (the API's self-test);
the page's words. The API reads it first and checks the artifact's sha256 before it unpickles anything. A table
that cannot make a model (tables.py says why) is refused in one line, and nothing is written.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC

from tabserve.describe import build_metadata, report_classes
from tabserve.tables import Column, Table, TableError, check_names, normalise, read_csv

MODEL_FOLDER = Path(__file__).resolve().parent / "model"
DEFAULT_DATASET = "iris"
DEFAULT_MODEL = "logistic_regression"
DEFAULT_SEED = 42
DEFAULT_TEST_SIZE = 0.25
CV_FOLDS = 5

# Scaling sits in a pipeline wherever the algorithm is sensitive to feature scale; trees are not.
ALGORITHMS = {
    "logistic_regression": lambda seed: make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed)
    ),
    "random_forest": lambda seed: RandomForestClassifier(n_estimators=100, random_state=seed),
    "knn": lambda seed: make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5)),
    # SVC has no probabilities of its own: calibrate its scores (what scikit-learn 1.9 recommends over probability=True).
    "svc": lambda seed: make_pipeline(
        StandardScaler(), CalibratedClassifierCV(SVC(random_state=seed), ensemble=False)
    ),
}

# The iris dataset as the service has always shown it: its four names, lengths in cm (greater than 0 and at most
# 100), the species' full names and the page's words. The other bundled tables take scikit-learn's names, normalised.
IRIS = {
    "features": (("sepal_length", "Sepal length"), ("sepal_width", "Sepal width"), ("petal_length", "Petal length"),
                 ("petal_width", "Petal width")),
    "unit": "cm",
    "allowed": {"exclusiveMinimum": 0, "maximum": 100},
    "class_labels": {"setosa": "Iris setosa", "versicolor": "Iris versicolor", "virginica": "Iris virginica"},
    "texts": {"title": "Iris classifier", "question": "Which iris is this?",
              "lead": "Enter four measurements of one flower, in centimetres, and the model names its species.",
              "submit": "Predict the species", "source": "Fisher's iris data",
              "change": "Change these measurements"},
    "source": "scikit-learn load_iris (Fisher, 1936), 150 samples",
}
BUNDLED = {"iris": load_iris, "wine": load_wine, "breast_cancer": load_breast_cancer}


def metadata_path(artifact_path):
    """The metadata file that sits beside an artifact."""
    return Path(artifact_path).with_suffix(".json")


def load_bundled(name):
    """One of scikit-learn's bundled tables (no download), its target as class names (not integer codes)."""
    data = BUNDLED[name]()
    target = np.asarray(data.target_names)[data.target]
    if name == "iris":
        columns = [Column(feature, label, "number", data.data[:, i].tolist(), IRIS["unit"], IRIS["allowed"])
                   for i, (feature, label) in enumerate(IRIS["features"])]
        return Table("iris", columns, target, IRIS["source"], class_labels=IRIS["class_labels"], texts=IRIS["texts"])
    names = check_names(data.feature_names)
    columns = [Column(feature, label, "number", data.data[:, i].tolist())
               for i, (feature, label) in enumerate(zip(names, data.feature_names))]
    return Table(name.replace("_", "-"), columns, target, f"scikit-learn load_{name}, {len(target)} samples",
                 texts={"source": f"scikit-learn's {name.replace('_', ' ')} data"})


def evaluate(estimator, X_train, X_test, y_train, y_test, seed):
    """Fit on the training split and measure on the held-out split and by cross-validation."""
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    cv_scores = cross_val_score(estimator, X_train, y_train, cv=folds)
    estimator.fit(X_train, y_train)
    predicted = estimator.predict(X_test)
    return {
        "test_accuracy": round(float(accuracy_score(y_test, predicted)), 4),
        "cv_folds": CV_FOLDS,
        "cv_accuracy_mean": round(float(cv_scores.mean()), 4),
        "cv_accuracy_std": round(float(cv_scores.std()), 4),
        **report_classes(y_test, predicted),
    }


def file_sha256(path):
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path, write):
    """Write through a temporary file in the same folder, then rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as output:
            write(output)
            output.flush()
            os.fsync(output.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def build_estimator(table, algorithm, seed):
    """The algorithm's estimator for this table: categories one-hot encoded inside the pipeline, so that the artifact
    takes the raw values; an all-numeric table gets the algorithm as it is."""
    estimator = ALGORITHMS[algorithm](seed)
    kinds = [column.kind for column in table.columns]
    if "category" not in kinds:
        return estimator
    numbers = [i for i, kind in enumerate(kinds) if kind == "number"]
    categories = [i for i, kind in enumerate(kinds) if kind == "category"]
    encode = ColumnTransformer([("numbers", StandardScaler(), numbers),
                                ("categories", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categories)])
    return make_pipeline(encode, estimator)


def read_table(args):
    """The table the command line names: a CSV file, or a bundled dataset."""
    if args.csv:
        return read_csv(args.csv, args.target, args.drop)
    return load_bundled(args.dataset)


def fit(args, table):
    """(estimator, training split, facts): a model trained and evaluated on the table, or the user's own adopted."""
    X, y = table.matrix(), table.target
    if args.fitted:
        return adopt(args.fitted, X, y)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=args.test_size, stratify=y,
                                                        random_state=args.seed)
    estimator = build_estimator(table, args.model, args.seed)
    started = time.perf_counter()
    metrics = evaluate(estimator, X_train, X_test, y_train, y_test, args.seed)
    training = {"seed": args.seed, "test_size": args.test_size, "train_samples": int(len(X_train)),
                "training_seconds": round(time.perf_counter() - started, 3)}
    return estimator, X_train, {"algorithm": args.model, "metrics": metrics, "training": training}


def adopt(path, X, y):
    """A classifier the user fitted elsewhere, checked on every row of the table; its metrics are the table's."""
    try:
        estimator = joblib.load(path)  # the user's own file, named on their own command line
    except Exception as err:
        raise TableError(f"cannot load --fitted {path}: {err}") from None
    if not hasattr(estimator, "predict_proba") or not hasattr(estimator, "classes_"):
        raise TableError(f"--fitted {path} is not a fitted classifier with predict_proba")
    try:
        predicted = np.asarray(estimator.predict(X)).astype(str)
        estimator.predict_proba(X[:1])
    except Exception as err:
        raise TableError(f"--fitted {path} cannot predict this table's rows: {str(err).splitlines()[0]}") from None
    unknown = sorted(set(y) - {str(name) for name in estimator.classes_})
    if unknown:
        raise TableError(f"--fitted {path} does not know the table's class {unknown[0]!r}")
    metrics = {"table_accuracy": round(float(accuracy_score(y, predicted)), 4), **report_classes(y, predicted)}
    return estimator, X, {"algorithm": "fitted elsewhere", "metrics": metrics,
                          "training": {"fitted": Path(path).name, "train_samples": int(len(X))}}


def train(args):
    """Train (or adopt), evaluate and save as the parsed command line says; return the metadata written."""
    table = read_table(args)
    estimator, X_train, facts = fit(args, table)
    facts["name"] = args.name or ("iris-classifier" if table.name == "iris" else f"{table.name}-classifier")
    facts["seed"], facts["keep_rows"] = args.seed, not args.no_rows
    output = args.output or MODEL_FOLDER / f"{table.name}.joblib"
    write_atomically(output, lambda handle: joblib.dump(estimator, handle))
    sha256 = file_sha256(output)
    metadata = build_metadata(table, estimator, X_train, facts, sha256)
    text = json.dumps(metadata, indent=2) + "\n"
    write_atomically(metadata_path(output), lambda handle: handle.write(text.encode()))
    return metadata, output


def format_report(metadata, output):
    """The human-readable training report."""
    metrics = metadata["metrics"]
    lines = [f"Trained {metadata['algorithm']} ({metadata['name']} version {metadata['version']}) on "
             f"{metadata['training']['dataset']}"]
    if "table_accuracy" in metrics:
        lines.append(f"Accuracy on the whole table: {metrics['table_accuracy']:.3f}")
    else:
        lines += [f"Held-out accuracy:  {metrics['test_accuracy']:.3f}",
                  f"{CV_FOLDS}-fold CV accuracy: {metrics['cv_accuracy_mean']:.3f} ± {metrics['cv_accuracy_std']:.3f}"]
    width = max(12, *(len(name) + 2 for name in metrics["per_class"]))
    lines += ["", f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, scores in metrics["per_class"].items():
        lines.append(f"{name:<{width}}{scores['precision']:>10.3f}{scores['recall']:>10.3f}"
                     f"{scores['f1-score']:>10.3f}{scores['support']:>10.0f}")
    labels = metrics["confusion_matrix"]["labels"]
    lines += ["", "Confusion matrix (rows: true, columns: predicted)",
              " " * width + "".join(f"{n:>{width}}" for n in labels)]
    for name, row in zip(labels, metrics["confusion_matrix"]["matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{count:>{width}}" for count in row))
    lines += ["", f"Saved {output}", f"  and {metadata_path(output)}"]
    return "\n".join(lines)


def test_size_fraction(text):
    """argparse type: a fraction strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


class OneLineErrorParser(argparse.ArgumentParser):
    """Report a bad command line in one line (argparse adds the whole usage first); --help still shows it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def model_name(text):
    """argparse type: a model name as it goes into URLs (/v2/models/<name>)."""
    if normalise(text).replace("_", "-") != text:
        raise argparse.ArgumentTypeError(f"must be lower-case letters, digits and '-', got {text!r}")
    return text


def parse_args(argv=None):
    parser = OneLineErrorParser(description="Train a classifier on a table and save it, with its metadata, for api.py.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=sorted(BUNDLED), default=DEFAULT_DATASET,
                        help=f"one of scikit-learn's bundled tables (default: {DEFAULT_DATASET})")
    source.add_argument("--csv", type=Path, help="a table of your own: a CSV file in UTF-8 with a header row")
    parser.add_argument("--target", help="with --csv: the column that holds the classes")
    parser.add_argument("--drop", action="append", default=[], metavar="COLUMN",
                        help="with --csv: a column to leave out, such as an ID (repeatable)")
    parser.add_argument("--fitted", type=Path, metavar="FILE",
                        help="with --csv: a classifier you fitted elsewhere (joblib), adopted instead of training one")
    parser.add_argument("--name", type=model_name,
                        help="the model's name (default: from the dataset or file, e.g. iris-classifier)")
    parser.add_argument("--model", choices=sorted(ALGORITHMS), default=DEFAULT_MODEL,
                        help=f"algorithm to train (default: {DEFAULT_MODEL})")
    parser.add_argument("--output", type=Path,
                        help="where to write the joblib artifact; the metadata goes beside it as .json "
                             "(default: model/<dataset or file name>.joblib next to this script)")
    parser.add_argument("--no-rows", action="store_true",
                        help="keep no training rows in the metadata (a table that must not ship inside an image): "
                             "explanations then have contributions and no neighbours")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"random seed for the split, cross-validation and the model (default: {DEFAULT_SEED})")
    parser.add_argument("--test-size", type=test_size_fraction, default=DEFAULT_TEST_SIZE,
                        help=f"fraction of the data held out for testing (default: {DEFAULT_TEST_SIZE})")
    args = parser.parse_args(argv)
    if args.csv and not args.target:
        parser.error("--csv needs --target, the column that holds the classes")
    if not args.csv and (args.target or args.drop or args.fitted):
        parser.error("--target, --drop and --fitted go with --csv")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        metadata, output = train(args)
    except TableError as err:
        sys.exit(f"train.py: {err}")
    except OSError as err:
        sys.exit(f"train.py: cannot write {err.filename or args.output}: {err.strerror}")
    print(format_report(metadata, output))


if __name__ == "__main__":
    main()
