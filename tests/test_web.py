"""The web page, through WebTest, against the REAL API served on a loopback port (and a few broken ones)."""

import contextlib
import json
import logging
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

import pytest

import api
import train
import web
from tabserve import forms
from tabserve.settings import ApiSettings, StartupError, read_web_settings
from tests.support import FEATURES, PASSWORD, ROOT, USERNAME, auth_header, free_port, serve_in_thread, write_fruit_csv

SETOSA = {"sepal_length": "5.1", "sepal_width": "3.5", "petal_length": "1.4", "petal_width": "0.2"}
SECRETS = (PASSWORD, auth_header()["Authorization"].split()[1])


def query(**values):
    return "&".join(f"{name}={value}" for name, value in values.items())


# --- The form --------------------------------------------------------------------------------------------------


def test_form_has_four_labelled_number_inputs(web_client):
    page = web_client.get("/")
    form = page.forms[0]
    assert form.action == "/prediction" and form.method.upper() == "GET"
    for name in FEATURES:
        field = page.html.find("input", id=name)
        assert field["type"] == "number" and field.has_attr("required") and field["step"] and field["min"]
        assert page.html.find("label", attrs={"for": name})
        hint = page.html.find(id=f"{name}-hint").text
        assert "Typically" in hint and "cm" in hint
    assert "Typically 4.3 to 7.9 cm" in page.text


def test_example_links_fill_the_form_with_the_models_typical_rows(web_client, model_path):
    examples = json.loads(model_path.with_suffix(".json").read_text())["examples"]
    page = web_client.get("/")
    links = {a.text: a["href"] for a in page.html.select(".examples a")}
    assert set(links) == {"setosa", "versicolor", "virginica"}
    for species, row in examples.items():
        filled = web_client.get(links[species]).forms[0]
        assert [float(filled[name].value) for name in FEATURES] == [row[name] for name in FEATURES]


def test_submitting_the_form_shows_a_real_prediction(web_client):
    form = web_client.get("/").forms[0]
    for name, value in SETOSA.items():
        form[name] = value
    page = form.submit()
    assert page.request.path == "/prediction"
    assert page.html.find("h1").text == "Iris setosa"
    bars = page.html.select(".chart svg rect.fill")
    assert len(bars) == 3 and max(float(bar["width"]) for bar in bars) > 90
    labels = [li.select_one(".label").text for li in page.html.select(".chart li")]
    assert labels == ["setosa", "versicolor", "virginica"]
    # Why lists each value entered, once, beside how far it moved the answer
    entered = {li.select_one(".label").text for li in page.html.select(".why li")}
    assert entered == {"Sepal length 5.1 cm", "Sepal width 3.5 cm", "Petal length 1.4 cm", "Petal width 0.2 cm"}
    assert "Model iris-classifier, version" in page.text
    back = page.html.find("a", string="Change these measurements")["href"]
    assert [web_client.get(back).forms[0][name].value for name in FEATURES] == list(SETOSA.values())


def test_extrapolation_warnings_are_shown(web_client):
    page = web_client.get("/prediction?sepal_length=1&sepal_width=1&petal_length=1&petal_width=1")
    assert "Take this answer with care" in page.text
    assert "sepal_length 1 cm lies outside the 4.3 to 7.9 cm seen in training" in page.text


@pytest.mark.parametrize("values, field, message", [
    ({**SETOSA, "sepal_length": "abc"}, "sepal_length", "must be a decimal number in cm, got 'abc'"),
    ({**SETOSA, "sepal_width": ""}, "sepal_width", "must be a decimal number in cm"),
    ({**SETOSA, "petal_length": "0"}, "petal_length", "must be greater than 0 and at most 100 cm"),
    ({**SETOSA, "petal_width": "150"}, "petal_width", "at most 100 cm, got 150"),
    ({**SETOSA, "sepal_length": "1e999"}, "sepal_length", "must be a finite number"),
    ({key: value for key, value in SETOSA.items() if key != "petal_width"}, "petal_width", "is required"),
])
def test_api_validation_messages_appear_beside_the_field(web_client, values, field, message):
    page = web_client.get(f"/prediction?{query(**values)}", status=400)
    assert message in page.html.find(id=f"{field}-error").text
    assert page.html.find(id=field)["aria-invalid"] == "true"
    form = page.forms[0]
    for name, value in values.items():
        assert form[name].value == value  # the user's values are kept


