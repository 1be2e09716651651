"""Train a model on a table and save it, with the model card that every other part of the service reads.

Usage:
    python train.py                                     # iris, logistic regression, seed 42: model/iris.skops
    python train.py --dataset wine                      # or breast_cancer, or diabetes (a quantity to predict)
    python train.py --csv my.csv --target y --drop id   # a table of your own: model/my.skops
    python train.py --csv my.csv --target y --fitted mine.joblib   # adopt a model you fitted elsewhere
    python train.py --model random_forest --seed 7 --output /tmp/rf.skops
    python train.py --publish models --sign-key key.pem # the next version of a repository, signed
    python train.py --convert old.joblib                # an artifact written before skops: old.skops beside it

The task follows from the target: a numeric target with more than 20 distinct values (or with fractions) is a
regression, any other a classification; --task overrides it, and a fitted model brings its own. It holds out a test
split (stratified for classes), prints a report (held-out accuracy, or MAE, RMSE and R² beside a baseline that always
predicts the mean; 5-fold cross-validation; per class precision, recall and F1, or a regressor's prediction interval
and its coverage), and writes two files atomically: the artifact (`--output`), a skops file that loads without
running code (tabserve/artifacts.py), and beside it its model card, a JSON file with the same name and a `.json`
suffix (tabserve/card.py): the one description of the model that every other part reads. The API reads it first and
checks the artifact's sha256 before it builds anything. With --sign-key, a signature of both goes beside them
(OpenSSF model signing, tabserve/signing.py). A table that cannot make a model (tables.py says why), or a model the
API would not load, is refused in one line, and nothing is written.

The work is the package's: tabserve/tables.py and datasets.py read the table, training.py fits and measures,
describe.py writes the card, repository.py saves both, report.py words the report.
"""

import argparse
import json
import sys
from pathlib import Path

from tabserve.artifacts import FORMAT, SUFFIX, ArtifactError
from tabserve.card import CardError, card_path, read_card
from tabserve.csvfiles import SEPARATORS
from tabserve.datasets import BUNDLED, DEFAULT_DATASET, load_bundled
from tabserve.describe import build_card, library_versions
from tabserve.packages import PackageError, needed_packages
from tabserve.report import format_report
from tabserve.repository import ARTIFACT, OLD_ARTIFACT, file_sha256, publish, save
from tabserve.signing import SignatureError, check_private_key
from tabserve.stores import StoreError, open_store
from tabserve.tables import MISSING_MARKERS, TASKS, TableError, normalise, read_csv
from tabserve.training import (
    ALGORITHMS,
    DEFAULT_MODELS,
    adopt,
    algorithm_names,
    choose_algorithm,
    fit,
    fitted_task,
    load_fitted,
)

MODEL_FOLDER = Path(__file__).resolve().parent / "model"
DEFAULT_SEED = 42
DEFAULT_TEST_SIZE = 0.25
DEFAULT_INTERVAL = 0.9  # a regressor's prediction interval covers the true value 9 times in 10
# The options --convert goes with (the others keep their defaults).
CONVERT_OPTIONS = {"convert", "sign_key", "dataset", "interval", "seed", "test_size", "drop", "keep", "missing"}


def read_table(args, task):
    """The table the command line names: a CSV file (its task given, or decided from its target), or a bundled
    dataset (its own task)."""
    if args.csv:
        return read_csv(args.csv, args.target, args.drop, task=task, missing=args.missing, separator=args.sep,
                        decimal=args.decimal, keep=args.keep)
    table = load_bundled(args.dataset)
    if task and task != table.task:
        raise TableError(f"the {args.dataset} table is a {table.task}, not a {task}")
    return table


