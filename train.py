"""Train a model on a table and save it, with the model card that every other part of the service reads.

Usage:
    python train.py                                     # iris, logistic regression, seed 42: model/iris.joblib
    python train.py --dataset wine                      # or breast_cancer, or diabetes (a quantity to predict)
    python train.py --csv my.csv --target y --drop id   # a table of your own: model/my.joblib
    python train.py --csv my.csv --target y --fitted mine.joblib   # adopt a model you fitted elsewhere
    python train.py --model random_forest --seed 7 --output /tmp/rf.joblib

The task follows from the target: a numeric target with more than 20 distinct values (or with fractions) is a
regression, any other a classification; --task overrides it, and a fitted model brings its own. It holds out a test
split (stratified for classes), prints a report (held-out accuracy, or MAE, RMSE and R² beside a baseline that always
predicts the mean; 5-fold cross-validation; per class precision, recall and F1, or a regressor's prediction interval
and its coverage), and writes two files atomically: the joblib artifact (`--output`) and beside it its model card, a
JSON file with the same name and a `.json` suffix (tabserve/card.py): the one description of the model that every
other part reads. The API reads it first and checks the artifact's sha256 before it unpickles anything. A table
that cannot make a model (tables.py says why) is refused in one line, and nothing is written.

The work is the package's: tabserve/tables.py and datasets.py read the table, training.py fits and measures,
describe.py writes the card, repository.py saves both, report.py words the report.
"""

import argparse
import json
import sys
from pathlib import Path

from tabserve.datasets import BUNDLED, DEFAULT_DATASET, load_bundled
from tabserve.describe import build_card
from tabserve.packages import PackageError, needed_packages
from tabserve.report import format_report
from tabserve.repository import publish, save
from tabserve.routing import read_routing
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


def read_table(args, task):
    """The table the command line names: a CSV file (its task given, or decided from its target), or a bundled
    dataset (its own task)."""
    if args.csv:
        return read_csv(args.csv, args.target, args.drop, task=task, missing=args.missing)
    table = load_bundled(args.dataset)
    if task and task != table.task:
        raise TableError(f"the {args.dataset} table is a {table.task}, not a {task}")
    return table


def train(args):
    """Train (or adopt), evaluate and save as the parsed command line says; return the card written."""
    fitted = load_fitted(args.fitted) if args.fitted else None
    table = read_table(args, fitted_task(fitted, args.fitted, args.task) if fitted is not None else args.task)
    if fitted is not None:
        estimator, train_split, facts = adopt(fitted, args.fitted, table, args.interval, args.seed, args.labels)
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

    if args.publish:
        return publish(estimator, make_card, args.publish, facts["name"])
    output = args.output or MODEL_FOLDER / f"{table.name}.joblib"
    return save(estimator, make_card, output), output


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
    parser.add_argument("--missing", action="append", metavar="TEXT",
                        help="with --csv: a cell that means no value (repeatable; default: "
                             f"{', '.join(MISSING_MARKERS)}); an empty cell always does")


def add_model_options(parser):
    """Which model: trained here, or fitted elsewhere; its name and where it goes."""
    parser.add_argument("--fitted", type=Path, metavar="FILE",
                        help="with --csv: a model you fitted elsewhere (joblib), adopted instead of training one; a "
                             "regressor's interval is calibrated on the table, so give it rows it was not fitted on")
    parser.add_argument("--labels", type=lambda text: text.split(","), metavar="A,B,C",
                        help="with --fitted: the class names of a classifier fitted on the codes 0, 1, 2, ... "
                             "(default: the table's classes in sorted order, as LabelEncoder numbers them)")
    parser.add_argument("--name", type=model_name,
                        help="the model's name (default: from the dataset or file, e.g. iris-classifier)")
    parser.add_argument("--model", choices=algorithm_names(),
                        help="algorithm to train: " + "; ".join(
                            f"for a {task}, {', '.join(sorted(names))} (default: {DEFAULT_MODELS[task]})"
                            for task, names in ALGORITHMS.items()))
    parser.add_argument("--interval", type=fraction, default=DEFAULT_INTERVAL,
                        help="a regressor's prediction interval: how often it should hold the true value "
                             f"(default: {DEFAULT_INTERVAL})")
    parser.add_argument("--publish", type=Path, metavar="REPO",
                        help="publish into a model repository instead: REPO/<name>/<next version>/, the version a "
                             "whole number; the first one published becomes the default, later ones are served only "
                             "when named, until promoted (make canary, make promote: docs/running.md)")
    parser.add_argument("--output", type=Path,
                        help="where to write the joblib artifact; the card goes beside it as .json "
                             "(default: model/<dataset or file name>.joblib next to this script)")
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
    add_model_options(parser)
    args = parser.parse_args(argv)
    if args.csv and not args.target:
        parser.error("--csv needs --target, the column to predict")
    if args.fitted and args.model:
        parser.error("--fitted adopts a model, --model trains one: give one of them")
    if args.labels and not args.fitted:
        parser.error("--labels goes with --fitted")
    if args.publish and args.output:
        parser.error("--publish and --output: give one of them")
    if not args.csv and (args.target or args.drop or args.fitted or args.missing):
        parser.error("--target, --drop, --missing and --fitted go with --csv")
    args.missing = tuple(args.missing) if args.missing is not None else MISSING_MARKERS
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        card, output = train(args)
    except TableError as err:
        sys.exit(f"train.py: {err}")
    except OSError as err:
        sys.exit(f"train.py: cannot write {err.filename or args.output}: {err.strerror}")
    print(format_report(card, output))
    if args.publish:
        routing = json.dumps(read_routing(output.parent.parent).as_json())
        print(f"Published {card['name']} version {card['version']}; the routing is {routing} (make canary, make "
              "promote and make rollback change it: docs/running.md)")


if __name__ == "__main__":
    main()
