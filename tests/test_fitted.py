"""Models fitted in a notebook, as people write them, adopted with train.py --fitted and served: a pipeline that
selects its columns by name (fitted on a pandas DataFrame), LightGBM and XGBoost (their scikit-learn API; XGBoost
on the integer codes of the classes it requires), for both tasks; and the refusals, each in one line."""

import json
import subprocess
import sys

import joblib
import lightgbm
import numpy as np
import pandas as pd
import pytest
import webtest
import xgboost
from sklearn.compose import make_column_transformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import LabelEncoder, OneHotEncoder

import api
import train
from tabserve import packages
from tabserve.settings import ApiSettings, StartupError
from tests.support import PASSWORD, ROOT, USERNAME, write_penguins_csv

NUMBERS = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """The penguins CSV (holes and all) and the DataFrame a notebook would read from it."""
    path = write_penguins_csv(tmp_path_factory.mktemp("fitted") / "penguins.csv")
    return path, pd.read_csv(path)  # pandas reads NA and empty cells as NaN, as train.py does


def adopt(table, estimator, tmp_path, *args, target="species"):
    """train.py --fitted with this estimator; (card, WebTest client of the API serving it, the report)."""
    path, _ = table
    joblib.dump(estimator, tmp_path / "mine.joblib")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--csv", str(path), "--target", target,
                             "--fitted", str(tmp_path / "mine.joblib"), *args, "--output",
                             str(tmp_path / "adopted.skops")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    card = json.loads((tmp_path / "adopted.json").read_text())
    client = webtest.TestApp(api.create_app(ApiSettings(username=USERNAME, password=PASSWORD,
                                                        model_path=tmp_path / "adopted.skops")))
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    return card, client, result.stdout


def features_of(frame, target):
    return frame.drop(columns=[target])


def by_name_pipeline(model, numbers=tuple(NUMBERS), categories=("island", "sex")):
    """What a notebook writes: the columns chosen by name, holes filled, categories one-hot encoded."""
    return make_pipeline(make_column_transformer(
        (make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
         list(categories)),
        (SimpleImputer(strategy="median"), list(numbers)), remainder="passthrough"), model)


def ask(client, card, frame, target):
    """The API's answers for every row of the frame, through the batch, with null where the frame has NaN."""
    rows = [{name: (None if value != value else value) for name, value in row.items()}
            for row in features_of(frame, target).to_dict(orient="records")]
    return client.post_json("/api/v1.0/predict", {"instances": rows}).json["predictions"]


def test_a_pipeline_that_selects_its_columns_by_name_is_given_a_dataframe(table, tmp_path):
    _, frame = table
    mine = by_name_pipeline(RandomForestClassifier(random_state=0)).fit(features_of(frame, "species"),
                                                                       frame["species"])
    card, client, _ = adopt(table, mine, tmp_path)
    assert card["frame"] == {"columns": list(mine.feature_names_in_)} and "pandas" in card["requires"]
    answers = ask(client, card, frame, "species")
    expected = mine.predict_proba(features_of(frame, "species"))
    assert [a["prediction"] for a in answers] == list(mine.classes_[expected.argmax(axis=1)])
    assert np.allclose([list(a["probabilities"].values()) for a in answers], expected, atol=1e-6)
    assert client.get("/readyz").json["engine"] == "scikit-learn, a DataFrame"
    assert client.get("/api/v1.0/explain", params={"island": "Dream", "year": "2008"}).json["warnings"]