def test_a_repeated_field_is_reported_by_the_api(web_client):
    page = web_client.get(f"/prediction?{query(**SETOSA)}&petal_width=3", status=400)
    assert "was given 2 times" in page.html.find(id="petal_width-error").text


def test_a_value_cannot_inject_a_parameter_into_the_api_call(web_client):
    # Typed into the sepal-length box, "1&petal_width=9" must reach the API as one (invalid) value.
    values = {**SETOSA, "sepal_length": "1&petal_width=9"}
    page = web_client.get("/prediction?" + "&".join(f"{k}={v.replace('&', '%26').replace('=', '%3D')}"
                                                  for k, v in values.items()), status=400)
    assert "got '1&petal_width=9'" in page.html.find(id="sepal_length-error").text
    assert page.html.find(id="petal_width-error") is None


def test_a_long_query_is_not_a_crash(web_client):
    extra = "&".join(f"x{i}=1" for i in range(200))
    assert web_client.get(f"/?{extra}").status_int == 200
    assert web_client.get(f"/prediction?{query(**SETOSA)}&{extra}").html.find("h1").text == "Iris setosa"


def test_unknown_fields_from_the_browser_are_not_forwarded(web_client):
    page = web_client.get(f"/prediction?{query(**SETOSA)}&debug=1&sepal_lenght=2")
    assert page.html.find("h1").text == "Iris setosa"


def test_script_in_a_value_comes_back_escaped(web_client):
    page = web_client.get("/prediction?" + query(**{**SETOSA, "sepal_length": "<script>alert(1)</script>"}), status=400)
    assert "<script>" not in page.text
    assert "&lt;script&gt;" in page.text
    assert page.html.find("script") is None


@pytest.mark.parametrize("field", FEATURES)
@pytest.mark.parametrize("hostile", ['<script>alert(1)</script>', '" onfocus="alert(1)" x="', "' onmouseover='alert(1)",
                                     '</textarea><img src=x onerror=alert(1)>'])
def test_hostile_text_in_any_field_comes_back_inert(web_client, field, hostile):
    values = {**SETOSA, field: hostile}
    for path, status in (("/", 200), ("/prediction", 400)):
        page = web_client.get(f"{path}?{urlencode(values)}", status=status)
        assert page.html.find("script") is None and page.html.find("img") is None
        assert not [tag for tag in page.html.find_all(True) if any(a.startswith("on") for a in tag.attrs)]
        assert page.html.find("input", id=field)["value"] == hostile  # kept, as text


def test_quotes_cannot_break_out_of_an_attribute(web_client):
    page = web_client.get("/?sepal_length=%22%20autofocus%20onfocus=%22alert(1)")
    field = page.html.find("input", id="sepal_length")
    assert field["value"] == '" autofocus onfocus="alert(1)'
    assert not field.has_attr("onfocus")


# --- When the API fails ----------------------------------------------------------------------------------------


def test_api_down_gives_a_503_page_with_retry(new_web_client, closed_port_url, caplog):
    page = new_web_client(closed_port_url).get(f"/prediction?{query(**SETOSA)}", status=503)
    assert "The prediction service is unavailable" in page.text
    retry = page.html.find("a", string="Try again")["href"]
    assert retry.startswith("/prediction?") and "sepal_length=5.1" in retry
    assert "unavailable" in caplog.text


