"""Why the model gave an answer: what each feature contributed, and the most similar rows it learned from.

    explainer = Explainer(schema, metadata["explanation"])      # once, at start-up (None rows: no neighbours)
    contributions = explainer.contributions(compute, rows, best)  # (N, inputs), in feature order
    neighbours = explainer.neighbours(rows[0])                  # the NEIGHBOURS nearest training rows

Exactly, so that anyone can recompute it (train.py keeps what it needs in the metadata):
- the contribution of feature f to row x, whose predicted class is k, is p(k | x) - p(k | x with f replaced by its
  baseline), the baseline being the training table's median of a number and most frequent value of a category;
  rounded to CONTRIBUTION_DIGITS. Positive: this value pushed the answer toward k. For a regressor it is
  f(x) - f(x with f at its baseline), in the target's unit: how far this value moved the prediction. One
  vectorised call predicts x and its n variants (n + 1 rows per row).
- the distance from x to a training row t is sqrt(sum over numbers ((x_f - t_f) / s_f)^2 + sum over categories [x_f !=
  t_f]), s_f the table's standard deviation of f (ddof 0), a date being the number of its days since 1970 (and a
  date's baseline its median); a number with s_f = 0 cannot tell rows apart and is left out;
  a missing value counts 1 against a value, 0 against another missing one. The nearest come first, ties in table order;
  rounded to DISTANCE_DIGITS.
"""

import numpy as np

from tabserve.dates import days_of
from tabserve.inputs import is_missing

CONTRIBUTION_DIGITS = 6
DISTANCE_DIGITS = 4
NEIGHBOURS = 3


class Explainer:
    """The baselines and training rows of one model, arranged once for vectorised explanations."""

    def __init__(self, schema, facts):
        self.schema = schema
        self.baselines = [facts["baselines"][name] for name in schema.names]
        measured = [i for i, item in enumerate(schema.inputs) if item.kind in ("number", "date")]
        deviations = np.array([facts["deviations"][schema.names[i]] for i in measured])
        self.distance_numbers = [column for column, s in zip(measured, deviations, strict=True) if s > 0]
        self.dates = [place for place, column in enumerate(self.distance_numbers)
                      if schema.inputs[column].kind == "date"]
        self.deviations = deviations[deviations > 0]
        self.categories = [i for i, item in enumerate(schema.inputs) if item.kind == "category"]
        rows = facts.get("rows") if facts.get("neighbours") else None
        self.rows = schema.matrix(rows) if rows else None
        # What each training row was: its class, or its target's value.
        self.row_answers = [("class", name) for name in facts["row_classes"]] if "row_classes" in facts else [
            ("target", value) for value in facts.get("row_targets", [])]
        if self.rows is not None:
            self.row_numbers = self.numbers(self.rows[:, self.distance_numbers])
            self.row_categories = self.rows[:, self.categories]
            self.row_categories_missing = schema.missing(self.rows)[:, self.categories]

    def numbers(self, values):
        """Numbers and dates (as days since 1970) of rows' measured columns, (n, measured), as floats."""
        if not self.dates:
            return np.asarray(values, dtype=float)
        values = np.array(values, dtype=object)
        for place in self.dates:
            values[:, place] = days_of(values[:, place].tolist())
        return values.astype(float)

    def variants(self, rows):
        """Each row followed by its n copies with one feature replaced by its baseline: (N * (n + 1), inputs)."""
        count, width = rows.shape
        stacked = np.repeat(rows, width + 1, axis=0).reshape(count, width + 1, width)
        for feature in range(width):
            stacked[:, feature + 1, feature] = self.baselines[feature]
        return stacked.reshape(count * (width + 1), width)

    def contributions(self, compute, rows, best=None):
        """(N, inputs): p(k | x) - p(k | x with f at its baseline), k each row's predicted class (best); for a
        regressor (best None), f(x) - f(x with f at its baseline), in the target's unit."""
        count, width = rows.shape
        answers = compute(self.variants(rows))
        if best is None:
            chosen = np.asarray(answers, dtype=float).reshape(count, width + 1)  # f(x), then f(each variant)
        else:
            chosen = answers.reshape(count, width + 1, -1)[np.arange(count), :, best]  # p(k | x), p(k | variants)
        return np.round(chosen[:, :1] - chosen[:, 1:], CONTRIBUTION_DIGITS)

    def neighbours(self, row):
        """The NEIGHBOURS training rows nearest to one row, as the API answers them; [] without training rows."""
        if self.rows is None:
            return []
        numbers = self.numbers(row[np.newaxis, self.distance_numbers])[0]
        gaps = (self.row_numbers - numbers) / self.deviations
        categories = row[self.categories]
        differ = self.row_categories != categories
        if self.schema.optional:  # a missing value is one deviation from any value, none from another missing one
            gaps = np.where(np.isnan(gaps), np.isnan(self.row_numbers) ^ np.isnan(numbers), gaps)
            missing = np.array([is_missing(value) for value in categories], dtype=bool)
            differ &= ~(self.row_categories_missing & missing)
        squares = (gaps ** 2).sum(axis=1) + differ.sum(axis=1)
        nearest = np.argsort(squares, kind="stable")[:NEIGHBOURS]  # stable: ties keep the table's order
        names, shown = self.schema.names, (lambda value: None if is_missing(value) else value)
        return [{"features": dict(zip(names, map(shown, self.rows[i].tolist()) if self.schema.optional
                                      else self.rows[i].tolist(), strict=True)),
                 self.row_answers[i][0]: self.row_answers[i][1],
                 "distance": round(float(np.sqrt(squares[i])), DISTANCE_DIGITS)} for i in nearest.tolist()]