def test_lightgbm_in_a_pipeline_for_classes_and_for_a_quantity(table, tmp_path):
    _, frame = table
    classifier = by_name_pipeline(lightgbm.LGBMClassifier(n_estimators=30, verbose=-1, random_state=0)).fit(
        features_of(frame, "species"), frame["species"])
    card, client, _ = adopt(table, classifier, tmp_path)
    assert card["requires"]["lightgbm"] == {"distribution": "lightgbm", "version": lightgbm.__version__}
    answers = ask(client, card, frame, "species")
    assert np.mean([a["prediction"] for a in answers] == frame["species"].to_numpy()) > 0.95
    with_mass = frame.dropna(subset=["body_mass_g"])
    regressor = by_name_pipeline(lightgbm.LGBMRegressor(n_estimators=30, verbose=-1, random_state=0),
                                 NUMBERS[:3], ("species", "island", "sex")).fit(
        features_of(with_mass, "body_mass_g"), with_mass["body_mass_g"])
    (tmp_path / "quantity").mkdir()
    card, client, _ = adopt(table, regressor, tmp_path / "quantity", target="body_mass_g")
    answer = ask(client, card, with_mass.head(3), "body_mass_g")[0]
    assert answer["interval"]["low"] < answer["prediction"] < answer["interval"]["high"]


def test_xgboost_fitted_on_class_codes_is_served_with_the_tables_class_names(table, tmp_path):
    _, frame = table
    complete = frame.dropna()
    codes = LabelEncoder().fit_transform(complete["species"])
    mine = xgboost.XGBClassifier(n_estimators=20, random_state=0).fit(complete[NUMBERS + ["year"]].to_numpy(), codes)
    path, _ = table
    numbers_only = tmp_path / "numbers.csv"
    frame[["species", *NUMBERS, "year"]].to_csv(numbers_only, index=False)
    joblib.dump(mine, tmp_path / "xgb.joblib")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--csv", str(numbers_only), "--target",
                             "species", "--fitted", str(tmp_path / "xgb.joblib"), "--output",
                             str(tmp_path / "adopted.skops")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Classes: 0 = Adelie, 1 = Chinstrap, 2 = Gentoo" in result.stdout
    card = json.loads((tmp_path / "adopted.json").read_text())
    assert card["classes"] == ["Adelie", "Chinstrap", "Gentoo"] and card["class_codes"] == [0, 1, 2]
    assert card["requires"]["xgboost"]["version"] == xgboost.__version__
    client = webtest.TestApp(api.create_app(ApiSettings(username=USERNAME, password=PASSWORD,
                                                        model_path=tmp_path / "adopted.skops")))
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    row = complete.iloc[1]
    answer = client.get("/api/v1.0", params={name: row[name] for name in [*NUMBERS, "year"]}).json
    assert answer["prediction"] == row["species"] and set(answer["probabilities"]) == set(card["classes"])
    v2 = client.get(f"/v2/models/{card['name']}").json["outputs"][1]["parameters"]["classes"]
    assert v2 == "Adelie,Chinstrap,Gentoo"


def test_other_class_names_are_given_with_labels(table, tmp_path):
    _, frame = table
    complete = frame.dropna()
    mine = xgboost.XGBClassifier(n_estimators=5).fit(complete[NUMBERS].to_numpy(),
                                                     LabelEncoder().fit_transform(complete["species"]))
    frame[["species", *NUMBERS]].to_csv(tmp_path / "t.csv", index=False)
    joblib.dump(mine, tmp_path / "xgb.joblib")
    output = tmp_path / "out.skops"
    train.main(["--csv", str(tmp_path / "t.csv"), "--target", "species", "--fitted", str(tmp_path / "xgb.joblib"),
                "--labels", "Gentoo,Adelie,Chinstrap", "--output", str(output)])
    assert json.loads(output.with_suffix(".json").read_text())["classes"] == ["Gentoo", "Adelie", "Chinstrap"]


@pytest.mark.parametrize("change, message", [
    ({"lightgbm": {"distribution": "lightgbm", "version": "0.0.1"}}, "was fitted with lightgbm 0.0.1 but"),
    ({"xgboost": {"distribution": "xgboost-cpu", "version": "3.2.0"}, "nothing_such": {
        "distribution": "nothing-such", "version": "1.0"}}, "needs nothing_such, which is not installed: pip install "
                                                           "'nothing-such==1.0'"),
])
def test_the_api_refuses_a_model_whose_packages_are_missing_in_one_line(tmp_path, change, message):
    train.main(["--output", str(tmp_path / "iris.skops")])
    card = json.loads((tmp_path / "iris.json").read_text())
    (tmp_path / "iris.json").write_text(json.dumps({**card, "requires": change}))
    with pytest.raises(StartupError, match=message):
        api.create_app(ApiSettings(username="u", password="p", model_path=tmp_path / "iris.skops"))


