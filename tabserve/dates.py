"""Dates and date-times: the third kind of input, beside numbers and categories. A table's column of dates is read as
one (ISO 8601, or day-first or month-first when its values leave no doubt), the service takes and answers ISO text,
and the pipeline learns from a date's parts (DateParts).

    kind = date_form_of(["31/12/2015", "01/01/2016"])     # "day-first"; None when not dates, or when in doubt
    text = canonical("31/12/2015", "day-first")           # "2015-12-31"
    text = parse_iso("2017-03-05T14:30")                  # "2017-03-05T14:30:00"; ValueError naming the form
    days = days_of(["2017-03-05", ...])                   # float days since 1970-01-01 (NaN where missing)

A date is written YYYY-MM-DD, a date-time YYYY-MM-DDTHH:MM[:SS] (a space for the T; a time zone offset or Z is
turned into UTC and dropped). Those canonical texts sort as the times they name, so ranges and bins compare them.
DateParts turns each into numbers a model can learn from: the year with its fraction (a trend), the day of the year
and the day of the week as a point on a circle (sine and cosine: December is next to January, Sunday to Monday), and
for a date-time the hour of the day likewise. The month and the day of the month add nothing that the day of the year
does not say. It is this module's own transformer, which the artifact's trust list names (artifacts.py).
"""

import datetime
import re

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
ISO_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
                          r"(Z|[+-][0-9]{2}:?[0-9]{2})?")
SLASHED = re.compile(r"([0-9]{1,2})[/.-]([0-9]{1,2})[/.-]([0-9]{4})")  # 31/12/2015, 12.31.2015, 31-12-2015
FORMS = ("date", "date-time")  # the card's format of a date input (JSON Schema's names)
EXAMPLE = {"date": "2017-03-05", "date-time": "2017-03-05T14:30:00"}
DAY = np.timedelta64(1, "D")


def parse_iso(text):
    """The canonical text of an ISO 8601 date or date-time; ValueError saying the form expected."""
    if ISO_DATE.fullmatch(text):
        return datetime.date.fromisoformat(text).isoformat()
    if ISO_DATETIME.fullmatch(text):
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is not None:
            moment = moment.astimezone(datetime.UTC).replace(tzinfo=None)
        return moment.replace(microsecond=0).isoformat(sep="T")
    raise ValueError(f"must be a date in ISO 8601 form, as {EXAMPLE['date']} or {EXAMPLE['date-time']}")


def form_of(text):
    """"date" or "date-time", of a canonical text."""
    return "date-time" if "T" in text else "date"


def date_form_of(cells):
    """How a column's cells (None where missing) write dates: "iso", "day-first" or "month-first"; None when they
    are not all dates, or could be day-first as well as month-first (03/04/2015)."""
    given = [cell for cell in cells if cell is not None]
    if not given:
        return None
    if all(ISO_DATE.fullmatch(cell) or ISO_DATETIME.fullmatch(cell) for cell in given):
        try:
            [parse_iso(cell) for cell in given]
        except ValueError:  # 2015-13-45: not dates
            return None
        return "iso"
    parts = [SLASHED.fullmatch(cell) for cell in given]
    if not all(parts):
        return None
    firsts, seconds = [int(p.group(1)) for p in parts], [int(p.group(2)) for p in parts]
    form = "day-first" if max(firsts) > 12 >= max(seconds) else "month-first" if max(seconds) > 12 >= max(
        firsts) else None
    try:
        return form and [canonical(cell, form) for cell in given] and form
    except ValueError:  # 31/02/2015
        return None


def canonical(cell, form):
    """A cell of a column of this form as canonical ISO text (None stays None)."""
    if cell is None:
        return None
    if form == "iso":
        return parse_iso(cell)
    first, second, year = (int(part) for part in SLASHED.fullmatch(cell).groups())
    day, month = (first, second) if form == "day-first" else (second, first)
    return datetime.date(year, month, day).isoformat()


def days_of(values):
    """Float days since 1970-01-01 of canonical texts (NaN where a value is missing: None or NaN)."""
    texts = [value if isinstance(value, str) else "NaT" for value in values]
    moments = np.array(texts, dtype="datetime64[s]")
    return (moments - np.datetime64("1970-01-01T00:00:00")) / DAY


def text_of(days, form):
    """The canonical text of a number of days since 1970-01-01."""
    moment = np.datetime64("1970-01-01T00:00:00") + np.timedelta64(int(round(days * 86400)), "s")
    return str(moment.astype("datetime64[D]")) if form == "date" else str(moment)


def circle(values, period):
    """(sine, cosine) of values on a circle of this period."""
    angle = 2 * np.pi * values / period
    return np.sin(angle), np.cos(angle)


class DateParts(TransformerMixin, BaseEstimator):
    """Columns of canonical date (or date-time) texts as numbers: per column, the year with its fraction, the day of
    the year and the day of the week on circles, and with hours=True the hour of the day on a circle. A missing value
    gives NaN in every part (the pipeline's imputer fills them)."""

    def __init__(self, hours=False):
        self.hours = hours

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=object)
        columns = []
        for index in range(X.shape[1]):
            days = days_of(X[:, index].tolist())
            years = 1970 + days / 365.2425
            day_of_year = days - np.floor(years - 1970) * 365.2425
            columns += [years, *circle(day_of_year, 365.2425), *circle(np.floor(days) + 3, 7)]  # 0: a Monday
            if self.hours:
                columns += [*circle((days - np.floor(days)) * 24, 24)]
        return np.column_stack(columns) if columns else np.empty((len(X), 0))

    def get_feature_names_out(self, input_features=None):
        names = input_features if input_features is not None else [f"x{i}" for i in range(self.n_features_in_)]
        parts = ["year", "day_of_year_sin", "day_of_year_cos", "weekday_sin", "weekday_cos"]
        parts += ["hour_sin", "hour_cos"] if self.hours else []
        return np.array([f"{name}_{part}" for name in names for part in parts], dtype=object)
