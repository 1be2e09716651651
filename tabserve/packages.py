"""The packages an artifact needs beyond the API's own: found in the estimator, recorded in the card, checked at load.

    needs = estimator_packages(estimator)   # {"xgboost": {"distribution": "xgboost-cpu", "version": "3.2.0"}}
    check_packages(card["requires"], where)  # PackageError naming the pip requirement, before loading

Every class and function an artifact holds is named by its module, and loading it imports them. train.py walks the
fitted estimator it is about to save (every object it holds, and the functions it refers to), so it knows exactly
which packages the artifact needs (XGBoost, LightGBM, ...), and can refuse one that needs a module the API could never
import (a function defined in a notebook, in __main__). The API image has the packages of requirements.txt
(BUILT_IN); an artifact that needs more says so in its card ("requires"), and the API refuses to load it, in one line
that names the pip requirement, until they are installed: the image's EXTRAS build argument (docs/models.md).
"""

import importlib
import importlib.metadata
import importlib.util
import sys

import numpy as np

# What the API image always has: its own requirements and Python's standard library.
BUILT_IN = {"numpy", "scipy", "sklearn", "joblib", "skops", "threadpoolctl", "narwhals", "tabserve"}
# Packages whose models load only in the version that wrote them; others (pandas) need only be there.
EXACT = {"xgboost", "lightgbm"}


class PackageError(Exception):
    """An artifact that needs a package that is missing, or present in another version."""


def reachable(root):
    """Every object reachable from root through containers, arrays of objects and instance attributes, once each."""
    seen, pending = set(), [root]
    while pending:
        item = pending.pop()
        if id(item) in seen or isinstance(item, (str, bytes, int, float, bool, type(None))):
            continue
        seen.add(id(item))
        yield item
        if isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending += list(item)
        elif isinstance(item, np.ndarray):
            pending += item.ravel().tolist() if item.dtype == object else []
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            pending += list(vars(item).values())


def object_modules(root):
    """The top-level modules of the classes of every object reachable from root, and of the functions it holds."""
    modules = set()
    for item in reachable(root):
        named = item if callable(item) and hasattr(item, "__qualname__") else type(item)
        modules.add((getattr(named, "__module__", None) or "builtins").split(".")[0])
    return modules


def estimator_packages(estimator):
    """{module: {"distribution", "version"}} of the packages beyond BUILT_IN that the estimator needs; PackageError
    for a module that no installed package provides (a notebook's __main__)."""
    needs = {}
    for module in sorted(object_modules(estimator) - BUILT_IN - set(sys.stdlib_module_names)):
        distributions = importlib.metadata.packages_distributions().get(module)
        if not distributions:
            raise PackageError(f"it needs the module {module!r}, which no installed package provides (a function or "
                               "class defined in a notebook or a script?): the API could not load it")
        needs[module] = {"distribution": distributions[0], "version": importlib.import_module(module).__version__}
    return needs


def needed_packages(estimator, frame):
    """What the card's "requires" says: the estimator's packages, and pandas for a model fitted on a DataFrame."""
    needs = estimator_packages(estimator)
    if frame:
        needs["pandas"] = {"distribution": "pandas", "version": importlib.import_module("pandas").__version__}
    return needs


def check_packages(requires, where):
    """PackageError unless every package the card requires is installed (in its version, for EXACT ones)."""
    for module, package in sorted(requires.items()):
        pin = f"{package['distribution']}=={package['version']}"
        if importlib.util.find_spec(module) is None:
            raise PackageError(f"{where} needs {module}, which is not installed: pip install '{pin}' (the API image: "
                               "build it with EXTRAS=1, docs/models.md)")
        if module in EXACT and importlib.import_module(module).__version__ != package["version"]:
            raise PackageError(f"{where} was fitted with {module} {package['version']} but "
                               f"{importlib.import_module(module).__version__} is installed: pip install '{pin}'")
