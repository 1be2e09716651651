"""Prediction intervals for a regressor, by split conformal prediction: no new dependency, one number in the card.

    half_width = conformal_half_width(residuals, level=0.9)     # |y - prediction| of held-out rows
    coverage = cross_fitted_coverage(residuals, level=0.9)       # what that promise held on those rows

The model is fitted on the training split; the absolute residuals of the n held-out rows it never saw are sorted,
and the interval of a new prediction is that prediction ± the ceil((n + 1) x level)-th smallest of them (the
finite-sample quantile of Vovk et al. and of Angelopoulos and Bates' "gentle introduction", not the plain one, which
falls short for small n). For a new row exchangeable with the held-out ones, the interval holds its true value with
probability at least level, on average over rows (marginal coverage); docs/models.md says what it does not promise.
"""

import math

import numpy as np


class TooFewRows(ValueError):
    """Not enough held-out rows for an interval at this level."""


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
