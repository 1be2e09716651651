"""What train.py writes in the model card (card.py), computed from the table and the fitted estimator.

    card = build_card(table, estimator, (X_train, y_train), facts, sha256, version)

The task and the target; each input's name, label, kind, unit, allowed values and training range or categories; a
classifier's classes and their labels, a regressor's interval; typical rows (one per class, or across the target's
range); a reference sample with the answers the model gives it (the API's self-test); what explanations need
(explain.py); the reference distributions that drift is measured against (drift.py); the page's words; metrics,
versions, the artifact's format and sha256.
"""

import math
import platform
from datetime import UTC, datetime

import joblib
import numpy as np
import sklearn
import skops
from sklearn.model_selection import train_test_split

from tabserve.artifacts import FORMAT
from tabserve.dates import days_of, text_of
from tabserve.drift import distributions
from tabserve.frames import frame_maker
from tabserve.levels import RARE
from tabserve.training import MISSING_LEVEL

REFERENCE_ROWS = 50  # rows kept with the model's answers, for the API's self-test and its check of the fast path
EXAMPLE_QUANTILES = (0.1, 0.5, 0.9)  # a regressor's example rows: near these quantiles of the target
TARGET_QUANTILES = {"p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}
# A number with no bounds of its own may lie this many powers of ten beyond the largest magnitude seen in training.
# "Any finite number" let 1e308 through, and a linear model's arithmetic overflowed into NaN probabilities.
HEADROOM_DECADES = 6
MAX_EXPLANATION_ROWS = 5_000  # training rows kept for the explanations' neighbours; above that, a stratified sample


def page_texts(table):
    """The words of the page for this table: its own where it has them, else made from its names."""
    what, count, name = table.target_label.lower(), len(table.columns), table.name.replace("-", " ").capitalize()
    if table.task == "regression":
        words = {"title": f"{name} regressor", "question": f"What is its {what}?",
                 "lead": f"Enter the {count} values of one row and the model predicts its {what}, with an interval."}
    else:
        words = {"title": f"{name} classifier", "question": f"Which {what} is this?",
                 "lead": f"Enter the {count} values of one row and the model names its {what}."}
    return {**words, "submit": f"Predict the {what}", "source": table.source, "change": "Change these values",
            **table.texts}


def describe(estimator):
    """A short name such as 'Pipeline(StandardScaler, LogisticRegression)'."""
    steps = getattr(estimator, "steps", None)
    if steps is None:
        return type(estimator).__name__
    return f"{type(estimator).__name__}({', '.join(type(step).__name__ for _, step in steps)})"


def simple_params(estimator):
    """The estimator's parameters that JSON can hold (nested estimators are described by their step names)."""
    params = estimator.get_params(deep=True)
    return {key: value for key, value in sorted(params.items())
            if value is None or isinstance(value, (bool, int, float, str))}


def describe_input(column, values, policy):
    """One input as the card describes it; values are the training split's, for a number's (or a date's) range and
    for what a missing value becomes (policy: "impute", "native" or "adopted": training.missing_policy)."""
    entry = {"name": column.name, "label": column.label, "kind": column.kind, "unit": column.unit,
             "optional": bool(column.missing)}
    if column.missing:
        entry["missing"] = missing_facts(column, values, policy)
    if column.kind == "category":
        rare = {"open": True, "rare": rare_facts(column, values)} if column.levels is not None else {}
        return {**entry, "categories": column.categories, **rare}
    if column.kind == "date":
        given = sorted(value for value in values.tolist() if isinstance(value, str))
        return {**entry, "format": column.form, "training_range": {"min": given[0], "max": given[-1]}}
    numbers = np.asarray(values, dtype=float)
    allowed = dict(column.allowed) or headroom(numbers)
    return {**entry, "allowed": allowed,
            "training_range": {"min": float(np.nanmin(numbers)), "max": float(np.nanmax(numbers))}}


def rare_facts(column, values):
    """What an open category's rare group holds in the training split: its levels and rows, and its name."""
    rare = [value for value in values.tolist() if isinstance(value, str) and value not in set(column.levels)]
    return {"value": RARE, "levels": len(set(rare)), "rows": len(rare)}


def missing_facts(column, values, policy):
    """How often an input was missing in the table, and what the model assumes when it is: the value the pipeline
    fills in (a number's training median, each of a date's parts' medians, a category's level of its own), or that
    the model handles it itself."""
    facts = {"rows": int(column.missing)}
    if policy == "native":
        return {**facts, "assumed": "handled by the model, which learnt where a missing value goes"}
    if policy == "adopted":
        return {**facts, "assumed": "handled by the model as it was fitted"}
    if column.kind == "category":
        return {**facts, "value": MISSING_LEVEL, "assumed": "a level of its own for a missing value"}
    if column.kind == "date":
        return {**facts, "assumed": "the median of each of its parts in training (year, day of the year, weekday)"}
    median = float(np.nanmedian(np.asarray(values, dtype=float)))
    unit = f" {column.unit}" if column.unit else ""
    return {**facts, "value": median, "assumed": f"{median:g}{unit}, the median in training"}


def headroom(numbers):
    """Bounds for a number that has none of its own: ± a power of ten, HEADROOM_DECADES above the training data's
    largest magnitude (proline up to 1680: ± 1e10). Wide enough for any real value, narrow enough for the model's
    arithmetic to stay finite."""
    bound = 10.0 ** (math.ceil(math.log10(max(1.0, float(np.nanmax(np.abs(numbers)))))) + HEADROOM_DECADES)
    return {"minimum": -bound, "maximum": bound}


def json_row(table, row):
    """A row of the table as JSON values, by feature name: floats for numbers, strings for categories, None for a
    missing value."""
    return {column.name: None if value is None or value != value else float(value) if column.kind == "number"
            else str(value) for column, value in zip(table.columns, row, strict=True)}


def typical_rows(table, X):
    """The form's example links: for each class, the row of that class nearest to the class's median (numbers, in
    standard deviations) and most frequent values (categories); for a quantity, the rows whose target is nearest to
    its EXAMPLE_QUANTILES, named by their target."""
    if table.task == "regression":
        chosen = [int(np.argmin(np.abs(table.target - np.quantile(table.target, q)))) for q in EXAMPLE_QUANTILES]
        return {f"{table.target[i]:g}": json_row(table, X[i]) for i in chosen}
    examples = {}
    for name in sorted(set(table.target)):
        rows = X[table.target == name]
        distance = np.zeros(len(rows))
        for index, column in enumerate(table.columns):
            values = rows[:, index]
            if column.kind != "category":  # a missing value counts as two deviations away: typical rows are whole
                values = values.astype(float) if column.kind == "number" else days_of(values.tolist())
                distance += np.nan_to_num(((values - np.nanmedian(values)) / (np.nanstd(values) or 1.0)) ** 2, nan=4.0)
            else:
                common = max(sorted({value for value in values if value == value}), key=list(values).count)
                distance += values != common
        examples[name] = json_row(table, rows[int(np.argmin(distance))])
    return examples


def explanation_facts(table, X, seed, keep_rows):
    """What an explanation needs (explain.py): each feature's baseline (a number's or a date's median, a category's
    most frequent value, ties to the first in category order), the numbers' and dates' means and deviations (ddof 0;
    a date's in days), and the training rows
    for the neighbours, at most MAX_EXPLANATION_ROWS of them (a stratified sample above that), unless keep_rows is
    false (a table that must not ship inside an image)."""
    baselines, means, deviations = {}, {}, {}
    for index, column in enumerate(table.columns):
        values = X[:, index]
        if column.kind != "category":
            numbers = values.astype(float) if column.kind == "number" else days_of(values.tolist())
            middle = float(np.nanmedian(numbers))
            baselines[column.name] = middle if column.kind == "number" else text_of(middle, column.form)
            means[column.name], deviations[column.name] = float(np.nanmean(numbers)), float(np.nanstd(numbers))
        else:
            # An open category may keep no level at all (none seen MIN_ROWS times): its baseline is the rare group.
            baselines[column.name] = max(column.categories, key=list(values).count) if column.categories else RARE
    facts = {"baselines": baselines, "means": means, "deviations": deviations, "table_rows": int(len(X)),
             "neighbours": keep_rows}
    if keep_rows:
        chosen = np.arange(len(X))
        if len(X) > MAX_EXPLANATION_ROWS:
            stratify = table.target if table.task == "classification" else None
            chosen, _ = train_test_split(chosen, train_size=MAX_EXPLANATION_ROWS, stratify=stratify,
                                         random_state=seed)
            chosen.sort()
        facts.update(sampled=bool(len(chosen) < len(X)),
                     rows=[list(json_row(table, row).values()) for row in X[chosen]])
        if table.task == "regression":
            facts["row_targets"] = [float(value) for value in table.target[chosen]]
        else:
            facts["row_classes"] = [str(name) for name in table.target[chosen]]
    return facts


def reference_sample(table, X, estimator, frame):
    """Evenly spaced rows of the table with what the trained model answers: probabilities, or predictions (a model
    fitted on a DataFrame asked with one: frames.py)."""
    rows = X[np.linspace(0, len(X) - 1, min(len(X), REFERENCE_ROWS)).astype(int)]
    sample = {"rows": [list(json_row(table, row).values()) for row in rows]}
    if frame:
        rows = frame_maker([(column.label, column.kind) for column in table.columns], frame)(rows)
    if table.task == "regression":
        return {**sample, "predictions": np.asarray(estimator.predict(rows), dtype=float).tolist()}
    return {**sample, "probabilities": estimator.predict_proba(rows).tolist()}


def describe_target(table, y_train):
    """What the model predicts: the target column's name and label, and a quantity's unit, range and quantiles."""
    target = {"name": table.target_name, "label": table.target_label}
    if table.task == "classification":
        return target
    values = np.asarray(y_train, dtype=float)
    return {**target, "unit": table.target_unit,
            "training_range": {"min": float(values.min()), "max": float(values.max())},
            "quantiles": {key: float(np.quantile(values, q)) for key, q in TARGET_QUANTILES.items()}}


def task_facts(table, estimator, facts):
    """What the card says of the answers: a classifier's classes, their labels and (for a model of class codes) the
    codes, or a regressor's interval."""
    if table.task == "regression":
        return {"classes": [], "class_labels": {}, "interval": facts["interval"]}
    classes = facts.get("classes") or [str(name) for name in estimator.classes_]
    codes = {"class_codes": facts["class_codes"]} if facts.get("class_codes") else {}
    return {"classes": classes, "class_labels": {name: table.class_labels.get(name, name) for name in classes}, **codes}


def model_needs(facts):
    """The card's "frame" (the columns a model fitted on a DataFrame takes) and "requires" (packages.py)."""
    frame = {"frame": {"columns": facts["frame"]}} if facts.get("frame") else {}
    return {**frame, "requires": facts["requires"]}


def build_card(table, estimator, train_split, facts, sha256, version):
    """Everything a person or the API needs to know about the artifact, readable without unpickling it. The version
    is sha256[:12] for an artifact alone (it changes exactly when the bytes do), a whole number in a repository."""
    X_train, y_train = train_split
    X = table.matrix()
    inputs = [describe_input(column, X_train[:, i], facts["missing"]) for i, column in enumerate(table.columns)]
    answers = task_facts(table, estimator, facts)
    return {
        "name": facts["name"],
        "version": version,
        "task": table.task,
        "algorithm": facts["algorithm"],
        "estimator": describe(estimator),
        "parameters": simple_params(estimator),
        "target": describe_target(table, y_train),
        "features": [column.name for column in table.columns],
        "inputs": inputs,
        **answers,
        **model_needs(facts),
        "examples": typical_rows(table, X),
        "reference": reference_sample(table, X, estimator, facts.get("frame")),
        "explanation": explanation_facts(table, X, facts["seed"], facts["keep_rows"]),
        "distributions": distributions(inputs, X_train, (facts["held_out"], answers["classes"])),
        "texts": page_texts(table),
        "metrics": facts["metrics"],
        "training": {**facts["training"], "dataset": table.source, **({"read": table.dialect} if table.dialect else {}),
                     "left_out": [{"column": label, "why": why} for label, why in table.left_out],
                     "trained_at": datetime.now(UTC).isoformat(timespec="seconds")},
        "versions": library_versions(),
        "format": FORMAT,
        "sha256": sha256,
    }


def library_versions():
    """The versions of Python and of the libraries that wrote the artifact (the API loads it with the same
    scikit-learn)."""
    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__, "skops": skops.__version__,
            "joblib": joblib.__version__, "numpy": np.__version__}
