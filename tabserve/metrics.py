"""The services' Prometheus metrics: every metric's name and meaning in one place, and the text both /metrics answer.

    metrics = ApiMetrics()        # or WebMetrics(); each has its own registry
    metrics.requests(endpoint, method, status, user).inc()
    text = exposition(metrics.registry)

Under the production server, server.py sets PROMETHEUS_MULTIPROC_DIR before the app is built: every worker then
writes its counts to files there, and exposition() adds up all the workers' files, so the figures are exact for the
whole service. Without it (tests) the metrics live in the app's own registry. Label values come from small, fixed
sets (routes, methods, status codes, classes, features, user names from the users file), never from a client.
"""

import collections
import functools
import os
import time

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from tabserve.users import USER_KEY
from tabserve.wsgi import endpoint_of, method_of

PREFIX = "tabserve"  # of every metric name
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 1024, 10_000)
DIFFERENCE_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0)  # in the target's unit
VERSION_KEY = "tabserve.version"  # where serving.pick() leaves the answering version in the WSGI environ
API_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def exposition(registry):
    """The metrics in the Prometheus text format, summed over the server's workers when there are several."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return prometheus_client.generate_latest(registry)


def samples(registry, prefixes):
    """{(sample name, ((label, value), ...)): value} of the metrics whose names start with one of the prefixes,
    summed over the server's workers as exposition() sums them."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in registry.collect() if family.name.startswith(prefixes) for sample in family.samples}


def cached_labels(metric):
    """metric.labels, remembered: prometheus_client checks and looks up the labels on every call. Only for labels
    from a small, fixed set, since every value is kept."""
    return functools.lru_cache(maxsize=None)(metric.labels)


