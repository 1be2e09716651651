"""Model artifacts: an estimator written with skops and built back only from the types our trust list names, so that
loading a model runs no code.

    data = to_bytes(estimator)                       # ArtifactError naming a type the API would not load
    estimator = from_bytes(data, "model/iris.skops") # ArtifactError for a pickle, or for a type not trusted
    estimator = from_bytes(data, where, allow_pickle=True)   # ALLOW_PICKLE=true: a migration's joblib file

A joblib file is a pickle, and unpickling runs whatever code the file names: whoever can write a model file runs code
in the API. skops writes the same estimator as JSON and NumPy arrays in a zip, and builds it back only from types on
a list; a file naming any other type is refused before anything in it is built. The list is ours, never the file's
or the card's (MLflow's GHSA-w582-9x45-8mpx: a crafted model listed its own types as trusted): skops's defaults
(scikit-learn's estimators, NumPy, SciPy, Python's numbers and containers), TRUSTED below, and XGBoost's and
LightGBM's estimator and booster types where those packages are installed.

A file is told apart by its content, not its name: a skops file is a zip; a pickle is refused in one line that says
how to convert it (python train.py --convert), unless ALLOW_PICKLE is set for a migration.
"""

import functools
import importlib.util
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from tabserve.packages import reachable

FORMAT = "skops"
SUFFIX = ".skops"
PICKLE = "pickle"
# The first bytes of a pickle (protocol 2 and later: PROTO) and of the compressed files joblib writes (zlib, gzip,
# bz2, xz, lz4), and of protocol 0 and 1 pickles, which begin with one of a few opcodes.
PICKLE_STARTS = (b"\x80", b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda", b"\x1f\x8b", b"BZh", b"\xfd7zXZ",
                 b"\x04\x22\x4d\x18", b"c", b"(", b"}", b"]")
ZIP_START = b"PK\x03\x04"
SCHEMA = "schema.json"  # the tree of a skops file; each array is a file of its own beside it
EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold: the same for every artifact

# Types the models train.py writes need beyond skops's defaults. None of them can run code when built; what they
# risk is named beside each. A signed version (signing.py, MODEL_SIGNING_PUBLIC_KEY) is what vouches for the contents.
TRUSTED = (
    # The node storage of random forests (Tree) and of histogram gradient boosting (TreePredictor). skops 0.16 no
    # longer trusts them by default: scikit-learn follows their node indices without bounds checks, so a crafted file
    # could crash the process, or read memory it should not, when the model predicts. We check those indices
    # ourselves before the model is used (check_nodes), and refuse a file whose nodes point anywhere but forward and
    # inside their tree.
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    # Histogram gradient boosting of categories checks its input with a partial of check_array; skops audits the
    # function a partial holds as it audits any other (a partial of os.system is refused for os.system).
    "functools.partial",
    "sklearn.utils.validation.check_array",
    # k nearest neighbours: the tree of the training rows and its distance (scikit-learn's own compiled classes).
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    # The calibrated SVC's per-fold calibrators.
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    # An object column's dtype (a table with categories), and LightGBM's ordered parameters.
    "numpy.dtype",
    "collections.OrderedDict",
    # This package's own transformers: a date into its parts, a category's rare levels into one.
    "tabserve.dates.DateParts",
    "tabserve.levels.RareLevels",
)
# Models fitted elsewhere through the scikit-learn API of XGBoost and LightGBM: their estimators, and their boosters,
# which hold the trees in each library's own model format, parsed by the library itself.
BOOSTERS = {
    "xgboost": ("xgboost.sklearn.XGBClassifier", "xgboost.sklearn.XGBRegressor", "xgboost.core.Booster"),
    "lightgbm": ("lightgbm.sklearn.LGBMClassifier", "lightgbm.sklearn.LGBMRegressor", "lightgbm.basic.Booster"),
}


class ArtifactError(Exception):
    """A model file that is not loaded (or not written); the message is one line that says why."""


@functools.cache
def trusted_types():
    """The types our loader accepts beyond skops's defaults: TRUSTED, and the boosters of the packages installed."""
    return [*TRUSTED, *(name for package, names in BOOSTERS.items() if installed(package) for name in names)]


def installed(package):
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def format_of(data):
    """"skops", "pickle" (a pickle or a joblib file, by its first bytes), or None."""
    if data.startswith(ZIP_START):
        return FORMAT
    return PICKLE if data.startswith(PICKLE_STARTS) else None


def untrusted(data):
    """The types a skops file names that the loader does not trust, sorted."""
    import skops.io  # imported when a model is read or written: the web app never is

    try:
        named = skops.io.get_untrusted_types(data=data)
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as err:
        raise ArtifactError(f"is not a skops file that can be read: {err}") from None
    return sorted(set(named) - set(trusted_types()))


def to_bytes(estimator):
    """The estimator as a skops file, the same bytes for the same estimator (canonical); ArtifactError naming any
    type the API would refuse to load, so that what is written is what the service loads."""
    import skops.io

    try:
        data = canonical(skops.io.dumps(estimator))
    except Exception as err:  # skops says which object it cannot write
        raise ArtifactError(f"cannot be written as a skops file: {str(err).splitlines()[0]}") from None
    refused = untrusted(data)
    if refused:
        raise ArtifactError(f"holds {', '.join(refused)}, which the API does not trust, so it would refuse to load "
                            "it (a function or class defined in a notebook or a script? use scikit-learn's own)")
    return data


