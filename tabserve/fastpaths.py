"""The optional NumPy fast paths: the same arithmetic as scikit-learn for the models most often served, without its
per-call checks and dispatch. A reader may delete this module and serve every model through scikit-learn.

    compute, engine = choose_predictor(estimator, schema, reference_rows)

For a scaler and logistic regression or ridge of numeric inputs (the default models, linear_predictor):
scikit-learn's answer in a few µs instead of about 400 µs; for a random forest of them (forest_predictor): 0.2 ms
instead of 3 ms. A fast path is used only when it matches scikit-learn within FAST_PATH_TOLERANCE on the reference
rows that train.py kept in the card; every other model goes through scikit-learn.
"""

import logging

import numpy as np
import sklearn
from sklearn.base import is_regressor
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

FAST_PATH_TOLERANCE = 1e-9

logger = logging.getLogger(__name__)


def sklearn_predictor(estimator):
    """The estimator's answer through scikit-learn (a classifier's predict_proba, a regressor's predict), skipping
    the input checks that the API has already made."""
    method = estimator.predict if is_regressor(estimator) else estimator.predict_proba

    def compute(rows):
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            return method(rows)
    return compute


def folded_linear(scaler, coef, intercept):
    """(weights, bias) with the scaling folded in: ((x - mean) / scale) @ coef.T + b == x @ weights.T + bias."""
    features = coef.shape[-1]
    mean = scaler.mean_ if scaler.mean_ is not None else np.zeros(features)
    scale = scaler.scale_ if scaler.scale_ is not None else np.ones(features)
    weights = coef / scale
    return weights, intercept - weights @ mean


def linear_predictor(estimator):
    """The optional fast path of StandardScaler + LogisticRegression (a matrix product and a softmax, or for two
    classes the logistic function of the one score, as scikit-learn 1.9 computes them) or StandardScaler + Ridge (a
    matrix product).

    scikit-learn spends about 400 µs per call on checks and dispatch that are useless for a small linear model whose
    input the API has validated; this is the same arithmetic in a few µs. None for any other estimator.
    """
    if type(estimator) is not Pipeline or len(estimator.steps) != 2 or type(estimator[0]) is not StandardScaler:
        return None
    if type(estimator[1]) is Ridge and np.ndim(estimator[1].coef_) == 1:
        weights, bias = folded_linear(estimator[0], estimator[1].coef_, estimator[1].intercept_)
        return lambda rows: rows @ weights + bias
    if type(estimator[1]) is not LogisticRegression:
        return None
    weights, bias = folded_linear(estimator[0], estimator[1].coef_, estimator[1].intercept_)

    def predict_proba(rows):
        scores = rows @ weights.T + bias
        if scores.shape[1] == 1:  # two classes: one score s, and p = 1 / (1 + e^-s) is the softmax of (0, s)
            scores = np.hstack([np.zeros_like(scores), scores])
        scores -= scores.max(axis=1, keepdims=True)  # exp() of the largest score is 1: no overflow
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores

    return predict_proba


def forest_predictor(estimator):
    """The optional fast path of a random forest: each tree's own predict, averaged, as scikit-learn averages them
    (a classifier's class fractions, or a regressor's numbers).

    scikit-learn dispatches every tree through joblib and its checks, about 30 µs a tree whatever the rows: 3 ms
    for 100 trees, against 0.2 ms for the same trees called directly. None for any other estimator.
    """
    if type(estimator) not in (RandomForestClassifier, RandomForestRegressor) or estimator.n_outputs_ != 1:
        return None
    trees = [tree.tree_ for tree in estimator.estimators_]
    width = len(estimator.classes_) if hasattr(estimator, "classes_") else 1

    def compute(rows):
        X = np.ascontiguousarray(rows, dtype=np.float32)  # what scikit-learn's trees take, as it converts them
        total = np.zeros((len(X), width))
        for tree in trees:
            total += tree.predict(X)[:, :width]
        total /= len(trees)
        return total if width > 1 or hasattr(estimator, "classes_") else total[:, 0]

    return compute


def choose_predictor(estimator, schema, rows):
    """The fast path where there is one and it matches scikit-learn within FAST_PATH_TOLERANCE (relative to the
    answers' size, for a quantity) on the reference rows, else scikit-learn."""
    reference = sklearn_predictor(estimator)
    linear, forest = (linear_predictor(estimator), forest_predictor(estimator)) if schema.numeric else (None, None)
    fast, engine = (linear, "numpy") if linear else (forest, "numpy forest")
    if fast is None:
        return reference, "scikit-learn"
    expected = reference(rows)
    gap = float(np.abs(fast(rows) - expected).max())
    if not gap <= FAST_PATH_TOLERANCE * max(1.0, float(np.abs(expected).max())):
        logger.warning("the NumPy fast path differs from scikit-learn by %g on the reference rows; serving through "
                       "scikit-learn instead", gap)
        return reference, "scikit-learn"
    return fast, engine
