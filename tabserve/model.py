"""The model as the service serves it: train.py's artifact loaded safely, once, and its predictions. No HTTP here:
it returns Predictions and raises ModelError and Unpredictable, which the services map to what they mean.

    model = load_model("model/iris.skops")    # checks, loads and builds the estimator, or raises ModelError
    self_test(model)                          # the answers recorded in training, or ModelError
    predictions = predict(model, rows)        # rows: an (n, inputs) array of values checked by inputs.py

load_model() reads the card that train.py wrote beside the artifact first, and builds the estimator only when the
artifact's bytes are the ones the card records and the installed scikit-learn is the one that trained it
(scikit-learn's model persistence guide); artifacts.py builds it from a skops file, running no code, and refuses a
pickle. The path comes from configuration, never from a client; who made the files is signing.py's to check, before.
"""

import hashlib
import hmac
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import sklearn
from sklearn.base import is_regressor

from tabserve.artifacts import PICKLE, ArtifactError, check_format, from_bytes
from tabserve.card import CardError, card_path, identity, read_card, task_of
from tabserve.explain import Explainer
from tabserve.fastpaths import choose_predictor, sklearn_predictor
from tabserve.frames import frame_maker
from tabserve.inputs import Schema
from tabserve.packages import PackageError, check_packages
from tabserve.signing import SignatureError, verified_copy

MAX_ROWS = 10_000  # rows predicted in one call, at most
PROBABILITY_DIGITS = 6
# A regressor's numbers keep this many significant digits at the scale of the target's training range: a batch and a
# single row go through different BLAS paths and differ in the last bits, and an answer must not depend on the
# company it came in.
PREDICTION_DIGITS = 10
SELF_TEST_TOLERANCE = 1e-6  # another machine's floating point may differ in the last digits, never by this much
UNVERIFIED = "not verified: MODEL_SIGNING_PUBLIC_KEY is not set"  # an artifact's signature, when none is checked

logger = logging.getLogger(__name__)


class ModelError(Exception):
    """A model that cannot be served: missing, altered, from another scikit-learn, or failing its self-test."""


class Unpredictable(ValueError):
    """Rows for which the model cannot give a finite answer."""


@dataclass(frozen=True)
class Model:
    """A loaded estimator with what the service needs from its card, computed once."""

    estimator: object
    card: dict
    schema: Schema  # the inputs and their rules
    task: str  # "classification" or "regression"
    classes: tuple  # a classifier's classes, in its order; () for a regressor
    compute: object  # rows -> each class's probability, or the predicted number (see fastpaths.choose_predictor)
    engine: str  # "numpy" (the linear fast path), "numpy forest" (the forest's) or "scikit-learn"
    explainer: Explainer  # contributions and neighbours (explain.py)
    decimals: int = None  # a regressor's numbers are rounded to these decimal places (PREDICTION_DIGITS)
    artifact: dict = None  # its format ("skops", or "pickle" under ALLOW_PICKLE) and signature, as served

    @property
    def identity(self):
        return identity(self.card)


@dataclass(frozen=True)
class ClassPredictions:
    """What a classifier says of n rows, as arrays, for any protocol to present."""

    task: ClassVar[str] = "classification"
    classes: tuple  # the model's classes, in its order
    best: np.ndarray  # (n,): index of the most probable class in classes
    probabilities: np.ndarray  # (n, classes), rounded to PROBABILITY_DIGITS
    outside: np.ndarray  # (n, inputs) booleans: the number lies outside the range seen in training

    def labels(self):
        """The predicted class of each row."""
        return [self.classes[i] for i in self.best.tolist()]


@dataclass(frozen=True)
class NumberPredictions:
    """What a regressor says of n rows: each number, with the interval that holds the truth at the card's level."""

    task: ClassVar[str] = "regression"
    values: np.ndarray  # (n,)
    low: np.ndarray  # (n,): the interval's ends (None: the model has none, its card says why)
    high: np.ndarray
    level: float  # the share of true values the intervals hold (intervals.py); None without one
    beyond: np.ndarray  # (n,) booleans: the prediction lies outside the target's range in training
    outside: np.ndarray  # (n, inputs) booleans, as for a classifier