def train(args):
    """Train (or adopt), evaluate and save as the parsed command line says; return the card written."""
    fitted = load_fitted(args.fitted) if args.fitted else None
    table = read_table(args, fitted_task(fitted, args.fitted, args.task) if fitted is not None else args.task)
    if args.calibration and table.task != "regression":
        raise TableError(f"--calibration calibrates a regressor's interval; --fitted {args.fitted} is a classifier")
    if fitted is not None:
        calibration = calibration_table(args, table) if args.calibration else None
        estimator, train_split, facts = adopt(fitted, args.fitted, table, args.interval, args.seed, args.labels,
                                              calibration)
    else:
        algorithm = choose_algorithm(table.task, args.model)
        estimator, train_split, facts = fit(table, algorithm, args.seed, args.test_size, args.interval)
    try:
        facts["requires"] = needed_packages(estimator, facts["frame"])
    except PackageError as err:
        raise TableError(f"--fitted {args.fitted}: {err}") from None
    kind = "regressor" if table.task == "regression" else "classifier"
    facts["name"] = args.name or f"{table.name}-{kind}"
    facts["seed"], facts["keep_rows"] = args.seed, not args.no_rows
    def make_card(sha256, version):
        return build_card(table, estimator, train_split, facts, sha256, version)

    try:
        if args.publish:
            return publish(estimator, make_card, args.publish, facts["name"], args.sign_key)
        output = args.output or MODEL_FOLDER / f"{table.name}{SUFFIX}"
        return save(estimator, make_card, output, sign_key=args.sign_key), output
    except ArtifactError as err:
        raise TableError(f"{f'--fitted {args.fitted}' if args.fitted else 'the model'} {err}") from None


def calibration_table(args, table):
    """The --calibration rows, read as the table was, with the table's columns; TableError when they differ."""
    left_out = [label for label, _ in table.left_out]
    rows = read_csv(args.calibration, args.target, [*args.drop, *left_out], task=table.task, missing=args.missing,
                    separator=args.sep, decimal=args.decimal, keep=[column.label for column in table.columns])
    for ours, theirs in zip(table.columns, rows.columns, strict=False):
        if (ours.name, ours.kind) != (theirs.name, theirs.kind):
            raise TableError(f"--calibration {args.calibration}: its column {theirs.label!r} is not the table's "
                             f"{ours.label!r} ({ours.kind})")
    if len(rows.columns) != len(table.columns):
        raise TableError(f"--calibration {args.calibration} has {len(rows.columns)} feature columns, the table "
                         f"{len(table.columns)}")
    return rows


def convert(path, sign_key=None):
    """An artifact written before skops (the user's own joblib file, unpickled here) written again beside it as
    skops, with its card: its version kept (a repository's number) or renewed (an artifact alone is named by its
    bytes). (the card, the new artifact); TableError when the card does not describe it."""
    try:
        card = read_card(card_path(path))
    except CardError as err:
        raise TableError(str(err)) from None
    if file_sha256(path) != card["sha256"]:
        raise TableError(f"{path} does not match the sha256 in {card_path(path)}: it is not the model it describes")
    if card["versions"].get("scikit-learn") != library_versions()["scikit-learn"]:
        raise TableError(f"{path} was trained with scikit-learn {card['versions'].get('scikit-learn')}: retrain it "
                         "with 'python train.py' rather than convert it")
    estimator = load_fitted(path, "--convert")
    named_by_bytes = card["version"] == card["sha256"][:12]

    def make_card(sha256, version):
        return {**card, "version": version if named_by_bytes else card["version"], "format": FORMAT,
                "versions": {**card["versions"], **library_versions()}, "sha256": sha256}

    output = Path(path).with_name(ARTIFACT) if Path(path).name == OLD_ARTIFACT else Path(path).with_suffix(SUFFIX)
    try:
        return save(estimator, make_card, output, sign_key=sign_key), output
    except ArtifactError as err:
        raise TableError(f"--convert {err}") from None


def fraction(text):
    """argparse type: a fraction strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


class OneLineErrorParser(argparse.ArgumentParser):
    """Report a bad command line in one line (argparse adds the whole usage first); --help still shows it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def repository(text):
    """argparse type: a model repository, a folder or s3://BUCKET/PREFIX (stores.py)."""
    return text if text.startswith("s3://") else Path(text)


