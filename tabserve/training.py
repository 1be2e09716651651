"""Fitting a model to a table and measuring it, or adopting one fitted elsewhere: what train.py runs.

    estimator, (X_train, y_train), facts = fit(table, algorithm="ridge", seed=42, test_size=0.25, level=0.9)
    estimator, (X, y), facts = adopt(load_fitted(path), path, table, level=0.9, seed=42)

facts holds what the card records of the fitting: the algorithm, the metrics, the training's own figures and, for a
regressor, its interval (intervals.py). The algorithms go by the same names for both tasks where both have them.
"""

import io
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.base import is_regressor
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score, train_test_split
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.svm import SVC

from tabserve.artifacts import FORMAT, ArtifactError, format_of, from_bytes
from tabserve.dates import DateParts
from tabserve.frames import FrameError, frame_columns, frame_maker
from tabserve.intervals import (
    CROSS_CONFORMAL,
    CROSS_GUARANTEE,
    FOLDS,
    SPLIT,
    CannotRefit,
    TooFewRows,
    conformal_half_width,
    cross_fitted_coverage,
    out_of_fold_residuals,
)
from tabserve.levels import RareLevels
from tabserve.tables import TableError

CV_FOLDS = 5
DEFAULT_MODELS = {"classification": "logistic_regression", "regression": "ridge"}
FIGURES = 6  # significant digits a regression metric keeps

# Scaling sits in a pipeline wherever the algorithm is sensitive to feature scale; trees are not.
ALGORITHMS = {
    "classification": {
        "logistic_regression": lambda seed: make_pipeline(StandardScaler(),
                                                          LogisticRegression(max_iter=1000, random_state=seed)),
        "random_forest": lambda seed: RandomForestClassifier(n_estimators=100, random_state=seed),
        "gradient_boosting": lambda seed: HistGradientBoostingClassifier(random_state=seed),
        "knn": lambda seed: make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5)),
        # SVC has no probabilities of its own: calibrate its scores (scikit-learn 1.9's advice over probability=True).
        "svc": lambda seed: make_pipeline(StandardScaler(),
                                          CalibratedClassifierCV(SVC(random_state=seed), ensemble=False)),
    },
    "regression": {
        "ridge": lambda seed: make_pipeline(StandardScaler(), Ridge()),
        "random_forest": lambda seed: RandomForestRegressor(n_estimators=100, random_state=seed),
        "gradient_boosting": lambda seed: HistGradientBoostingRegressor(random_state=seed),
        "knn": lambda seed: make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=5)),
    },
}
NATIVE_CATEGORIES = {"gradient_boosting"}  # these take categories as codes, and missing values, themselves
MISSING_LEVEL = "(missing)"  # the category a missing category becomes, for the models that need one


def algorithm_names():
    return sorted({name for algorithms in ALGORITHMS.values() for name in algorithms})


def choose_algorithm(task, requested):
    """The algorithm for this task: requested, or the task's default; TableError for one of the other task."""
    algorithm = requested or DEFAULT_MODELS[task]
    if algorithm not in ALGORITHMS[task]:
        raise TableError(f"--model {algorithm} does not predict a {'quantity' if task == 'regression' else 'class'}: "
                         f"for this {task}, choose {', '.join(sorted(ALGORITHMS[task]))}")
    return algorithm


def significant(value):
    return float(f"{float(value):.{FIGURES}g}")


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


def regression_errors(y_true, predicted, prefix):
    return {f"{prefix}_mae": significant(mean_absolute_error(y_true, predicted)),
            f"{prefix}_rmse": significant(np.sqrt(mean_squared_error(y_true, predicted))),
            f"{prefix}_r2": round(float(r2_score(y_true, predicted)), 4)}


