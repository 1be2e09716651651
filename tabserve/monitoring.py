"""The model watched on its own traffic: every prediction's inputs and output counted in the bins of the card's
reference distributions (drift.py), the population stability index since start and over a recent window, and the
feedback's live accuracy (feedback.py), for GET /api/v1.0/monitoring, the PSI gauges and the web page.

    monitor = Monitor(metrics, settings)             # settings: drift_window, drift_thresholds, drift_min_count
    monitor.count(model, rows, predictions)          # for every prediction (serving.py)
    monitor.report(model, window=None)               # the JSON of GET /api/v1.0/monitoring

Counting costs a request a few NumPy operations: the counts gather in arrays of each worker's own, and a thread of
each worker adds them to the Prometheus counters once every FLUSH_SECONDS, or sooner once FLUSH_ROWS wait. Those
counters are the multiprocess ones of metrics.py, so a report is exact across the server's workers (give the others
FLUSH_SECONDS), and Prometheus adds them up across replicas. The recent window is the counts now less those of a
snapshot taken at least that long ago: the workers' threads take one every drift_window / 60 seconds (at least every
second) into files beside the counters' (in memory, without the server), so that any worker can answer for all of
them.
"""

import bisect
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from tabserve.drift import Bins, psi, verdict
from tabserve.feedback import summary
from tabserve.metrics import PREFIX, samples

FLUSH_SECONDS = 1.0
# Rows kept at most before the thread bins them: binning holds the GIL, and a request that arrives meanwhile waits
# for it (a second of 4,000 requests binned at once was a 3-6 ms stall every second; 256 requests kept one by one
# and joined before binning, 0.4-0.7 ms). Copied into one buffer as they come, 256 rows bin in about 0.1 ms.
FLUSH_ROWS = 256
SMALL_REQUEST = 256  # rows: a request this small is kept to be binned later with the others (Counts)
SNAPSHOTS = 60  # kept per window: its resolution is a sixtieth of it
SNAPSHOT_FILE = "monitoring-snapshot-"  # and its time: one file a snapshot in PROMETHEUS_MULTIPROC_DIR
COUNTED = (f"{PREFIX}_api_drift_", f"{PREFIX}_api_feedback", f"{PREFIX}_api_predictions")

logger = logging.getLogger(__name__)


class Snapshots:
    """The shared counts at moments past: a file each in the server's metrics directory, or in memory without one.
    A file each, so that taking or reading one costs one snapshot's counts: a single file of the window's snapshots,
    read and written whole, grew to 0.6 MB in an hour for iris and held a worker's GIL 100 ms at every snapshot."""

    def __init__(self, keep_seconds):
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.folder = Path(folder) if folder else None
        self.memory, self.keep = [], keep_seconds

    def times(self):
        """{time: file} of the snapshots in the folder, oldest first."""
        found = {}
        for path in self.folder.glob(f"{SNAPSHOT_FILE}*.json"):
            try:
                found[float(path.stem.removeprefix(SNAPSHOT_FILE))] = path
            except ValueError:
                continue
        return dict(sorted(found.items()))

    def add(self, when, counts):
        if self.folder is None:
            self.memory = [entry for entry in self.memory if entry[0] >= when - self.keep] + [(when, counts)]
            return
        path = self.folder / f"{SNAPSHOT_FILE}{when:.6f}.json"
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps([[name, labels, value] for (name, labels), value in counts.items()]))
        os.replace(temporary, path)  # a reader sees the whole snapshot or none
        for then, old in self.times().items():
            if then < when - self.keep:
                old.unlink(missing_ok=True)  # another worker may have removed it first

    def at(self, when):
        """(time, counts) of the latest snapshot taken at or before `when`; None if there is none."""
        if self.folder is None:
            position = bisect.bisect_right([entry[0] for entry in self.memory], when)
            return self.memory[position - 1] if position else None
        earlier = [(then, path) for then, path in self.times().items() if then <= when]
        if not earlier:
            return None
        then, path = earlier[-1]
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError):  # removed meanwhile, as too old for any window: there is none that old
            return None
        return then, {(name, tuple(map(tuple, labels))): value for name, labels, value in rows}


