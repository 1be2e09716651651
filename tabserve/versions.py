"""The versions of the model the API serves, side by side: one artifact (MODEL_PATH), or every version published in
a model repository's folder (MODEL_REPOSITORY, repository.py), followed without a restart.

    versions = Versions.single(path, load, log)             # or Versions.repository(folder, load, log)
    model = versions.named("2")                             # a ready version, or UnknownVersion
    model, shadow = versions.routed(key)                    # the default, or the canary for this routing key

load(artifact, whole_folder) is the API's: it checks, loads and self-tests a model, or raises ModelError
(model.load_checked: a version's whole folder must be signed when a signing key is set). At start-up the versions the
routing file names and the newest ones, MAX_LOADED in all, are loaded (the default must be, or the API does not
start). Then, at most once every RESCAN_SECONDS, a request's thread looks
at the folder: a version published meanwhile is loaded and self-tested by a thread of its own and served once ready;
one that fails is UNAVAILABLE with its reason (logged and counted), and serving goes on untouched. The routing file is
read again when it changes, or when a version it names becomes ready: one that does not parse, or whose default is
not ready, leaves the last good routing in place (logged); a canary or shadow that does not take the default's inputs
(their names and kinds) is dropped from it (logged), and that version is served only when named. Each server worker
follows the folder on its own, so a version is loaded once per worker.
"""

import random
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tabserve.model import ModelError
from tabserve.repository import version_artifact
from tabserve.routing import ROUTING_FILE, Routing, RoutingError, published, read_routing

MAX_LOADED = 4  # versions kept in memory at most: those the routing names, then the newest
RESCAN_SECONDS = 1.0
READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"  # the states Triton's repository index names


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


class Versions:
    """The served versions of one model and the routing between them."""

    def __init__(self, folder, load, log, on_state=None):
        self.folder, self.load, self.log = folder, load, log
        self.on_state = on_state or (lambda version: None)  # told each Version as it changes: for the metrics
        # Re-entrant: a rescan holds it while it marks versions (set() takes it too).
        self.versions, self.lock, self.checked = {}, threading.RLock(), time.monotonic()
        self.widest = 0  # inputs of the ready version that takes the most: bounds a query's parameters
        self.routing_stamp, self.active = None, None

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
    def repository(cls, folder, load, log, on_state=None):
        """Every version published in a model folder; the routing's default must load, or ModelError."""
        versions = cls(Path(folder), load, log, on_state)
        try:
            routing = read_routing(folder)
        except RoutingError as err:
            raise ModelError(str(err)) from None
        for name in versions.to_load(routing):
            versions.load_version(name)
        if versions.versions.get(routing.default, Version(routing.default, UNAVAILABLE)).state != READY:
            raise ModelError(f"the default version {routing.default} of {folder} cannot be served: "
                             f"{versions.versions.get(routing.default, Version('', '', 'not published')).reason}")
        versions.follow_routing(force=True)
        return versions

    @property
    def model_name(self):
        return self.active.default.card["name"]

    def to_load(self, routing):
        """The versions to keep in memory: those the routing names, then the newest, MAX_LOADED in all."""
        listed = published(self.folder)
        named = [v for v in (routing.default, routing.previous, *(s.version for s in (routing.canary, routing.shadow)
                                                                     if s)) if v in listed]
        wanted = list(dict.fromkeys(named + listed[::-1]))[:MAX_LOADED]
        for name in listed:
            if name not in wanted and name not in self.versions:
                self.set(Version(name, UNAVAILABLE, f"not loaded: at most {MAX_LOADED} versions are kept in memory, "
                                                    "those the routing names and the newest"))
        return [name for name in wanted if name not in self.versions or self.versions[name].state == UNAVAILABLE
                and self.versions[name].reason.startswith("not loaded")]

    def load_version(self, name):
        """Load and self-test one published version; its state says how it went."""
        self.set(Version(name, LOADING))
        try:
            model = self.load(version_artifact(self.folder / name), whole_folder=True)
            if (model.card["name"], model.card["version"]) != (self.folder.name, name):
                raise ModelError(f"its card says {model.card['name']} version {model.card['version']}")
        except ModelError as err:
            self.set(Version(name, UNAVAILABLE, str(err)))
            self.log.error("version %s of %s is refused and not served: %s", name, self.folder, err)
            return
        self.set(Version(name, READY, model=model))
        self.log.info("version %s of %s is ready (predictions by %s)", name, self.folder, model.engine)

    def set(self, version):
        with self.lock:
            self.versions[version.name] = version
            if version.model is not None:
                self.widest = max(self.widest, len(version.model.schema.inputs))
        self.on_state(version)

    def refresh(self):
        """At most once every RESCAN_SECONDS: load what was published meanwhile, follow the routing file."""
        now = time.monotonic()
        if self.folder is None or now - self.checked < RESCAN_SECONDS or not self.lock.acquire(blocking=False):
            return
        try:
            self.checked = now
            routing = self.active.routing
            for name in self.to_load(routing) if self.folder.is_dir() else ():
                if self.versions.get(name, Version(name, "")).state != LOADING:
                    self.set(Version(name, LOADING))
                    threading.Thread(target=self.load_version, args=(name,), daemon=True).start()
        finally:
            self.lock.release()
        self.follow_routing()

    def follow_routing(self, force=False):
        """Read the routing file again if it changed or a version became ready; keep the last good one otherwise."""
        try:
            path = self.folder / ROUTING_FILE
            stamp = (path.stat().st_mtime_ns, path.stat().st_size, tuple((v.name, v.state) for v in self.index()))
            if stamp == self.routing_stamp and not force:
                return
            self.routing_stamp = stamp
            routing = read_routing(self.folder)
            self.active = self.resolve(routing)
        except (OSError, RoutingError) as err:
            self.log.error("routing of %s not changed, the last good one stays: %s", self.folder, err)

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
            self.log.info("routing of %s: %s", self.folder, routing.as_json())
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