def check_format(data, where, allow_pickle=False):
    """The format of a model file's bytes ("skops", or "pickle" when allow_pickle); ArtifactError for any other,
    and for a pickle unless allowed (its message begins with where)."""
    kind = format_of(data)
    if kind == PICKLE and not allow_pickle:
        raise ArtifactError(f"{where} is a pickle, and loading a pickle runs the code it names: the API loads only "
                            f"skops files. Convert it with 'python train.py --convert {where}' (or set "
                            "ALLOW_PICKLE=true to load it anyway during a migration)")
    if kind is None:
        raise ArtifactError(f"{where} is neither a skops file nor a pickle: not a model train.py writes")
    return kind


def canonical(data):
    """A skops file rewritten so that the same estimator always gives the same bytes, and so the same version (its
    sha256[:12]): skops names each node by its object's memory address (__id__) and each array's file by that, or
    by a random uuid, and stamps each zip entry with the time; a structured array (a tree's nodes) carries the
    uninitialised bytes of its padding. Here they are numbered in the order schema.json first names them, every
    entry is stamped 1980-01-01, and padding is zeroed."""
    with zipfile.ZipFile(io.BytesIO(data)) as source:
        schema = json.loads(source.read(SCHEMA))
        ids, files = {}, {}
        renumber(schema, ids, files)
        output = io.BytesIO()
        with zipfile.ZipFile(output, "w") as target:
            target.writestr(zipfile.ZipInfo(SCHEMA, EPOCH), json.dumps(schema, indent=2))
            for old, new in files.items():
                target.writestr(zipfile.ZipInfo(new, EPOCH), without_padding(source.read(old), new))
    return output.getvalue()


def without_padding(raw, name):
    """A .npy file of a structured array written again with zeros between its fields; any other file as it is."""
    if not name.endswith(".npy"):
        return raw
    array = np.load(io.BytesIO(raw), allow_pickle=False)
    if array.dtype.names is None:
        return raw
    clean = np.zeros(array.shape, dtype=array.dtype)
    for field in array.dtype.names:
        clean[field] = array[field]
    output = io.BytesIO()
    np.save(output, clean, allow_pickle=False)
    return output.getvalue()


def renumber(node, ids, files):
    """Give each node's __id__ and each array's file the next number, in the order of a walk of the schema."""
    if isinstance(node, list):
        for item in node:
            renumber(item, ids, files)
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("__loader__"), str):  # a node of skops's, not the content of a dict it holds
        if isinstance(node.get("__id__"), int):
            node["__id__"] = ids.setdefault(node["__id__"], len(ids))
        if isinstance(node.get("file"), str):
            name = node["file"]
            node["file"] = files.setdefault(name, f"{len(files)}{Path(name).suffix}")
    for value in node.values():
        renumber(value, ids, files)


def from_bytes(data, where, allow_pickle=False):
    """The estimator in a model file's bytes; ArtifactError (its message begins with where) for a pickle unless
    allow_pickle, for a type not trusted, and for trees whose nodes point outside themselves."""
    if check_format(data, where, allow_pickle) == PICKLE:
        import joblib  # the operator's own choice, for a migration (ALLOW_PICKLE): logged at every load

        return joblib.load(io.BytesIO(data))
    refused = untrusted(data)
    if refused:
        raise ArtifactError(f"{where} names types the API does not trust, so nothing in it is built: "
                            f"{', '.join(refused)}")
    import skops.io

    estimator = skops.io.loads(data, trusted=trusted_types())
    check_nodes(estimator, where)
    return estimator


def node_tables(item):
    """[(nodes, inner, child fields, feature field, categorical bitsets)] of an estimator's trees: a decision tree's
    (each of a forest's too), or histogram gradient boosting's predictors; [] for anything else; None for a tree
    that claims more nodes than it holds."""
    tree = getattr(item, "tree_", None)
    if type(tree).__name__ == "Tree":
        if not 0 < tree.node_count <= tree.capacity:
            return None
        nodes = tree.__getstate__()["nodes"]
        return [(nodes, nodes["left_child"] != -1, ("left_child", "right_child"), "feature", 0)]
    predictors = getattr(item, "_predictors", None)
    if not isinstance(predictors, list):
        return []
    return [(p.nodes, p.nodes["is_leaf"] == 0, ("left", "right"), "feature_idx", len(p.raw_left_cat_bitsets))
            for stage in predictors for p in stage]


def check_nodes(estimator, where):
    """ArtifactError unless each tree's inner nodes point forward (so no cycle) and inside the tree, and split on a
    feature the estimator takes: what scikit-learn follows without checking (TRUSTED)."""
    for item in reachable(estimator):
        features = getattr(item, "n_features_in_", 0)
        tables = node_tables(item)
        if tables is None:
            raise ArtifactError(f"{where} holds a tree whose nodes point outside it: refusing to load it")
        for nodes, inner, children, feature, bitsets in tables:
            index, count = np.arange(len(nodes)), len(nodes)
            wrong = not count or any(((nodes[name] <= index) | (nodes[name] >= count))[inner].any()
                                     for name in children)
            wrong = wrong or bool(((nodes[feature] < 0) | (nodes[feature] >= features))[inner].any())
            if not wrong and "is_categorical" in nodes.dtype.names:
                categorical = inner & (nodes["is_categorical"] != 0)
                wrong = bool(((nodes["bitset_idx"] < 0) | (nodes["bitset_idx"] >= bitsets))[categorical].any())
            if wrong:
                raise ArtifactError(f"{where} holds a tree whose nodes point outside it: refusing to load it")