def separator(text):
    """argparse type: a separator of CSV cells, as a character or by its name ("tab")."""
    names = {name: character for character, name in SEPARATORS.items()}
    if text not in SEPARATORS and text not in names:
        raise argparse.ArgumentTypeError(f"must be one of , ; | or tab, got {text!r}")
    return names.get(text, text)


def skops_path(text):
    """argparse type: where the artifact goes, named for its format."""
    if not text.endswith(SUFFIX):
        raise argparse.ArgumentTypeError(f"the artifact is a skops file: name it <something>{SUFFIX}, got {text!r}")
    return Path(text)


def private_key(text):
    """argparse type: a signing key that can sign."""
    try:
        check_private_key(Path(text))
    except SignatureError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return Path(text)


def model_name(text):
    """argparse type: a model name as it goes into URLs (/v2/models/<name>)."""
    if normalise(text).replace("_", "-") != text:
        raise argparse.ArgumentTypeError(f"must be lower-case letters, digits and '-', got {text!r}")
    return text


def add_table_options(parser):
    """Where the rows come from, and what to predict."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=sorted(BUNDLED), default=DEFAULT_DATASET,
                        help=f"one of scikit-learn's bundled tables (default: {DEFAULT_DATASET})")
    source.add_argument("--csv", type=Path, help="a table of your own: a CSV file in UTF-8 with a header row")
    parser.add_argument("--target", help="with --csv: the column to predict (classes, or a quantity)")
    parser.add_argument("--task", choices=TASKS,
                        help="what to predict, if not what the target suggests (a numeric target with more than 20 "
                             "distinct values, or with fractions, is a regression; any other a classification)")
    parser.add_argument("--drop", action="append", default=[], metavar="COLUMN",
                        help="with --csv: a column to leave out, such as an ID (repeatable)")
    parser.add_argument("--sep", type=separator, metavar="SEPARATOR",
                        help="with --csv: the separator of its cells (, ; | or tab, or their names), if not the one "
                             "found: the one that splits its first lines into the same number of cells")
    parser.add_argument("--decimal", choices=(".", ","),
                        help="with --csv: the decimal mark of its numbers, if not the one found (a comma when cells "
                             "such as 12,5 appear beside a separator other than the comma, and no 12.5)")
    parser.add_argument("--keep", action="append", default=[], metavar="COLUMN",
                        help="with --csv: learn from a column that identifies rows, which is otherwise left out (every "
                             "value distinct, text or whole numbers, or a row counter; the report names them)")
    parser.add_argument("--missing", action="append", metavar="TEXT",
                        help="with --csv: a cell that means no value (repeatable; default: "
                             f"{', '.join(MISSING_MARKERS)}); an empty cell always does")


def add_adoption_options(parser):
    """A model fitted elsewhere: the file, the rows its interval is calibrated on, its classes' names."""
    parser.add_argument("--fitted", type=Path, metavar="FILE",
                        help="with --csv: a model you fitted elsewhere (joblib, or skops), adopted instead of "
                             "training one; a regressor's interval is calibrated on rows it never saw (--calibration, "
                             "or copies of it refitted on folds of the table)")
    parser.add_argument("--calibration", type=Path, metavar="FILE",
                        help="with --fitted, for a regressor: rows the model never saw, with the table's columns, to "
                             "calibrate its interval on (default: copies of the model refitted on folds of the table)")
    parser.add_argument("--labels", type=lambda text: text.split(","), metavar="A,B,C",
                        help="with --fitted: the class names of a classifier fitted on the codes 0, 1, 2, ... "
                             "(default: the table's classes in sorted order, as LabelEncoder numbers them)")


