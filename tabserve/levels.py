"""Categories of many levels (a city, a product, a postcode): the frequent levels kept, the rare ones grouped into one,
so that the model learns what it has enough rows to learn, and answers any value, one it never saw included.

    levels = frequent_levels(values)            # the most frequent, at most MAX_LEVELS, each MIN_ROWS rows or more
    RareLevels([levels, ...]).transform(X)      # a value not among its column's levels becomes RARE

A category with more than MAX_LEVELS levels is "open": the API takes any text for it (a value outside the levels is
answered as the rare group, with a warning naming it), and the web form offers a text input that suggests the
levels instead of a menu of hundreds. A category with MAX_LEVELS levels or fewer is closed, as before: its levels
are the only values taken. RareLevels is this module's own transformer, which the artifact's trust list names
(artifacts.py).
"""

from collections import Counter

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

MAX_LEVELS = 20  # levels a category keeps (and a form's menu shows) at most; a column with more is open
MIN_ROWS = 5  # rows a level needs in training to be kept apart from the rare ones
RARE = "(rare)"  # the level every rare or unseen value becomes
MAX_TEXT = 200  # characters of an open category's value, at most


def frequent_levels(values):
    """The levels kept of a column of many: its most frequent (ties in sorted order), at most MAX_LEVELS, each seen
    in MIN_ROWS rows or more; sorted."""
    counts = Counter(value for value in values if isinstance(value, str))
    ranked = sorted(counts, key=lambda level: (-counts[level], level))
    return sorted(level for level in ranked[:MAX_LEVELS] if counts[level] >= MIN_ROWS)


def is_open(values):
    """Whether a category column has too many levels to list: more than MAX_LEVELS."""
    return len({value for value in values if isinstance(value, str)}) > MAX_LEVELS


class RareLevels(TransformerMixin, BaseEstimator):
    """Columns of text with each value outside its column's levels replaced by RARE; a missing value (None or NaN)
    is left as it is, for the pipeline's imputer or the model to handle."""

    def __init__(self, levels=()):
        self.levels = levels

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X):
        X = np.array(X, dtype=object)
        for index, kept in enumerate(self.levels):
            known = set(kept)
            X[:, index] = [value if not isinstance(value, str) or value in known else RARE
                           for value in X[:, index].tolist()]
        return X

    def get_feature_names_out(self, input_features=None):
        return np.asarray(input_features if input_features is not None else
                          [f"x{i}" for i in range(self.n_features_in_)], dtype=object)