class Counts:
    """One version's predictions in this worker, not yet added to the shared counters. A small request's rows and
    output bins are copied into a buffer, binned together with the others' by the worker's thread (NumPy's cost per
    call, a few µs, paid once for FLUSH_ROWS rows rather than once a request); a larger one, or one that finds the
    buffer full, is binned at once into the running counts."""

    def __init__(self, bins, schema):
        self.bins, self.schema = bins, schema
        self.inputs = np.zeros(bins.size, dtype=np.int64)
        self.output = np.zeros(len(bins.output), dtype=np.int64)
        self.rows, self.outputs, self.kept = self.buffers()

    def buffers(self):
        """Empty buffers for the rows kept and their output bins, with room for one more small request when
        FLUSH_ROWS wait (rows are floats, or objects when the model takes text: the schema's rows)."""
        size = FLUSH_ROWS + SMALL_REQUEST
        dtype = float if self.schema.numeric else object
        return np.empty((size, len(self.schema.inputs)), dtype=dtype), np.empty(size, dtype=np.intp), 0

    def keep(self, rows, output):
        """Copy a small request's rows into the buffer; False if it has no room. The caller holds the lock."""
        end = self.kept + len(rows)
        if end > len(self.rows):
            return False
        self.rows[self.kept:end], self.outputs[self.kept:end], self.kept = rows, output, end
        return True

    def binned(self, rows, output):
        """(the input bins' counts, the output bins' counts) of checked rows and their output bins."""
        inputs = self.bins.of_inputs(rows, self.schema.numbers_of(rows))
        return (np.bincount(inputs.ravel(), minlength=self.bins.size),
                np.bincount(output, minlength=len(self.bins.output)))

    def take(self):
        """The counts so far, as (inputs, output) arrays, and zero, with the rows kept (fresh buffers in their place,
        so that a flush from a request's thread never shares them with the worker's); the caller holds the lock."""
        kept = self.rows[:self.kept], self.outputs[:self.kept]
        taken = self.inputs.copy(), self.output.copy()
        self.inputs[:], self.output[:] = 0, 0
        if self.kept:  # only large requests were counted: the empty buffers stay
            self.rows, self.outputs, self.kept = self.buffers()
        return taken, kept

    def add_kept(self, taken, kept):
        """Bin the rows kept into taken."""
        if len(kept[0]):
            inputs, outputs = self.binned(*kept)
            taken[0][:] += inputs
            taken[1][:] += outputs
        return taken