def read_artifact(path, card, allow_pickle=False, model_path=None):
    """(the artifact's bytes, their format): ModelError for a pickle (unless allowed), for bytes that are not the
    ones train.py recorded, and for an artifact built by another scikit-learn. Read once: what is checked is what is
    loaded. model_path: the artifact as messages name it (path may be a verified copy of it)."""
    model_path = model_path or path
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ModelError(f"cannot read model artifact {model_path}: {err.strerror}") from None
    try:
        kind = check_format(data, model_path, allow_pickle)
    except ArtifactError as err:
        raise ModelError(str(err)) from None
    trained_with = card["versions"].get("scikit-learn")
    if trained_with != sklearn.__version__:
        raise ModelError(f"model {model_path} was trained with scikit-learn {trained_with} but "
                         f"{sklearn.__version__} is installed: retrain it with 'python train.py'")
    if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), str(card["sha256"])):
        raise ModelError(f"model artifact {model_path} does not match the sha256 in its metadata "
                         "(corrupt or replaced): refusing to load it")
    return data, kind


def check_fit(model_path, estimator, schema, card):
    """Refuse an estimator that does not take the card's inputs or answer its task and classes."""
    classes = tuple(str(name) for name in getattr(estimator, "classes_", ()))
    if list(schema.names) != card["features"] or getattr(estimator, "n_features_in_", None) not in (
            None, len(schema.inputs)):
        raise ModelError(f"model {model_path} does not take the inputs its metadata describes "
                         f"({', '.join(schema.names)}): retrain it with 'python train.py'")
    if is_regressor(estimator) != (task_of(card) == "regression"):
        raise ModelError(f"model {model_path} is not the {task_of(card)} its metadata describes: retrain it with "
                         "'python train.py'")
    # A model fitted on class codes (XGBoost's 0..k-1) answers the codes; the card names them.
    expected = [str(code) for code in card.get("class_codes") or card["classes"]]
    if list(classes) != expected:
        raise ModelError(f"model {model_path} answers the classes {', '.join(classes)}, its metadata "
                         f"{', '.join(expected)}: retrain it with 'python train.py'")
    return tuple(str(name) for name in card["classes"])


def load_model(path, allow_pickle=False, signature=UNVERIFIED, model_path=None):
    """Load and check the artifact once, at start-up; ModelError says why it cannot be served. signature: what the
    caller verified of its files (signing.py), as the metadata shows it; model_path: the artifact as messages name
    it, when path is a verified copy of it."""
    path = Path(path)
    model_path = Path(model_path or path)
    try:
        card = read_card(card_path(path), shown=card_path(model_path))
    except CardError as err:
        raise ModelError(str(err)) from None
    data, kind = read_artifact(path, card, allow_pickle, model_path)
    try:
        check_packages(card.get("requires", {}), f"model {model_path}")
        estimator = from_bytes(data, model_path, allow_pickle)
    except (PackageError, ArtifactError) as err:
        raise ModelError(str(err)) from None
    except Exception as err:  # skops or joblib cannot build it: a file they did not write, or from other versions
        raise ModelError(f"cannot load model artifact {model_path}: {str(err).splitlines()[0]}") from None
    if kind == PICKLE:
        logger.warning("model %s is a pickle, loaded because ALLOW_PICKLE is set: a pickle runs the code it names; "
                       "convert it with 'python train.py --convert %s'", model_path, model_path)
    schema = Schema(card["inputs"])
    classes = check_fit(model_path, estimator, schema, card)
    if "frame" in card:  # fitted on a DataFrame: asked with one, through scikit-learn (frames.py)
        make_frame = frame_maker([(item.label, item.kind) for item in schema.inputs], card["frame"]["columns"])
        ask = sklearn_predictor(estimator)
        compute, engine = (lambda rows: ask(make_frame(rows))), "scikit-learn, a DataFrame"
    else:
        compute, engine = choose_predictor(estimator, schema, reference_rows(schema, card))
    return Model(estimator=estimator, card=card, schema=schema, task=task_of(card), classes=classes, compute=compute,
                 engine=engine, explainer=Explainer(schema, card["explanation"]), decimals=decimals_for(card),
                 artifact={"format": kind, "signature": signature})


