"""The prediction log (PREDICTION_LOG=stdout): a JSON line for every row answered, and for every feedback item, on a
logger of its own ("tabserve.predictions") that writes to standard output while the service's own lines go to
standard error, so that a log shipper can route them apart.

    log = PredictionLog("stdout", sample=0.1)        # a tenth of the requests, every row of each; "off": nothing
    log.predictions(model, rows, predictions, user)  # serving.py, after every prediction
    log.feedback(model, item, user)                  # feedback.py's checked items

A line holds the time, the request's ID, the user's name (never a password: the service has none to log), the model's
name and version, the inputs by name (null where missing), the answer as /api/v1.0 gives it and its warnings. The
requests kept are drawn at random, so a batch's rows are kept or dropped together.
"""

import json
import logging
import random
import sys
from datetime import UTC, datetime

from tabserve.inputs import is_missing
from tabserve.logs import BatchingStreamHandler, request_id
from tabserve.v1 import answers

LOGGER = "tabserve.predictions"


def inputs_of(names, kinds, row):
    """A checked row's inputs by name, as JSON takes them: numbers as floats, a missing value as None."""
    return {name: None if is_missing(value) else float(value) if kind == "number" else value
            for name, kind, value in zip(names, kinds, row, strict=True)}


def now():
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class PredictionLog:
    """Where the prediction lines go, and how many of them."""

    def __init__(self, destination, sample=1.0):
        self.sample, self.log = sample, None
        if destination == "stdout":
            self.log = logging.getLogger(LOGGER)
            self.log.propagate = False  # not into the service's own log lines
            handler = BatchingStreamHandler(sys.stdout)  # written in batches, as the service's lines are
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.log.handlers, self.log.level = [handler], logging.INFO

    def kept(self):
        return self.log is not None and (self.sample >= 1 or random.random() < self.sample)

    def predictions(self, model, rows, predictions, user):
        if not self.kept():
            return
        # The request's fields are encoded once and each row's spliced in after them.
        head = json.dumps({"time": now(), "request_id": request_id.get(), "user": user, "model": model.identity})
        names, kinds = model.schema.names, [item.kind for item in model.schema.inputs]
        lines = [f"{head[:-1]}, {json.dumps({'inputs': inputs_of(names, kinds, row), **answer})[1:]}"
                 for row, answer in zip(rows.tolist(), answers(model, rows, predictions), strict=True)]
        # A batch's lines in one log record: a record costs about 10 µs, twice a line's JSON.
        self.log.info("\n".join(lines))

    def feedback(self, model, item, user):
        if self.kept():
            self.log.info(json.dumps({"time": now(), "request_id": request_id.get(), "user": user,
                                      "model": model.identity, "feedback": item}))
