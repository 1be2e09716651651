"""The web page in a real browser: headless Chromium (Debian's) driven by Playwright, against the real API.

The README's screenshots are taken here only when SCREENSHOTS_DIR names a folder (`make screenshots` sets it to
docs/images), so a test run leaves the tree as it found it.
"""

import json
import os
import re
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

import api
import web
from tabserve.settings import ApiSettings, WebSettings
from tests.support import PASSWORD, USERNAME, auth_header, require, serve_in_thread

CHROMIUM = Path("/usr/bin/chromium")
# axe-core's rules for WCAG 2.1 levels A and AA (axe-core 4.12, shipped inside axe-playwright-python).
WCAG_21_AA = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SETOSA = {"sepal_length": "5.1", "sepal_width": "3.5", "petal_length": "1.4", "petal_width": "0.2"}


@pytest.fixture(scope="module")
def web_url(live_api):
    """The web app, served on a free loopback port, calling the real API; yields its URL."""
    settings = WebSettings(api_url=live_api, username=USERNAME, password=PASSWORD)
    with serve_in_thread(web.create_app(settings)) as url:
        yield url


@contextmanager
def web_in_front_of(api_app):
    """The web app served on a free loopback port, calling this API app served on another; yields its URL."""
    with serve_in_thread(api_app) as api_url:
        settings = WebSettings(api_url=api_url, username=USERNAME, password=PASSWORD)
        with serve_in_thread(web.create_app(settings)) as url:
            yield url


@pytest.fixture(scope="module")
def chromium():
    require(CHROMIUM.exists(), f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_tab(chromium, width=1000, **options):
    """(context, tab): a fresh browser tab that records console errors (a CSP violation shows up there)."""
    context = chromium.new_context(viewport={"width": width, "height": 900}, **options)
    tab = context.new_page()
    tab.console_errors = []
    tab.on("console", lambda message: message.type == "error" and tab.console_errors.append(message.text))
    return context, tab


@pytest.fixture
def tab(chromium):
    context, tab = new_tab(chromium)
    yield tab
    context.close()


@pytest.fixture
def screenshot(tmp_path):
    """screenshot(tab, "form.png"): into SCREENSHOTS_DIR when it is set, otherwise into a temporary folder."""
    folder = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)

    def take(tab, name):
        path = folder / name
        tab.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000  # an image, not an empty file

    return take


def axe_violations(tab):
    """axe-core's WCAG 2.1 AA violations on the page the tab shows: (rule, impact, elements)."""
    from axe_playwright_python.sync_playwright import Axe
    results = Axe().run(tab, options=WCAG_21_AA).response
    return [(v["id"], v["impact"], [node["target"] for node in v["nodes"]]) for v in results["violations"]]


def fill(tab, values):
    for name, value in values.items():
        tab.fill(f"#{name}", value)


def test_fill_and_submit_shows_species_and_chart(tab, web_url, screenshot):
    tab.goto(f"{web_url}/")
    assert tab.locator("label[for=sepal_length]").inner_text().startswith("Sepal length")
    screenshot(tab, "form.png")
    fill(tab, SETOSA)
    tab.click("button[type=submit]")
    tab.wait_for_url("**/prediction?**")
    assert tab.locator("h1").inner_text() == "Iris setosa"
    assert tab.locator(".chart svg rect.fill").count() == 3
    best = tab.locator(".chart li.best svg").bounding_box()
    assert best["width"] > 100 and best["height"] > 5  # the chart is drawn, not collapsed
    assert tab.locator(".chart li.best .value").inner_text().endswith("%")
    screenshot(tab, "prediction.png")
    assert tab.console_errors == []


def test_invalid_value_shows_the_api_message(tab, web_url, screenshot):
    tab.goto(f"{web_url}/")
    fill(tab, {**SETOSA, "petal_width": "150"})
    tab.click("button[type=submit]")
    tab.wait_for_url("**/prediction?**")
    assert "at most 100 cm, got 150" in tab.locator("#petal_width-error").inner_text()
    assert tab.input_value("#petal_width") == "150"
    screenshot(tab, "invalid.png")


