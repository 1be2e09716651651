"""What the result page draws from an answer: numbers as the page writes them, the "Why" rows, and a regressor's
interval placed on the scale of the target's training range. Pure functions of the API's JSON: the templates
(views/) only lay them out.

    why_rows(form.context, answer)          # [(the value entered, in words; the bar's length; its label)]
    interval_picture(target, answer)        # percentages along the picture, and its words
"""

import math

from tabserve.forms import value_text

MARKER_WIDTH = 0.8  # percent of the picture: the prediction's line


def percent(probability):
    return f"{100 * probability:.1f}\u00a0%"  # a no-break space keeps "91.8 %" on one line


def number_text(value):
    """A predicted number as a reader takes it in: four significant figures, no trailing zeros, and no exponent
    where it can go without one (152.7, 60, 1,235, 0.01234)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    if not -4 <= magnitude < 9:
        return f"{value:.4g}"
    digits = max(0, 3 - magnitude)
    text = f"{value:,.{digits}f}"
    return text.rstrip("0").rstrip(".") if digits else text


def unit_suffix(target):
    return f"\u00a0{target['unit']}" if target.get("unit") else ""


def why_rows(context, answer):
    """The Why list, largest first: (each value entered as the page names it, the bar's length in percent, the
    contribution in words). A classifier's contributions are percentage points of the answer's probability; a
    regressor's are in the target's unit, the bar measured against the target's training range."""
    contributions, features = answer["contributions"], answer["features"]
    if context["task"] == "regression":
        target = context["target"]
        span = (target["training_range"]["max"] - target["training_range"]["min"]) or 1.0
        scaled = [(c, 100 * abs(c) / span, f"{c:+.3g}{unit_suffix(target)}") for c in contributions.values()]
    else:
        scaled = [(c, 100 * abs(c), f"{100 * c:+.1f} points") for c in contributions.values()]
    by_name = dict(zip(contributions, scaled, strict=True))
    rows = [(f"{item['label']} {value_text(features.get(item['name']))}"
             f"{item['suffix'] if features.get(item['name']) is not None else ''}",
             *by_name.get(item["name"], (0.0, 0.0, "0"))) for item in context["inputs"]]
    rows.sort(key=lambda row: -abs(row[1]))
    return [(entered, min(100.0, length), words, contribution >= 0) for entered, contribution, length, words in rows]


def interval_picture(target, answer):
    """Where the training range, the interval and the prediction lie along a picture whose scale holds all three:
    each as percentages of its width, with the words a reader needs beside it; None for an answer without one."""
    low, high = target["training_range"]["min"], target["training_range"]["max"]
    interval = answer["interval"]
    if interval is None:
        return None
    start, end = min(low, interval["low"]), max(high, interval["high"])
    span = (end - start) or 1.0

    def place(value):
        return 100 * (value - start) / span

    return {"range": (place(low), place(high) - place(low)),
            "band": (place(interval["low"]), place(interval["high"]) - place(interval["low"])),
            "marker": min(100 - MARKER_WIDTH, max(0.0, place(answer["prediction"]) - MARKER_WIDTH / 2)),
            "marker_width": MARKER_WIDTH,
            "ends": (number_text(start), number_text(end)),
            "training": f"{number_text(low)} to {number_text(high)}{unit_suffix(target)}",
            "interval": f"{number_text(interval['low'])} to {number_text(interval['high'])}{unit_suffix(target)}",
            "level": percent(interval["level"]).replace(".0\u00a0", "\u00a0")}
