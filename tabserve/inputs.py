"""The model's inputs as train.py's metadata describes them, and the one home of the rules their values follow.

    schema = Schema(metadata["inputs"])
    schema.inputs[0].parse_text("5.1")      # a query-string value, checked: 5.1, or ValueError saying the rule
    schema.inputs[0].parse_json(5.1)        # a JSON value (a batch row, a /v2 tensor element), checked likewise
    schema.invalid(matrix)                  # vectorised: (n, k) booleans, true where a number breaks its rule

A number is a plain finite decimal within the bounds its metadata allows (JSON Schema's exclusiveMinimum, minimum,
maximum, exclusiveMaximum; iris: greater than 0 and at most 100 cm); a category is exactly one of its categories, or
for an open one (levels.py) any text of up to MAX_TEXT characters; a date is ISO 8601 text (dates.py), any date.
An input that was missing in training is optional: a missing value (MISSING, NaN in the matrices) is then a value
too, and the card says what the model assumes of it. /api/v1.0, its batch and /v2 all check through this module, so
each rule is written once.
"""

import json
import math
import re
from dataclasses import dataclass

import numpy as np

from tabserve.dates import EXAMPLE, form_of, parse_iso
from tabserve.levels import MAX_TEXT

# Plain decimal notation only: float() alone would also take 'nan', 'inf', '1_0' and surrounding spaces.
DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # ASCII digits only
BOUNDS = {"exclusiveMinimum": "greater than", "minimum": "at least", "maximum": "at most",
          "exclusiveMaximum": "less than"}
MAX_SHOWN = 40  # characters of a refused value repeated in a message
MISSING = math.nan  # a missing value, in the rows the model takes (NumPy, scikit-learn and pandas read NaN so)


def is_missing(value):
    """Whether a value of a row is missing: None (JSON's null) or NaN (the one value unequal to itself)."""
    return value is None or value != value


