"""The versions of the model the API serves, side by side: one artifact (MODEL_PATH), or every version published in
a model repository (MODEL_REPOSITORY: a folder or an S3 bucket, stores.py), followed without a restart.

    versions = Versions.single(path, load, log)             # or Versions.repository(store, load, log, poll=10)
    model = versions.named("2")                             # a ready version, or UnknownVersion
    model, shadow = versions.routed(key)                    # the default, or the canary for this routing key

load(artifact, whole_folder) is the API's: it checks, loads and self-tests a model, or raises ModelError
(model.load_checked: a version's whole folder must be signed when a signing key is set). At start-up the versions the
routing file names and the newest ones, MAX_LOADED in all, are loaded (the default must be, or the API does not
start). Then the repository is looked at again: a folder at most once every RESCAN_SECONDS, by a request's thread (a
look is a directory listing); a bucket every `poll` seconds by a thread of each worker's own (a look is a request to
S3, never made on a request's time). A version published meanwhile is fetched, loaded and self-tested by a thread of
its own and served once ready; one that fails is UNAVAILABLE with its reason (logged and counted), and serving goes
on untouched; one removed from the repository is forgotten once the routing in force no longer names it. A look that
fails (the store unreachable) changes nothing served: it is logged when the store goes and when it comes back, and
counted. The routing file is read again when it changes, or when a version it names becomes ready: one that does not
parse, or whose default is not ready, leaves the last good routing in place (logged); a canary or shadow that does not
take the default's inputs (their names and kinds) is dropped from it (logged), and that version is served only when
named. Each server worker follows the repository on its own, so a version is loaded once per worker.
"""

import os
import random
import threading
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

from tabserve.model import ModelError
from tabserve.repository import version_artifact
from tabserve.routing import Routing, RoutingError
from tabserve.stores import StoreError

MAX_LOADED = 4  # versions kept in memory at most: those the routing names, then the newest
RESCAN_SECONDS = 1.0  # a folder's look: at most this often
READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"  # the states Triton's repository index names
REMOVED = "REMOVED"  # told to on_state when a version left the repository and was forgotten
NOT_LOADED = "not loaded"  # the start of the reason of a version that a later look may load


class UnknownVersion(LookupError):
    """A version that is not served (not published, not loaded, or not ready)."""


@dataclass(frozen=True)
class Version:
    name: str
    state: str
    reason: str = ""
    model: object = None  # the model as served, once READY


@dataclass(frozen=True)
class Active:
    """The routing in force, with its versions' models resolved."""

    routing: Routing
    default: object
    canary: tuple = None  # (Split, model)
    shadow: tuple = None


def same_inputs(first, second):
    return [(i.name, i.kind) for i in first.schema.inputs] == [(i.name, i.kind) for i in second.schema.inputs]


def poll_while_alive(reference, seconds, stop):
    """A worker's thread looking at a remote repository every `seconds`, until stop is set or its Versions is gone."""
    while not stop.wait(seconds):
        versions = reference()
        if versions is None:
            return
        versions.look_safely()
        del versions  # hold no reference while asleep


