"""tabserve: a tabular model served by an authenticated REST API and a web page (README.md).

The package holds what the scripts at the root (train.py, api.py, web.py, serve.py) share, one job per module.
Importing it loads nothing heavy: the web app uses its modules without NumPy or scikit-learn.
"""

__version__ = "0.5.0"
