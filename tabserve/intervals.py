"""Prediction intervals for a regressor, by split conformal prediction: no new dependency, one number in the card.

    half_width = conformal_half_width(residuals, level=0.9)     # |y - prediction| of held-out rows
    coverage = cross_fitted_coverage(residuals, level=0.9)       # what that promise held on those rows
    residuals = out_of_fold_residuals(estimator, X, y)          # a model fitted elsewhere: rows none of its copies saw

The model is fitted on the training split; the absolute residuals of the n held-out rows it never saw are sorted,
and the interval of a new prediction is that prediction ± the ceil((n + 1) x level)-th smallest of them (the
finite-sample quantile of Vovk et al. and of Angelopoulos and Bates' "gentle introduction", not the plain one, which
falls short for small n). For a new row exchangeable with the held-out ones, the interval holds its true value with
probability at least level, on average over rows (marginal coverage); docs/models.md says what it does not promise.
"""

import math

import numpy as np

FOLDS = 5  # copies of a model fitted elsewhere, each refitted without one fifth of the table
# The methods, as the card names them: train.py's own models, and a regressor fitted elsewhere with its guarantee.
SPLIT = ("split conformal: the ceil((n + 1) x level)-th smallest absolute residual of the n held-out rows, either "
         "side of the prediction")
CROSS_CONFORMAL = (f"cross-conformal: the table in {FOLDS} folds, each row predicted by a copy of the model refitted "
                   "on the other folds; the ceil((n + 1) x level)-th smallest of those n absolute residuals, either "
                   "side of the adopted model's prediction")
CROSS_GUARANTEE = ("none proven for the adopted model's own prediction (CV+, which asks each copy at prediction time, "
                   "holds at least 1 - 2 x (1 - level)); near the level for a model that its copies predict like, "
                   "which the cross-fitted coverage on the table measures")


class TooFewRows(ValueError):
    """Not enough held-out rows for an interval at this level."""


class CannotRefit(ValueError):
    """A model fitted elsewhere that cannot be copied and refitted on part of the table; the message says why."""


def rank_for(count, level):
    """The 1-based rank, among count sorted residuals, of the one that bounds the interval."""
    return math.ceil((count + 1) * level)


def fewest_rows(level):
    """The fewest held-out rows that give a finite interval at this level."""
    count = 1
    while rank_for(count, level) > count:
        count += 1
    return count


def conformal_half_width(residuals, level):
    """Half the interval's width: the finite-sample quantile of the held-out absolute residuals."""
    scores = np.sort(np.abs(np.asarray(residuals, dtype=float)))
    rank = rank_for(len(scores), level)
    if rank > len(scores):
        raise TooFewRows(f"{len(scores)} held-out rows are too few for a {level:.0%} interval: it needs at least "
                         f"{fewest_rows(level)}; hold out more (--test-size) or lower --interval")
    return float(scores[rank - 1])


def cross_fitted_coverage(residuals, level, folds=5, seed=0):
    """The share of held-out rows inside the interval calibrated on the other held-out rows, each fifth of them in
    turn: an honest estimate of the coverage on new rows. (The interval calibrated on all of them covers them by
    construction, and so, nearly, does one left out at a time.) NaN when a fold leaves too few rows to calibrate."""
    scores = np.abs(np.asarray(residuals, dtype=float))
    order = np.random.default_rng(seed).permutation(len(scores))
    covered = 0
    for fold in np.array_split(order, folds):
        others = np.delete(scores, fold)
        try:
            covered += int((scores[fold] <= conformal_half_width(others, level)).sum())
        except TooFewRows:
            return float("nan")
    return covered / len(scores)


def out_of_fold_residuals(estimator, data, y, folds=FOLDS, seed=0):
    """y - prediction of each row of the table by a copy of the estimator refitted on the other folds (scikit-learn's
    clone: the same model, untrained): residuals of rows that the model predicting them never saw, however the
    original was fitted. data: an array or a DataFrame of the rows. CannotRefit when a copy cannot be made, fitted or
    asked."""
    from sklearn.base import clone
    from sklearn.model_selection import KFold

    residuals = np.empty(len(y))
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(np.arange(len(y))):
        try:
            copy = clone(estimator).fit(rows_of(data, train), y[train])
            residuals[test] = y[test] - np.asarray(copy.predict(rows_of(data, test)), dtype=float)
        except Exception as err:  # whatever the model raises: it cannot be refitted on part of the table
            raise CannotRefit(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    return residuals


def rows_of(data, indices):
    return data.iloc[indices] if hasattr(data, "iloc") else data[indices]
