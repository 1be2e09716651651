"""/api/v1.0, the service's own protocol: its query string and batch read into the rows the model takes (checked by
inputs.py's rules, with a 400 that names every bad field at once, a 413 past MAX_ROWS), and its answers written.

    options, given = read_query(environ["QUERY_STRING"], limit)  # {"_version": "2"}, {name: [values]}
    features = parse_query(schema, given)                        # {name: value}, in the model's order
    rows = parse_instances(schema, json_document)                # an (n, inputs) array
    answer(model, features, rows, predictions)                   # the JSON of GET /api/v1.0
    problem(error)                                               # a RequestError as problem+json (RFC 9457)
"""

import json
from urllib.parse import unquote_to_bytes

import bottle
import numpy as np

from tabserve.inputs import MISSING, is_missing
from tabserve.model import MAX_ROWS
from tabserve.wsgi import RequestError, field_error, invalid, shorten

# Query parameters beyond the widest served version's inputs that a request may carry and still be answered (with a
# 400 naming them); more is refused before any is read.
EXTRA_QUERY_FIELDS = 12
MAX_REPORTED_ERRORS = 20
PROBLEM_TYPE = "application/problem+json"
NO_INTERVAL = ("This model has no prediction interval: it was fitted elsewhere and could not be calibrated (its card's "
               "metrics say why).")


def unquote_utf8(raw):
    """A percent-encoded query component (bytes) as text; UnicodeDecodeError when it is not UTF-8."""
    if b"%" in raw or b"+" in raw:
        raw = unquote_to_bytes(raw.replace(b"+", b" "))
    return raw.decode("utf-8")


def query_pairs(query_string, limit):
    """(name, value) pairs of a raw WSGI query string, or a 400 when there are too many or they are not UTF-8."""
    # WSGI hands the query over as latin-1; the bytes a client sent must be UTF-8.
    parts = [part for part in query_string.encode("latin-1").split(b"&") if part]
    if len(parts) > limit:
        raise invalid([field_error("query", f"has more than {limit} parameters")])
    try:
        return [(unquote_utf8(key), unquote_utf8(value)) for key, _, value in (p.partition(b"=") for p in parts)]
    except UnicodeDecodeError:
        raise invalid([field_error("query", "is not valid UTF-8")]) from None


def read_query(query_string, limit, allowed=("_version",)):
    """A raw WSGI query string as ({option: value}, {name: [values]}): the options are the names that start with "_"
    (no feature's does), each known and given once; a 400 naming every bad one."""
    options, given, errors = {}, {}, []
    for key, value in query_pairs(query_string, limit):
        if not key.startswith("_"):
            given.setdefault(key, []).append(value)
        elif key not in allowed:
            known = f"the options are {', '.join(allowed)}" if allowed else "it has none"
            errors.append(field_error(shorten(key), f"is not an option of this endpoint; {known}"))
        elif key in options or not value:
            errors.append(field_error(key, "must be given once, with a value"))
        else:
            options[key] = value
    if errors:
        raise invalid(errors)
    return options, given


def parse_query(schema, given):
    """The model's inputs from a query's {name: [values]} (read_query), by name (an optional one left out is
    missing: MISSING), or a 400 naming every problem."""
    errors = [field_error(shorten(key), f"is not a parameter of this endpoint; the parameters are "
                                        f"{', '.join(schema.names)}") for key in given if key not in schema.by_name]
    features = {}
    for item in schema.inputs:
        values = given.get(item.name, [])
        if not values and item.optional:
            features[item.name] = MISSING
            continue
        if len(values) != 1:
            errors.append(field_error(item.name, "is required" if not values else
                                      f"was given {len(values)} times; give it once"))
            continue
        try:
            features[item.name] = item.parse_text(values[0])
        except ValueError as err:
            errors.append(field_error(item.name, str(err)))
    if errors:
        raise invalid(errors)
    return features


def parse_row(schema, index, row):
    """One batch row, a list of values in input order or an object by name, checked; or its errors."""
    where, names, count = f"instances[{index}]", schema.names, len(schema.inputs)
    what = "numbers" if schema.numeric else "values"
    if isinstance(row, dict):
        required = [item.name for item in schema.inputs if not item.optional]
        if not set(required) <= set(row) or not set(row) <= set(names):
            keys = f"the keys {', '.join(required)}" + (
                f" (and may have {', '.join(sorted(set(names) - set(required)))})" if len(required) < count else "")
            return None, [field_error(where, f"must have {'exactly ' if len(required) == count else ''}{keys}")]
        values, fields = [row.get(name) for name in names], [f"{where}.{name}" for name in names]
    elif isinstance(row, list):
        if len(row) != count:
            return None, [field_error(where, f"must have {count} {what} ({', '.join(names)}), got {len(row)}")]
        values, fields = row, [f"{where}[{i}]" for i in range(count)]
    else:
        return None, [field_error(where, f"must be a list of {count} {what} or an object with the names "
                                         f"{', '.join(names)}")]
    checked, errors = [], []
    for item, field, value in zip(schema.inputs, fields, values, strict=True):
        try:
            checked.append(item.parse_json(value))
        except ValueError as err:
            errors.append(field_error(field, str(err)))
    return (None if errors else checked), errors


