"""Models on disk: an artifact and its card written so that a reader never sees half of either.

    save(estimator, lambda sha256: card, Path("model/iris.joblib"))     # the artifact, then its card
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path

import joblib

from tabserve.card import card_path


def file_sha256(path):
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path, write):
    """Write through a temporary file in the same folder, then rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as output:
            write(output)
            output.flush()
            os.fsync(output.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save(estimator, make_card, output):
    """Write the artifact, then its card (make_card(sha256) of the bytes written); return the card."""
    write_atomically(output, lambda handle: joblib.dump(estimator, handle))
    card = make_card(file_sha256(output))
    text = json.dumps(card, indent=2) + "\n"
    write_atomically(card_path(output), lambda handle: handle.write(text.encode()))
    return card
