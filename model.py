"""The model as the API serves it: load train.py's artifact safely, once, and predict with it.

    model = load_model("model/iris.joblib")     # checks, unpickles and self-tests, or raises StartupError
    answers = predict(model, rows)              # rows: an (n, 4) array of validated measurements in cm

A joblib file is a pickle, and unpickling runs code. load_model() reads the metadata that train.py wrote beside the
artifact first, and unpickles only when the artifact's sha256 matches it and the installed scikit-learn is the one
that trained it (scikit-learn's model persistence guide). The path comes from configuration, never from a client.

The NumPy fast path (linear_predictor) is an optional, verified speed-up that a reader may delete: for the default
model it computes scikit-learn's predict_proba in a few µs instead of about 400 µs, and it is used only when it
matches scikit-learn within 1e-9 on all 150 iris flowers. Without it every model goes through scikit-learn.
"""

import hashlib
import hmac
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from service import StartupError

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
MAX_CM = 100.0  # a measurement is a length in cm, greater than 0 and at most this
MAX_ROWS = 10_000  # rows predicted in one call, at most
PROBABILITY_DIGITS = 6
FAST_PATH_TOLERANCE = 1e-9
REQUIRED_METADATA = ("name", "version", "algorithm", "features", "classes", "feature_ranges", "versions", "sha256")
# Fisher's 150 flowers as scikit-learn ships them, read directly: sklearn.datasets would cost 0.1 s of imports.
IRIS_CSV = Path(sklearn.__file__).parent / "datasets" / "data" / "iris.csv"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Model:
    """A loaded estimator with what the API needs from its metadata, computed once."""

    estimator: object
    metadata: dict
    classes: tuple
    low: np.ndarray
    high: np.ndarray
    predict_proba: object  # rows -> probabilities, see choose_predictor()
    engine: str  # "numpy" (the fast path) or "scikit-learn"

    @property
    def reference(self):
        return {"name": self.metadata["name"], "version": self.metadata["version"]}


@dataclass(frozen=True)
class Predictions:
    """What the model says of n rows, as arrays, for any protocol to present."""

    best: np.ndarray  # (n,): index of the most probable class in Model.classes
    probabilities: np.ndarray  # (n, classes), rounded to PROBABILITY_DIGITS
    outside: np.ndarray  # (n, 4) booleans: the measurement lies outside the range seen in training


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
    classes = tuple(str(name) for name in getattr(estimator, "classes_", ()))
    if tuple(metadata["features"]) != FEATURES or list(classes) != metadata["classes"]:
        raise StartupError(f"model {model_path} does not take {', '.join(FEATURES)} or its classes differ "
                           "from its metadata: retrain it with 'python train.py'")
    ranges = metadata["feature_ranges"]
    predict_proba, engine = choose_predictor(estimator)
    return Model(
        estimator=estimator,
        metadata=metadata,
        classes=classes,
        low=np.array([ranges[name]["min"] for name in FEATURES]),
        high=np.array([ranges[name]["max"] for name in FEATURES]),
        predict_proba=predict_proba,
        engine=engine,
    )


def sklearn_predictor(estimator):
    """predict_proba through scikit-learn, skipping the input checks that the API has already made."""
    def predict_proba(rows):
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            return estimator.predict_proba(rows)
    return predict_proba


def linear_predictor(estimator):
    """The optional fast path: StandardScaler + multinomial LogisticRegression as one matrix product and a softmax.

    scikit-learn spends about 400 µs per call on checks and dispatch that are useless for a 4x3 linear model whose
    input the API has validated; this is the same arithmetic in a few µs. None for any other estimator.
    """
    if type(estimator) is not Pipeline or [type(step) for _, step in estimator.steps] != [StandardScaler,
                                                                                          LogisticRegression]:
        return None
    scaler, classifier = estimator[0], estimator[1]
    if len(classifier.classes_) < 3:  # two classes use the logistic function, not the softmax
        return None
    mean = scaler.mean_ if scaler.mean_ is not None else np.zeros(len(FEATURES))
    scale = scaler.scale_ if scaler.scale_ is not None else np.ones(len(FEATURES))
    # Fold the scaling into the weights: ((x - mean) / scale) @ coef.T + b == x @ weights.T + bias.
    weights = classifier.coef_ / scale
    bias = classifier.intercept_ - weights @ mean

    def predict_proba(rows):
        scores = rows @ weights.T + bias
        scores -= scores.max(axis=1, keepdims=True)  # exp() of the largest score is 1: no overflow
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores

    return predict_proba


def choose_predictor(estimator):
    """The fast path where there is one and it matches scikit-learn within 1e-9 on the iris data, else scikit-learn."""
    reference = sklearn_predictor(estimator)
    fast = linear_predictor(estimator)
    if fast is None:
        return reference, "scikit-learn"
    flowers = np.loadtxt(IRIS_CSV, delimiter=",", skiprows=1, usecols=range(len(FEATURES)))  # all 150 flowers
    gap = float(np.abs(fast(flowers) - reference(flowers)).max())
    if not gap <= FAST_PATH_TOLERANCE:
        logger.warning("the NumPy fast path differs from scikit-learn by %g on the iris data; serving through "
                       "scikit-learn instead", gap)
        return reference, "scikit-learn"
    return fast, "numpy"


def out_of_range(model, rows):
    """A boolean (n, 4) array: true where a measurement lies outside what the model saw in training."""
    return (rows < model.low) | (rows > model.high)


def range_warnings(model, row, outside):
    """One sentence for each feature of a row that lies outside what the model saw in training."""
    return [
        f"{FEATURES[i]} {row[i]:g} cm lies outside the {model.low[i]:g} to {model.high[i]:g} cm seen in training, "
        "so the answer is an extrapolation."
        for i in np.flatnonzero(outside)
    ]


def predict_all(model, rows):
    """Predictions for an (n, 4) array of validated rows, computed with one vectorised call."""
    probabilities = model.predict_proba(rows)
    return Predictions(best=probabilities.argmax(axis=1), probabilities=np.round(probabilities, PROBABILITY_DIGITS),
                       outside=out_of_range(model, rows))


def answers(model, rows, predictions):
    """The predictions as /api/v1.0 answers them: a dict per row, with a warning per measurement out of range."""
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
    """/api/v1.0's answers for an (n, 4) array of validated rows."""
    return answers(model, rows, predict_all(model, rows))


def self_test(model):
    """Predict once at the middle of the training ranges; a model that cannot do that must not serve."""
    try:
        answer = predict(model, ((model.low + model.high) / 2).reshape(1, -1))[0]
        total = sum(answer["probabilities"].values())
    except Exception as err:
        raise StartupError(f"the model failed its self-test prediction: {err}") from None
    if not math.isclose(total, 1.0, abs_tol=1e-3):
        raise StartupError(f"the model failed its self-test: probabilities sum to {total}")
