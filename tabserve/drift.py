"""Drift: how far live values have moved from those the model learnt from, as a population stability index (PSI) over
bins fixed at training.

    card["distributions"] = distributions(inputs, X_train, (held_out, classes))  # train.py, once (describe.py)
    bins = Bins(card)                                                          # the API, per version
    bins.of_inputs(rows), bins.of_output(predictions)                          # flat bin numbers, to count
    psi(reference_shares, live_counts)                                         # 0: unchanged; 0.25: drifted

A number's bins are cut at its training deciles, open at both ends ((-inf, d1], (d1, d2], ..., (d9, +inf)); repeated
deciles of a number with few values merge. A category has a bin per category. An input that may be missing has one
more bin for a missing value. The output's bins are the classes the model predicted on the held-out rows, or a
predicted number's deciles there. Each bin's reference share is the training split's (the held-out predictions',
for the output). A bin empty on either side counts as 0.0001 of it, as Evidently does, so the index stays finite.
"""

import math

import numpy as np

from tabserve.dates import days_of, text_of

DECILES = np.linspace(0.1, 0.9, 9)
EMPTY_SHARE = 0.0001  # the share an empty bin counts as (Evidently's floor)
MISSING_BIN = "missing"  # the last bin of an input that may be missing
RARE_LABEL = "rare or new"  # an open category's bin for the values outside its levels (levels.py)
VERDICTS = ("stable", "moderate", "drifted")
TOO_FEW = "too few"  # the verdict below the minimum count


def number_reference(values):
    """{"edges", "shares"} of numbers at their deciles (missing values left out of both)."""
    values = values[~np.isnan(values)]
    # Six significant figures: an edge reads as the data's own numbers (5.02, not 5.0200000000000005).
    edges = np.unique([float(f"{edge:.6g}") for edge in np.quantile(values, DECILES)]) if len(values) else np.array([])
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return {"edges": edges.tolist(), "shares": (counts / max(len(values), 1)).tolist()}


def date_reference(values, form):
    """{"edges", "shares"} of dates at the deciles of their time, the edges as the canonical texts of their days."""
    days = days_of(values)
    days = days[~np.isnan(days)]
    texts = sorted({text_of(edge, form) for edge in np.quantile(days, DECILES)}) if len(days) else []
    counts = np.bincount(np.searchsorted(days_of(texts), days, side="left"), minlength=len(texts) + 1)
    return {"edges": texts, "shares": (counts / max(len(days), 1)).tolist()}


def distributions(inputs, X, output):
    """The card's reference distributions: inputs is the card's "inputs" (their kinds, categories, optional), X the
    training split, output the held-out predictions (class names, or numbers) with the classes when there are."""
    entries = []
    for index, item in enumerate(inputs):
        column = X[:, index]
        missing = np.array([value is None or value != value for value in column.tolist()], dtype=bool)
        if item["kind"] == "number":
            entry = number_reference(column.astype(float))
        elif item["kind"] == "date":
            entry = date_reference(column.tolist(), item["format"])
        else:
            present = column[~missing].tolist()
            levels = item["categories"] + ([None] if item.get("open") else [])  # None: the rare group's bin
            known = set(item["categories"])
            entry = {"shares": [sum(value not in known for value in present) / max(len(present), 1) if name is None
                                else present.count(name) / max(len(present), 1) for name in levels]}
        share = float(missing.mean()) if len(column) else 0.0
        entry["shares"] = [round(s * (1 - share), 6) for s in entry["shares"]] + ([round(share, 6)]
                                                                                 if item.get("optional") else [])
        entries.append({"name": item["name"], **entry})
    predictions, classes = output
    if classes:
        names = [str(name) for name in predictions]
        result = {"shares": [round(names.count(name) / max(len(names), 1), 6) for name in classes]}
    else:
        result = number_reference(np.asarray(predictions, dtype=float))
        result["shares"] = [round(share, 6) for share in result["shares"]]
    return {"rows": int(len(X)), "inputs": entries, "output": {"rows": int(len(predictions)), **result}}


def psi(reference, counts):
    """The population stability index of live counts against reference shares (None with no count)."""
    total = sum(counts)
    if not total:
        return None
    return float(sum((live - ref) * math.log(live / ref) for ref, live in
                     ((max(ref, EMPTY_SHARE), max(count / total, EMPTY_SHARE)) for ref, count in
                      zip(reference, counts, strict=True))))


