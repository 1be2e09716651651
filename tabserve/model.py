"""The model as the API serves it: load train.py's artifact safely, once, and predict with it.

    model = load_model("model/iris.joblib")     # checks, unpickles and self-tests, or raises StartupError
    answers = predict(model, rows)              # rows: an (n, inputs) array of values checked by inputs.py

A joblib file is a pickle, and unpickling runs code. load_model() reads the metadata that train.py wrote beside the
artifact first, and unpickles only when the artifact's sha256 matches it and the installed scikit-learn is the one
that trained it (scikit-learn's model persistence guide). The path comes from configuration, never from a client.

The NumPy fast paths are optional, verified speed-ups that a reader may delete: for a scaler and logistic regression
of numeric inputs (the default model, linear_predictor) scikit-learn's predict_proba in a few µs instead of about
400 µs, and for a random forest of them (forest_predictor) in 0.2 ms instead of 3 ms. Each is used only when it
matches scikit-learn within 1e-9 on the reference rows that train.py kept in the metadata. Every other model goes
through scikit-learn.
"""

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import sklearn
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tabserve.explain import Explainer
from tabserve.inputs import Schema
from tabserve.settings import StartupError
from tabserve.wsgi import RequestError

MAX_ROWS = 10_000  # rows predicted in one call, at most
PROBABILITY_DIGITS = 6
FAST_PATH_TOLERANCE = 1e-9
SELF_TEST_TOLERANCE = 1e-6  # another machine's floating point may differ in the last digits, never by this much
REQUIRED_METADATA = ("name", "version", "algorithm", "features", "inputs", "classes", "class_labels", "reference",
                     "explanation", "versions", "sha256")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Model:
    """A loaded estimator with what the API needs from its metadata, computed once."""

    estimator: object
    metadata: dict
    schema: Schema  # the inputs and their rules
    classes: tuple
    predict_proba: object  # rows -> probabilities, see choose_predictor()
    engine: str  # "numpy" (the linear fast path), "numpy forest" (the forest's) or "scikit-learn"
    explainer: Explainer  # contributions and neighbours (explain.py)

    @property
    def reference(self):
        return {"name": self.metadata["name"], "version": self.metadata["version"]}


@dataclass(frozen=True)
class Predictions:
    """What the model says of n rows, as arrays, for any protocol to present."""

    best: np.ndarray  # (n,): index of the most probable class in Model.classes
    probabilities: np.ndarray  # (n, classes), rounded to PROBABILITY_DIGITS
    outside: np.ndarray  # (n, inputs) booleans: the number lies outside the range seen in training


def read_metadata(metadata_path):
    """The JSON metadata train.py wrote beside the artifact."""
    try:
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StartupError(f"model metadata {metadata_path} not found: train a model first with "
                           "'python train.py'") from None
    except (OSError, ValueError) as err:
        raise StartupError(f"cannot read model metadata {metadata_path}: {err}") from None
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise StartupError(f"model metadata {metadata_path} lacks {', '.join(missing)}: retrain with 'python train.py'")
    return metadata


