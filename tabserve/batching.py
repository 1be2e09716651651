"""Adaptive batching: concurrent predictions in one worker process combined into one model call, with no window.

    compute = Batcher(model.compute, on_call=..., on_wait=...)   # then called from any thread

A random forest's predict_proba costs about as much for 16 rows as for 1, so 16 requests that each call it alone
take 16 times longer than one call with all their rows. A request that finds the model idle is predicted at once,
alone: a lone client never waits for a batch to fill (MLServer's and Triton's batchers hold it for their window).
Requests that arrive while a call runs queue up; when the call ends, the first of them leads the next call, with
every queued row (up to MAX_BATCH_ROWS), so no request waits behind more than one running call plus its own. Each
gets exactly its own rows back. A combined call that raises is retried request by request, so only the request whose
rows make the model fail gets the error. Past MAX_QUEUED requests waiting, a request is refused with Overloaded
(the API answers 503 with Retry-After). The threads of a graceful stop's in-flight requests keep leading calls until
the queue is empty.
"""

import threading
import time

import numpy as np

from tabserve.model import MAX_ROWS

MAX_BATCH_ROWS = MAX_ROWS  # rows in one combined call, at most (a single larger request still gets its own call)
MAX_QUEUED = 64  # requests waiting for a call, at most; the next one gets a 503
RETRY_AFTER_SECONDS = 1


class Overloaded(Exception):
    """Too many requests are waiting for the model; the caller may try again after retry_after seconds."""

    def __init__(self, message, retry_after):
        super().__init__(message)
        self.retry_after = retry_after


class Job:
    """One request's rows, and what became of them."""

    __slots__ = ("rows", "queued", "result", "error", "lead", "ready")

    def __init__(self, rows):
        self.rows, self.queued = rows, time.perf_counter()
        self.result = self.error = self.lead = None
        self.ready = threading.Event()

    def outcome(self):
        if self.error is not None:
            raise self.error
        return self.result


class Batcher:
    """A model function (rows -> answers) that combines concurrent calls into one call of the wrapped one."""

    def __init__(self, compute, on_call=None, on_wait=None, on_refused=None):
        self.compute = compute
        self.on_call = on_call or (lambda rows: None)  # the rows of each model call, for the metrics
        self.on_wait = on_wait or (lambda seconds: None)  # how long each request waited for its call
        self.on_refused = on_refused or (lambda: None)
        self.lock = threading.Lock()
        self.queue, self.busy = [], False

    def __call__(self, rows):
        job = Job(rows)
        with self.lock:
            if not self.busy:
                self.busy, job.lead = True, [job]  # the model is idle: this request's call starts now
            elif len(self.queue) >= MAX_QUEUED:
                self.on_refused()
                raise Overloaded(f"The model is busy: {MAX_QUEUED} requests are waiting. Try again in a moment.",
                                 RETRY_AFTER_SECONDS)
            else:
                self.queue.append(job)
        if job.lead is None:
            job.ready.wait()  # woken with its answer, or to lead the next call
        if job.lead is not None:
            self.run(job.lead)
        return job.outcome()

    def run(self, batch):
        """One model call for the batch's rows, then the next batch handed to its leader (or the model idle)."""
        started = time.perf_counter()
        for job in batch:
            self.on_wait(started - job.queued)
        self.call(batch)
        with self.lock:
            following, rows = [], 0
            while self.queue and (not following or rows + len(self.queue[0].rows) <= MAX_BATCH_ROWS):
                following.append(self.queue.pop(0))
                rows += len(following[-1].rows)
            self.busy = bool(following)
        if following:
            following[0].lead = following
            following[0].ready.set()
        for job in batch[1:]:  # batch[0] is this thread's own request
            job.ready.set()

    def call(self, batch):
        rows = [job.rows for job in batch]
        self.on_call(sum(map(len, rows)))
        try:
            combined = self.compute(rows[0] if len(rows) == 1 else np.concatenate(rows))
        except Exception as err:
            if len(batch) == 1:
                batch[0].error = err
                return
            for job in batch:  # one request's rows made the call fail: find it, answer the others
                self.call([job])
            return
        start = 0
        for job in batch:
            job.result, start = combined[start:start + len(job.rows)], start + len(job.rows)
