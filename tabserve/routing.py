"""Which version of a model answers a request that names none: the routing file of a model repository.

    REPO/<model name>/routing.json     {"default": "1", "canary": {"version": "2", "percent": 10},
                                        "shadow": {"version": "2", "percent": 100}, "previous": "1"}

    python -m tabserve.routing canary REPO/iris-classifier 2 10    # send 10 % of the clients to version 2
    python -m tabserve.routing promote REPO/iris-classifier         # version 2 becomes the default
    python -m tabserve.routing rollback REPO/iris-classifier        # back to the default before it
    python -m tabserve.routing shadow REPO/iris-classifier 3 100    # also ask version 3, never answering with it
    python -m tabserve.routing show REPO/iris-classifier

The API follows the file without a restart (versions.py). A canary's share is decided by a hash of the routing key
(the X-Routing-Key header, else the user): a client sees one version, and about percent of the clients see the
canary. Publishing never changes the routing: the first version published becomes the default, later ones are
served only when named, until promoted. The file is written atomically, so the API reads the old one or the new one.
"""

import hashlib
import json
import os
import sys
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


def write_routing(folder, routing):
    """Write the routing file atomically: the API reads the old one or the new one, never half of one."""
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{ROUTING_FILE}.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as output:
        output.write(json.dumps(routing.as_json(), indent=2) + "\n")
    os.chmod(temporary, 0o644)
    os.replace(temporary, Path(folder) / ROUTING_FILE)


def published(folder):
    """The versions published in a model folder, oldest first (whole numbers, compared as numbers: 10 after 9)."""
    return sorted((entry.name for entry in Path(folder).iterdir() if entry.is_dir() and entry.name.isdigit()), key=int)


def change(routing, command, arguments, versions):
    """The routing a command asks for; RoutingError when it cannot be done."""
    if command == "canary":
        version, percent = arguments
        if version not in versions:
            raise RoutingError(f"there is no version {version}; the versions are {', '.join(versions)}")
        return Routing(routing.default, split_of({"canary": {"version": version, "percent": float(percent)}},
                                                 "canary"), routing.shadow, routing.previous)
    if command == "shadow":
        version, percent = arguments
        return Routing(routing.default, routing.canary,
                       split_of({"shadow": {"version": version, "percent": float(percent)}}, "shadow"),
                       routing.previous)
    if command == "promote":
        target = arguments[0] if arguments else (routing.canary.version if routing.canary else None)
        if target is None or target not in versions:
            raise RoutingError("promote which version? name one, or start a canary first")
        return Routing(target, None, routing.shadow, routing.default)
    if command == "rollback":
        if not routing.previous:
            raise RoutingError("there is no earlier default to go back to")
        return Routing(routing.previous, None, routing.shadow, None)
    raise RoutingError(f"unknown command {command!r}")


USAGE = ("usage: python -m tabserve.routing canary FOLDER VERSION PERCENT | promote FOLDER [VERSION] | "
         "rollback FOLDER | shadow FOLDER VERSION PERCENT | show FOLDER")


def main(argv=None):
    """One command each for a canary, a promotion, a rollback and a shadow: the routing file rewritten."""
    argv = sys.argv[1:] if argv is None else argv
    expected = {"canary": (4,), "shadow": (4,), "promote": (2, 3), "rollback": (2,), "show": (2,)}
    if not argv or argv[0] not in expected or len(argv) not in expected[argv[0]]:
        sys.exit(USAGE)
    command, folder = argv[0], Path(argv[1])
    try:
        routing = read_routing(folder)
        if command != "show":
            routing = change(routing, command, argv[2:], published(folder))
            write_routing(folder, routing)
    except (RoutingError, ValueError, OSError) as err:
        sys.exit(f"routing: {err}")
    print(json.dumps(routing.as_json()))


if __name__ == "__main__":
    main()