def interval_facts(residuals, level, seed, method=SPLIT, **extra):
    """(metrics, card entry) of the conformal interval calibrated on these residuals of rows the model never saw."""
    try:
        half_width = conformal_half_width(residuals, level)
    except TooFewRows as err:
        raise TableError(str(err)) from None
    coverage = cross_fitted_coverage(residuals, level, seed=seed)
    metrics = {"interval_level": level, "interval_width": significant(2 * half_width),
               "interval_coverage": round(coverage, 4)}
    entry = {"level": level, "half_width": half_width, "calibration_rows": len(residuals), "method": method, **extra}
    return metrics, entry


def adopted_interval(estimator, data, y, level, seed, calibration=None):
    """(metrics, card entry) of the interval of a regressor fitted elsewhere, calibrated on rows it never saw: the
    --calibration rows (data, y, file name), else the table's rows each predicted by a copy refitted without them
    (cross-conformal). (metrics saying why, None) when neither is possible: it is served without an interval."""
    if calibration is not None:
        rows, truth, name = calibration
        residuals = truth - np.asarray(estimator.predict(rows), dtype=float)
        return interval_facts(residuals, level, seed, f"split conformal on the {len(truth)} rows of --calibration "
                                                      f"{name}, which the model never saw")
    try:
        residuals = out_of_fold_residuals(estimator, data, y, FOLDS, seed)
    except CannotRefit as err:
        return {"interval_level": level, "interval_unavailable": f"the model could not be copied and refitted on "
                f"part of the table to calibrate one ({err}); give rows it never saw with --calibration"}, None
    return interval_facts(residuals, level, seed, CROSS_CONFORMAL, folds=FOLDS, guarantee=CROSS_GUARANTEE)


def evaluate(estimator, split, seed, task, level):
    """Fit on the training split; measure on the held-out split and by cross-validation. (metrics, interval, the
    held-out predictions)."""
    X_train, X_test, y_train, y_test = split
    if task == "classification":
        folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
        cv_scores = cross_val_score(estimator, X_train, y_train, cv=folds)
        predicted = estimator.fit(X_train, y_train).predict(X_test)
        metrics = {"test_accuracy": round(float(accuracy_score(y_test, predicted)), 4), "cv_folds": CV_FOLDS,
                   "cv_accuracy_mean": round(float(cv_scores.mean()), 4),
                   "cv_accuracy_std": round(float(cv_scores.std()), 4), **report_classes(y_test, predicted)}
        return metrics, None, predicted
    folds = KFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    cv_scores = cross_val_score(estimator, X_train, y_train, cv=folds, scoring="r2")
    predicted = estimator.fit(X_train, y_train).predict(X_test)
    interval_metrics, interval = interval_facts(y_test - predicted, level, seed)
    return {**regression_errors(y_test, predicted, "test"),
            **regression_errors(y_test, np.full(len(y_test), y_train.mean()), "baseline"),
            "cv_folds": CV_FOLDS, "cv_r2_mean": round(float(cv_scores.mean()), 4),
            "cv_r2_std": round(float(cv_scores.std()), 4), **interval_metrics}, interval, predicted


def build_estimator(table, algorithm, seed):
    """The algorithm's estimator for this table, taking the raw values: categories one-hot encoded inside the
    pipeline (or, for gradient boosting, as codes it splits on natively), an open category's rare levels grouped
    first (levels.py), dates turned into their parts (dates.py); an all-numeric table gets it as it is. Where training
    had missing values, a missing number (or date part) becomes the training split's median with an indicator that it
    was missing, and a missing category a level of its own (MISSING_LEVEL); gradient boosting needs neither."""
    estimator = ALGORITHMS[table.task][algorithm](seed)
    columns, native = table.columns, algorithm in NATIVE_CATEGORIES
    numbers, dates, categories = ([i for i, column in enumerate(columns) if column.kind == kind]
                                  for kind in ("number", "date", "category"))
    holes = set() if native else {column.kind for column in columns if column.missing}
    if not categories and not dates:
        return make_pipeline(median_imputer(), estimator) if holes else estimator
    encoded = ("categories", category_steps([columns[i] for i in categories], native, "category" in holes),
               categories)
    scaled = ("numbers", "passthrough" if native else chain(*([median_imputer()] if "number" in holes else []),
                                                             StandardScaler()), numbers)
    parts = ("dates", date_steps([columns[i] for i in dates], native, "date" in holes), dates)
    steps = [encoded, scaled, parts] if native else [scaled, encoded, parts]  # native: the categories' codes first
    if native and categories:
        estimator.set_params(categorical_features=list(range(len(categories))))
    return make_pipeline(ColumnTransformer([step for step in steps if step[2]]), estimator)