def test_wrong_credentials_give_a_502_misconfigured_page(new_web_client, live_api, caplog):
    caplog.set_level(logging.INFO)
    page = new_web_client(live_api, password="not-the-password").get(f"/prediction?{query(**SETOSA)}", status=502)
    assert "This web app is misconfigured" in page.text
    assert "refused the web app's credentials for user 'tester'" in caplog.text
    assert "not-the-password" not in caplog.text and "not-the-password" not in page.text


def test_slow_api_gives_503_within_the_timeout(new_web_client, stand_in_api):
    url = stand_in_api(delay=3.0, status=200)
    started = time.monotonic()
    page = new_web_client(url, timeout=0.5).get(f"/prediction?{query(**SETOSA)}", status=503)
    assert time.monotonic() - started < 2.0
    assert "The prediction service is unavailable" in page.text


def test_other_api_errors_give_502(new_web_client, stand_in_api, caplog):
    page = new_web_client(stand_in_api(status=500)).get(f"/prediction?{query(**SETOSA)}", status=502)
    assert "The prediction service failed" in page.text
    assert "the API answered 500" in caplog.text


def test_no_credential_in_any_page(new_web_client, live_api, closed_port_url, stand_in_api):
    pages = [
        new_web_client(live_api).get("/"),
        new_web_client(live_api).get(f"/prediction?{query(**SETOSA)}"),
        new_web_client(live_api).get("/prediction?sepal_length=x", status=400),
        new_web_client(live_api, password="wrong" + PASSWORD).get("/prediction?sepal_length=1", status=502),
        new_web_client(closed_port_url).get("/prediction?sepal_length=1", status=503),
        new_web_client(stand_in_api(status=500)).get("/prediction?sepal_length=1", status=502),
        new_web_client(live_api).get("/nowhere", status=404),
        new_web_client(live_api).get("/readyz"),
    ]
    for page in pages:
        text = page.text + str(page.headers)
        assert not any(secret in text for secret in SECRETS), page.request.path


# --- The connection to the API --------------------------------------------------------------------------------


ANSWER = json.dumps({"prediction": "setosa", "probabilities": {"setosa": 0.9, "versicolor": 0.1, "virginica": 0.0},
                     "features": {name: float(value) for name, value in SETOSA.items()}, "warnings": [],
                     "model": {"name": "stand-in", "version": "1"},
                     "contributions": {name: 0.1 for name in SETOSA}, "neighbours": []}).encode()


