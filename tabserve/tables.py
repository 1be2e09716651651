"""The tables train.py learns from, as columns of numbers, dates or categories: a CSV file of the user's own, or a
bundled dataset that train.py hands over as arrays.

    table = read_csv(Path("my.csv"), target="y", drop=("id",))
    table.columns[0].name, table.columns[0].kind      # "age", "number"
    table.matrix()                                      # (rows, columns): floats, or objects where a category is

A column whose every value is a number becomes a numeric feature; one whose every value is a date (dates.py) a date;
any other a categorical one, whatever holes each has: a cell that says nothing (MISSING_MARKERS, or those given with
--missing) is a missing value, NaN in the matrix, and a row whose target is missing is left out. A category of more
than levels.MAX_LEVELS levels keeps its frequent ones (levels.py). A column that identifies rows rather than
describing them (every value distinct, text or whole numbers; a row counter) is left out, with its reason, unless
kept (--keep). Column names are normalised (lower case, each run of characters
other than a-z and 0-9 one "_", trimmed); the name as written is kept as the label. The task follows from the target
(decide_task): a quantity to predict (regression) or classes. Everything that cannot make a model is refused with
TableError, one line that names the column.
"""

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tabserve.csvfiles import CsvError, read_rows
from tabserve.dates import canonical, date_form_of, form_of
from tabserve.inputs import DECIMAL  # a cell is a number if the API would take it as one
from tabserve.levels import frequent_levels, is_open

MAX_CLASSES = 50  # a target with more distinct values is a quantity (a price), not classes
MIN_ROWS_PER_CLASS = 10  # enough for a stratified held-out split and 5-fold cross-validation
# A numeric target with more distinct values than this, or with a fraction among them, is a quantity to predict.
MAX_CLASS_NUMBERS = 20
MIN_QUANTITY_ROWS = 40  # a held-out quarter of 10 rows, enough for a 90 % interval, and 5-fold cross-validation
TASKS = ("classification", "regression")
NOT_NAME = re.compile(r"[^a-z0-9]+")
# The cells that mean "no value": what spreadsheets, R (NA) and pandas (NaN, None) write; --missing replaces all but
# the empty cell, which always means missing.
MISSING_MARKERS = ("NA", "N/A", "NaN", "null", "None")
MIN_IDENTIFIER_ROWS = 10  # fewer rows may well all differ by chance: no column of them is taken for an identifier


class TableError(Exception):
    """A table that cannot make a model; the message is one line that says why."""


@dataclass
class Column:
    """One feature: its normalised name, its label as written, its kind and its values."""

    name: str
    label: str
    kind: str  # "number", "date" or "category"
    values: list  # floats (NaN where missing), or strings (None where missing): a date's canonical ISO text
    unit: str = None
    allowed: dict = field(default_factory=dict)  # JSON Schema bounds of a number: exclusiveMinimum, maximum, ...
    form: str = None  # a date's: "date" or "date-time"
    levels: list = None  # an open category's frequent levels (levels.py); None for a closed one

    @property
    def categories(self):
        """A category's levels, sorted (the order of the form's choices): all of them, or an open one's frequent."""
        if self.kind != "category":
            return []
        return self.levels if self.levels is not None else sorted({v for v in self.values if v is not None})

    @property
    def missing(self):
        """How many rows lack this column's value."""
        return sum(value is None or value != value for value in self.values)  # NaN is the one value != itself