def median_imputer():
    return SimpleImputer(strategy="median", add_indicator=True)


def chain(*steps):
    """One step as it is, several as a pipeline (so that a table without holes or dates is fitted as before)."""
    return steps[0] if len(steps) == 1 else make_pipeline(*steps)


def category_steps(columns, native, holes):
    """Categories as the model takes them: an open one's rare levels grouped, then codes (gradient boosting: a
    missing value stays NaN) or one-hot columns (a missing value a level of its own, where training had some)."""
    grouped = [RareLevels([column.levels for column in columns])] if any(c.levels for c in columns) else []
    if native:
        return chain(*grouped, OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1))
    filled = [SimpleImputer(strategy="constant", fill_value=MISSING_LEVEL)] if holes else []
    return chain(*grouped, *filled, OneHotEncoder(handle_unknown="ignore", sparse_output=False))


def date_steps(columns, native, holes):
    """Dates as their parts (dates.DateParts; the hour where a column holds date-times), scaled, a missing date's
    parts the training medians; gradient boosting takes the parts as they are."""
    parts = DateParts(hours=any(column.form == "date-time" for column in columns))
    return parts if native else chain(parts, *([median_imputer()] if holes else []), StandardScaler())


def missing_policy(algorithm):
    """What the model assumes of a missing value, as the card says it (describe.describe_input)."""
    return "native" if algorithm in NATIVE_CATEGORIES else "impute"


def fit(table, algorithm, seed, test_size, level):
    """(estimator, (X_train, y_train), facts): a model trained on the table and measured."""
    X, y = table.matrix(), table.target
    stratify = y if table.task == "classification" else None
    split = train_test_split(X, y, test_size=test_size, stratify=stratify, random_state=seed)
    estimator = build_estimator(table, algorithm, seed)
    started = time.perf_counter()
    metrics, interval, predicted = evaluate(estimator, split, seed, table.task, level)
    training = {"seed": seed, "test_size": test_size, "train_samples": int(len(split[0])),
                "training_seconds": round(time.perf_counter() - started, 3), "task_decided": table.task_reason,
                "rows_without_target": table.dropped_rows}
    return estimator, (split[0], split[2]), {"algorithm": algorithm, "metrics": metrics, "training": training,
                                             "interval": interval, "missing": missing_policy(algorithm), "frame": None,
                                             "held_out": predicted}


def load_fitted(path, option="--fitted"):
    """A model the user fitted elsewhere, from their own file named on their own command line: a skops file, built
    as the API builds one (artifacts.py), or a pickle (joblib's), unpickled after saying once what that means."""
    try:
        data = Path(path).read_bytes()
        if format_of(data) == FORMAT:
            return from_bytes(data, path)
        print(f"Note: {path} is a pickle, and unpickling runs whatever code it names: adopt only a file you made "
              "yourself. It is written again as skops, which the API loads without running code.")
        return joblib.load(io.BytesIO(data))
    except ArtifactError as err:
        raise TableError(f"cannot load {option} {err}") from None
    except ModuleNotFoundError as err:
        raise TableError(f"cannot load {option} {path}: it needs the module {err.name!r}: pip install it") from None
    except AttributeError as err:  # pickle's "Can't get attribute 'f' on <module '__main__' ...>"
        raise TableError(f"cannot load {option} {path}: it refers to something defined where it was fitted, not in "
                         f"an installed package (a notebook's function?): {err}") from None
    except Exception as err:
        raise TableError(f"cannot load {option} {path}: {err}") from None


