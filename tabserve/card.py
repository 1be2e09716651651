"""The model card: the one description of a model that every part of the service reads, written by train.py beside
the artifact as JSON (model/iris.skops -> model/iris.json).

    card = read_card(card_path("model/iris.skops"))     # a dict; CardError says what is wrong
    public_view(card)                                    # what GET /api/v1.0/model answers

Its keys: name and version; task ("classification" or "regression"); algorithm, estimator and parameters; target
(what is predicted: a quantity's unit, training range and quantiles); features and inputs (each input's name, label,
kind, unit, allowed values and training range or categories); a classifier's classes and class_labels, a
regressor's interval; examples (typical rows); reference (rows with the answers the model gives them: the API's
self-test); explanation (what explain.py needs); distributions (the reference of drift.py: each input's and the
output's bins and their training shares); texts (the page's words); metrics, training, versions (of Python and the
libraries), the artifact's format (skops) and sha256. tabserve/describe.py computes them; docs/models.md explains
them. Reading a card needs only the standard library, so the web app can use this module without NumPy.
"""

import json
from pathlib import Path

REQUIRED = ("name", "version", "algorithm", "features", "inputs", "reference", "explanation", "versions", "sha256")
REQUIRED_FOR = {"classification": ("classes", "class_labels"), "regression": ("target", "interval")}
PRIVATE = ("reference",)  # kept for the API's own checks, never answered
PRIVATE_EXPLANATION = ("rows", "row_classes")  # the training rows behind the neighbours


class CardError(Exception):
    """A card that is missing or cannot be used; the message says what to do."""


def card_path(artifact_path):
    """The card that sits beside an artifact (a path, or the text of an s3:// location)."""
    if str(artifact_path).startswith("s3://"):
        return str(artifact_path).rsplit(".", 1)[0] + ".json"
    return Path(artifact_path).with_suffix(".json")


def read_card(path, shown=None):
    """The card at this path, with every required key; CardError otherwise, naming the card as shown (path may be a
    verified copy of it)."""
    shown = shown or path
    try:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CardError(f"model metadata {shown} not found: train a model first with 'python train.py'") from None
    except (OSError, ValueError) as err:
        raise CardError(f"cannot read model metadata {shown}: {err}") from None
    if task_of(card) not in REQUIRED_FOR:
        raise CardError(f"model metadata {shown} has the task {card['task']!r}: retrain with 'python train.py'")
    missing = [key for key in REQUIRED + REQUIRED_FOR[task_of(card)] if key not in card]
    if missing:
        raise CardError(f"model metadata {shown} lacks {', '.join(missing)}: retrain with 'python train.py'")
    return card


def public_view(card):
    """The card as GET /api/v1.0/model answers it: less the rows kept for the self-test and the neighbours."""
    explanation = {key: value for key, value in card["explanation"].items() if key not in PRIVATE_EXPLANATION}
    return {**{key: value for key, value in card.items() if key not in PRIVATE}, "explanation": explanation}


def task_of(card):
    """What the model predicts: "classification" (cards written before regressors say nothing) or "regression"."""
    return card.get("task", "classification")


def identity(card):
    """The name and version that every answer carries."""
    return {"name": card["name"], "version": card["version"]}