@dataclass
class Table:
    """The features and the target of a table, and what the service shows of the model trained on it."""

    name: str
    columns: list
    target: np.ndarray  # class names as strings (classification), or floats (regression)
    source: str  # where the rows came from, in words
    target_label: str = "class"  # what a class is, in words: the target column's name as written
    target_name: str = "class"  # the target column's name, normalised
    task: str = "classification"
    task_reason: str = ""  # why this task, in words, for the report
    dropped_rows: int = 0  # rows left out because their target is missing
    dialect: str = None  # how a CSV file was read: "separator ';', decimal ','"
    left_out: list = field(default_factory=list)  # [(column label, why)]: the identifiers not learnt from
    target_unit: str = None
    class_labels: dict = field(default_factory=dict)  # class -> display label, where one is nicer than the name
    texts: dict = field(default_factory=dict)  # the page's words (title, question, lead, submit)

    def matrix(self):
        """The rows as the model takes them: a float array, or an object array where a column holds categories."""
        if all(column.kind == "number" for column in self.columns):
            return np.array([column.values for column in self.columns], dtype=float).T
        matrix = np.empty((len(self.target), len(self.columns)), dtype=object)
        for index, column in enumerate(self.columns):
            matrix[:, index] = [np.nan if value is None else value for value in column.values]
        return matrix


def normalise(name):
    """A column name as a feature name: 'od280/od315_of_diluted_wines' -> 'od280_od315_of_diluted_wines'."""
    return NOT_NAME.sub("_", name.lower()).strip("_")


def check_names(labels):
    """The normalised names of these column labels; TableError when two become one or one becomes nothing."""
    names = {}
    for label in labels:
        name = normalise(label)
        if not name:
            raise TableError(f"column {label!r} has no letter or digit to make a feature name of")
        if name in names:
            raise TableError(f"columns {names[name]!r} and {label!r} both become the feature name {name!r}: "
                             "rename one")
        names[name] = label
    return list(names)


def is_number(cell):
    return bool(DECIMAL.fullmatch(cell)) and math.isfinite(float(cell))


def decide_task(name, cells, requested=None):
    """(task, why) of a target column: a numeric target with more than MAX_CLASS_NUMBERS distinct values, or with a
    fraction among them, is a regression; any other a classification. requested (--task) overrides it."""
    numeric = all(is_number(cell) for cell in cells)
    if requested == "regression" and not numeric:
        where = next(number for number, cell in enumerate(cells, start=2) if not is_number(cell))
        raise TableError(f"target {name!r} holds {cells[where - 2]!r} on line {where}: a regression predicts numbers")
    if requested:
        return requested, "as --task chose"
    distinct = len(set(cells))
    if numeric and (distinct > MAX_CLASS_NUMBERS or any(not float(cell).is_integer() for cell in cells)):
        return "regression", f"target {name!r} holds {distinct} distinct numbers; --task classification overrides"
    what = f"{distinct} distinct whole numbers" if numeric else f"{distinct} distinct values, not all numbers"
    return "classification", f"target {name!r} holds {what}; --task regression overrides"


def check_quantity(name, cells):
    """The target's values as floats; TableError when they cannot be learnt as a quantity."""
    if len(cells) < MIN_QUANTITY_ROWS:
        raise TableError(f"target {name!r} has {len(cells)} rows; a regression needs at least {MIN_QUANTITY_ROWS}")
    values = np.array([float(cell) for cell in cells])
    if values.min() == values.max():
        raise TableError(f"target {name!r} is {values[0]:g} in every row: there is nothing to predict")
    return values


def check_target(name, values):
    """The target's values as class names; TableError when they cannot be classes."""
    counts = Counter(values)
    if len(counts) < 2:
        raise TableError(f"target {name!r} has {len(counts)} distinct value; a classifier needs at least 2")
    if len(counts) > MAX_CLASSES or len(counts) > len(values) / 2:
        raise TableError(f"target {name!r} has {len(counts)} distinct values in {len(values)} rows: too many to be "
                         f"classes (at most {MAX_CLASSES}); is it a quantity rather than a class?")
    rare = min(counts, key=counts.get)
    if counts[rare] < MIN_ROWS_PER_CLASS:
        raise TableError(f"class {rare!r} of target {name!r} has {counts[rare]} rows; each class needs at least "
                         f"{MIN_ROWS_PER_CLASS}")
    return np.array(values, dtype=str)


