"""The model as both protocols use it: /api/v1.0 and /v2 ask this layer, which picks the version that answers,
predicts, explains and counts.

    serving = Serving(versions, metrics, monitor, log)      # versions.py; monitoring.py; predictionlog.py
    choice = serving.pick(environ, version=None)            # the version named, or the routing's for this client
    predictions = serving.predict(choice, rows)             # model.Predictions, counted, and shadowed if routed so

Whatever a prediction must pass through on its way (the version's choice, the metrics, the drift counts, the
prediction log, the shadow) is written here once, not in each protocol.
"""

import dataclasses
import logging
import os
import queue
import threading
from dataclasses import dataclass

import numpy as np

from tabserve.batching import Batcher
from tabserve.metrics import VERSION_KEY
from tabserve.model import predict
from tabserve.users import USER_KEY

ROUTING_HEADER = "HTTP_X_ROUTING_KEY"  # a client's own routing key: X-Routing-Key
SHADOW_QUEUE = 256  # shadow predictions waiting at most, per worker; more are dropped (and counted)

logger = logging.getLogger(__name__)


def with_batching(model, setting, metrics):
    """The model, its predictions combined across concurrent requests (batching.py) where that pays: BATCHING=auto
    batches every model but the linear fast path, whose direct call of a few µs measured faster than any queue (a
    forest's 0.2 ms call measured 30 % faster batched at 16 connections). Each version has its own batcher."""
    wanted = setting == "on" or (setting == "auto" and model.engine != "numpy")
    logger.info("adaptive batching %s (BATCHING=%s, predictions by %s)", "on" if wanted else "off", setting,
                model.engine)
    if not wanted:
        return model
    batched = Batcher(model.compute, metrics.batch_rows.observe, metrics.batch_wait.observe, metrics.batch_refused.inc)
    return dataclasses.replace(model, compute=batched)


@dataclass(frozen=True)
class Choice:
    """The version that answers a request, the one that shadows it (or None), and who asked."""

    model: object
    shadow: object = None
    user: str = None


class Shadow:
    """Shadow predictions, made after the answer by a thread of each worker's own: never returned, only compared."""

    def __init__(self, metrics):
        self.metrics, self.queue, self.pid = metrics, None, None
        self.lock = threading.Lock()

    def submit(self, shadow, rows, predictions):
        if self.pid != os.getpid():  # the first in this process: a forked worker starts its own thread
            with self.lock:
                if self.pid != os.getpid():
                    self.queue, self.pid = queue.Queue(SHADOW_QUEUE), os.getpid()
                    threading.Thread(target=self.run, name="shadow", daemon=True).start()
        try:
            self.queue.put_nowait((shadow, rows, predictions))
        except queue.Full:
            self.metrics.shadow_dropped.inc()

    def run(self):
        while True:
            shadow, rows, predictions = self.queue.get()
            try:
                self.compare(shadow, predict(shadow, rows), predictions)
            except Exception:
                logger.exception("the shadow version %s failed", shadow.card["version"])

    def compare(self, shadow, theirs, ours):
        version = shadow.card["version"]
        if ours.task == "regression":
            for difference in np.abs(theirs.values - ours.values).tolist():
                self.metrics.shadow_difference(version).observe(difference)
            return
        agree = int((np.array(theirs.labels()) == np.array(ours.labels())).sum())
        self.metrics.shadow_comparisons(version, "agree").inc(agree)
        self.metrics.shadow_comparisons(version, "disagree").inc(len(ours.best) - agree)


class Serving:
    """The served versions, their metrics, and what each prediction passes through."""

    def __init__(self, versions, metrics, monitor, prediction_log):
        self.versions, self.metrics = versions, metrics
        self.monitor, self.prediction_log = monitor, prediction_log  # monitoring.py, predictionlog.py
        self.shadow = Shadow(metrics)

    @property
    def default(self):
        return self.versions.active.default

    def pick(self, environ, version=None, routed=True):
        """The version named (UnknownVersion if it is not served), else the routing's: the canary for a share of
        the clients, decided by the X-Routing-Key header or the user, the default for the others (for all of them
        when not routed)."""
        self.versions.refresh()
        user = environ.get(USER_KEY)
        if version is not None:
            choice = Choice(self.versions.named(version), user=user)
        elif not routed:
            choice = Choice(self.default, user=user)
        else:
            choice = Choice(*self.versions.routed(environ.get(ROUTING_HEADER) or user or ""), user=user)
        environ[VERSION_KEY] = choice.model.card["version"]
        return choice

    def predict(self, choice, rows):
        """Predictions for checked rows, counted, and asked of the shadow too when the routing says so."""
        predictions = predict(choice.model, rows)
        self.metrics.count_predictions(choice.model, predictions)
        self.monitor.count(choice.model, rows, predictions)
        self.prediction_log.predictions(choice.model, rows, predictions, choice.user)
        if choice.shadow is not None:
            self.shadow.submit(choice.shadow, rows, predictions)
        return predictions

    def contributions(self, model, rows, predictions):
        """What each value contributed to each row's answer (explain.py), counted as explanations."""
        best = predictions.best if predictions.task == "classification" else None
        contributions = model.explainer.contributions(model.compute, rows, best)
        self.metrics.count_predictions(model, predictions, explained=True)
        return contributions