class KeptAliveApi(BaseHTTPRequestHandler):
    """A stand-in API that speaks HTTP/1.1, counts the connections it accepts, and may drop each one after its first
    answer without saying so (as a server does with a connection that sat idle too long)."""
    protocol_version = "HTTP/1.1"
    connections = 0
    drop_after_answer = False

    def setup(self):
        super().setup()
        type(self).connections += 1

    def do_GET(self):
        answer = self.description if self.path == "/api/v1.0/model" else ANSWER
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        self.close_connection = self.drop_after_answer

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def kept_alive_server(description, drop_after_answer=False):
    """A KeptAliveApi on a loopback port, describing its model so, as version 1; yields (URL, its handler class)."""
    handler = type("Handler", (KeptAliveApi,), {"connections": 0, "drop_after_answer": drop_after_answer,
                                                "description": json.dumps({**description, "version": "1"}).encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=[False, True], ids=["kept", "dropped"])
def kept_alive_api(request, model_path):
    with kept_alive_server(json.loads(model_path.with_suffix(".json").read_text()), request.param) as api:
        yield api


def test_the_api_is_called_over_one_kept_alive_connection_that_is_replaced_when_dropped(new_web_client,
                                                                                      kept_alive_api):
    url, handler = kept_alive_api
    client = new_web_client(url)
    for _ in range(5):
        assert client.get(f"/prediction?{query(**SETOSA)}").html.find("h1").text == "Iris setosa"
    # The form is learnt first (GET /api/v1.0/model), over the same connection when it is kept.
    assert handler.connections == (6 if handler.drop_after_answer else 1)


def test_the_models_own_words_are_shown_as_text_never_as_markup(new_web_client, model_path):
    """The pages are made of what the API describes: a label, unit or class label holding markup is escaped."""
    description = json.loads(model_path.with_suffix(".json").read_text())
    description["inputs"][0] |= {"label": "Sepal <i>length</i>", "unit": "<i>cm</i>"}
    description["class_labels"]["setosa"] = "<i>Iris</i> setosa"
    with kept_alive_server(description) as (url, _):
        client = new_web_client(url)
        form, result = client.get("/"), client.get(f"/prediction?{query(**SETOSA)}")
    assert form.html.find("label", attrs={"for": "sepal_length"}).text.split() == ["Sepal", "<i>length</i>",
                                                                                    "(<i>cm</i>)"]
    assert result.html.find("h1").text == "<i>Iris</i> setosa"
    assert "Sepal <i>length</i> 5.1 <i>cm</i>" in result.html.select_one(".why").text
    assert form.html.find("i") is None and result.html.find("i") is None


# --- Headers, static files, health -----------------------------------------------------------------------------


@pytest.mark.parametrize("path, status", [
    ("/", 200), (f"/prediction?{query(**SETOSA)}", 200), ("/prediction?sepal_length=x", 400),
    ("/static/style.css", 200), ("/nowhere", 404), ("/healthz", 200), ("/readyz", 200),
])
def test_every_response_carries_the_security_headers(web_client, path, status):
    headers = web_client.get(path, status=status).headers
    assert headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"


def test_pages_use_no_inline_script_or_style_and_nothing_external(web_client):
    for page in (web_client.get("/"), web_client.get(f"/prediction?{query(**SETOSA)}")):
        assert page.html.find("script") is None and page.html.find("style") is None
        assert not page.html.select("[style]")
        assert "http://" not in page.text and "https://" not in page.text


def test_stylesheet_is_served_with_a_cache_header(web_client):
    href = web_client.get("/").html.find("link", rel="stylesheet")["href"]
    css = web_client.get(href)
    assert css.content_type == "text/css"
    assert "max-age=" in css.headers["Cache-Control"]
    assert ":focus-visible" in css.text


@pytest.mark.parametrize("path", ["/static/../web.py", "/static/%2e%2e/web.py", "/static/..%2fweb.py",
                                  "/static//etc/passwd"])
def test_static_files_cannot_escape_their_folder(web_client, path):
    response = web_client.get(path, expect_errors=True)
    assert response.status_int in (403, 404)
    assert "import bottle" not in response.text and "root:" not in response.text


def test_error_pages_are_html_pages(web_client):
    page = web_client.get("/nowhere", status=404)
    assert page.content_type == "text/html" and "There is no page here" in page.text
    assert web_client.post("/prediction", status=405).content_type == "text/html"


def test_health_and_readiness(new_web_client, web_client, closed_port_url):
    assert web_client.get("/healthz").json == {"status": "ok"}
    assert web_client.get("/readyz").json == {"status": "ready"}
    down = new_web_client(closed_port_url).get("/readyz", status=503).json
    assert down["status"] == "not ready"


# --- Configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("environ, message", [
    ({}, "must be set"),
    ({"API_USERNAME": "u"}, "must be set"),
    ({"API_USERNAME": "u", "API_PASSWORD": "p", "API_PASSWORD_FILE": "/x"}, "not both"),
    ({"API_USERNAME": "u", "API_PASSWORD": "p", "API_TIMEOUT": "soon"}, "API_TIMEOUT must be"),
    ({"API_USERNAME": "u", "API_PASSWORD": "p", "API_TIMEOUT": "0"}, "API_TIMEOUT must be"),
    ({"API_USERNAME": "u", "API_PASSWORD": "p", "API_URL": "localhost:8000"}, "API_URL must be"),
    ({"API_USERNAME": "u", "API_PASSWORD": "p", "PORT": "x"}, "PORT must be"),
])
def test_bad_configuration_is_refused(environ, message):
    with pytest.raises(StartupError, match=message):
        read_web_settings(environ)