class Monitor:
    """Counts every prediction, and reports drift and feedback from the shared counts."""

    def __init__(self, metrics, settings):
        self.metrics, self.settings = metrics, settings
        self.counts, self.lock, self.pid = {}, threading.Lock(), None
        self.due = threading.Event()  # set when FLUSH_ROWS rows wait to be binned
        self.interval = max(1.0, settings.drift_window / SNAPSHOTS)
        self.snapshots = Snapshots(settings.drift_window + 2 * self.interval)
        self.taken, self.started = 0.0, time.time()

    def counts_of(self, model):
        """This worker's counts of a version (None for a card without distributions: trained before them)."""
        version = model.card["version"]
        if version not in self.counts:
            bins = Bins(model.card) if "distributions" in model.card else None
            self.counts[version] = Counts(bins, model.schema) if bins else None
            if bins:
                self.publish_reference(version, bins)
        return self.counts[version]

    def publish_reference(self, version, bins):
        for name, shares, _, keys in bins.inputs:
            for key, share in zip(keys, shares, strict=True):
                self.metrics.reference_inputs(version, name, key).set(share)
        for label, share in zip(bins.output, bins.output_shares, strict=True):
            self.metrics.reference_outputs(version, label).set(share)

    def count(self, model, rows, predictions):
        """Count checked rows and their predictions in their bins (the hot path: kept, to be binned by the thread)."""
        if self.pid != os.getpid():
            self.start()
        counts = self.counts.get(model.card["version"], False)
        if counts is False:
            counts = self.counts_of(model)
        if counts is None:
            return
        output = counts.bins.of_output(predictions)
        if len(rows) <= SMALL_REQUEST:
            with self.lock:
                kept = counts.keep(rows, output)
                if counts.kept >= FLUSH_ROWS:
                    self.due.set()
            if kept:
                return
        inputs, outputs = counts.binned(rows, output)
        with self.lock:
            counts.inputs += inputs
            counts.output += outputs

    def start(self):
        """This worker's thread (a forked worker starts its own; the counts copied from the parent are dropped)."""
        with self.lock:
            if self.pid == os.getpid():
                return
            self.pid, self.counts = os.getpid(), {}
        # Started after the lock is let go: under gevent (gunicorn's gevent workers) the new thread is a greenlet
        # that runs, and flushes, as soon as it is started, and would wait for the lock forever.
        threading.Thread(target=self.run, name="monitoring", daemon=True).start()

    def run(self):
        while True:
            try:
                self.flush()
                if time.time() - self.taken >= self.interval:
                    self.snapshot()
            except Exception:
                logger.exception("monitoring could not add its counts")
            self.due.wait(FLUSH_SECONDS)
            self.due.clear()

    def flush(self):
        """Add this worker's counts to the shared counters."""
        with self.lock:
            taken = [(version, counts, *counts.take()) for version, counts in self.counts.items() if counts]
        for version, counts, so_far, kept in taken:
            inputs, output = counts.add_kept(so_far, kept)
            for index in np.flatnonzero(inputs).tolist():
                self.metrics.drift_inputs(version, *counts.bins.input_bin(index)).inc(int(inputs[index]))
            for index in np.flatnonzero(output).tolist():
                self.metrics.drift_outputs(version, counts.bins.output[index]).inc(int(output[index]))

    def snapshot(self):
        """Keep the shared counts of now, unless another worker did within the interval."""
        now = time.time()
        latest = self.snapshots.at(now)
        if latest is None or now - latest[0] >= self.interval:
            self.snapshots.add(now, self.shared())
        self.taken = now

    def shared(self):
        return {key: value for key, value in samples(self.metrics.registry, COUNTED).items()
                if key[0].endswith("_total")}

    def live(self, window=None):
        """The shared counts since start, or over the last `window` seconds: (counts, the seconds covered)."""
        if self.pid == os.getpid():
            self.flush()
        now = self.shared()
        if window is None:
            return now, None
        before = self.snapshots.at(time.time() - window)
        if before is None:  # nothing that old: the service (or its first counting) is younger than the window
            return now, round(min(window, time.time() - self.started))
        return {key: value - before[1].get(key, 0) for key, value in now.items()}, round(time.time() - before[0])

    def report(self, model, window=None):
        """GET /api/v1.0/monitoring's answer for a version: drift of each input and of the output, feedback, and
        the share of the traffic each version answered."""
        counts, covered = self.live(window)
        version = model.card["version"]
        answer = {"model": model.identity, "window": {"seconds": window, "covered": covered} if window else None,
                  "window_limit": self.settings.drift_window,
                  "thresholds": {"psi": list(self.settings.drift_thresholds),
                                 "min_count": self.settings.drift_min_count}}
        mine = self.counts_of(model)
        if mine is None:
            answer["drift"] = "this model's card has no reference distributions: train it again with train.py"
        else:
            answer.update(self.drift(mine.bins, version, counts))
        answer["feedback"] = summary(model, counts)
        answer["traffic"] = traffic(counts)
        return answer

    def drift(self, bins, version, counts):
        inputs = {}
        for name, shares, labels, keys in bins.inputs:
            live = [counts.get((f"{PREFIX}_api_drift_input_values_total",
                                (("bin", key), ("input", name), ("version", version))), 0) for key in keys]
            inputs[name] = self.judged(labels, shares, live)
        live = [counts.get((f"{PREFIX}_api_drift_output_values_total", (("bin", label), ("version", version))), 0)
                for label in bins.output]
        return {"inputs": inputs, "output": self.judged(bins.output, bins.output_shares, live)}

    def judged(self, labels, shares, live):
        total = int(sum(live))
        value = psi(shares, live)
        return {"count": total, "psi": None if value is None else round(value, 4),
                "verdict": verdict(value, total, self.settings.drift_thresholds, self.settings.drift_min_count),
                "bins": [{"label": label, "reference": share, "live": round(count / total, 6) if total else None,
                          "count": int(count)} for label, share, count in zip(labels, shares, live, strict=True)]}

    def update_gauges(self, models):
        """The PSI gauges of these versions, since start and over the window (before /metrics answers)."""
        for span, window in (("since_start", None), ("window", self.settings.drift_window)):
            for model in models:
                report = self.report(model, window)
                if "inputs" not in report:
                    continue
                for name, judged in report["inputs"].items():
                    if judged["psi"] is not None:
                        self.metrics.input_psi(model.card["version"], name, span).set(judged["psi"])
                if report["output"]["psi"] is not None:
                    self.metrics.output_psi(model.card["version"], span).set(report["output"]["psi"])


def traffic(counts):
    """{version: predictions answered} from the shared counts."""
    answered = {}
    for (name, labels), value in counts.items():
        if name == f"{PREFIX}_api_predictions_total":
            version = dict(labels)["version"]
            answered[version] = answered.get(version, 0) + int(value)
    return answered
