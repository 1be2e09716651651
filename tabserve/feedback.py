"""Feedback: what a client learned after an answer (the true class, the true number), turned into live accuracy.

    items = read_feedback(document, model_of)       # [(model, item)] checked, or a 400 naming every bad field
    record(metrics, model, item)                    # counted in the Prometheus counters, per version
    summary(model, counts)                          # live accuracy and recall, or MAE, RMSE and coverage

The client sends back the prediction it got (and a regressor's interval), so the service keeps no store of its
answers and scales out unchanged: the counters add up across workers and replicas like every other.
"""

import math

from tabserve.metrics import PREFIX
from tabserve.model import MAX_ROWS
from tabserve.wsgi import RequestError, field_error, invalid, shorten

FIELDS = ("prediction", "truth", "version", "request_id", "interval")
MAX_REQUEST_ID = 200


def read_feedback(document, model_of):
    """[(model, item)] of a feedback body: one item (an object) or many (a list of them); model_of(version or None)
    gives the version's model or raises LookupError, which is a 404 naming the item."""
    items, where = ([document], lambda i: "") if isinstance(document, dict) else (document, lambda i: f"[{i}].")
    if not isinstance(items, list) or not items:
        raise invalid([field_error("body", "must be a feedback object, or a non-empty list of them")])
    if len(items) > MAX_ROWS:
        raise RequestError(413, f"A feedback list holds at most {MAX_ROWS} items, got {len(items)}; split it.")
    checked, errors = [], []
    for index, item in enumerate(items):
        item_errors = check_item(item, where(index), model_of)
        errors.extend(item_errors)
        if not item_errors:
            checked.append((model_of(item.get("version")), item))
    if errors:
        raise invalid(errors)
    return checked


def check_item(item, where, model_of):
    """The errors of one item, each naming its field."""
    if not isinstance(item, dict):
        return [field_error(where.rstrip(".") or "body", "must be an object with prediction and truth")]
    errors = [field_error(f"{where}{shorten(key)}", f"is not a feedback field; they are {', '.join(FIELDS)}")
              for key in item if key not in FIELDS]
    errors += [field_error(f"{where}{key}", "is required") for key in ("prediction", "truth") if key not in item]
    for key in ("version", "request_id"):
        value = item.get(key, "given")
        if not isinstance(value, str) or not 0 < len(value) <= MAX_REQUEST_ID:
            errors.append(field_error(f"{where}{key}", f"must be a string of 1 to {MAX_REQUEST_ID} characters"))
    if "prediction" not in item or "truth" not in item or any(e["field"] == f"{where}version" for e in errors):
        return errors
    try:
        model = model_of(item.get("version"))
    except LookupError as err:  # a 404, as for _version: the version is not served (now)
        raise RequestError(404, f"{where}version: {err}") from None
    check = check_classes if model.task == "classification" else check_numbers
    return errors + check(model, item, where)


def check_classes(model, item, where):
    errors = [field_error(f"{where}{key}", f"must be one of the classes {', '.join(model.classes)}, got "
                                           f"{shorten(repr(item[key]))}")
              for key in ("prediction", "truth") if not isinstance(item[key], str) or item[key] not in model.classes]
    if "interval" in item:
        errors.append(field_error(f"{where}interval", "is for a regressor's answers; this model is a classifier"))
    return errors


def finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_numbers(model, item, where):
    errors = [field_error(f"{where}{key}", "must be a finite number")
              for key in ("prediction", "truth") if not finite(item[key])]
    interval = item.get("interval")
    if interval is not None and not (isinstance(interval, dict) and set(interval) == {"low", "high"}
                                     and finite(interval["low"]) and finite(interval["high"])
                                     and interval["low"] <= interval["high"]):
        errors.append(field_error(f"{where}interval", "must be the answer's interval: {\"low\": a number, "
                                                      "\"high\": a number not below it}"))
    return errors


def record(metrics, model, item):
    """Count one checked item, for its version."""
    version = model.card["version"]
    if model.task == "classification":
        metrics.feedback(version, item["prediction"], item["truth"]).inc()
        return
    error = float(item["truth"]) - float(item["prediction"])
    metrics.feedback(version, "", "").inc()
    metrics.feedback_absolute(version).inc(abs(error))
    metrics.feedback_squared(version).inc(error * error)
    if item.get("interval"):
        covered = item["interval"]["low"] <= item["truth"] <= item["interval"]["high"]
        metrics.feedback_intervals(version, "true" if covered else "false").inc()


def ratio(part, whole, digits=4):
    return round(part / whole, digits) if whole else None


def summary(model, counts):
    """The feedback of a version from the shared counts: live figures beside the training ones."""
    version, found = model.card["version"], {}
    for (sample, labels), value in counts.items():
        labels = dict(labels)
        if sample.startswith(f"{PREFIX}_api_feedback") and labels.get("version") == version:
            key = (sample[len(f"{PREFIX}_api_"):-len("_total")], labels.get("prediction"), labels.get("truth"),
                   labels.get("covered"))
            found[key] = found.get(key, 0) + value
    if model.task == "classification":
        return classes_summary(model, {(p, t): found.get(("feedback", p, t, None), 0) for p in model.classes
                                       for t in model.classes})
    return numbers_summary(model, found)


def classes_summary(model, pairs):
    classes, metrics = model.classes, model.card["metrics"]
    count, per_class = int(sum(pairs.values())), metrics.get("per_class", {})
    return {"count": count, "accuracy": ratio(sum(pairs[c, c] for c in classes), count),
            "recall": {c: ratio(pairs[c, c], sum(pairs[p, c] for p in classes)) for c in classes},
            "confusion": {p: {t: int(pairs[p, t]) for t in classes} for p in classes},
            "training": {"accuracy": metrics.get("test_accuracy", metrics.get("table_accuracy")),
                         "recall": {c: per_class.get(c, {}).get("recall") for c in classes}}}


def numbers_summary(model, found):
    metrics = model.card["metrics"]
    count = int(found.get(("feedback", "", "", None), 0))
    covered = found.get(("feedback_intervals", None, None, "true"), 0)
    intervals = covered + found.get(("feedback_intervals", None, None, "false"), 0)
    squared = found.get(("feedback_squared_error", None, None, None), 0)
    prefix = "test" if "test_mae" in metrics else "table"
    return {"count": count, "mae": ratio(found.get(("feedback_absolute_error", None, None, None), 0), count, 6),
            "rmse": round(math.sqrt(squared / count), 6) if count else None,
            "with_interval": int(intervals), "coverage": ratio(covered, intervals),
            "level": (model.card["interval"] or {}).get("level"),
            "training": {"mae": metrics.get(f"{prefix}_mae"), "rmse": metrics.get(f"{prefix}_rmse"),
                         "coverage": metrics.get("interval_coverage")}}
