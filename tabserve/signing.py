"""Who made a model: OpenSSF model signing (the model-signing package, format 1.0) over a version's files, with an
elliptic-curve key; verified with the public keys the operator trusts before anything in the files is read.

    sign_files([artifact, card], signature, Path("key.pem"))  # model/iris.sig, or a version's model.sig
    keys = read_public_keys(Path("trusted.pem"))            # one PEM public key, or several in one file
    with verified_copy(keys, folder) as (copy, signature):  # a private copy, verified; SignatureError says why not
        load_model(copy / "model.skops", signature=signature)

The signature is a Sigstore bundle (JSON) whose DSSE envelope signs an in-toto statement listing each file's sha256
(predicate https://model_signing/signature/v1.0): the standard's format, so the upstream command verifies what this
module signs, and the reverse,

    model_signing verify key FOLDER --public_key PUB.pem --signature FOLDER/model.sig

The copy is what is verified and what is loaded: a writer who changes a file after the check changes nothing served.
Every file of the folder must be signed (an added file is refused), as the upstream command checks it. A single
artifact's signature covers its artifact and card only; other models may share their folder. The package is imported
only when a key is set (MODEL_SIGNING_PUBLIC_KEY) or a model is signed (train.py --sign-key): the API without a key
never loads it.
"""

import contextlib
import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

SIGNATURE = "model.sig"  # a version's signature, in its folder; a single artifact's is beside it as <name>.sig
PEM_KEY = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)
MAX_SHOWN = 3  # files named in a message about files that do not match


class SignatureError(Exception):
    """A model whose signature is missing, made by another key, or not of these files; one line that says which."""


def read_public_keys(path):
    """{sha256 of the key's PEM: the PEM} of every public key in a file, as model-signing identifies a key in the
    signatures it makes; SignatureError when there is none, or one that is not an elliptic-curve key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        blocks = PEM_KEY.findall(Path(path).read_bytes())
    except OSError as err:
        raise SignatureError(f"cannot read {path}: {err.strerror}") from None
    keys = {}
    for block in blocks:
        try:
            key = serialization.load_pem_public_key(block)
        except ValueError as err:
            raise SignatureError(f"{path} holds a public key that cannot be read: {err}") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise SignatureError(f"{path} holds a {type(key).__name__}: model signing keys are elliptic-curve keys")
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        keys[hashlib.sha256(pem).hexdigest()] = pem
    if not keys:
        raise SignatureError(f"{path} holds no PEM public key (-----BEGIN PUBLIC KEY-----)")
    return keys


def check_private_key(path):
    """SignatureError unless the file holds an unencrypted elliptic-curve private key in PEM, as model-signing signs
    with (openssl ecparam -name prime256v1 -genkey -noout -out key.pem makes one)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as err:
        raise SignatureError(f"cannot read {path}: {err.strerror}") from None
    except (ValueError, TypeError) as err:
        raise SignatureError(f"{path} is not an unencrypted PEM private key: {str(err).splitlines()[0]}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SignatureError(f"{path} holds a {type(key).__name__}: model signing keys are elliptic-curve keys")


def signing_config(private_key):
    """model-signing's configuration for a key, ignoring the signature file and git's, as its command does."""
    from model_signing import hashing, signing

    return signing.Config().use_elliptic_key_signer(private_key=private_key).set_hashing_config(
        hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=True))


def sign_files(files, signature, private_key):
    """Sign these files (an artifact and its card) alone, in a copy of their own named as their folder, into the
    signature file: a version's folder holds nothing else, so this is also the signature of the whole folder."""
    with tempfile.TemporaryDirectory(prefix="tabserve-sign-") as scratch:
        copy = Path(scratch) / Path(files[0]).parent.name
        copy.mkdir()
        for path in files:
            shutil.copyfile(path, copy / Path(path).name)
        signing_config(private_key).sign(copy, Path(scratch) / SIGNATURE)
        shutil.copyfile(Path(scratch) / SIGNATURE, signature)


def key_hint(signature):
    """The sha256 of the public key a signature names (model-signing's hint), or None."""
    try:
        bundle = json.loads(Path(signature).read_text(encoding="utf-8"))
        return bundle["verificationMaterial"]["publicKey"]["hint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify(keys, folder, signature, name=SIGNATURE):
    """What the metadata shows of a signature made by one of the keys over exactly the folder's files (the key's
    sha256); SignatureError otherwise. name: the signature file's, as messages say it."""
    from model_signing import verifying

    if not signature.is_file():
        raise SignatureError(f"it is not signed (there is no {name}), and MODEL_SIGNING_PUBLIC_KEY asks for signed "
                             "models")
    hint = key_hint(signature)
    candidates = [keys[hint]] if hint in keys else [] if hint else list(keys.values())
    if not candidates:
        raise SignatureError(f"it is signed by a key that MODEL_SIGNING_PUBLIC_KEY does not hold (sha256 {hint[:16]}…)")
    problems = []
    for pem in candidates:
        key = folder.parent / "key.pem"
        key.write_bytes(pem)
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=key).verify(folder, signature)
            return f"verified: signed by the key with sha256 {hashlib.sha256(pem).hexdigest()}"
        except Exception as err:  # model-signing says what did not match in a ValueError, or fails to parse
            problems.append(mismatch(str(err)) or type(err).__name__)
    raise SignatureError(f"its signature does not hold: {problems[0]}")


def mismatch(message):
    """model-signing's account of files that differ from the signed ones, in a few words ("model.json changed after
    signing"); else its message's first line, shortened."""
    message = message.replace("\\'", "'")  # the list it prints quotes its items with repr()
    changed = re.findall(r"Hash mismatch for '([^']+)'", message)
    extra = re.search(r"Extra files found in model '[^']*': ([^\"\]]+)", message)
    missing = re.search(r"Missing files in model '[^']*': ([^\"\]]+)", message)
    words = ([f"{', '.join(changed[:MAX_SHOWN])} changed after signing"] if changed else []) + (
        [f"{extra.group(1)} added after signing"] if extra else []) + (
        [f"{missing.group(1)} signed but missing"] if missing else [])
    first = message.splitlines()[0] if message else ""
    return "; ".join(words) or (first if len(first) <= 200 else first[:200] + "…")


@contextlib.contextmanager
def verified_copy(keys, folder, files=None, signature=None):
    """A private copy of a signed folder (or of these files of it, with their signature beside them), verified with
    the keys; yields (the copy, what the metadata shows of its signature), the copy removed afterwards.
    SignatureError says why it does not verify."""
    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="tabserve-verify-") as scratch:
        copy, copied_signature = Path(scratch) / "model", Path(scratch) / SIGNATURE
        if files is None:
            shutil.copytree(folder, copy, symlinks=True, ignore=shutil.ignore_patterns(SIGNATURE))
            signature = folder / SIGNATURE
        else:
            copy.mkdir()
            for name in files:
                shutil.copyfile(folder / name, copy / name)
        if Path(signature).is_file():
            shutil.copyfile(signature, copied_signature)
        yield copy, verify(keys, copy, copied_signature, Path(signature).name)