def typed_column(name, label, cells):
    """A column of numbers if every cell given is a plain finite decimal, of dates if every one is a date (in one
    form), else of categories (None: missing); a category of many levels keeps its frequent ones."""
    given = [cell for cell in cells if cell is not None]
    if not given:
        raise TableError(f"column {label!r} has no value in any row: --drop it")
    if all(is_number(cell) for cell in given):
        return Column(name, label, "number", [math.nan if cell is None else float(cell) for cell in cells])
    written = date_form_of(given)
    if written is not None:
        values = [canonical(cell, written) for cell in cells]
        return Column(name, label, "date", values, form=max(form_of(value) for value in values if value))
    return Column(name, label, "category", list(cells), levels=frequent_levels(cells) if is_open(cells) else None)


def identifier_reason(column):
    """Why a column identifies rows rather than describing them (None when it describes them): every value distinct,
    text or whole numbers (a name, a record number), or a row counter."""
    given = [value for value in column.values if value is not None and value == value]
    if len(given) < MIN_IDENTIFIER_ROWS or len(set(given)) != len(given) or column.kind == "date":
        return None
    if column.kind == "category":
        return "every value is distinct: it names rows (an identifier), it says nothing to learn from"
    if not all(float(value).is_integer() for value in given):
        return None  # distinct fractions are measurements
    if all(later - earlier == 1 for earlier, later in zip(given, given[1:], strict=False)):
        return "it counts the rows (1, 2, 3, ...): their order, not something to learn from"
    return "every value is a distinct whole number: it numbers rows (an identifier), it says nothing to learn from"


def read_csv(path, target, drop=(), name=None, task=None, missing=MISSING_MARKERS, separator=None, decimal=None,
             keep=()):
    """A Table from a CSV file (csvfiles.py reads it: its separator and decimal mark found, or as given): the target
    column as classes or a quantity (task: --task, or decided from it), every other column not dropped as a feature
    but an identifier not kept (keep: --keep); the cells in missing (and empty ones) as missing values."""
    try:
        header, rows, dialect = read_rows(path, separator, decimal)
    except CsvError as err:
        raise TableError(str(err)) from None
    markers = {"", *missing}
    rows = [[None if cell in markers else cell for cell in row] for row in rows]
    names = check_names(header)
    by_name = dict(zip(header, range(len(header)), strict=True))
    for column in (target, *drop, *keep):
        if column not in by_name:
            raise TableError(f"{column!r} is not a column of {path}; its columns are {', '.join(header)}")
    kept = [row for row in rows if row[by_name[target]] is not None]
    if not kept:
        raise TableError(f"target {target!r} has no value in any row")
    dropped, rows = len(rows) - len(kept), kept
    columns = [typed_column(names[index], label, [row[index] for row in rows])
               for index, label in enumerate(header) if label != target and label not in drop]
    left_out = [(column.label, identifier_reason(column)) for column in columns if column.label not in keep]
    left_out = [(label, why) for label, why in left_out if why]
    columns = [column for column in columns if column.label not in dict(left_out)]
    stem = normalise(name or path.stem).replace("_", "-")
    cells = [row[by_name[target]] for row in rows]
    task, why = decide_task(target, cells, task)
    values = check_quantity(target, cells) if task == "regression" else check_target(target, cells)
    if not columns:
        identifiers = ", ".join(repr(label) for label, _ in left_out)
        raise TableError(f"{path} has no feature column left beside the target {target!r}" + (
            f" ({identifiers} {'identifies' if len(left_out) == 1 else 'identify'} rows: --keep it)" if left_out
            else ""))
    source = f"{path.name} ({len(rows)} rows" + (f", {dropped} more without a {target})" if dropped else ")")
    return Table(name=stem, columns=columns, target=values, source=source, target_label=target,
                 target_name=normalise(target), task=task, task_reason=why, dropped_rows=dropped, dialect=dialect,
                 left_out=left_out)
