"""The training report that train.py prints: how good the model is, from its card's metrics."""

from tabserve.card import card_path


def format_report(metadata, output):
    """The human-readable training report."""
    metrics = metadata["metrics"]
    lines = [f"Trained {metadata['algorithm']} ({metadata['name']} version {metadata['version']}) on "
             f"{metadata['training']['dataset']}"]
    if "table_accuracy" in metrics:
        lines.append(f"Accuracy on the whole table: {metrics['table_accuracy']:.3f}")
    else:
        lines += [f"Held-out accuracy:  {metrics['test_accuracy']:.3f}",
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
    lines += ["", f"Saved {output}", f"  and {card_path(output)}"]
    return "\n".join(lines)