def load_checked(artifact, allow_pickle=False, keys=None, whole_folder=False):
    """load_model() of an artifact whose signature, when keys are given, verifies (signing.py): its own, <name>.sig
    over it and its card, or with whole_folder (a version) its folder's, model.sig over every file there. The files
    are verified and loaded from a private copy, so what is checked is what is served."""
    artifact = Path(artifact)
    if not keys:
        return load_model(artifact, allow_pickle)
    files = None if whole_folder else [artifact.name, card_path(artifact).name]
    try:
        with verified_copy(keys, artifact.parent, files, artifact.with_suffix(".sig")) as (copy, signature):
            return load_model(copy / artifact.name, allow_pickle, signature, model_path=artifact)
    except SignatureError as err:
        raise ModelError(f"{artifact.parent if whole_folder else artifact} is refused: {err}") from None
    except FileNotFoundError as err:
        raise ModelError(f"cannot read {err.filename}: {err.strerror}") from None


def reference_rows(schema, card):
    """The reference rows that train.py kept, as the estimator takes them."""
    return schema.matrix(card["reference"]["rows"])


def decimals_for(card):
    """The decimal places that keep PREDICTION_DIGITS significant digits of the target's largest training value."""
    if task_of(card) != "regression":
        return None
    largest = max(abs(card["target"]["training_range"]["min"]), abs(card["target"]["training_range"]["max"]))
    return PREDICTION_DIGITS - 1 - (math.floor(math.log10(largest)) if largest > 0 else 0)


def out_of_range(model, rows):
    """(n, inputs) booleans: true where a value lies outside what the model saw in training: a number or a date
    beyond the training range, an open category's value none of its levels."""
    schema = model.schema
    numbers = schema.numbers_of(rows)
    outside = (numbers < schema.low) | (numbers > schema.high)
    if schema.numeric:
        return outside
    every = schema.unusual(rows)
    every[:, schema.number_columns] = outside
    return every


def predict(model, rows):
    """Predictions for an (n, inputs) array of checked rows, computed with one vectorised call."""
    answers = model.compute(rows)
    finite = np.isfinite(answers) if answers.ndim == 1 else np.isfinite(answers).all(axis=1)
    if not finite.all():  # the inputs' bounds are set to prevent it; never serve a NaN
        wrong = np.flatnonzero(~finite)
        what = "a prediction" if model.task == "regression" else "probabilities"
        raise Unpredictable(f"The model cannot compute {what} for row {int(wrong[0])} (of {len(wrong)} such rows): "
                            "its values lie too far outside what it was trained on.")
    if model.task == "regression":
        values = np.round(np.asarray(answers, dtype=float).reshape(len(rows)), model.decimals)
        interval, target = model.card["interval"], model.card["target"]["training_range"]
        # Element by element, the ends follow from the rounded value exactly, whatever company it came in. A model
        # fitted elsewhere that could not be calibrated has no interval (training.adopted_interval).
        low, high = (values - interval["half_width"], values + interval["half_width"]) if interval else (None, None)
        return NumberPredictions(values=values, low=low, high=high, level=interval["level"] if interval else None,
                                 beyond=(values < target["min"]) | (values > target["max"]),
                                 outside=out_of_range(model, rows))
    return ClassPredictions(classes=model.classes, best=answers.argmax(axis=1),
                            probabilities=np.round(answers, PROBABILITY_DIGITS), outside=out_of_range(model, rows))


def self_test(model):
    """Predict the reference rows: a model that does not give the answers it gave in training must not serve."""
    rows = reference_rows(model.schema, model.card)
    what = "predictions" if model.task == "regression" else "probabilities"
    recorded = np.array(model.card["reference"][what])
    try:
        gap = float(np.abs(model.compute(rows) - recorded).max())
    except Exception as err:
        raise ModelError(f"the model failed its self-test prediction: {err}") from None
    if not gap <= SELF_TEST_TOLERANCE * max(1.0, float(np.abs(recorded).max())):  # relative, for a quantity
        raise ModelError(f"the model failed its self-test: its {what} for the reference rows differ from those "
                         f"recorded in training by {gap:g}")
