"""The training report that train.py prints: how good the model is, from its card's metrics."""

from tabserve.card import card_path
from tabserve.intervals import SPLIT


def classification_lines(metrics):
    """Accuracy, cross-validation, each class's precision, recall and F1, and the confusion matrix."""
    if "table_accuracy" in metrics:
        lines = [f"Accuracy on the whole table: {metrics['table_accuracy']:.3f}"]
    else:
        lines = [f"Held-out accuracy:  {metrics['test_accuracy']:.3f}",
                 f"{metrics['cv_folds']}-fold CV accuracy: {metrics['cv_accuracy_mean']:.3f} "
                 f"± {metrics['cv_accuracy_std']:.3f}"]
    width = max(12, *(len(name) + 2 for name in metrics["per_class"]))
    lines += ["", f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, scores in metrics["per_class"].items():
        lines.append(f"{name:<{width}}{scores['precision']:>10.3f}{scores['recall']:>10.3f}"
                     f"{scores['f1-score']:>10.3f}{scores['support']:>10.0f}")
    labels = metrics["confusion_matrix"]["labels"]
    lines += ["", "Confusion matrix (rows: true, columns: predicted)",
              " " * width + "".join(f"{n:>{width}}" for n in labels)]
    for name, row in zip(labels, metrics["confusion_matrix"]["matrix"], strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{count:>{width}}" for count in row))
    return lines


def regression_lines(metrics, interval, unit):
    """The errors beside the baseline's, cross-validation, and the interval with its coverage."""
    unit = f" {unit}" if unit else ""
    where = "table" if "table_mae" in metrics else "test"
    lines = [f"{'':<16}{'model':>12}{'the mean':>12}" if where == "test" else f"{'':<16}{'on the table':>12}"]
    for name, key in (("MAE", "mae"), ("RMSE", "rmse"), ("R²", "r2")):
        row = f"{('Held-out ' if where == 'test' else '') + name:<16}{metrics[f'{where}_{key}']:>12.4g}"
        lines.append(row + (f"{metrics[f'baseline_{key}']:>12.4g}" if where == "test" else ""))
    if where == "test":
        lines.append(f"{metrics['cv_folds']}-fold CV R²: {metrics['cv_r2_mean']:.3f} ± {metrics['cv_r2_std']:.3f}")
    return lines + interval_lines(metrics, interval, unit)


def interval_lines(metrics, interval, unit):
    """The interval, how it was calibrated when not on the held-out split, and what it held; or why there is none."""
    if interval is None:
        return ["", f"Served without an interval: {metrics['interval_unavailable']}."]
    level, width = metrics["interval_level"], metrics["interval_width"]
    rows = "held-out rows" if interval["method"] == SPLIT else "calibration rows"
    how = [] if interval["method"] == SPLIT else [f"Calibrated by {interval['method']}."]
    return ["", f"Prediction interval: ± {width / 2:.4g}{unit} (width {width:.4g}{unit}), for {level:.0%} of rows",
            *how, f"Its coverage on the {rows}: {metrics['interval_coverage']:.1%} (each fifth of them judged by the "
                  "interval calibrated on the other four)"]


def table_lines(card):
    """What became of the table: the columns left out (identifiers), the rows left out for want of a target, each
    date learnt from its parts, each category of many levels, and each input's missing values with what the model
    assumes."""
    lines = [f"Left out column {item['column']!r}: {item['why']} (--keep {item['column']} learns from it)."
             for item in card["training"].get("left_out", [])]
    left_out = card["training"].get("rows_without_target")
    if left_out:
        lines.append(f"Left out {left_out} rows without a value of {card['target']['label']}.")
    for item in card["inputs"]:
        if item["kind"] == "date":
            hours = ", hour of the day" if item.get("format") == "date-time" else ""
            lines.append(f"{item['label']}: a {item['format']} ({item['training_range']['min']} to "
                         f"{item['training_range']['max']}), learnt from its year, day of the year, day of the "
                         f"week{hours}.")
        if item.get("open"):
            rare = item["rare"]
            lines.append(f"{item['label']} has {len(item['categories']) + rare['levels']} levels in training; the "
                         f"{len(item['categories'])} seen most are kept, {rare['levels']} rarer ones ({rare['rows']} "
                         f"rows) are learnt as one, {rare['value']}, as is any value never seen.")
        if item.get("optional"):
            missing = item["missing"]
            lines.append(f"Missing: {item['name']} in {missing['rows']} rows; the model assumes {missing['assumed']}.")
    return [*lines, ""] if lines else []


def format_report(card, output):
    """The human-readable training report."""
    task = card.get("task", "classification")
    read = f", read with {card['training']['read']}" if card["training"].get("read") else ""
    lines = [f"Trained {card['algorithm']} ({card['name']} version {card['version']}) on "
             f"{card['training']['dataset']}{read}",
             f"Task: {task} ({card['training'].get('task_decided', '')})", ""]
    if card.get("class_codes"):
        pairs = ", ".join(f"{code} = {name}" for code, name in zip(card["class_codes"], card["classes"], strict=True))
        lines += [f"Classes: {pairs} (the table's classes in sorted order, as LabelEncoder numbers them; --labels "
                  "names them otherwise)", ""]
    lines += table_lines(card)
    if task == "regression":
        lines += regression_lines(card["metrics"], card["interval"], card["target"].get("unit"))
    else:
        lines += classification_lines(card["metrics"])
    lines += ["", f"Saved {output}", f"  and {card_path(output)}"]
    return "\n".join(lines)