def fitted_task(estimator, path, requested):
    """The task of a fitted model; TableError when --task asks for the other one."""
    task = "regression" if is_regressor(estimator) else "classification"
    if requested and requested != task:
        raise TableError(f"--fitted {path} is a {'regressor' if task == 'regression' else 'classifier'}, "
                         f"but --task says {requested}")
    return task


def class_names(estimator, y, path, labels=None):
    """The table's class names of a classifier's classes, and its class codes when they differ: a model fitted on
    the codes 0..k-1 of the table's k classes (as XGBoost requires) gets them in sorted order (LabelEncoder's), or as
    labels gives them. TableError for classes the model does not know."""
    classes = [str(name) for name in estimator.classes_]
    if labels is None and set(y) <= set(classes):
        return classes, None
    codes = [int(code) if float(code).is_integer() else None for code in estimator.classes_]
    if codes != list(range(len(codes))):
        unknown = sorted(set(y) - set(classes))
        raise TableError(f"--fitted {path} does not know the table's class {unknown[0]!r}")
    names = list(labels) if labels is not None else sorted(set(y))
    if len(names) != len(codes) or not set(y) <= set(names):
        raise TableError(f"--fitted {path} answers {len(codes)} class codes; the table has the classes "
                         f"{', '.join(sorted(set(y)))}" + (f" and --labels names {', '.join(names)}" if labels else ""))
    return names, codes


def adopt(estimator, path, table, level, seed, labels=None, calibration=None):
    """A model fitted elsewhere, checked on every row of the table; its metrics are the table's. A regressor's
    interval is calibrated on rows it never saw (adopted_interval: calibration, a Table of them, or copies refitted
    on folds of the table). A model fitted on a DataFrame is given one (frames.py); a classifier of class codes gets
    the table's class names."""
    X, y = table.matrix(), table.target
    try:
        columns = frame_columns(estimator, [column.label for column in table.columns])
    except FrameError as err:
        raise TableError(f"--fitted {path} {err}") from None
    as_given = (lambda rows: rows) if columns is None else frame_maker([(c.label, c.kind) for c in table.columns],
                                                                       columns)
    data = as_given(X)
    if calibration is not None:
        calibration = (as_given(calibration.matrix()), calibration.target, calibration.source)
    if table.task == "classification" and not (hasattr(estimator, "predict_proba") and hasattr(estimator, "classes_")):
        raise TableError(f"--fitted {path} is not a fitted classifier with predict_proba")
    try:
        predicted = np.asarray(estimator.predict(data))
        if table.task == "classification":
            estimator.predict_proba(data[:1])
    except Exception as err:
        raise TableError(f"--fitted {path} cannot predict this table's rows: {str(err).splitlines()[0]}") from None
    training = {"fitted": Path(path).name, "train_samples": int(len(X)), "task_decided": "the fitted model's",
                "rows_without_target": table.dropped_rows}
    facts = {"algorithm": "fitted elsewhere", "interval": None, "training": training, "missing": "adopted",
             "frame": columns, "held_out": predicted}  # the table's rows: there is no held-out split here
    if table.task == "regression":
        interval_metrics, facts["interval"] = adopted_interval(estimator, data, y, level, seed, calibration)
        return estimator, (X, y), {**facts, "metrics": {**regression_errors(y, predicted, "table"),
                                                        **interval_metrics}}
    names, codes = class_names(estimator, y, path, labels)
    predicted = np.array([names[int(code)] for code in predicted] if codes else predicted.astype(str))
    facts["held_out"] = predicted  # as class names
    return estimator, (X, y), {**facts, "classes": names, "class_codes": codes,
                               "metrics": {"table_accuracy": round(float(accuracy_score(y, predicted)), 4),
                                           **report_classes(y, predicted)}}
