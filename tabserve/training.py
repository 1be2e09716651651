"""Fitting a model to a table, measuring it, or adopting one fitted elsewhere: what train.py runs.

    estimator, X_train, facts = fit(table, algorithm="logistic_regression", seed=42, test_size=0.25)
    estimator, X, facts = adopt(Path("mine.joblib"), table)

facts holds what the card records of the fitting: the algorithm, the metrics and the training's own figures.
"""

import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC

from tabserve.tables import TableError

CV_FOLDS = 5
DEFAULT_MODEL = "logistic_regression"

# Scaling sits in a pipeline wherever the algorithm is sensitive to feature scale; trees are not.
ALGORITHMS = {
    "logistic_regression": lambda seed: make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed)
    ),
    "random_forest": lambda seed: RandomForestClassifier(n_estimators=100, random_state=seed),
    "knn": lambda seed: make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5)),
    # SVC has no probabilities of its own: calibrate its scores (scikit-learn 1.9's advice over probability=True).
    "svc": lambda seed: make_pipeline(
        StandardScaler(), CalibratedClassifierCV(SVC(random_state=seed), ensemble=False)
    ),
}


def report_classes(y_true, predicted):
    """Per-class precision, recall and F1, and the confusion matrix, of these predictions."""
    classes = sorted(set(y_true) | set(predicted))
    return {
        "per_class": {
            name: {key: round(float(value), 4) for key, value in scores.items()}
            for name, scores in classification_report(y_true, predicted, output_dict=True, zero_division=0).items()
            if name in classes
        },
        "confusion_matrix": {"labels": classes, "matrix": confusion_matrix(y_true, predicted, labels=classes).tolist()},
    }


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


def build_estimator(table, algorithm, seed):
    """The algorithm's estimator for this table: categories one-hot encoded inside the pipeline, so that the artifact
    takes the raw values; an all-numeric table gets the algorithm as it is."""
    estimator = ALGORITHMS[algorithm](seed)
    kinds = [column.kind for column in table.columns]
    if "category" not in kinds:
        return estimator
    numbers = [i for i, kind in enumerate(kinds) if kind == "number"]
    categories = [i for i, kind in enumerate(kinds) if kind == "category"]
    one_hot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    encode = ColumnTransformer([("numbers", StandardScaler(), numbers), ("categories", one_hot, categories)])
    return make_pipeline(encode, estimator)


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


