"""What the monitoring page draws from GET /api/v1.0/monitoring's answer: each input's and the output's bins as pairs
of bars (the training's share, the live one), the PSI with its verdict in words, the feedback's live figures beside
the training ones, and the share of the traffic each version answered. Pure functions of the API's JSON: the
template (views/monitoring.tpl) only lays them out, and every number it shows is the API's, as the API gives it.

    view = monitoring_view(report, labels)   # labels: {input name: what the form calls it}
"""

from urllib.parse import urlencode

from tabserve.figures import number_text, percent

VERDICTS = {  # the verdict in words, and the class that colours it (the words carry it without the colour)
    "stable": ("Stable", "stable"),
    "moderate": ("Moderate drift", "moderate"),
    "drifted": ("Drifted", "drifted"),
    "too few": ("Too few values to judge", "too-few"),
}


def share_text(share):
    return "–" if share is None else percent(share)


def drift_view(title, judged):
    """A drift figure: its title, count, PSI and verdict, and per bin (label, the reference's and the live share as
    text, and the two bars' lengths in percent of the longest bar)."""
    longest = max([b["reference"] for b in judged["bins"]] + [b["live"] or 0 for b in judged["bins"]]) or 1.0
    words, colour = VERDICTS[judged["verdict"]]
    return {"title": title, "count": judged["count"], "psi": "–" if judged["psi"] is None else f"{judged['psi']:.4f}",
            "verdict": words, "colour": colour,
            "bins": [(b["label"], share_text(b["reference"]), share_text(b["live"]),
                      100 * b["reference"] / longest, 100 * (b["live"] or 0) / longest) for b in judged["bins"]]}


def feedback_view(feedback):
    """(count, rows of (what, live, at training)) for a classifier or a regressor."""
    training = feedback["training"]
    if "accuracy" in feedback:
        rows = [("Accuracy", share_text(feedback["accuracy"]), share_text(training["accuracy"]))]
        rows += [(f"Recall of {name}", share_text(recall), share_text(training["recall"].get(name)))
                 for name, recall in feedback["recall"].items()]
    else:
        def number(value):
            return "–" if value is None else number_text(value)
        rows = [("Mean absolute error", number(feedback["mae"]), number(training["mae"])),
                ("Root mean squared error", number(feedback["rmse"]), number(training["rmse"])),
                (f"Truth inside the interval ({feedback['with_interval']} answers with one)",
                 share_text(feedback["coverage"]), f"{share_text(training['coverage'])}, promised "
                                                   f"{share_text(feedback['level'])}")]
    return feedback["count"], rows


def traffic_view(traffic):
    """[(version, predictions, share in words, bar length)], the busiest first."""
    total = sum(traffic.values())
    return [(version, count, share_text(count / total if total else None), 100 * count / total if total else 0)
            for version, count in sorted(traffic.items(), key=lambda item: -item[1])]


def monitoring_view(report, labels):
    """Everything the page shows, from the API's report."""
    inputs = [drift_view(labels.get(name, name), judged) for name, judged in report.get("inputs", {}).items()]
    return {"model": report["model"], "window": report["window"], "window_limit": report["window_limit"],
            "thresholds": report["thresholds"], "inputs": inputs, "no_drift": report.get("drift"),
            "output": drift_view("The model's answers", report["output"]) if "output" in report else None,
            "feedback": feedback_view(report["feedback"]), "traffic": traffic_view(report["traffic"])}


def duration_text(seconds):
    """3600 -> "hour", 600 -> "10 minutes", 90 -> "90 seconds"."""
    for size, unit in ((3600, "hour"), (60, "minute")):
        if seconds % size == 0:
            count = seconds // size
            return unit if count == 1 else f"{count} {unit}s"
    return f"{seconds} seconds"


def span_links(view, asked):
    """([(text, link, is it the one shown)] for since the start and the last DRIFT_WINDOW, and the span in words)."""
    version = [("version", asked["version"])] if "version" in asked else []
    limit = view["window_limit"]
    recent = f"the last {duration_text(limit)}"
    links = [("Since the start", "/monitoring" + (f"?{urlencode(version)}" if version else ""), view["window"] is None),
             (recent.capitalize(), f"/monitoring?{urlencode([('window', limit), *version])}",
              view["window"] is not None and view["window"]["seconds"] == limit)]
    window = view["window"]
    if window is None:
        return links, "since the service started"
    covered = "" if window["covered"] >= window["seconds"] else f" (the service is {window['covered']} s old)"
    return links, f"over the last {duration_text(window['seconds'])}{covered}"
