"""scikit-learn's bundled tables (no download), as the Tables that train.py learns from.

    table = load_bundled("wine")

Iris keeps the names, unit, bounds, labels and words the service has always shown it with, and diabetes (the one
quantity to predict) gets its measurements' names and units from scikit-learn's description of it; the other tables
take scikit-learn's feature names, normalised.
"""

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine

from tabserve.tables import Column, Table, check_names

DEFAULT_DATASET = "iris"

# The iris dataset as the service has always shown it: its four names, lengths in cm (greater than 0 and at most
# 100), the species' full names and the page's words.
IRIS = {
    "features": (("sepal_length", "Sepal length", "cm"), ("sepal_width", "Sepal width", "cm"),
                 ("petal_length", "Petal length", "cm"), ("petal_width", "Petal width", "cm")),
    "allowed": {"exclusiveMinimum": 0, "maximum": 100},
    "target": ("species", "species"),
    "class_labels": {"setosa": "Iris setosa", "versicolor": "Iris versicolor", "virginica": "Iris virginica"},
    "texts": {"title": "Iris classifier", "question": "Which iris is this?",
              "lead": "Enter four measurements of one flower, in centimetres, and the model names its species.",
              "submit": "Predict the species", "source": "Fisher's iris data",
              "change": "Change these measurements"},
    "source": "scikit-learn load_iris (Fisher, 1936), 150 samples",
}
# Diabetes, unscaled (scikit-learn's own numbers are centred and scaled): ten baseline measurements of 442 patients
# and a quantitative measure of their disease's progression one year later (Efron et al., 2004).
DIABETES = {
    "features": (("age", "Age", "years"), ("sex", "Sex (1 or 2)", None), ("bmi", "Body mass index", "kg/m²"),
                 ("bp", "Average blood pressure", "mm Hg"), ("s1", "Total serum cholesterol (s1)", None),
                 ("s2", "Low-density lipoproteins (s2)", None), ("s3", "High-density lipoproteins (s3)", None),
                 ("s4", "Total cholesterol / HDL (s4)", None), ("s5", "Log of serum triglycerides (s5)", None),
                 ("s6", "Blood sugar level (s6)", None)),
    "allowed": {},
    "target": ("progression", "disease progression"),
    "texts": {"title": "Diabetes progression", "question": "How far will the disease progress in a year?",
              "lead": "Enter ten baseline measurements of one patient and the model predicts a measure of the "
                      "disease's progression one year later, with an interval.",
              "submit": "Predict the progression", "source": "the diabetes data of Efron et al. (2004)",
              "change": "Change these measurements"},
    "source": "scikit-learn load_diabetes (Efron et al., 2004), 442 samples",
}
BUNDLED = {"iris": load_iris, "wine": load_wine, "breast_cancer": load_breast_cancer, "diabetes": load_diabetes}
DESCRIBED = {"iris": IRIS, "diabetes": DIABETES}


def load_bundled(name):
    """One of scikit-learn's bundled tables, its target as class names (not integer codes) or as the quantity."""
    data = BUNDLED[name](**({"scaled": False} if name == "diabetes" else {}))
    regression = not hasattr(data, "target_names")
    target = data.target.astype(float) if regression else np.asarray(data.target_names)[data.target]
    task = {"task": "regression" if regression else "classification", "task_reason": "a bundled table's own task"}
    facts = DESCRIBED.get(name)
    if facts is None:
        names = check_names(data.feature_names)
        columns = [Column(feature, label, "number", data.data[:, i].tolist())
                   for i, (feature, label) in enumerate(zip(names, data.feature_names, strict=True))]
        return Table(name.replace("_", "-"), columns, target, f"scikit-learn load_{name}, {len(target)} samples",
                     texts={"source": f"scikit-learn's {name.replace('_', ' ')} data"}, **task)
    columns = [Column(feature, label, "number", data.data[:, i].tolist(), unit, facts["allowed"])
               for i, (feature, label, unit) in enumerate(facts["features"])]
    return Table(name, columns, target, facts["source"], class_labels=facts.get("class_labels", {}),
                 texts=facts["texts"], target_name=facts["target"][0], target_label=facts["target"][1], **task)
