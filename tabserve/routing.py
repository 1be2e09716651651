"""Which version of a model answers a request that names none: the routing file of a model repository.

    REPO/<model name>/routing.json     {"default": "1", "canary": {"version": "2", "percent": 10},
                                        "shadow": {"version": "2", "percent": 100}, "previous": "1"}

    routing = change(read_routing(folder), "canary", ["2", "10"], published(folder))   # 10 % of the clients to 2
    write_routing(folder, routing)

The commands that change it are repository.py's (python -m tabserve.repository canary|promote|rollback ...). The
API follows the file without a restart (versions.py). A canary's share is decided by a hash of the routing key
(the X-Routing-Key header, else the user): a client sees one version, and about percent of the clients see the
canary. Publishing never changes the routing: the first version published becomes the default, later ones are
served only when named, until promoted. The file is written atomically, so the API reads the old one or the new one.
"""

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROUTING_FILE = "routing.json"
BUCKETS = 10_000  # a percent holds two decimals: 0.25 % of the clients is 25 buckets


class RoutingError(ValueError):
    """A routing file that cannot be used; the message says why."""


@dataclass(frozen=True)
class Split:
    """A share of the default's requests for another version."""

    version: str
    percent: float

    def takes(self, key):
        """Whether a request with this routing key falls in the share (the same key, the same answer)."""
        bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % BUCKETS
        return bucket < self.percent * BUCKETS / 100


@dataclass(frozen=True)
class Routing:
    """What the routing file says."""

    default: str
    canary: Split = None
    shadow: Split = None
    previous: str = None  # the default before the last promotion, for a rollback

    def as_json(self):
        document = {"default": self.default}
        for name in ("canary", "shadow"):
            split = getattr(self, name)
            if split:
                percent = int(split.percent) if split.percent.is_integer() else split.percent
                document[name] = {"version": split.version, "percent": percent}
        if self.previous:
            document["previous"] = self.previous
        return document


def split_of(document, name):
    entry = document.get(name)
    if entry is None:
        return None
    if not isinstance(entry, dict) or set(entry) != {"version", "percent"}:
        raise RoutingError(f"{name} must be an object with exactly version and percent")
    percent = entry["percent"]
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
        raise RoutingError(f"{name}.percent must be a number from 0 to 100, got {json.dumps(percent)}")
    return Split(str(entry["version"]), float(percent))


def parse_routing(text):
    """A Routing from the routing file's text; RoutingError naming what is wrong."""
    try:
        document = json.loads(text)
    except ValueError as err:
        raise RoutingError(f"not JSON: {err}") from None
    if not isinstance(document, dict) or "default" not in document:
        raise RoutingError("must be a JSON object with at least a default version")
    unknown = sorted(set(document) - {"default", "canary", "shadow", "previous"})
    if unknown:
        raise RoutingError(f"{unknown[0]!r} is not a routing field; they are default, canary, shadow and previous")
    previous = document.get("previous")
    return Routing(str(document["default"]), split_of(document, "canary"), split_of(document, "shadow"),
                   str(previous) if previous is not None else None)


def read_routing(folder):
    """The routing of a model folder; RoutingError when its file is missing or wrong."""
    try:
        return parse_routing((Path(folder) / ROUTING_FILE).read_text(encoding="utf-8"))
    except OSError as err:
        raise RoutingError(f"cannot read {Path(folder) / ROUTING_FILE}: {err.strerror}") from None


def routing_text(routing):
    """The routing file's text."""
    return json.dumps(routing.as_json(), indent=2) + "\n"


def write_routing(folder, routing):
    """Write the routing file atomically: the API reads the old one or the new one, never half of one."""
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{ROUTING_FILE}.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as output:
        output.write(routing_text(routing))
    os.chmod(temporary, 0o644)
    os.replace(temporary, Path(folder) / ROUTING_FILE)


def published(folder):
    """The versions published in a model folder, oldest first (whole numbers, compared as numbers: 10 after 9)."""
    return sorted((entry.name for entry in Path(folder).iterdir() if entry.is_dir() and entry.name.isdigit()), key=int)


def split(name, version, percent, versions):
    """A canary or shadow from a command's words; RoutingError naming what is wrong."""
    if version not in versions:
        raise RoutingError(f"there is no version {version}; the versions are {', '.join(versions)}")
    try:
        percent = float(percent)
    except ValueError:
        raise RoutingError(f"{name}.percent must be a number from 0 to 100, got {percent!r}") from None
    return split_of({name: {"version": version, "percent": percent}}, name)


def change(routing, command, arguments, versions):
    """The routing a command asks for; RoutingError when it cannot be done."""
    if command == "canary":
        return Routing(routing.default, split("canary", *arguments, versions), routing.shadow, routing.previous)
    if command == "shadow":
        return Routing(routing.default, routing.canary, split("shadow", *arguments, versions), routing.previous)
    if command == "promote":
        target = arguments[0] if arguments else (routing.canary.version if routing.canary else None)
        if target is None or target not in versions:
            raise RoutingError("promote which version? name one, or start a canary first")
        if target == routing.default:
            raise RoutingError(f"version {target} is the default already")
        return Routing(target, None, routing.shadow, routing.default)
    if command == "rollback":
        if not routing.previous:
            raise RoutingError("there is no earlier default to go back to")
        return Routing(routing.previous, None, routing.shadow, None)
    raise RoutingError(f"unknown command {command!r}")