def parse_instances(schema, document):
    """The batch body as an (n, inputs) array, or a 400 naming every bad row, or a 413 when it is too long."""
    if not isinstance(document, dict) or list(document) != ["instances"]:
        raise invalid([field_error("body", "must be a JSON object with exactly one key, 'instances'")])
    rows = document["instances"]
    if not isinstance(rows, list) or not rows:
        raise invalid([field_error("instances", "must be a non-empty list of rows")])
    if len(rows) > MAX_ROWS:
        raise RequestError(413, f"A batch holds at most {MAX_ROWS} instances, got {len(rows)}; split it.")
    matrix = plain_matrix(schema, rows) if schema.numeric else None
    if matrix is not None:
        return matrix
    checked, errors = [], []
    for index, row in enumerate(rows):
        values, row_errors = parse_row(schema, index, row)
        checked.append(values)
        errors.extend(row_errors)
    if errors:
        raise invalid(errors)
    return schema.matrix(checked)


def plain_matrix(schema, rows):
    """The common case of a numeric model in one vectorised pass: every row a list of valid numbers. None otherwise,
    and parse_row() then names each problem."""
    if not all(type(row) is list and len(row) == len(schema.inputs) for row in rows):
        return None
    # np.array would quietly turn true into 1.0 and "1" into 1.0: only JSON numbers may pass.
    if not all(type(value) is float or type(value) is int for row in rows for value in row):
        return None
    try:
        matrix = np.array(rows, dtype=float)
    except OverflowError:  # an integer too large for a float
        return None
    return None if schema.invalid(matrix).any() else matrix


# --- Answers ---------------------------------------------------------------------------------------------------


def range_warnings(schema, row, outside):
    """One sentence for each value of a row that lies outside what the model saw in training."""
    return [outside_warning(schema.inputs[i], row[i]) for i in np.flatnonzero(outside)]


def outside_warning(item, value):
    """Why a value lies outside what the model saw in training, and what the answer is then."""
    if item.kind == "category":
        return (f"{item.name} {shorten(value)!r} is none of the {len(item.categories)} levels of {item.label} seen "
                f"often in training: the model answered as for a rare one.")
    low, high = item.training_range
    shown = (lambda v: v) if item.kind == "date" else (lambda v: f"{float(v):g}")
    return (f"{item.name} {shown(value)}{item.in_unit} lies outside the {shown(low)} to {shown(high)}{item.in_unit} "
            "seen in training, so the answer is an extrapolation.")


def missing_warnings(schema, missing):
    """One sentence for each value of a row that was not given: what the model assumed instead."""
    return [f"{schema.inputs[i].name} was not given: the model assumed {schema.inputs[i].assumed}."
            for i in np.flatnonzero(missing)]


def answers(model, rows, predictions):
    """A dict per row: the prediction, with each class's probability or the interval, and a warning per number out
    of range (and, for a regressor, when the prediction lies outside the target's training range)."""
    outside = predictions.outside
    unusual = outside.any(axis=1).tolist()
    warnings = [range_warnings(model.schema, rows[i], outside[i]) if unusual[i] else [] for i in range(len(rows))]
    if model.schema.optional:
        for row_warnings, missing in zip(warnings, model.schema.missing(rows), strict=True):
            row_warnings[:0] = missing_warnings(model.schema, missing)
    if predictions.task == "regression":
        return number_answers(model.card["target"], predictions, warnings)
    classes = predictions.classes
    return [{"prediction": classes[choice], "probabilities": dict(zip(classes, row_probabilities, strict=True)),
             "warnings": warnings[i]}
            for i, (choice, row_probabilities) in enumerate(zip(predictions.best.tolist(),
                                                                predictions.probabilities.tolist(), strict=True))]


def number_answers(target, predictions, warnings):
    """A regressor's answers: each number with its interval (null, and a warning saying so, for a model that has
    none), warned when it lies beyond the target's training range."""
    unit = f" {target['unit']}" if target.get("unit") else ""
    low, high = target["training_range"]["min"], target["training_range"]["max"]
    values, beyond = predictions.values.tolist(), predictions.beyond.tolist()
    if predictions.level is None:
        intervals = [None] * len(values)
        warnings = [[*found, NO_INTERVAL] for found in warnings]
    else:
        intervals = [{"low": lower, "high": upper, "level": predictions.level}
                     for lower, upper in zip(predictions.low.tolist(), predictions.high.tolist(), strict=True)]
    return [{"prediction": value, "interval": intervals[i],
             "warnings": warnings[i] + ([f"The prediction {value:g}{unit} lies outside the {low:g} to {high:g}{unit} "
                                         f"of {target['label']} seen in training."] if beyond[i] else [])}
            for i, value in enumerate(values)]


def answer(model, features, rows, predictions):
    """GET /api/v1.0's answer for the one row of a query: what answers() says of it, the values read, the model."""
    first = answers(model, rows, predictions)[0]
    warnings = first.pop("warnings")
    if model.schema.optional:  # a missing value is echoed as null
        features = {name: None if is_missing(value) else value for name, value in features.items()}
    return {**first, "features": features, "warnings": warnings, "model": model.identity}


def explanation(model, contributions, neighbours):
    """The explain endpoint's additions: each feature's contribution (explain.py) and the nearest training rows."""
    return {"contributions": dict(zip(model.schema.names, contributions.tolist(), strict=True)),
            "neighbours": neighbours}


def batch_answer(model, rows, predictions):
    return {"predictions": answers(model, rows, predictions), "model": model.identity}


def problem_body(status, detail, errors=None):
    """An RFC 9457 problem+json document, as text."""
    body = {"type": "about:blank", "title": bottle.HTTP_CODES.get(status, "Error"), "status": status, "detail": detail}
    if errors:
        body["errors"] = errors[:MAX_REPORTED_ERRORS]
    return json.dumps(body)


def problem(error):
    """A RequestError as a problem+json response."""
    return bottle.HTTPResponse(problem_body(error.status, error.detail, error.errors), error.status,
                               headers={"Content-Type": PROBLEM_TYPE, **error.headers})