def test_the_browser_leaves_validation_to_the_api(tab, web_url):
    tab.goto(f"{web_url}/")
    fill(tab, {**SETOSA, "sepal_length": "5.15", "petal_width": "0.05"})  # finer than the data's 0.1 cm
    tab.click("button[type=submit]")
    tab.wait_for_url("**/prediction?**")
    assert tab.locator("h1").inner_text() == "Iris setosa"
    assert "Sepal length 5.15 cm" in tab.locator(".why").inner_text()


def test_example_link_then_submit(tab, web_url, model_path):
    virginica = json.loads(model_path.with_suffix(".json").read_text())["examples"]["virginica"]
    tab.goto(f"{web_url}/")
    tab.click("text=virginica")
    assert float(tab.input_value("#petal_length")) == virginica["petal_length"]
    tab.click("button[type=submit]")
    assert tab.locator("h1").inner_text() == "Iris virginica"


@pytest.fixture(scope="module")
def fruit_web_url(model_files):
    """The web app in front of the API serving the CSV model with categories; yields its URL."""
    api_app = api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=model_files["fruit"]))
    with web_in_front_of(api_app) as url:
        yield url


def test_a_category_is_picked_from_a_select(tab, fruit_web_url, screenshot):
    tab.goto(f"{fruit_web_url}/")
    assert tab.locator("h1").inner_text() == "Which fruit is this?"
    assert tab.locator("#colour option").all_inner_texts() == ["Choose…", "dark red", "green", "red", "yellow"]
    tab.fill("#weight_g", "9")
    tab.select_option("#colour", "dark red")
    tab.select_option("#origin", "Chile")
    screenshot(tab, "form-categories.png")
    tab.click("button[type=submit]")
    tab.wait_for_url("**/prediction?**")
    assert tab.locator("h1").inner_text() == "cherry"
    assert set(tab.locator(".why .label").all_inner_texts()) == {"Weight (g) 9", "Colour dark red", "Origin Chile"}
    assert tab.console_errors == []


def test_a_select_left_on_its_prompt_is_refused_by_the_browser_not_sent(tab, fruit_web_url):
    tab.goto(f"{fruit_web_url}/")
    tab.fill("#weight_g", "9")
    tab.select_option("#origin", "Chile")
    tab.click("button[type=submit]")
    assert tab.url.endswith("/") and tab.eval_on_selector("#colour", "e => e.validity.valueMissing")


def test_usable_at_375_pixels(chromium, web_url, screenshot):
    context = chromium.new_context(viewport={"width": 375, "height": 812}, device_scale_factor=2)
    tab = context.new_page()
    for path in ("/", "/prediction?sepal_length=6.9&sepal_width=3.1&petal_length=5.4&petal_width=2.1"):
        tab.goto(web_url + path)
        assert tab.evaluate("document.documentElement.scrollWidth") <= 375  # nothing forces sideways scrolling
    screenshot(tab, "prediction-mobile.png")
    context.close()


def test_focus_is_visible(tab, web_url):
    tab.goto(f"{web_url}/")
    tab.focus("#sepal_length")
    outline = tab.eval_on_selector("#sepal_length", "e => getComputedStyle(e).outlineStyle")
    tab.keyboard.press("Tab")
    assert outline != "none"


PAGES = {"form": "/", "answer": "/prediction?sepal_length=5.1&sepal_width=3.5&petal_length=1.4&petal_width=0.2",
         "invalid": "/prediction?sepal_length=abc&sepal_width=3.5&petal_length=1.4&petal_width=0.2",
         "not found": "/nothing"}


@pytest.mark.parametrize("width", [1280, 375])
@pytest.mark.parametrize("page", PAGES)
def test_every_page_passes_axe_core_at_desktop_and_phone_widths(chromium, web_url, fruit_web_url, page, width):
    """The result page at 375 px had a sideways-scrolling table that a keyboard could not reach."""
    context = chromium.new_context(viewport={"width": width, "height": 800})
    tab = context.new_page()
    try:
        for base in (web_url, fruit_web_url):
            path = PAGES[page] if base == web_url else PAGES[page].replace(
                "sepal_length=5.1&sepal_width=3.5&petal_length=1.4&petal_width=0.2",
                "weight_g=9&colour=red&origin=Chile")
            tab.goto(base + path)
            assert axe_violations(tab) == [], f"{base}{path} at {width} px"
    finally:
        context.close()


