"""scikit-learn's bundled tables (no download), as the Tables that train.py learns from.

    table = load_bundled("wine")

Iris keeps the names, unit, bounds, labels and words the service has always shown it with; the other tables take
scikit-learn's feature names, normalised.
"""

import numpy as np
from sklearn.datasets import load_breast_cancer, load_iris, load_wine

from tabserve.tables import Column, Table, check_names

DEFAULT_DATASET = "iris"

# The iris dataset as the service has always shown it: its four names, lengths in cm (greater than 0 and at most
# 100), the species' full names and the page's words. The other bundled tables take scikit-learn's names, normalised.
IRIS = {
    "features": (("sepal_length", "Sepal length"), ("sepal_width", "Sepal width"), ("petal_length", "Petal length"),
                 ("petal_width", "Petal width")),
    "unit": "cm",
    "allowed": {"exclusiveMinimum": 0, "maximum": 100},
    "class_labels": {"setosa": "Iris setosa", "versicolor": "Iris versicolor", "virginica": "Iris virginica"},
    "texts": {"title": "Iris classifier", "question": "Which iris is this?",
              "lead": "Enter four measurements of one flower, in centimetres, and the model names its species.",
              "submit": "Predict the species", "source": "Fisher's iris data",
              "change": "Change these measurements"},
    "source": "scikit-learn load_iris (Fisher, 1936), 150 samples",
}
BUNDLED = {"iris": load_iris, "wine": load_wine, "breast_cancer": load_breast_cancer}



def load_bundled(name):
    """One of scikit-learn's bundled tables (no download), its target as class names (not integer codes)."""
    data = BUNDLED[name]()
    target = np.asarray(data.target_names)[data.target]
    if name == "iris":
        columns = [Column(feature, label, "number", data.data[:, i].tolist(), IRIS["unit"], IRIS["allowed"])
                   for i, (feature, label) in enumerate(IRIS["features"])]
        return Table("iris", columns, target, IRIS["source"], class_labels=IRIS["class_labels"], texts=IRIS["texts"])
    names = check_names(data.feature_names)
    columns = [Column(feature, label, "number", data.data[:, i].tolist())
               for i, (feature, label) in enumerate(zip(names, data.feature_names, strict=True))]
    return Table(name.replace("_", "-"), columns, target, f"scikit-learn load_{name}, {len(target)} samples",
                 texts={"source": f"scikit-learn's {name.replace('_', ' ')} data"})