def verdict(value, count, thresholds, min_count):
    """stable, moderate or drifted by the thresholds (0.1, 0.25); "too few" below the minimum count."""
    if count < min_count or value is None:
        return TOO_FEW
    return VERDICTS[sum(value > threshold for threshold in thresholds)]


def number_labels(edges, unit=""):
    """The bins' labels: "≤ 5.1 cm", "5.1 to 5.8 cm", ..., "> 7.2 cm" (a date's edges are its texts)."""
    if not edges:
        return ["any"]
    shown = [edge if isinstance(edge, str) else f"{edge:g}" for edge in edges]
    between = [f"{low} to {high}{unit}" for low, high in zip(shown, shown[1:], strict=False)]
    return [f"≤ {shown[0]}{unit}", *between, f"> {shown[-1]}{unit}"]


class Bins:
    """A version's bins, and the flat bin number of each value: the inputs' bins one after the other, then the
    output's in a numbering of their own."""

    def __init__(self, card):
        reference = card["distributions"]
        inputs = {item["name"]: item for item in card["inputs"]}
        self.inputs, offsets, self.flat = [], [0], []
        for entry in reference["inputs"]:
            item = inputs[entry["name"]]
            unit = f" {item['unit']}" if item.get("unit") else ""
            labels = number_labels(entry["edges"], unit) if "edges" in entry else list(item["categories"]) + (
                [RARE_LABEL] if item.get("open") else [])
            # The metrics' bin label: its position, a missing value's bin "missing" (a category may be "missing").
            keys = [str(n) for n in range(len(labels))] + ([MISSING_BIN] if item.get("optional") else [])
            labels += ["not given"] if item.get("optional") else []
            self.inputs.append((entry["name"], entry["shares"], labels, keys))
            self.flat += [(entry["name"], key) for key in keys]
            offsets.append(offsets[-1] + len(labels))
        self.offsets, self.size = np.array(offsets[:-1]), offsets[-1]
        target_unit = card.get("target", {}).get("unit")
        self.output = card.get("classes") or number_labels(reference["output"]["edges"],
                                                           f" {target_unit}" if target_unit else "")
        self.output_shares = reference["output"]["shares"]
        self.output_edges = np.array(reference["output"].get("edges", []))
        self.prepare(reference["inputs"], card["inputs"])

    def prepare(self, entries, items):
        """The vectorised form: the numbers' edges in one matrix padded with +inf, the categories' positions."""
        numbers = [i for i, item in enumerate(items) if item["kind"] == "number"]
        self.number_columns = np.array(numbers, dtype=int)
        width = max([len(entries[i]["edges"]) for i in numbers] or [0])
        self.edges = np.full((len(numbers), width), np.inf)
        for row, i in enumerate(numbers):
            self.edges[row, :len(entries[i]["edges"])] = entries[i]["edges"]
        self.missing_bins = np.array([len(self.inputs[i][2]) - 1 for i in numbers], dtype=int)
        # A category's value not among its levels goes to an open one's rare bin, right after them; a missing value
        # to the last bin (the missing one, where the input may be missing).
        self.categories = [(i, {name: n for n, name in enumerate(item["categories"])}, len(item["categories"]),
                            len(self.inputs[i][2]) - 1) for i, item in enumerate(items) if item["kind"] == "category"]
        self.dates = [(i, days_of(entries[i]["edges"]), len(self.inputs[i][2]) - 1)
                      for i, item in enumerate(items) if item["kind"] == "date"]

    def input_bin(self, index):
        """(input name, the metrics' bin label) of a flat bin number."""
        return self.flat[index]

    def of_inputs(self, rows, numbers):
        """(n, inputs) flat bin numbers of checked rows; numbers are their numeric columns as floats."""
        bins = np.empty(rows.shape, dtype=np.intp)
        if len(self.number_columns):
            found = (numbers[:, :, None] > self.edges[None, :, :]).sum(axis=2)
            bins[:, self.number_columns] = np.where(np.isnan(numbers), self.missing_bins, found)
        for column, positions, rare, missing in self.categories:
            bins[:, column] = [positions.get(value, rare) if isinstance(value, str) else missing
                               for value in rows[:, column].tolist()]
        for column, edges, missing in self.dates:
            days = days_of(rows[:, column].tolist())
            bins[:, column] = np.where(np.isnan(days), missing, np.searchsorted(edges, days, side="left"))
        return bins + self.offsets

    def of_output(self, predictions):
        """The output bin of each prediction: its class, or its number's bin."""
        if predictions.task == "classification":
            return predictions.best
        return np.searchsorted(self.output_edges, predictions.values, side="left")
