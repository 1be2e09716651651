"""The form of the model the API serves, learnt from its GET /api/v1.0/model: the inputs (with a hint under each), the
examples, the classes' labels and the page's words that the web app's templates are made of (web.py).

    forms = FormSource(lambda: call_api(opener, f"{api_url}/api/v1.0/model", authorization, timeout))
    form = forms.current()          # None until the API has answered once
    forms.notice(answer_version)    # an answer from another model version: the form is learnt again at once

It learns when first asked, again when the form is older than FORM_REFRESH_SECONDS, and at once when an answer comes
from another model version, so a new model rolled out gets its own form without restarting the web app.
"""

import logging
import math
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from tabserve.card import task_of
from tabserve.client import ApiUnavailable

FORM_REFRESH_SECONDS = 30  # how often the form is learnt again, so that a new model rolled out gets its own form
FORM_RETRY_SECONDS = 1  # while the API has not answered: how often a page asks it again

logger = logging.getLogger(__name__)


NOT_GIVEN = "not given"  # how the pages write a missing value


def value_text(value):
    """A value as the page writes it: a category as it is, a number as 5.1, not 5.1000000000000001 or 5.0e+00, a
    missing one as NOT_GIVEN."""
    if value is None:
        return NOT_GIVEN
    return value if isinstance(value, str) else f"{value:g}"


def query_link(path, pairs):
    return f"{path}?{urlencode(pairs)}" if pairs else path


@dataclass(frozen=True)
class Form:
    """What the pages are made of for one model version: the API's description of its inputs, classes and words."""

    version: str
    names: tuple  # the inputs' names, in the model's order
    context: dict  # what the templates are given: inputs, examples, texts, class labels

    @classmethod
    def from_description(cls, description):
        """A Form from GET /api/v1.0/model; ValueError (or KeyError, TypeError) when it is not one."""
        inputs = [{**entry, "suffix": f" {entry['unit']}" if entry.get("unit") else ""}  # what follows a value
                  for entry in description["inputs"]]
        inputs = [{**entry, "hint": hint(entry)} for entry in inputs]
        names = tuple(entry["name"] for entry in inputs)
        examples = [(name, query_link("/", [(key, value_text(value)) for key, value in row.items()]))
                    for name, row in description["examples"].items()]
        texts = description["texts"]
        return cls(str(description["version"]), names,
                   {"inputs": inputs, "examples": examples, "texts": texts, "task": task_of(description),
                    "target": description.get("target", {}), "class_labels": description["class_labels"],
                    # What the page is for, in the card's words, for search engines and link previews.
                    "description": f"{texts['title']}. {texts['lead']}"})


def hint(entry):
    """The line under an input: its typical range (a number, a date) or how many choices it has (a category)."""
    if entry["kind"] == "category" and entry.get("open"):
        typical = f"Any; {len(entry['categories'])} seen often in training are suggested, others are answered as rare"
    elif entry["kind"] == "category":
        typical = f"One of {len(entry['categories'])}"
    else:
        low, high = entry["training_range"]["min"], entry["training_range"]["max"]
        typical = f"Typically {value_text(low)} to {value_text(high)}{entry['suffix']}"
    if entry.get("optional"):
        return f"{typical}; optional: if not given, the model assumes {entry['missing']['assumed']}"
    return typical


class FormSource:
    """The form of the model the API serves now, learnt from it when first needed, again when it is older than
    FORM_REFRESH_SECONDS, and at once when an answer names another version. None while the API has not answered."""

    def __init__(self, fetch):
        self.fetch = fetch  # () -> (status, body) of GET /api/v1.0/model
        self.form, self.checked = None, -math.inf
        self.problem = None  # why the last try failed: the API's status code, or "unavailable"
        self.lock = threading.Lock()

    def current(self):
        age = time.monotonic() - self.checked
        if age > (FORM_REFRESH_SECONDS if self.form else FORM_RETRY_SECONDS):
            self.learn()
        return self.form

    def notice(self, version):
        """An answer came from this model version: learn the form again if it is another."""
        if self.form is None or version != self.form.version:
            self.learn()

    def changed(self):
        """Learn the form again now; whether it belongs to another model version than before."""
        before = self.form
        self.learn()
        return self.form is not before and (before is None or self.form.version != before.version)

    def learn(self):
        if not self.lock.acquire(blocking=False):
            return  # another thread is asking the API already; this one uses the form as it is
        try:
            self.checked = time.monotonic()
            status, body = self.fetch()
            if status != 200:
                self.problem = status
                logger.error("the API answered %s to GET /api/v1.0/model: the form cannot be learnt", status)
                return
            form = Form.from_description(body)
            if self.form is None or form.version != self.form.version:
                logger.info("form learnt for model %s version %s", body.get("name"), form.version)
            self.form, self.problem = form, None
        except ApiUnavailable as err:
            self.problem = "unavailable"
            logger.error("the API is unavailable, so the form cannot be learnt yet: %s", err)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            self.problem = 200
            logger.error("GET /api/v1.0/model did not describe a model: %r", err)
        finally:
            self.lock.release()
