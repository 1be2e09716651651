"""The services' log lines: one per request that ACCESS_LOG asks for, text or JSON, each with its request ID, written
in batches by a thread of their own.

    configure_logging("INFO", "json")     # once, in main(), before anything is logged
    request_id.set("click-42")            # every line logged while answering carries it (wsgi.handle_requests)
"""

import contextvars
import json
import logging
import os
import threading
import time

TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
LOG_BATCH_SECONDS = 0.1

request_id = contextvars.ContextVar("request_id", default="-")


class BatchingStreamHandler(logging.StreamHandler):
    """A StreamHandler that writes its lines in batches, from a thread of its own, at most LOG_BATCH_SECONDS late.

    One write per line cost about 40 % of the API container's throughput: every write to the container's stdout
    pipe wakes Docker's reader. Here a request only appends its line to a list; the writer thread writes what has
    gathered in one go, at once for a WARNING or worse. The writer ends after a last write when its process's main
    thread ends (forked workers included), so a graceful stop loses no line; a SIGKILL may lose the last batch.
    """

    def __init__(self, stream=None):
        super().__init__(stream)
        self.pending = []
        self.wake = threading.Event()  # set by the first line of a batch, so that an idle writer sleeps
        self.urgent = threading.Event()  # set by a WARNING or worse: write it now
        self.writer_pid = None

    def emit(self, record):  # called with self.lock held (logging.Handler.handle)
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        if self.writer_pid != os.getpid():  # the first line of this process: a forked worker starts its own writer
            self.writer_pid, self.pending = os.getpid(), []  # lines copied from the parent are the parent's to write
            threading.Thread(target=self.write_batches, name="log-writer").start()
        if not self.pending:
            self.wake.set()
        self.pending.append(line)
        if record.levelno >= logging.WARNING:
            self.urgent.set()

    def write_batches(self):
        main = threading.main_thread()
        while main.is_alive():  # checked every second: when it ends, the last lines are written and so is this
            if self.wake.wait(1.0):
                self.wake.clear()
                self.urgent.wait(LOG_BATCH_SECONDS)  # let the batch gather, unless a WARNING is waiting
                self.urgent.clear()
            self.flush()
        self.flush()

    def flush(self):
        with self.lock:
            lines, self.pending = self.pending, []
        if lines:
            self.stream.write("".join(lines))
            self.stream.flush()


class RequestIdFilter(logging.Filter):
    """Stamp every log record with the ID of the request being answered ("-" outside a request)."""

    def filter(self, record):
        record.request_id = request_id.get()
        return True


class Formatter(logging.Formatter):
    """logging's Formatter, the time text made once a second rather than for every line (same output)."""

    last_second = (None, "")

    def formatTime(self, record, datefmt=None):
        second, text = self.last_second
        if second != int(record.created):
            second, text = int(record.created), time.strftime(self.default_time_format, self.converter(record.created))
            self.last_second = second, text
        return self.default_msec_format % (text, record.msecs)


class JsonFormatter(Formatter):
    """One JSON object per line, for log shippers (LOG_FORMAT=json)."""

    FIELDS = ("request_id", "method", "path", "status", "duration_ms")

    def format(self, record):
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        entry.update({field: getattr(record, field) for field in self.FIELDS if hasattr(record, field)})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level, log_format):
    # logging's own optimisations (its HOWTO, "Optimization"): no line names its caller's file, thread or process.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    formatter = JsonFormatter() if log_format == "json" else Formatter(TEXT_LOG_FORMAT)
    handler = BatchingStreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler], force=True)


def log_request(log, environ, status, seconds):
    """The request's line: method, path (never the query: it may hold what a client typed), status and duration."""
    method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
    log.info("%s %s %s %.1fms", method, path, status, seconds * 1000,
             extra={"request_id": request_id.get(), "method": method, "path": path, "status": int(status),
                    "duration_ms": round(seconds * 1000, 2)})