def shown(text):
    """A refused string as a message repeats it: quoted, and shortened."""
    return repr(text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…")


@dataclass(frozen=True)
class Input:
    """One input of the model: a number or a category, with what its metadata says of it."""

    name: str
    label: str
    kind: str  # "number", "category" or "date"
    unit: str = None
    allowed: tuple = ()  # ((JSON Schema keyword, bound), ...) of a number
    training_range: tuple = None  # (min, max) of a number in the training split
    categories: tuple = ()
    optional: bool = False  # it was missing in training: the model takes a missing value
    assumed: str = None  # what the model assumes of a missing value, in words
    open: bool = False  # a category of many levels: any text taken, one outside them answered as the rare group
    form: str = None  # a date's: "date" or "date-time"

    @classmethod
    def from_metadata(cls, entry):
        training = entry.get("training_range")
        return cls(entry["name"], entry.get("label", entry["name"]), entry["kind"], entry.get("unit"),
                   tuple((key, float(value)) for key, value in entry.get("allowed", {}).items() if key in BOUNDS),
                   (training["min"], training["max"]) if training else None, tuple(entry.get("categories", ())),
                   bool(entry.get("optional")), entry.get("missing", {}).get("assumed"), bool(entry.get("open")),
                   entry.get("format"))

    @property
    def in_unit(self):
        return f" {self.unit}" if self.unit else ""

    def rule(self):
        """What a value must be, as the end of a sentence that begins with the input's name."""
        if self.kind == "date":
            return f"must be a {'date-time' if self.form == 'date-time' else 'date'} in ISO 8601 form, as " \
                   f"{EXAMPLE[self.form or 'date']}"
        if self.kind == "category" and self.open:
            return f"must be text of at most {MAX_TEXT} characters"
        if self.kind == "category":
            return f"must be one of {', '.join(self.categories)}"
        if not self.allowed:
            return "must be a finite number"
        return "must be " + " and ".join(f"{BOUNDS[key]} {bound:g}" for key, bound in self.allowed) + self.in_unit

    def follows_rule(self, value):
        return math.isfinite(value) and all(
            {"exclusiveMinimum": value > bound, "minimum": value >= bound, "maximum": value <= bound,
             "exclusiveMaximum": value < bound}[key] for key, bound in self.allowed)

    def check_number(self, value):
        """A float that follows the rule; ValueError otherwise."""
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        if not self.follows_rule(value):
            raise ValueError(f"{self.rule()}, got {value:g}")
        return value

    def parse_text(self, text):
        """A query-string or form value, as the model takes it; "" is a missing value, where one may be."""
        if text == "" and self.optional:
            return MISSING
        if self.kind != "number":
            return self.parse_string(text)
        if not DECIMAL.fullmatch(text):
            raise ValueError(f"must be a decimal number{' in ' + self.unit if self.unit else ''}, got {shown(text)}")
        return self.check_number(float(text))

    def parse_string(self, text, quoted=shown):
        """A category's or a date's text as the model takes it (a date in its canonical form); ValueError saying the
        rule and the text (quoted as the protocol writes it) otherwise."""
        try:
            if self.kind == "date":
                return self.parse_date(text)
            if text in self.categories or (self.open and text and len(text) <= MAX_TEXT):
                return text
        except ValueError:
            pass
        raise ValueError(f"{self.rule()}, got {quoted(text)}")

    def parse_date(self, text):
        """The canonical text of a date, or of a date-time (where a date alone means its midnight); ValueError when a
        date input is given a time, which its model never learnt from."""
        moment = parse_iso(text)
        if form_of(moment) == self.form:
            return moment
        if self.form == "date":
            raise ValueError("a date without a time")
        return moment + "T00:00:00"

    def parse_json(self, value):
        """A JSON value, as the model takes it: a number (not true or false), one of the categories' strings (any,
        for an open one) or a date's text; null is a missing value, where one may be."""
        if value is None and self.optional:
            return MISSING
        if self.kind != "number":
            if not isinstance(value, str):
                raise ValueError(f"{self.rule()}, got {json.dumps(value)[:MAX_SHOWN]}")
            return self.parse_string(value, lambda text: json.dumps(text)[:MAX_SHOWN])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, got {json.dumps(value)[:MAX_SHOWN]}")
        try:
            return self.check_number(float(value))
        except OverflowError:  # an integer too large for a float
            raise ValueError("must be a finite number") from None


def json_kind(value):
    """What a JSON value is, in words: "an object", "null", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), "a number")


class Schema:
    """All the inputs, in the model's order, with the vectorised form of their rules."""

    def __init__(self, entries):
        self.inputs = tuple(Input.from_metadata(entry) for entry in entries)
        self.names = tuple(item.name for item in self.inputs)
        self.by_name = {item.name: item for item in self.inputs}
        self.numeric = all(item.kind == "number" for item in self.inputs)
        self.number_columns = [i for i, item in enumerate(self.inputs) if item.kind == "number"]
        numbers = [self.inputs[i] for i in self.number_columns]
        self.bounds = {key: np.array([dict(item.allowed).get(key, math.nan) for item in numbers]) for key in BOUNDS}
        self.low = np.array([item.training_range[0] for item in numbers])
        self.high = np.array([item.training_range[1] for item in numbers])
        self.optional_numbers = np.array([item.optional for item in numbers], dtype=bool)
        self.optional = any(item.optional for item in self.inputs)
        # What out_of_range() checks beside the numbers: a date outside the training range, an open category's value
        # outside its levels.
        self.dates = [(i, item.training_range) for i, item in enumerate(self.inputs) if item.kind == "date"]
        self.opens = [(i, set(item.categories)) for i, item in enumerate(self.inputs) if item.open]

    def unusual(self, matrix):
        """(n, inputs) booleans: true where a date lies outside the training range, or an open category's value is
        none of its levels (a rare one, or one never seen). Numbers are model.out_of_range's."""
        found = np.zeros(matrix.shape, dtype=bool)
        for column, (low, high) in self.dates:
            found[:, column] = [isinstance(value, str) and not low <= value <= high
                                for value in matrix[:, column].tolist()]
        for column, levels in self.opens:
            found[:, column] = [isinstance(value, str) and value not in levels for value in matrix[:, column].tolist()]
        return found

    def invalid(self, numbers):
        """(n, numeric inputs) booleans: true where a number is not finite (but for a missing value where one may
        be) or breaks its bounds (nan: no bound)."""
        bad = ~np.isfinite(numbers)
        if self.optional:
            bad &= ~(np.isnan(numbers) & self.optional_numbers)
        with np.errstate(invalid="ignore"):
            bad |= numbers <= self.bounds["exclusiveMinimum"]
            bad |= numbers < self.bounds["minimum"]
            bad |= numbers > self.bounds["maximum"]
            bad |= numbers >= self.bounds["exclusiveMaximum"]
        return bad

    def matrix(self, rows):
        """Checked rows (lists in input order) as the estimator takes them: floats, or objects beside categories;
        a missing value (None in JSON) as NaN."""
        matrix = np.array(rows, dtype=float if self.numeric else object).reshape(len(rows), len(self.inputs))
        if self.optional and not self.numeric:
            matrix[matrix == None] = MISSING  # noqa: E711 - an elementwise comparison, which "is None" is not
        return matrix

    def missing(self, matrix):
        """(n, inputs) booleans: true where a value is missing."""
        if self.numeric:
            return np.isnan(matrix)
        return np.array([[is_missing(value) for value in row] for row in matrix.tolist()], dtype=bool).reshape(
            matrix.shape)

    def numbers_of(self, matrix):
        """The numeric columns of a matrix, as floats."""
        return matrix if self.numeric else matrix[:, self.number_columns].astype(float)