class Versions:
    """The served versions of one model and the routing between them."""

    def __init__(self, store, load, log, on_state=None, poll=None, on_look=None):
        self.store, self.load, self.log = store, load, log
        self.on_state = on_state or (lambda version: None)  # told each Version as it changes: for the metrics
        self.on_look = on_look or (lambda outcome: None)  # told each look's outcome ("ok", "failed"): the metrics
        # Re-entrant: a look holds it while it marks versions (set() takes it too). A look's own request to the store
        # holds only `looking`, so that the index is never kept waiting for the network.
        self.versions, self.lock, self.checked = {}, threading.RLock(), time.monotonic()
        self.looking = threading.Lock()
        self.widest = 0  # inputs of the ready version that takes the most: bounds a query's parameters
        self.routing_stamp, self.active, self.last_look, self.failing = None, None, None, False
        self.poll, self.poller, self.stopped = poll, None, threading.Event()  # (process id, thread) of the poller

    @classmethod
    def single(cls, path, load, log, on_state=None):
        """One artifact, always the default; nothing to follow."""
        versions = cls(None, load, log, on_state)
        model = versions.load(Path(path))
        name = model.card["version"]
        versions.set(Version(name, READY, model=model))
        versions.active = Active(Routing(name), model)
        return versions

    @classmethod
    def repository(cls, store, load, log, on_state=None, poll=None, on_look=None):
        """Every version published in a repository; the routing's default must load, or ModelError (and StoreError
        when the store cannot be read)."""
        versions = cls(store, load, log, on_state, poll, on_look)
        try:
            routing, _ = store.read_routing()
        except RoutingError as err:
            raise ModelError(str(err)) from None
        versions.last_look = store.look()
        for name in versions.to_load(routing, versions.last_look):
            versions.load_version(name)
        if versions.versions.get(routing.default, Version(routing.default, UNAVAILABLE)).state != READY:
            raise ModelError(f"the default version {routing.default} of {store.location} cannot be served: "
                             f"{versions.versions.get(routing.default, Version('', '', 'not published')).reason}")
        versions.follow_routing(versions.last_look, force=True)
        return versions

    @property
    def model_name(self):
        return self.active.default.card["name"]

    def to_load(self, routing, look):
        """The versions to keep in memory: those the routing names, then the newest, MAX_LOADED in all."""
        listed = list(look.versions)
        named = [v for v in (routing.default, routing.previous, *(s.version for s in (routing.canary, routing.shadow)
                                                                     if s)) if v in listed]
        wanted = list(dict.fromkeys(named + listed[::-1]))[:MAX_LOADED]
        for name in listed:
            if name not in wanted and name not in self.versions:
                self.set(Version(name, UNAVAILABLE, f"{NOT_LOADED}: at most {MAX_LOADED} versions are kept in memory, "
                                                    "those the routing names and the newest"))
        return [name for name in wanted if name not in self.versions or self.versions[name].state == UNAVAILABLE
                and self.versions[name].reason.startswith(NOT_LOADED)]

    def load_version(self, name):
        """Fetch, load and self-test one published version; its state says how it went."""
        self.set(Version(name, LOADING))
        try:
            objects = (self.last_look.objects or {}).get(name) if self.last_look else None
            with self.store.fetched(name, objects) as folder:
                model = self.load(version_artifact(folder), whole_folder=True)
            if (model.card["name"], model.card["version"]) != (self.store.name, name):
                raise ModelError(f"its card says {model.card['name']} version {model.card['version']}")
        except StoreError as err:  # the store, not the version: a later look tries again
            self.log.error("version %s of %s could not be fetched: %s", name, self.store.location, err)
            self.set(Version(name, UNAVAILABLE, f"{NOT_LOADED}: {err}"))
            return
        except ModelError as err:  # logged before the state shows it, so that whoever sees the state finds the line
            self.log.error("version %s of %s is refused and not served: %s", name, self.store.location, err)
            self.set(Version(name, UNAVAILABLE, str(err)))
            return
        self.log.info("version %s of %s is ready (predictions by %s)", name, self.store.location, model.engine)
        self.set(Version(name, READY, model=model))

    def set(self, version):
        with self.lock:
            self.versions[version.name] = version
            if version.model is not None:
                self.widest = max(self.widest, len(version.model.schema.inputs))
        self.on_state(version)

    def refresh(self):
        """On a request's thread: a folder is looked at (at most once every RESCAN_SECONDS); a bucket's poller is
        started in this worker, if it is not yet (a forked worker starts its own)."""
        if self.store is None:
            return
        if self.store.remote:
            if self.poller is None or self.poller[0] != os.getpid():
                self.start_polling()
            return
        now = time.monotonic()
        if now - self.checked >= RESCAN_SECONDS:
            self.checked = now
            self.look_safely()

    def start_polling(self):
        with self.lock:
            if self.poller is not None and self.poller[0] == os.getpid():
                return
            thread = threading.Thread(target=poll_while_alive, args=(weakref.ref(self), self.poll, self.stopped),
                                      name="repository", daemon=True)
            self.poller = (os.getpid(), thread)
        thread.start()

    def stop(self):
        """Stop looking at the repository (a test's app, done with)."""
        self.stopped.set()

    def look_safely(self):
        """Look, unless another thread is looking; a store that cannot be read is logged as it goes and comes back."""
        if not self.looking.acquire(blocking=False):
            return
        try:
            look = self.store.look()
        except StoreError as err:
            if not self.failing:
                self.log.error("the model repository %s cannot be read; the versions loaded keep serving: %s",
                               self.store.location, err)
            self.failing = True
            self.on_look("failed")
            return
        finally:
            self.looking.release()
        if self.failing:
            self.log.info("the model repository %s can be read again", self.store.location)
        self.failing = False
        self.on_look("ok")
        self.follow(look)

    def follow(self, look):
        """Forget what was removed, start loading what was published, follow the routing file."""
        with self.lock:
            self.last_look = look
            self.forget_removed(look)
            for name in self.to_load(self.active.routing, look):
                if self.versions.get(name, Version(name, "")).state != LOADING:
                    self.set(Version(name, LOADING))
                    threading.Thread(target=self.load_version, args=(name,), daemon=True).start()
        self.follow_routing(look)

    def forget_removed(self, look):
        """Versions no longer in the repository leave memory and the index, unless the routing in force names them."""
        routing = self.active.routing
        named = {routing.default, routing.previous, *(s.version for s in (routing.canary, routing.shadow) if s)}
        for name in [name for name in self.versions if name not in look.versions and name not in named]:
            if self.versions[name].state != LOADING:
                # Said before it is done, so the log never lags what a client sees.
                self.log.info("version %s was removed from %s and is no longer served", name, self.store.location)
                del self.versions[name]
                self.on_state(Version(name, REMOVED))

    def follow_routing(self, look, force=False):
        """Read the routing file again if it changed or a version became ready; keep the last good one otherwise."""
        try:
            stamp = (look.routing_tag, tuple((v.name, v.state) for v in self.index()))
            if stamp == self.routing_stamp and not force:
                return
            self.routing_stamp = stamp
            routing, _ = self.store.read_routing()
            self.active = self.resolve(routing)
        except RoutingError as err:
            self.log.error("routing of %s not changed, the last good one stays: %s", self.store.location, err)

    def resolve(self, routing):
        """The Active routing of a routing file; RoutingError when its default is not ready."""
        default = self.ready(routing.default)
        if default is None:
            raise RoutingError(f"its default version {routing.default} is not ready")
        splits = {}
        for name in ("canary", "shadow"):
            split = getattr(routing, name)
            model = self.ready(split.version) if split else None
            if split and (model is None or not same_inputs(model, default)):
                why = "is not ready" if model is None else "does not take the default's inputs"
                self.log.error("the %s version %s %s: it is served only when named", name, split.version, why)
                routing = replace(routing, **{name: None})
            elif split:
                splits[name] = (split, model)
        if self.active is None or routing != self.active.routing:
            self.log.info("routing of %s: %s", self.store.location, routing.as_json())
        return Active(routing, default, splits.get("canary"), splits.get("shadow"))

    def ready(self, name):
        version = self.versions.get(name)
        return version.model if version is not None and version.state == READY else None

    def named(self, name):
        """The model of a version asked for by name; UnknownVersion when it is not served."""
        model = self.ready(name)
        if model is None:
            served = ", ".join(v.name for v in self.index() if v.state == READY)
            raise UnknownVersion(f"model {self.model_name!r} has no version {name!r} ready; the versions ready are "
                                 f"{served}")
        return model

    def routed(self, key):
        """(the model for a request that names no version, the shadow model to ask too or None). The canary takes a
        share of the clients (by the routing key), the shadow a share of the default's requests (at random)."""
        active = self.active
        if active.canary and active.canary[0].takes(key):
            return active.canary[1], None
        shadow = active.shadow
        return active.default, shadow[1] if shadow and random.random() * 100 < shadow[0].percent else None

    def index(self):
        """Every version known, oldest first, as Triton's repository index lists them."""
        with self.lock:
            versions = list(self.versions.values())
        return sorted(versions, key=lambda v: (len(v.name), v.name))
