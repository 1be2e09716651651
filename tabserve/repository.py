"""Models on disk: an artifact and its card written so that a reader never sees half of either, alone or published
as the next version in a model repository, signed when a key is given (signing.py).

    save(estimator, make_card, Path("model/iris.skops"))           # the artifact, its card, and model/iris.sig
    card, artifact = publish(estimator, make_card, "repo", name)   # repo/<name>/<version>/model.skops, .json
    card, artifact = publish(estimator, make_card, "s3://bucket/models", name)   # the same in a bucket (stores.py)

The artifact is a skops file (artifacts.py). make_card(sha256, version) gives the card of the bytes written: its
version is the artifact's sha256[:12] alone, the next whole number (1, 2, 3, ...) in a repository, where the digest
stays in the card's sha256. A version is written and signed in a temporary folder and renamed into place, so the API
watching the repository sees all of it or nothing; the first version published becomes the default of a new routing
file, and later ones never change it (routing.py).

    python -m tabserve.repository canary REPO 2 10    # send 10 % of the clients to version 2 (make canary)
    python -m tabserve.repository promote REPO        # the canary becomes the default (make promote)
    python -m tabserve.repository rollback REPO       # back to the default before it (make rollback)
    python -m tabserve.repository shadow REPO 3 100   # also ask version 3, never answering with it
    python -m tabserve.repository show REPO
    python -m tabserve.repository promote s3://bucket/models     # the same for a repository in a bucket
"""

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from tabserve.artifacts import SUFFIX, to_bytes
from tabserve.card import card_path
from tabserve.routing import Routing, RoutingError, change
from tabserve.signing import SIGNATURE, sign_files
from tabserve.stores import StoreError, open_store, store_for

ARTIFACT = "model" + SUFFIX  # a version's artifact; its card is model.json beside it
OLD_ARTIFACT = "model.joblib"  # what versions published before skops hold: a pickle, refused unless ALLOW_PICKLE
ROUTING_ATTEMPTS = 5  # a routing command reads and rewrites the file at most this often, if others keep changing it


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


def save(estimator, make_card, output, version=None, sign_key=None):
    """Write the artifact, then its card (make_card(sha256, version) of the bytes written), then, with a key, the
    signature of both beside them (<name>.sig); return the card. Nothing is written for an estimator the API would
    not load (ArtifactError)."""
    data = to_bytes(estimator)
    write_atomically(output, lambda handle: handle.write(data))
    sha256 = hashlib.sha256(data).hexdigest()
    card = make_card(sha256, version or sha256[:12])
    text = json.dumps(card, indent=2) + "\n"
    write_atomically(card_path(output), lambda handle: handle.write(text.encode()))
    signature = Path(output).with_suffix(".sig")  # a version's: model.sig, over exactly its folder's two files
    if sign_key:
        with tempfile.TemporaryDirectory() as scratch:
            sign_files([output, card_path(output)], Path(scratch) / SIGNATURE, sign_key)
            write_atomically(signature, lambda handle: handle.write((Path(scratch) / SIGNATURE).read_bytes()))
    else:
        signature.unlink(missing_ok=True)  # an earlier artifact's, which these bytes would not match
    return card


def publish(estimator, make_card, repository, name, sign_key=None):
    """Publish the model as the next version of repository/name (a folder, or s3://BUCKET/PREFIX), signed (model.sig)
    when a key is given; (the card, where the version's artifact is). The first version becomes the default of a new
    routing file; later ones leave the routing as it is."""
    store = store_for(repository, name)
    while True:
        version = store.next_version()
        # Signed in place: a version's folder holds exactly its artifact, its card and model.sig.
        card = store.add_version(version, lambda folder, number=version: save(estimator, make_card,
                                                                              folder / ARTIFACT, number, sign_key))
        if card is not None:  # else another publisher took the number meanwhile: the next one
            break
    store.write_routing(Routing(version), create=True)  # a new model's; an existing routing file is left alone
    return card, f"{store.location}/{version}/{ARTIFACT}"


def version_artifact(folder):
    """A version's artifact: model.skops, or the pickle a version published before skops holds."""
    folder = Path(folder)
    return folder / ARTIFACT if (folder / ARTIFACT).exists() or not (folder / OLD_ARTIFACT).exists() \
        else folder / OLD_ARTIFACT


USAGE = ("usage: python -m tabserve.repository canary REPO VERSION PERCENT | promote REPO [VERSION] | rollback REPO | "
         "shadow REPO VERSION PERCENT | show REPO   (REPO: a repository with one model, or REPO/<model name>; a "
         "folder or s3://BUCKET/PREFIX)")


def main(argv=None):
    """One command each for a canary, a promotion, a rollback and a shadow: the routing file rewritten, read again
    and rewritten when another operator changed it meanwhile (a bucket's conditional write)."""
    argv = sys.argv[1:] if argv is None else argv
    expected = {"canary": (4,), "shadow": (4,), "promote": (2, 3), "rollback": (2,), "show": (2,)}
    if not argv or argv[0] not in expected or len(argv) not in expected[argv[0]]:
        sys.exit(USAGE)
    command, location = argv[0], argv[1]
    try:
        store = open_store(location)
        for _ in range(ROUTING_ATTEMPTS):
            routing, tag = store.read_routing()
            if command == "show":
                break
            routing = change(routing, command, argv[2:], store.look().versions)
            if store.write_routing(routing, tag):
                break
        else:
            sys.exit(f"{location}: the routing file kept changing under this command: try again")
    except (RoutingError, StoreError, OSError) as err:
        sys.exit(f"{location}: {err}")
    print(json.dumps(routing.as_json()))


if __name__ == "__main__":
    main()