def verify_artifact(model_path, metadata):
    """Refuse an artifact built by another scikit-learn or whose bytes are not the ones train.py recorded."""
    trained_with = metadata["versions"].get("scikit-learn")
    if trained_with != sklearn.__version__:
        raise StartupError(f"model {model_path} was trained with scikit-learn {trained_with} but "
                           f"{sklearn.__version__} is installed: retrain it with 'python train.py'")
    try:
        with open(model_path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as err:
        raise StartupError(f"cannot read model artifact {model_path}: {err.strerror}") from None
    if not hmac.compare_digest(digest, str(metadata["sha256"])):
        raise StartupError(f"model artifact {model_path} does not match the sha256 in its metadata "
                           "(corrupt or replaced): refusing to load it")


def load_model(model_path):
    """Load and check the artifact once, at start-up."""
    model_path = Path(model_path)
    metadata = read_metadata(model_path.with_suffix(".json"))
    verify_artifact(model_path, metadata)
    # Only our own artifact, whose hash matched, gets here to be unpickled.
    try:
        estimator = joblib.load(model_path)
    except Exception as err:
        raise StartupError(f"cannot load model artifact {model_path}: {err}") from None
    schema = Schema(metadata["inputs"])
    classes = tuple(str(name) for name in getattr(estimator, "classes_", ()))
    if list(schema.names) != metadata["features"] or getattr(estimator, "n_features_in_", None) not in (
            None, len(schema.inputs)):
        raise StartupError(f"model {model_path} does not take the inputs its metadata describes "
                           f"({', '.join(schema.names)}): retrain it with 'python train.py'")
    if list(classes) != metadata["classes"]:
        raise StartupError(f"model {model_path} answers the classes {', '.join(classes)}, its metadata "
                           f"{', '.join(map(str, metadata['classes']))}: retrain it with 'python train.py'")
    predict_proba, engine = choose_predictor(estimator, schema, reference_rows(schema, metadata))
    return Model(estimator=estimator, metadata=metadata, schema=schema, classes=classes,
                 predict_proba=predict_proba, engine=engine, explainer=Explainer(schema, metadata["explanation"]))


def reference_rows(schema, metadata):
    """The reference rows that train.py kept, as the estimator takes them."""
    return schema.matrix(metadata["reference"]["rows"])


def sklearn_predictor(estimator):
    """predict_proba through scikit-learn, skipping the input checks that the API has already made."""
    def predict_proba(rows):
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            return estimator.predict_proba(rows)
    return predict_proba


def linear_predictor(estimator):
    """The optional fast path: StandardScaler + LogisticRegression as one matrix product and a softmax (or, for two
    classes, the logistic function, as scikit-learn computes them).

    scikit-learn spends about 400 µs per call on checks and dispatch that are useless for a small linear model whose
    input the API has validated; this is the same arithmetic in a few µs. None for any other estimator.
    """
    if type(estimator) is not Pipeline or [type(step) for _, step in estimator.steps] != [StandardScaler,
                                                                                          LogisticRegression]:
        return None
    scaler, classifier = estimator[0], estimator[1]
    features = classifier.coef_.shape[1]
    mean = scaler.mean_ if scaler.mean_ is not None else np.zeros(features)
    scale = scaler.scale_ if scaler.scale_ is not None else np.ones(features)
    # Fold the scaling into the weights: ((x - mean) / scale) @ coef.T + b == x @ weights.T + bias.
    weights = classifier.coef_ / scale
    bias = classifier.intercept_ - weights @ mean

    def predict_proba(rows):
        scores = rows @ weights.T + bias
        if scores.shape[1] == 1:  # two classes: one score, the logistic function of it
            scores = np.hstack([-scores, scores])
        scores -= scores.max(axis=1, keepdims=True)  # exp() of the largest score is 1: no overflow
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores

    return predict_proba


def forest_predictor(estimator):
    """The optional fast path of a random forest: each tree's own predict, averaged, as scikit-learn averages them.

    scikit-learn dispatches every tree through joblib and its checks, about 30 µs a tree whatever the rows: 3 ms
    for 100 trees, against 0.2 ms for the same trees called directly. None for any other estimator.
    """
    if type(estimator) is not RandomForestClassifier:
        return None
    trees, classes = [tree.tree_ for tree in estimator.estimators_], len(estimator.classes_)

    def predict_proba(rows):
        X = np.ascontiguousarray(rows, dtype=np.float32)  # what scikit-learn's trees take, as it converts them
        total = np.zeros((len(X), classes))
        for tree in trees:
            total += tree.predict(X)[:, :classes]
        total /= len(trees)
        return total

    return predict_proba


def choose_predictor(estimator, schema, rows):
    """The fast path where there is one and it matches scikit-learn within 1e-9 on the reference rows, else
    scikit-learn."""
    reference = sklearn_predictor(estimator)
    linear, forest = (linear_predictor(estimator), forest_predictor(estimator)) if schema.numeric else (None, None)
    fast, engine = (linear, "numpy") if linear else (forest, "numpy forest")
    if fast is None:
        return reference, "scikit-learn"
    gap = float(np.abs(fast(rows) - reference(rows)).max())
    if not gap <= FAST_PATH_TOLERANCE:
        logger.warning("the NumPy fast path differs from scikit-learn by %g on the reference rows; serving through "
                       "scikit-learn instead", gap)
        return reference, "scikit-learn"
    return fast, engine


def out_of_range(model, rows):
    """(n, inputs) booleans: true where a number lies outside what the model saw in training."""
    schema = model.schema
    numbers = schema.numbers_of(rows)
    outside = (numbers < schema.low) | (numbers > schema.high)
    if schema.numeric:
        return outside
    every = np.zeros(rows.shape, dtype=bool)
    every[:, schema.number_columns] = outside
    return every


def range_warnings(model, row, outside):
    """One sentence for each number of a row that lies outside what the model saw in training."""
    return [
        f"{item.name} {float(row[i]):g}{item.in_unit} lies outside the {item.training_range[0]:g} to "
        f"{item.training_range[1]:g}{item.in_unit} seen in training, so the answer is an extrapolation."
        for i, item in ((i, model.schema.inputs[i]) for i in np.flatnonzero(outside))
    ]


def predict_all(model, rows):
    """Predictions for an (n, inputs) array of checked rows, computed with one vectorised call."""
    probabilities = model.predict_proba(rows)
    if not np.isfinite(probabilities).all():  # the inputs' bounds are set to prevent it; never serve a NaN
        wrong = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
        raise RequestError(400, f"The model cannot compute probabilities for row {int(wrong[0])} (of {len(wrong)} "
                                "such rows): its values lie too far outside what it was trained on.")
    return Predictions(best=probabilities.argmax(axis=1), probabilities=np.round(probabilities, PROBABILITY_DIGITS),
                       outside=out_of_range(model, rows))


def answers(model, rows, predictions):
    """The predictions as /api/v1.0 answers them: a dict per row, with a warning per number out of range."""
    classes, outside = model.classes, predictions.outside
    unusual = outside.any(axis=1).tolist()
    return [
        {
            "prediction": classes[choice],
            "probabilities": dict(zip(classes, row_probabilities)),
            "warnings": range_warnings(model, rows[i], outside[i]) if unusual[i] else [],
        }
        for i, (choice, row_probabilities) in enumerate(zip(predictions.best.tolist(),
                                                            predictions.probabilities.tolist()))
    ]


def predict(model, rows):
    """/api/v1.0's answers for an (n, inputs) array of checked rows."""
    return answers(model, rows, predict_all(model, rows))


def self_test(model):
    """Predict the reference rows: a model that does not give the probabilities it gave in training must not serve."""
    rows = reference_rows(model.schema, model.metadata)
    try:
        gap = float(np.abs(model.predict_proba(rows) - np.array(model.metadata["reference"]["probabilities"])).max())
    except Exception as err:
        raise StartupError(f"the model failed its self-test prediction: {err}") from None
    if not gap <= SELF_TEST_TOLERANCE:
        raise StartupError(f"the model failed its self-test: its probabilities for the reference rows differ from "
                           f"those recorded in training by {gap:g}")