def test_the_similar_rows_table_scrolls_by_keyboard_at_375_pixels(chromium, web_url):
    context = chromium.new_context(viewport={"width": 375, "height": 812})
    tab = context.new_page()
    try:
        tab.goto(web_url + PAGES["answer"])
        region = tab.locator(".table-scroll")
        assert region.get_attribute("role") == "region" and region.get_attribute("aria-labelledby") == "similar"
        assert tab.evaluate("document.querySelector('.table-scroll').scrollWidth") > 375  # it does scroll sideways
        region.focus()
        tab.keyboard.press("ArrowRight")
        assert tab.evaluate("document.activeElement.className") == "table-scroll"
        for _ in range(30):  # the browser may glide there; the page's CSP forbids wait_for_function's eval
            if tab.evaluate("document.querySelector('.table-scroll').scrollLeft") > 0:
                break
            tab.wait_for_timeout(100)
        assert tab.evaluate("document.querySelector('.table-scroll').scrollLeft") > 0
    finally:
        context.close()


@pytest.fixture(scope="module")
def diabetes_web_url(tmp_path_factory):
    """The web app in front of the API serving the diabetes regressor; yields its URL."""
    import train
    path = tmp_path_factory.mktemp("diabetes") / "diabetes.skops"
    train.main(["--dataset", "diabetes", "--output", str(path)])
    api_app = api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=path))
    with web_in_front_of(api_app) as url:
        yield url


def test_a_regressors_page_draws_the_number_and_its_interval(tab, diabetes_web_url, screenshot):
    tab.goto(f"{diabetes_web_url}/")
    assert tab.locator("h1").inner_text() == "How far will the disease progress in a year?"
    tab.locator(".examples a").nth(1).click()  # the row of typical progression
    tab.click("button[type=submit]")
    tab.wait_for_url("**/prediction?**")
    assert float(tab.locator("h1.answer").inner_text().replace(",", "")) > 0
    picture = tab.locator(".interval svg").bounding_box()
    band = tab.locator(".interval rect.band").bounding_box()
    assert picture["width"] > 300 and 10 < band["width"] < picture["width"]  # drawn, and narrower than the scale
    assert "interval" in tab.locator(".interval figcaption").inner_text()
    assert tab.locator(".why li").count() == 10 and "points" not in tab.locator(".why").inner_text()
    assert tab.console_errors == []
    screenshot(tab, "prediction-regression.png")


@pytest.mark.parametrize("width", [1280, 375])
def test_a_regressors_pages_pass_axe_core(chromium, diabetes_web_url, width):
    context = chromium.new_context(viewport={"width": width, "height": 800})
    tab = context.new_page()
    try:
        tab.goto(f"{diabetes_web_url}/")
        assert axe_violations(tab) == []
        tab.locator(".examples a").first.click()
        tab.click("button[type=submit]")
        tab.wait_for_url("**/prediction?**")
        assert axe_violations(tab) == [], f"the result page at {width} px"
        assert tab.evaluate("document.documentElement.scrollWidth") <= width
    finally:
        context.close()


@pytest.fixture(scope="module")
def penguins_web_url(tmp_path_factory):
    """The web app in front of the API serving a model trained on a table with holes; yields its URL."""
    import train
    from tests.support import write_penguins_csv
    folder = tmp_path_factory.mktemp("penguins")
    train.main(["--csv", str(write_penguins_csv(folder / "penguins.csv")), "--target", "species",
                "--output", str(folder / "penguins.skops")])
    api_app = api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=folder / "penguins.skops"))
    with web_in_front_of(api_app) as url:
        yield url


@pytest.mark.parametrize("width", [1280, 375])
def test_optional_inputs_may_be_left_empty_and_the_page_says_they_were_not_given(chromium, penguins_web_url, width):
    context = chromium.new_context(viewport={"width": width, "height": 900})
    tab = context.new_page()
    try:
        tab.goto(f"{penguins_web_url}/")
        assert "(optional)" in tab.locator("label[for=sex]").inner_text()
        assert axe_violations(tab) == []
        tab.select_option("#island", "Dream")
        fill(tab, {"bill_length_mm": "49", "flipper_length_mm": "196", "body_mass_g": "3700", "year": "2008"})
        tab.click("button[type=submit]")  # bill depth and sex left empty: the browser lets the form go
        tab.wait_for_url("**/prediction?**")
        assert tab.locator("h1").inner_text() == "Chinstrap"
        assert "sex not given" in tab.locator(".why").inner_text()
        assert "sex was not given" in tab.locator(".alert").inner_text()
        assert axe_violations(tab) == [], f"the result page at {width} px"
    finally:
        context.close()