def test_defaults(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("pw\n")
    settings = read_web_settings({"API_USERNAME": "u", "API_PASSWORD_FILE": str(secret)})
    assert settings.password == "pw"
    assert (settings.api_url, settings.timeout, settings.port) == ("http://localhost:8000", 5.0, 5000)


def test_web_without_credentials_refuses_to_start_with_one_line():
    result = subprocess.run([sys.executable, web.__file__], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "web refuses to start" in lines[0] and "API_USERNAME" in lines[0]


def test_the_web_app_loads_no_scientific_stack():
    """The web image has no NumPy or scikit-learn: web.py and what it imports must not need them."""
    modules = ("numpy", "sklearn", "scipy", "joblib", "skops", "model_signing", "cryptography")
    code = f"import sys, web; print([m for m in {modules!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- The form follows the model the API serves -----------------------------------------------------------------


def test_the_web_app_starts_before_the_api_and_learns_the_form_when_it_answers(new_web_client, api_app,
                                                                                  monkeypatch):
    monkeypatch.setattr(forms, "FORM_RETRY_SECONDS", 0)
    port = free_port()
    client = new_web_client(f"http://127.0.0.1:{port}", timeout=1)  # nothing listens there yet: it starts anyway
    page = client.get("/", status=503)
    assert "The prediction service is unavailable" in page.text
    assert client.get("/readyz", status=503).json["status"] == "not ready"
    with serve_in_thread(api_app, port):
        page = client.get("/")
        assert page.html.find("h1").text == "Which iris is this?" and page.html.find(id="sepal_length")
        assert client.get("/readyz").json == {"status": "ready"}


class SwitchableApi:
    """A WSGI app that passes every request to the API app it holds now: a new model rolled out behind one URL."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        return self.app(environ, start_response)


def test_a_new_model_rolled_out_gets_its_own_form_at_its_first_answer(new_web_client, api_app, tmp_path):
    fruit = tmp_path / "fruit.skops"
    train.main(["--csv", str(write_fruit_csv(tmp_path / "fruit.csv")), "--target", "Fruit", "--drop", "ID",
                "--output", str(fruit)])
    switch = SwitchableApi(api_app)
    with serve_in_thread(switch) as url:
        client = new_web_client(url)
        assert client.get("/").html.find(id="sepal_length")
        switch.app = api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=fruit))
        page = client.get("/prediction?weight_g=150&colour=green&origin=Spain")
        assert page.html.find("h1").text == "apple"
        assert {li.select_one(".label").text for li in page.html.select(".why li")} == {
            "Weight (g) 150", "Colour green", "Origin Spain"}
        form = client.get("/")
        assert form.html.find("h1").text == "Which fruit is this?"
        assert form.html.find("select", id="colour") and not form.html.find(id="sepal_length")


def test_every_page_says_what_it_is_for_in_a_meta_description(web_client, new_web_client, closed_port_url):
    """Lighthouse's SEO audit scored the pages 90 for the lack of one; the words are the model card's."""
    pages = [web_client.get("/"), web_client.get(f"/prediction?{query(**SETOSA)}"),
             web_client.get("/prediction?sepal_length=abc", status=400), web_client.get("/nothing", status=404)]
    for page in pages:
        description = page.html.find("meta", attrs={"name": "description"})["content"]
        assert description == ("Iris classifier. Enter four measurements of one flower, in centimetres, and the model "
                               "names its species."), page.request.path
    before_the_model_is_known = new_web_client(closed_port_url).get("/", status=503)
    assert before_the_model_is_known.html.find("meta", attrs={"name": "description"})["content"].startswith(
        "A prediction service")