def test_a_function_from_a_notebook_is_refused_by_train_py(tmp_path):
    """A FunctionTransformer of a function defined in __main__ unpickles nowhere but in that notebook (one that
    train.py could import but the API not is refused by packages.py, test below)."""
    script = f"""
import joblib
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.datasets import load_iris
def double(x):
    return 2 * x
X, y = load_iris(return_X_y=True)
names = load_iris().target_names
joblib.dump(make_pipeline(FunctionTransformer(double), LogisticRegression(max_iter=500)).fit(X, names[y]),
            {str(tmp_path / 'mine.joblib')!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    lines = ["a,b,c,d,species"] + [",".join(map(str, [*row, name])) for row, name in
                                    zip(*[np.round(np.random.default_rng(0).uniform(1, 7, (60, 4)), 1).tolist(),
                                          ["setosa", "versicolor", "virginica"] * 20], strict=True)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--csv", str(tmp_path / "t.csv"), "--target",
                             "species", "--fitted", str(tmp_path / "mine.joblib"), "--output",
                             str(tmp_path / "o.skops")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "refers to something defined where it was fitted, not in an installed package" in result.stderr


def test_a_frame_model_fitted_on_other_columns_is_refused(table, tmp_path):
    path, frame = table
    mine = by_name_pipeline(RandomForestClassifier(n_estimators=5)).fit(
        features_of(frame, "species").rename(columns={"year": "season"}), frame["species"])
    joblib.dump(mine, tmp_path / "mine.joblib")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--csv", str(path), "--target", "species",
                             "--fitted", str(tmp_path / "mine.joblib"), "--output", str(tmp_path / "o.skops")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "the table lacks season; has year too (--drop them)" in result.stderr


def test_the_default_model_needs_no_pandas_xgboost_or_lightgbm(model_path):
    """The lean API image has none of them. (Where pandas is installed, scikit-learn 1.9 imports it for every model:
    sklearn/utils/fixes.py. So the image built with EXTRAS=1 pays its import; the lean one never does.)"""
    script = ("import sys\n"
              "class NotInstalled:  # an import hook that finds none of them, as where they are not installed\n"
              "    def find_spec(self, name, path, target=None):\n"
              "        if name.split('.')[0] in ('pandas', 'xgboost', 'lightgbm'):\n"
              "            raise ModuleNotFoundError(name)\n"
              "sys.meta_path.insert(0, NotInstalled())\n"
              "import api, webtest\nfrom tabserve.settings import ApiSettings\n"
              f"app = api.create_app(ApiSettings(username='u', password='p', model_path={str(model_path)!r}))\n"
              "client = webtest.TestApp(app)\nclient.authorization = ('Basic', ('u', 'p'))\n"
              "print(client.get('/api/v1.0?sepal_length=1&sepal_width=1&petal_length=1&petal_width=1').json"
              "['prediction'])")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "setosa", result.stderr[-2000:]


def test_a_module_that_is_no_installed_package_is_refused_by_train_py(tmp_path, monkeypatch):
    """A function from a module of the user's own, importable where train.py runs but in no package the API has."""
    (tmp_path / "mylib.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mylib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import FunctionTransformer
    data = load_iris()
    mine = make_pipeline(FunctionTransformer(mylib.double), LogisticRegression(max_iter=500)).fit(
        data.data, data.target_names[data.target])
    with pytest.raises(packages.PackageError, match="needs the module 'mylib', which no installed package provides"):
        packages.needed_packages(mine, None)
