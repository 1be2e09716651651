"""Train the iris classifier and save it, with its metadata, where api.py looks for it.

Usage:
    python train.py                                  # logistic regression, seed 42
    python train.py --model random_forest --seed 7 --output /tmp/rf.joblib

It trains on scikit-learn's bundled iris data (no network), holds out a stratified test split, prints a report
(held-out accuracy, 5-fold cross-validation, per-class precision/recall/F1, confusion matrix), and writes two files
atomically: the joblib artifact (`--output`) and beside it a JSON metadata file with the same name and a `.json`
suffix. The API reads the metadata first and checks the artifact's sha256 before it unpickles anything.
"""

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import joblib
import numpy as np
import sklearn
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

MODEL_NAME = "iris-classifier"
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "model" / "iris.joblib"
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


def metadata_path(artifact_path):
    """The metadata file that sits beside an artifact."""
    return Path(artifact_path).with_suffix(".json")


def load_data():
    """Iris as a feature matrix and species names (not integer codes), so the model answers in words."""
    iris = load_iris()
    return iris.data, np.asarray(iris.target_names)[iris.target]


def evaluate(estimator, X_train, X_test, y_train, y_test, seed):
    """Fit on the training split and measure on the held-out split and by cross-validation."""
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    cv_scores = cross_val_score(estimator, X_train, y_train, cv=folds)
    estimator.fit(X_train, y_train)
    predicted = estimator.predict(X_test)
    classes = list(estimator.classes_)
    return {
        "test_accuracy": round(float(accuracy_score(y_test, predicted)), 4),
        "cv_folds": CV_FOLDS,
        "cv_accuracy_mean": round(float(cv_scores.mean()), 4),
        "cv_accuracy_std": round(float(cv_scores.std()), 4),
        "per_class": {
            name: {key: round(float(value), 4) for key, value in scores.items()}
            for name, scores in classification_report(y_test, predicted, output_dict=True).items()
            if name in classes
        },
        "confusion_matrix": {
            "labels": classes,
            "matrix": confusion_matrix(y_test, predicted, labels=classes).tolist(),
        },
    }


def describe(estimator):
    """A short name such as 'Pipeline(StandardScaler, LogisticRegression)'."""
    steps = getattr(estimator, "steps", None)
    if steps is None:
        return type(estimator).__name__
    return f"{type(estimator).__name__}({', '.join(type(step).__name__ for _, step in steps)})"


def simple_params(estimator):
    """The estimator's parameters that JSON can hold (nested estimators are described by their step names)."""
    params = estimator.get_params(deep=True)
    return {key: value for key, value in sorted(params.items())
            if value is None or isinstance(value, (bool, int, float, str))}


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


def build_metadata(algorithm, estimator, X_train, metrics, args, seconds, sha256):
    """Everything a person or the API needs to know about the artifact, readable without unpickling it."""
    return {
        "name": MODEL_NAME,
        # The version is derived from the artifact's bytes, so it changes exactly when the artifact does.
        "version": sha256[:12],
        "algorithm": algorithm,
        "estimator": describe(estimator),
        "parameters": simple_params(estimator),
        "features": list(FEATURES),
        "classes": [str(name) for name in estimator.classes_],
        "feature_ranges": {
            name: {"min": float(X_train[:, i].min()), "max": float(X_train[:, i].max())}
            for i, name in enumerate(FEATURES)
        },
        "metrics": metrics,
        "training": {
            "dataset": "scikit-learn load_iris (Fisher, 1936), 150 samples",
            "seed": args.seed,
            "test_size": args.test_size,
            "train_samples": int(len(X_train)),
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "training_seconds": round(seconds, 3),
        },
        "versions": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "joblib": joblib.__version__,
            "numpy": np.__version__,
        },
        "sha256": sha256,
    }


def train(args):
    """Train, evaluate and save as the parsed command line says; return the metadata that was written."""
    X, y = load_data()
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=args.test_size, stratify=y, random_state=args.seed
    )
    estimator = ALGORITHMS[args.model](args.seed)
    started = time.perf_counter()
    metrics = evaluate(estimator, X_train, X_test, y_train, y_test, args.seed)
    seconds = time.perf_counter() - started

    write_atomically(args.output, lambda handle: joblib.dump(estimator, handle))
    sha256 = file_sha256(args.output)
    metadata = build_metadata(args.model, estimator, X_train, metrics, args, seconds, sha256)
    text = json.dumps(metadata, indent=2) + "\n"
    write_atomically(metadata_path(args.output), lambda handle: handle.write(text.encode()))
    return metadata


def format_report(metadata, output):
    """The human-readable training report."""
    metrics = metadata["metrics"]
    lines = [
        f"Trained {metadata['algorithm']} ({metadata['name']} version {metadata['version']}) "
        f"in {metadata['training']['training_seconds']:.2f} s",
        f"Held-out accuracy:  {metrics['test_accuracy']:.3f}",
        f"{CV_FOLDS}-fold CV accuracy: {metrics['cv_accuracy_mean']:.3f} ± {metrics['cv_accuracy_std']:.3f}",
        "",
        f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    for name, scores in metrics["per_class"].items():
        lines.append(f"{name:<12}{scores['precision']:>10.3f}{scores['recall']:>10.3f}"
                     f"{scores['f1-score']:>10.3f}{scores['support']:>10.0f}")
    labels = metrics["confusion_matrix"]["labels"]
    lines += ["", "Confusion matrix (rows: true, columns: predicted)", " " * 12 + "".join(f"{n:>12}" for n in labels)]
    for name, row in zip(labels, metrics["confusion_matrix"]["matrix"]):
        lines.append(f"{name:<12}" + "".join(f"{count:>12}" for count in row))
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


def parse_args(argv=None):
    parser = OneLineErrorParser(description="Train the iris classifier and save it for api.py.")
    parser.add_argument("--model", choices=sorted(ALGORITHMS), default=DEFAULT_MODEL,
                        help=f"algorithm to train (default: {DEFAULT_MODEL})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="where to write the joblib artifact; the metadata goes beside it as .json "
                             "(default: model/iris.joblib next to this script)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"random seed for the split, cross-validation and the model (default: {DEFAULT_SEED})")
    parser.add_argument("--test-size", type=test_size_fraction, default=DEFAULT_TEST_SIZE,
                        help=f"fraction of the data held out for testing (default: {DEFAULT_TEST_SIZE})")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        metadata = train(args)
    except OSError as err:
        sys.exit(f"train.py: cannot write {err.filename or args.output}: {err.strerror}")
    print(format_report(metadata, args.output))


if __name__ == "__main__":
    main()
