"""The real stack: `docker compose up --build` with both images, reached on published loopback ports.

Skips where Docker is missing (fails instead when CI is set). Always runs `docker compose down -v` at the end.
"""

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from contextlib import contextmanager

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
from tritonclient.http.auth import BasicAuth

import train
from tabserve import repository as repositories
from tests.support import (
    FLOWERS,
    ROOT,
    free_port,
    free_ports,
    query,
    readme_curl,
    require,
    write_fruit_csv,
    write_homes_csv,
    write_penguins_csv,
)

SETOSA_QUERY = query(FLOWERS["setosa"])
UP_TIMEOUT = 900  # a first build on a fresh machine downloads scikit-learn and friends


class Stack:
    """One compose project with its own name and host ports; env and files as a user would give them."""

    def __init__(self, env=None, files=()):
        self.project = f"tabserve-test-{uuid.uuid4().hex[:8]}"
        self.api_port, self.web_port, self.grpc_port = free_ports(3)
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "API_PORT": str(self.api_port),
                    "WEB_PORT": str(self.web_port), "API_GRPC_PORT": str(self.grpc_port), **(env or {})}
        self.files = [argument for file in files for argument in ("-f", file)]

    def compose(self, *args, check=True, timeout=120):
        return subprocess.run(["docker", "compose", "-p", self.project, *self.files, *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, check=check, timeout=timeout)

    def api(self, path, headers=None):
        request = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}",
                                         headers={"Authorization": "Basic bXlfdXNlcm5hbWU6bXlfcGFzc3dvcmQ=",
                                                  **(headers or {})})
        with urllib.request.urlopen(request, timeout=10) as response:  # the compose file's demo credentials
            return json.load(response)

    def container(self, service):
        return self.compose("ps", "-a", "-q", service).stdout.strip()

    def inspect(self, service, template):
        return subprocess.run(["docker", "inspect", "-f", template, self.container(service)], capture_output=True,
                              text=True, check=True).stdout.strip()

    def web(self, path, timeout=10, headers=None):
        """(status, body) of a page of the web app on its published port."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.web_port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.read().decode()


@contextmanager
def running(stack):
    """The stack up and healthy, and down again afterwards whatever happens."""
    try:
        up = stack.compose("up", "--build", "-d", "--wait", check=False, timeout=UP_TIMEOUT)
        if up.returncode != 0:
            logs = stack.compose("logs", "--no-color", check=False).stdout[-4000:]
            pytest.fail(f"docker compose up failed:\n{up.stderr[-4000:]}\n{logs}")
        yield stack
    finally:
        stack.compose("down", "-v", check=False, timeout=300)
        # Untag this run's images; docker_engine removes the build cache the session added, at its end.
        subprocess.run(["docker", "image", "rm", f"{stack.project}-api", f"{stack.project}-web"], capture_output=True)


@pytest.fixture(scope="module")
def stack(docker_engine):
    with running(Stack()) as stack:
        yield stack


def test_readme_curl_answers_a_species(stack):
    require(shutil.which("curl"), "curl is not installed")
    result = subprocess.run(readme_curl(stack.api_port), capture_output=True, text=True, timeout=30)
    assert result.stdout.startswith("HTTP/1.1 200")
    assert re.search(r'"prediction": "(setosa|versicolor|virginica)"', result.stdout)
    assert "extrapolation" in result.stdout


def test_wrong_password_gives_401(stack):
    command = [arg.replace("my_password", "wrong") for arg in readme_curl(stack.api_port)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.stdout.startswith("HTTP/1.1 401")
    assert "application/problem+json" in result.stdout


def test_tritonclient_speaks_the_open_inference_protocol_with_the_container(stack):
    client = triton.InferenceServerClient(url=f"127.0.0.1:{stack.api_port}")
    client.register_plugin(BasicAuth("my_username", "my_password"))  # the compose file's demo credentials
    try:
        assert client.is_server_ready() and client.is_model_ready("iris-classifier")
        tensor = triton.InferInput("input-0", [2, 4], "FP32")
        tensor.set_data_from_numpy(np.array([FLOWERS["setosa"], FLOWERS["virginica"]], dtype=np.float32))
        result = client.infer("iris-classifier", [tensor])
        assert [label.decode() for label in result.as_numpy("predict")] == ["setosa", "virginica"]
        assert result.as_numpy("predict_proba").shape == (2, 3)
    finally:
        client.close()


def test_tritonclient_grpc_speaks_to_the_container_on_its_published_port(stack):
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{stack.grpc_port}") as client:
        assert client.is_server_ready()
        tensor = triton_grpc.InferInput("input-0", [2, 4], "FP64")
        tensor.set_data_from_numpy(np.array([FLOWERS["setosa"], FLOWERS["virginica"]], dtype=np.float64))
        demo = {"authorization": "Basic bXlfdXNlcm5hbWU6bXlfcGFzc3dvcmQ="}  # the compose file's demo credentials
        result = client.infer("iris-classifier", [tensor], headers=demo)
        assert [label.decode() for label in result.as_numpy("predict")] == ["setosa", "virginica"]


def test_web_page_form_and_prediction(stack):
    status, form = stack.web("/")
    assert status == 200 and '<form action="/prediction" method="get"' in form
    status, page = stack.web(f"/prediction?{SETOSA_QUERY}")
    assert status == 200 and "Iris setosa" in page


def test_the_model_is_watched_in_the_containers(stack):
    """Drift counted across the API container's workers, feedback taken, and the web's /monitoring page showing them
    to a user of the API (the demo one)."""
    time.sleep(1.5)  # the earlier tests' predictions, added to the counters by each worker once a second
    before = stack.api("/api/v1.0/monitoring")["output"]["count"]
    for _ in range(20):
        stack.api(f"/api/v1.0?{SETOSA_QUERY}")
    feedback = urllib.request.Request(f"http://127.0.0.1:{stack.api_port}/api/v1.0/feedback",
                                      data=b'{"prediction": "setosa", "truth": "setosa"}',
                                      headers={"Authorization": "Basic bXlfdXNlcm5hbWU6bXlfcGFzc3dvcmQ=",
                                               "Content-Type": "application/json"})
    with urllib.request.urlopen(feedback, timeout=10) as response:
        assert json.load(response) == {"received": 1}
    eventually(lambda: stack.api("/api/v1.0/monitoring")["output"]["count"] >= before + 20)  # flushed each second
    report = stack.api("/api/v1.0/monitoring")
    assert report["output"]["count"] == before + 20 and report["feedback"]["count"] >= 1
    status, page = stack.web("/monitoring", headers={"Authorization": "Basic bXlfdXNlcm5hbWU6bXlfcGFzc3dvcmQ="})
    assert status == 200 and "Drift by input" in page and "Live accuracy" in page
    assert stack.web("/monitoring")[0] == 401


@pytest.mark.parametrize("service", ["api", "web"])
def test_containers_are_non_root_and_read_only(stack, service):
    assert stack.compose("exec", "-T", service, "id", "-u").stdout.strip() == "10001"
    assert stack.inspect(service, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    touch = stack.compose("exec", "-T", service, "touch", "/app/written", check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr


def test_web_image_has_no_scientific_stack(stack):
    for module in ("sklearn", "numpy", "scipy"):
        result = stack.compose("exec", "-T", "web", "python", "-c", f"import {module}", check=False)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr
    assert stack.compose("exec", "-T", "api", "python", "-c", "import sklearn").returncode == 0


def test_web_survives_the_api_going_away_and_recovers(stack):
    web_started = stack.inspect("web", "{{.State.StartedAt}}")
    stack.compose("stop", "api")
    try:
        started = time.monotonic()
        status, page = stack.web(f"/prediction?{SETOSA_QUERY}")
        assert status == 503 and "The prediction service is unavailable" in page
        assert time.monotonic() - started < 5 + 1  # within API_TIMEOUT (5 s) and a margin
    finally:
        stack.compose("start", "api")
    deadline = time.monotonic() + 60
    while stack.web(f"/prediction?{SETOSA_QUERY}")[0] != 200:
        assert time.monotonic() < deadline, "the web page did not recover after the API came back"
        time.sleep(0.5)
    assert "Iris setosa" in stack.web(f"/prediction?{SETOSA_QUERY}")[1]
    assert stack.inspect("web", "{{.State.StartedAt}}") == web_started  # web was not restarted


def test_report_image_sizes(stack, capsys):
    sizes = {}
    for service in ("api", "web"):
        image = stack.inspect(service, "{{.Image}}")
        size = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", image], capture_output=True,
                              text=True, check=True).stdout.strip()
        sizes[service] = int(size) / 1e6
    with capsys.disabled():
        print(f"\nimage sizes: api {sizes['api']:.0f} MB, web {sizes['web']:.0f} MB")
    assert sizes["web"] < sizes["api"]


# --- Other models in the same images ---------------------------------------------------------------------------


def test_a_bundled_dataset_is_served_by_a_build_argument(docker_engine):
    """DATASET=wine docker compose up --build: the API image trains wine, the web page follows."""
    with running(Stack({"DATASET": "wine"})) as wine:
        description = wine.api("/api/v1.0/model")
        assert description["name"] == "wine-classifier" and len(description["features"]) == 13
        example = description["examples"]["class_1"]
        status, page = wine.web("/?" + urllib.parse.urlencode(example))
        assert status == 200 and "Wine classifier" in page and 'name="od280_od315_of_diluted_wines"' in page
        status, page = wine.web("/prediction?" + urllib.parse.urlencode(example))
        assert status == 200 and '<h1 class="answer">class_1</h1>' in page


def test_a_regressor_is_served_by_a_build_argument(docker_engine):
    """DATASET=diabetes docker compose up --build: the image trains the task's default algorithm (ridge), and the API
    and the page answer a number with its interval."""
    with running(Stack({"DATASET": "diabetes"})) as diabetes:
        description = diabetes.api("/api/v1.0/model")
        assert (description["name"], description["task"], description["algorithm"]) == (
            "diabetes-regressor", "regression", "ridge")
        example = next(iter(description["examples"].values()))
        answer = diabetes.api("/api/v1.0?" + urllib.parse.urlencode(example))
        assert answer["interval"]["low"] < answer["prediction"] < answer["interval"]["high"]
        status, page = diabetes.web("/prediction?" + urllib.parse.urlencode(example))
        assert status == 200 and '<h1 class="answer number">' in page and '<figure class="interval">' in page


OWN_MODELS = {  # a CSV, its target, the name train.py gives the model, a question to the page and its answer
    "fruit": (write_fruit_csv, "Fruit", "fruit-classifier", "weight_g=8&colour=dark+red&origin=Chile",
              '<h1 class="answer">cherry</h1>'),
    "homes": (write_homes_csv, "Price (k€)", "homes-regressor", "area_m2=100&rooms=3&district=centre",
              '<h1 class="answer number">5'),  # about 50 + 320 + 45 + 120 k€
}


@pytest.mark.parametrize("table", OWN_MODELS)
def test_a_model_of_your_own_is_served_from_a_read_only_mount(docker_engine, tmp_path, table):
    """The README's three commands: train on a CSV, start the stack with deploy/own-model.yml, ask the page; for a
    table of classes and one of a quantity alike."""
    write, target, name, question, answer = OWN_MODELS[table]
    train.main(["--csv", str(write(tmp_path / f"{table}.csv")), "--target", target, "--drop", "ID",
                "--output", str(tmp_path / f"{table}.skops")])
    tmp_path.chmod(0o755)  # the API runs as UID 10001 and reads the mounted folder
    own = Stack({"MODEL_DIR": str(tmp_path), "MODEL_FILE": f"{table}.skops"}, files=("docker-compose.yml",
                                                                                        "deploy/own-model.yml"))
    with running(own):
        assert own.api("/api/v1.0/model")["name"] == name
        status, page = own.web(f"/prediction?{question}")
        assert status == 200 and answer in page
        touch = own.compose("exec", "-T", "api", "touch", "/models/written", check=False)
        assert touch.returncode != 0 and "Read-only file system" in touch.stderr


def answered_by(stack, key=None):
    headers = {"X-Routing-Key": key} if key else None
    return stack.api(f"/api/v1.0?{SETOSA_QUERY}", headers)["model"]["version"]


def eventually(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_the_versions_walk_through_on_compose(docker_engine, tmp_path):
    """docs/running.md's walk-through: publish, start with the repository mounted, publish version 2 while it runs, a
    canary of 10 %, promote, roll back."""
    repository = tmp_path / "models"
    train.main(["--publish", str(repository)])
    repository.chmod(0o755)  # the API runs as UID 10001 and reads the mounted folder
    versions = Stack({"REPO": str(repository)}, files=("docker-compose.yml", "deploy/repository.yml"))
    with running(versions):
        assert versions.api("/api/v1.0/model")["version"] == "1"
        train.main(["--publish", str(repository), "--model", "random_forest"])
        eventually(lambda: {"version": "2", "state": "READY"}.items() <= index(versions)[-1].items())
        repositories.main(["canary", str(repository), "2", "10"])
        eventually(lambda: any(answered_by(versions, f"key-{n}") == "2" for n in range(100)))
        share = sum(answered_by(versions, f"client-{n}") == "2" for n in range(400)) / 400
        assert 0.05 <= share <= 0.15, share
        status, page = versions.web(f"/prediction?{SETOSA_QUERY}")
        assert status == 200 and "version 1" in page  # the page asks the version its form came from
        repositories.main(["promote", str(repository)])
        eventually(lambda: answered_by(versions) == "2")
        repositories.main(["rollback", str(repository)])
        eventually(lambda: answered_by(versions) == "1")
        touch = versions.compose("exec", "-T", "api", "touch", "/models/written", check=False)
        assert touch.returncode != 0 and "Read-only file system" in touch.stderr


def test_the_s3_walk_through_on_compose(docker_engine, tmp_path):
    """docs/running.md's S3 walk-through, word for word but for the ports and the keys' file: the S3 server up,
    version 1 published into it with make, the API up, version 2 published while it serves, a canary, promotion
    and rollback through the bucket."""
    credentials, s3_port = tmp_path / "credentials", free_port()
    make = {"S3": f"http://127.0.0.1:{s3_port}", "S3_CREDENTIALS": str(credentials), "REPO": "s3://models/"}
    subprocess.run(["make", "s3-credentials", f"S3_CREDENTIALS={credentials}"], cwd=ROOT, check=True,
                   capture_output=True, timeout=60)
    walk = Stack({"S3_CREDENTIALS": str(credentials), "S3_PORT": str(s3_port), "REPOSITORY_POLL": "1"},
                 files=("docker-compose.yml", "deploy/s3.yml"))

    def run_make(*words):
        arguments = [*words, *(f"{name}={value}" for name, value in make.items())]
        return subprocess.run(["make", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)

    try:
        walk.compose("up", "--build", "-d", "--wait", "s3", timeout=UP_TIMEOUT)
        run_make("publish")
        with running(walk):
            assert walk.api("/api/v1.0/model")["version"] == "1"
            run_make("publish", "MODEL=random_forest")
            eventually(lambda: {"version": "2", "state": "READY"}.items() <= index(walk)[-1].items())
            run_make("canary", "VERSION=2", "PERCENT=10")
            eventually(lambda: any(answered_by(walk, f"key-{n}") == "2" for n in range(100)))
            run_make("promote")
            eventually(lambda: answered_by(walk) == "2")
            run_make("rollback")
            eventually(lambda: answered_by(walk) == "1")
            assert walk.inspect("api", "{{.State.Health.Status}}") == "healthy"
            secrets = walk.compose("exec", "-T", "api", "printenv", check=False).stdout
            assert "AWS_SECRET_ACCESS_KEY" not in secrets  # the keys are a file, never a variable
    finally:
        walk.compose("down", "-v", check=False, timeout=300)
        subprocess.run(["docker", "image", "rm", f"{walk.project}-s3"], capture_output=True)


def index(stack):
    request = urllib.request.Request(f"http://127.0.0.1:{stack.api_port}/v2/repository/index", data=b"",
                                     headers={"Authorization": "Basic bXlfdXNlcm5hbWU6bXlfcGFzc3dvcmQ="})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


# --- A model fitted elsewhere that needs more than the lean image has ------------------------------------------


@pytest.fixture(scope="module")
def fitted_elsewhere(tmp_path_factory):
    """A folder with an XGBoost classifier (on the class codes) and a LightGBM pipeline fitted on a DataFrame,
    both adopted by train.py from the penguins table, as docs/models.md tells a user to."""
    import joblib
    import lightgbm
    import pandas as pd
    import xgboost
    from sklearn.compose import make_column_transformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import LabelEncoder, OneHotEncoder
    folder = tmp_path_factory.mktemp("fitted")
    frame = pd.read_csv(write_penguins_csv(folder / "penguins.csv"))
    numbers = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    complete = frame.dropna()
    joblib.dump(xgboost.XGBClassifier(n_estimators=20).fit(complete[numbers].to_numpy(),
                                                           LabelEncoder().fit_transform(complete["species"])),
                folder / "mine-xgb.joblib")
    frame[["species", *numbers]].to_csv(folder / "numbers.csv", index=False)
    pipeline = make_pipeline(make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["island", "sex"]),
                                                     remainder="passthrough"),
                             lightgbm.LGBMClassifier(n_estimators=20, verbose=-1))
    joblib.dump(pipeline.fit(frame.drop(columns=["species"]), frame["species"]), folder / "mine-lgbm.joblib")
    for table, mine, output in (("numbers.csv", "mine-xgb", "xgb"), ("penguins.csv", "mine-lgbm", "lgbm")):
        train.main(["--csv", str(folder / table), "--target", "species", "--fitted", str(folder / f"{mine}.joblib"),
                    "--output", str(folder / f"{output}.skops")])
    folder.chmod(0o755)  # the API runs as UID 10001 and reads the mounted folder
    return folder


def test_the_lean_image_refuses_a_model_that_needs_xgboost_in_one_line(docker_engine, fitted_elsewhere):
    own = Stack({"MODEL_DIR": str(fitted_elsewhere), "MODEL_FILE": "xgb.skops"},
                files=("docker-compose.yml", "deploy/own-model.yml"))
    try:
        run = own.compose("run", "--rm", "-T", "--no-deps", "api", check=False, timeout=UP_TIMEOUT)
        assert run.returncode == 1
        refusal = [line for line in (run.stdout + run.stderr).splitlines() if "refuses to start" in line]
        assert len(refusal) == 1 and "needs xgboost, which is not installed: pip install 'xgboost-cpu==3.2.0' (the " \
            "API image: build it with EXTRAS=1" in refusal[0], run.stdout + run.stderr
        lean = own.compose("run", "--rm", "-T", "--no-deps", "api", "python", "-c", "import pandas", check=False)
        assert lean.returncode != 0 and "No module named 'pandas'" in lean.stderr
    finally:
        own.compose("down", "-v", check=False, timeout=300)
        subprocess.run(["docker", "image", "rm", f"{own.project}-api", f"{own.project}-web"], capture_output=True)


def test_the_image_built_with_extras_serves_lightgbm_fitted_on_a_dataframe(docker_engine, fitted_elsewhere):
    own = Stack({"EXTRAS": "1", "MODEL_DIR": str(fitted_elsewhere), "MODEL_FILE": "lgbm.skops"},
                files=("docker-compose.yml", "deploy/own-model.yml"))
    with running(own):
        assert own.api("/readyz")["engine"] == "scikit-learn, a DataFrame"
        answer = own.api("/api/v1.0?island=Biscoe&bill_length_mm=47&flipper_length_mm=217&body_mass_g=5000&year=2008")
        assert answer["prediction"] == "Gentoo" and answer["features"]["bill_depth_mm"] is None
        status, page = own.web("/prediction?island=Dream&bill_length_mm=49&bill_depth_mm=18&flipper_length_mm=196"
                               "&body_mass_g=3700&sex=female&year=2008")
        assert status == 200 and '<h1 class="answer">Chinstrap</h1>' in page