class ApiMetrics:
    """The API's metrics. Those of a request and of a prediction carry the version that answered ("none" for a
    request answered before one was chosen)."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        # The user is a label here rather than a counter of its own: one more multiprocess counter for every
        # request cost 15 % of the rate under serve.py (its values are shared files behind one lock).
        self.requests = cached_labels(Counter(
            f"{PREFIX}_api_requests", "Requests answered, by endpoint, method, status code, user (names from the "
            "users file; none for requests that were not authenticated) and model version",
            ["endpoint", "method", "status", "user", "version"], registry=registry))
        self.latency = cached_labels(Histogram(
            f"{PREFIX}_api_request_duration_seconds", "Time to answer a request, by endpoint and model version",
            ["endpoint", "version"], buckets=LATENCY_BUCKETS, registry=registry))
        self.predictions = cached_labels(Counter(
            f"{PREFIX}_api_predictions", "Predictions made, by predicted class (empty for a regressor) and version",
            ["class", "version"], registry=registry))
        self.explanations = cached_labels(Counter(
            f"{PREFIX}_api_explanations", "Predictions explained (contributions, and neighbours on "
            "/api/v1.0/explain), by predicted class and version", ["class", "version"], registry=registry))
        self.out_of_range = cached_labels(Counter(
            f"{PREFIX}_api_inputs_out_of_range", "Input values outside the range seen in training, by feature and "
            "version: the drift signal", ["feature", "version"], registry=registry))
        self.failed_logins = cached_labels(Counter(
            f"{PREFIX}_api_failed_logins", "Refused credentials, by user name (names not in the users file: "
            "unknown)", ["user"], registry=registry))
        self.batching_metrics(registry)
        self.version_metrics(registry)
        self.monitoring_metrics(registry)
        # Set once, in the server's main process; the workers' copies read 0, so "max" reports the main value.
        Gauge(f"{PREFIX}_api_start_time_seconds", "When the service started, in seconds since the epoch",
              registry=registry, multiprocess_mode="max").set(time.time())

    def batching_metrics(self, registry):
        self.batch_rows = Histogram(f"{PREFIX}_api_batch_rows", "Rows in each model call (adaptive batching)",
                                    buckets=BATCH_ROWS_BUCKETS, registry=registry)
        self.batch_wait = Histogram(f"{PREFIX}_api_batch_wait_seconds", "Time a request waited for its model call "
                                    "(adaptive batching)", buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_refused = Counter(f"{PREFIX}_api_batch_refused", "Requests refused with a 503 because too many "
                                     "were waiting for the model", registry=registry)

    def version_metrics(self, registry):
        # "max" over the workers: a state is shown while any worker has its version in it.
        self.info = cached_labels(Gauge(
            f"{PREFIX}_model_info", "The model versions being served (the value is always 1), with their artifact's "
            "format (skops; pickle only under ALLOW_PICKLE) and whether its signature was verified",
            ["name", "version", "algorithm", "format", "signature"], registry=registry, multiprocess_mode="max"))
        self.state = cached_labels(Gauge(
            f"{PREFIX}_model_version_state", "Each version's state (1 in its state, 0 in the others): READY, LOADING "
            "or UNAVAILABLE", ["version", "state"], registry=registry, multiprocess_mode="max"))
        self.loads = cached_labels(Counter(
            f"{PREFIX}_api_version_loads", "Versions loaded and self-tested, by version and outcome (READY, or "
            "UNAVAILABLE: refused)", ["version", "outcome"], registry=registry))
        self.shadow_comparisons = cached_labels(Counter(
            f"{PREFIX}_api_shadow_comparisons", "A shadow version's answers beside the default's, by shadow version "
            "and result (agree or disagree: a classifier)", ["version", "result"], registry=registry))
        self.shadow_difference = cached_labels(Histogram(
            f"{PREFIX}_api_shadow_difference", "How far a shadow version's number lies from the default's, by shadow "
            "version (a regressor)", ["version"], buckets=DIFFERENCE_BUCKETS, registry=registry))
        self.repository_looks = cached_labels(Counter(
            f"{PREFIX}_api_repository_looks", "Looks at the model repository for new versions and routing, by outcome "
            "(ok, or failed: the store could not be read, and the versions loaded kept serving)", ["outcome"],
            registry=registry))
        self.shadow_dropped = Counter(f"{PREFIX}_api_shadow_dropped", "Shadow predictions dropped because too many "
                                      "were waiting", registry=registry)

    def monitoring_metrics(self, registry):
        """Drift (monitoring.py: a bin's label is its position in the card's distributions, or "missing") and
        feedback (feedback.py)."""
        self.drift_inputs = cached_labels(Counter(
            f"{PREFIX}_api_drift_input_values", "Live input values, by version, input and bin of the card's reference "
            "distribution", ["version", "input", "bin"], registry=registry))
        self.drift_outputs = cached_labels(Counter(
            f"{PREFIX}_api_drift_output_values", "Live predictions, by version and bin (the class, or a number's bin)",
            ["version", "bin"], registry=registry))
        self.reference_inputs = cached_labels(Gauge(
            f"{PREFIX}_model_input_reference_share", "Each bin's share of the training split, by version, input, bin",
            ["version", "input", "bin"], registry=registry, multiprocess_mode="max"))
        self.reference_outputs = cached_labels(Gauge(
            f"{PREFIX}_model_output_reference_share", "Each output bin's share of the held-out predictions",
            ["version", "bin"], registry=registry, multiprocess_mode="max"))
        # "mostrecent": every worker computes the same index from the shared counts; the last one written stands.
        self.input_psi = cached_labels(Gauge(
            f"{PREFIX}_model_input_drift_psi", "Population stability index of each input, by version and span "
            "(since_start, window)", ["version", "input", "span"], registry=registry, multiprocess_mode="mostrecent"))
        self.output_psi = cached_labels(Gauge(
            f"{PREFIX}_model_output_drift_psi", "Population stability index of the predictions, by version and span",
            ["version", "span"], registry=registry, multiprocess_mode="mostrecent"))
        self.feedback = cached_labels(Counter(
            f"{PREFIX}_api_feedback", "Feedback received, by version, prediction and truth (a classifier's classes; "
            "empty for a regressor)", ["version", "prediction", "truth"], registry=registry))
        self.feedback_absolute = cached_labels(Counter(
            f"{PREFIX}_api_feedback_absolute_error", "Sum of |truth - prediction| in feedback (a regressor)",
            ["version"], registry=registry))
        self.feedback_squared = cached_labels(Counter(
            f"{PREFIX}_api_feedback_squared_error", "Sum of (truth - prediction)² in feedback (a regressor)",
            ["version"], registry=registry))
        self.feedback_intervals = cached_labels(Counter(
            f"{PREFIX}_api_feedback_intervals", "Feedback with the interval the answer gave, by whether the truth "
            "fell inside it", ["version", "covered"], registry=registry))

    def version_changed(self, version, state, model=None):
        for other in ("READY", "LOADING", "UNAVAILABLE"):
            self.state(version, other).set(1 if other == state else 0)
        if state in ("READY", "UNAVAILABLE"):  # a load's outcome (not LOADING, nor REMOVED: forgotten)
            self.loads(version, state).inc()
        if model is not None:
            card, artifact = model.card, model.artifact
            signature = "verified" if artifact["signature"].startswith("verified") else "unverified"
            self.info(card["name"], card["version"], card["algorithm"], artifact["format"], signature).set(1)

    def count_request(self, environ, status, content_type, seconds):
        endpoint, version = endpoint_of(environ), environ.get(VERSION_KEY, "none")
        self.requests(endpoint, method_of(environ), status, environ.get(USER_KEY, "none"), version).inc()
        self.latency(endpoint, version).observe(seconds)

    def count_predictions(self, model, predictions, explained=False):
        """Predictions (or explanations) by class (a regressor's with no class) and version, and out-of-range
        numbers by feature and version, from any endpoint."""
        counter, version = (self.explanations if explained else self.predictions), model.card["version"]
        if predictions.task == "regression":
            counter("", version).inc(len(predictions.values))
        elif len(predictions.best) == 1:  # the usual request needs no tally
            counter(model.classes[predictions.best[0]], version).inc()
        else:
            for index, count in collections.Counter(predictions.best.tolist()).items():
                counter(model.classes[index], version).inc(count)
        if explained or not predictions.outside.any():
            return
        for feature, count in zip(model.schema.names, predictions.outside.sum(axis=0).tolist(), strict=True):
            if count:
                self.out_of_range(feature, version).inc(count)


class WebMetrics:
    """The web app's metrics."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.page_views = cached_labels(Counter(
            f"{PREFIX}_web_page_views", "HTML pages served, by page and status code", ["page", "status"],
            registry=registry))
        self.predictions = cached_labels(Counter(
            f"{PREFIX}_web_predictions", "Predictions asked of the API, by outcome", ["outcome"], registry=registry))
        self.api_failures = cached_labels(Counter(
            f"{PREFIX}_web_api_failures", "Failed calls to the API, by kind", ["kind"], registry=registry))
        self.api_latency = Histogram(f"{PREFIX}_web_api_call_duration_seconds", "Time the API took to answer",
                                     buckets=API_LATENCY_BUCKETS, registry=registry)

    def count_page(self, environ, status, content_type, seconds):
        if content_type.startswith("text/html"):
            self.page_views(endpoint_of(environ), status).inc()