# --- The monitoring page ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def monitoring_site(model_path):
    """An API that has seen iris's flowers twice, then once with the petal width in inches (a client's bug), and
    some feedback; the web app calling it. Yields (web URL, API client)."""
    import webtest
    from sklearn.datasets import load_iris
    app = api.create_app(ApiSettings(username=USERNAME, password=PASSWORD, model_path=model_path,
                                     drift_min_count=100))
    client = webtest.TestApp(app)
    client.authorization = ("Basic", (USERNAME, PASSWORD))
    rows = load_iris().data.tolist()
    client.post_json("/api/v1.0/predict", {"instances": rows + rows + [[a, b, c, round(d / 2.54, 2)]
                                                                      for a, b, c, d in rows]})
    client.post_json("/api/v1.0/feedback", [{"prediction": "setosa", "truth": "setosa"}] * 40 +
                     [{"prediction": "versicolor", "truth": "virginica"}] * 7 +
                     [{"prediction": "virginica", "truth": "virginica"}] * 33)
    with web_in_front_of(app) as url:
        yield url, client


def signed_in_tab(chromium, width):
    return new_tab(chromium, width, http_credentials={"username": USERNAME, "password": PASSWORD})


def test_the_monitoring_page_shows_the_apis_figures(chromium, monitoring_site, screenshot):
    url, client = monitoring_site
    context, tab = signed_in_tab(chromium, 1000)
    try:
        assert tab.goto(f"{url}/monitoring").status == 200
        report = client.get("/api/v1.0/monitoring").json
        rows = tab.locator("table.summary").first.locator("tbody tr")
        shown = {rows.nth(i).locator("th").inner_text(): (rows.nth(i).locator("td").nth(1).inner_text(),
                                                          rows.nth(i).locator("td").nth(2).inner_text())
                 for i in range(rows.count())}
        expected = {"Sepal length": report["inputs"]["sepal_length"], "Petal width": report["inputs"]["petal_width"],
                    "The model's answers": report["output"]}
        words = {"stable": "Stable", "moderate": "Moderate drift", "drifted": "Drifted"}
        for name, judged in expected.items():
            assert shown[name] == (f"{judged['psi']:.4f}", words[judged["verdict"]]), name
        assert shown["Petal width"][1] == "Drifted" and shown["Sepal length"][1] == "Stable"
        width = tab.locator("section.drift", has=tab.locator("h3", has_text="Petal width"))
        values = [re.sub(r"[ \n]+", " ", text) for text in width.locator(".bins .value").all_text_contents()]
        assert values == [f"training {100 * b['reference']:.1f}\u00a0% → live {100 * b['live']:.1f}\u00a0%"
                          for b in report["inputs"]["petal_width"]["bins"]]
        feedback = tab.locator("table.summary").nth(1).locator("tbody tr").first.locator("td").all_inner_texts()
        assert report["feedback"]["accuracy"] == 0.9125  # 73 of 80
        assert feedback[0] == f"{100 * report['feedback']['accuracy']:.1f}\u00a0%"
        assert tab.locator(".chart .value").all_inner_texts() == [f"100.0\u00a0% ({report['traffic'][version]})"
                                                                  for version in report["traffic"]]
        assert tab.console_errors == []
        screenshot(tab, "monitoring.png")
    finally:
        context.close()


def test_the_monitoring_page_asks_for_credentials_the_api_knows(monitoring_site):
    url, _ = monitoring_site
    for headers in ({}, auth_header(USERNAME, "wrong")):  # a browser asks for a name and password on this 401
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{url}/monitoring", headers=headers))
        assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"].startswith("Basic")
        assert "Sign in" in refused.value.read().decode()


@pytest.mark.parametrize("width", [1280, 375])
def test_the_monitoring_page_passes_axe_core(chromium, monitoring_site, width):
    url, _ = monitoring_site
    context, tab = signed_in_tab(chromium, width)
    try:
        for path in ("/monitoring", "/monitoring?window=3600"):
            tab.goto(f"{url}{path}")
            assert axe_violations(tab) == [], f"{path} at {width} px"
            assert tab.evaluate("document.documentElement.scrollWidth") <= width, "no sideways scrolling"
    finally:
        context.close()