def add_model_options(parser):
    """Which model is trained, its name and where it goes."""
    parser.add_argument("--name", type=model_name,
                        help="the model's name (default: from the dataset or file, e.g. iris-classifier)")
    parser.add_argument("--model", choices=algorithm_names(),
                        help="algorithm to train: " + "; ".join(
                            f"for a {task}, {', '.join(sorted(names))} (default: {DEFAULT_MODELS[task]})"
                            for task, names in ALGORITHMS.items()))
    parser.add_argument("--interval", type=fraction, default=DEFAULT_INTERVAL,
                        help="a regressor's prediction interval: how often it should hold the true value "
                             f"(default: {DEFAULT_INTERVAL})")
    parser.add_argument("--publish", type=repository, metavar="REPO",
                        help="publish into a model repository instead (a folder, or s3://BUCKET/PREFIX): "
                             "REPO/<name>/<next version>/, the version a whole number; the first one published becomes "
                             "the default, later ones are served only when named, until promoted (make canary, make "
                             "promote: docs/running.md)")
    parser.add_argument("--output", type=skops_path,
                        help=f"where to write the artifact, a skops file ({SUFFIX}); the card goes beside it as .json "
                             f"(default: model/<dataset or file name>{SUFFIX} next to this script)")
    parser.add_argument("--sign-key", type=private_key, metavar="KEY.pem",
                        help="sign what is written with this elliptic-curve private key (OpenSSF model signing): a "
                             "version's model.sig, or <name>.sig beside an artifact; the API verifies it with the "
                             "public key in MODEL_SIGNING_PUBLIC_KEY (docs/running.md)")
    parser.add_argument("--convert", type=Path, metavar="OLD.joblib",
                        help="write an artifact of an earlier train.py (a joblib file, beside its card) again as "
                             "skops: OLD.skops, its card rewritten; nothing is trained")
    parser.add_argument("--no-rows", action="store_true",
                        help="keep no training rows in the card (a table that must not ship inside an image): "
                             "explanations then have contributions and no neighbours")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"random seed for the split, cross-validation and the model (default: {DEFAULT_SEED})")
    parser.add_argument("--test-size", type=fraction, default=DEFAULT_TEST_SIZE,
                        help=f"fraction of the data held out for testing (default: {DEFAULT_TEST_SIZE})")


def parse_args(argv=None):
    parser = OneLineErrorParser(description="Train a model on a table and save it, with its model card, for api.py.")
    add_table_options(parser)
    add_adoption_options(parser)
    add_model_options(parser)
    args = parser.parse_args(argv)
    if args.csv and not args.target:
        parser.error("--csv needs --target, the column to predict")
    if args.fitted and args.model:
        parser.error("--fitted adopts a model, --model trains one: give one of them")
    if (args.labels or args.calibration) and not args.fitted:
        parser.error("--labels and --calibration go with --fitted")
    if args.publish and args.output:
        parser.error("--publish and --output: give one of them")
    if args.convert and any(value for name, value in vars(args).items() if name not in CONVERT_OPTIONS):
        parser.error("--convert writes an existing artifact again: it goes with --sign-key only")
    if not args.csv and (args.target or args.drop or args.keep or args.fitted or args.missing or args.sep
                         or args.decimal):
        parser.error("--target, --drop, --keep, --missing, --sep, --decimal and --fitted go with --csv")
    args.missing = tuple(args.missing) if args.missing is not None else MISSING_MARKERS
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        card, output = convert(args.convert, args.sign_key) if args.convert else train(args)
    except TableError as err:
        sys.exit(f"train.py: {err}")
    except OSError as err:
        sys.exit(f"train.py: cannot write {err.filename or args.output}: {err.strerror}")
    except StoreError as err:
        sys.exit(f"train.py: {err}")
    print(format_report(card, output))
    if args.publish:
        routing = json.dumps(open_store(args.publish, card["name"]).read_routing()[0].as_json())
        print(f"Published {card['name']} version {card['version']}; the routing is {routing} (make canary, make "
              "promote and make rollback change it: docs/running.md)")


if __name__ == "__main__":
    main()
