# `make test` is the project's test command: a virtual environment with the pinned requirements, then pytest.
# A clean clone installs everything from nothing; later runs reinstall only when a requirements file changes.
PYTHON ?= python3
VENV ?= .venv

.PHONY: test train api web screenshots bench load clean

$(VENV)/installed: requirements.txt requirements-web.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

test: $(VENV)/installed
	$(VENV)/bin/python -m pytest

train: $(VENV)/installed  # make train MODEL=random_forest for another algorithm
	$(VENV)/bin/python train.py $(if $(MODEL),--model $(MODEL))

api: $(VENV)/installed
	$(VENV)/bin/python api.py

web: $(VENV)/installed
	$(VENV)/bin/python web.py

screenshots: $(VENV)/installed  # the README's pictures, taken in headless Chromium into docs/images
	SCREENSHOTS_DIR=docs/images $(VENV)/bin/python -m pytest tests/test_browser.py

bench: $(VENV)/installed  # the performance table of the README (needs wrk and a trained model: make train)
	$(VENV)/bin/python -m tools.bench

load: $(VENV)/installed  # 100,000 mixed requests, every answer checked (needs a trained model: make train)
	$(VENV)/bin/python -m tools.load

clean:
	rm -rf $(VENV) .pytest_cache __pycache__ */__pycache__
