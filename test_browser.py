"""The web page in a real browser: headless Chromium (Debian's) driven by Playwright, against the real API.

Saves the screenshots the README shows under docs/images/.
"""

from pathlib import Path

import pytest

import web
from conftest import PASSWORD, USERNAME, require, serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
IMAGES = Path(__file__).resolve().parent / "docs" / "images"
SETOSA = {"sepal_length": "5.1", "sepal_width": "3.5", "petal_length": "1.4", "petal_width": "0.2"}


@pytest.fixture(scope="module")
def site(live_api):
    """The web app, served on a free loopback port, calling the real API."""
    with serve(web.create_app(live_api, USERNAME, PASSWORD)) as url:
        yield url


@pytest.fixture(scope="module")
def chromium():
    require(CHROMIUM.exists(), f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium):
    """A fresh page that records console errors (a CSP violation shows up there)."""
    context = chromium.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda message: message.type == "error" and page.console_errors.append(message.text))
    yield page
    context.close()


def fill(page, values):
    for name, value in values.items():
        page.fill(f"#{name}", value)


def test_fill_and_submit_shows_species_and_chart(page, site):
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.goto(f"{site}/")
    assert page.locator("label[for=sepal_length]").inner_text().startswith("Sepal length")
    page.screenshot(path=str(IMAGES / "form.png"), full_page=True)
    fill(page, SETOSA)
    page.click("button[type=submit]")
    page.wait_for_url("**/prediction?**")
    assert page.locator("h1").inner_text() == "Iris setosa"
    assert page.locator(".chart svg rect.fill").count() == 3
    best = page.locator(".chart li.best svg").bounding_box()
    assert best["width"] > 100 and best["height"] > 5  # the chart is drawn, not collapsed
    assert page.locator(".chart li.best .value").inner_text().endswith("%")
    page.screenshot(path=str(IMAGES / "prediction.png"), full_page=True)
    assert page.console_errors == []


def test_invalid_value_shows_the_api_message(page, site):
    page.goto(f"{site}/")
    fill(page, {**SETOSA, "petal_width": "150"})
    page.click("button[type=submit]")
    page.wait_for_url("**/prediction?**")
    assert "at most 100 cm, got 150" in page.locator("#petal_width-error").inner_text()
    assert page.input_value("#petal_width") == "150"
    page.screenshot(path=str(IMAGES / "invalid.png"), full_page=True)


def test_the_browser_leaves_validation_to_the_api(page, site):
    page.goto(f"{site}/")
    fill(page, {**SETOSA, "sepal_length": "5.15", "petal_width": "0.05"})  # finer than the data's 0.1 cm
    page.click("button[type=submit]")
    page.wait_for_url("**/prediction?**")
    assert page.locator("h1").inner_text() == "Iris setosa"
    assert "5.15 cm" in page.locator(".measured").inner_text()


def test_example_link_then_submit(page, site):
    page.goto(f"{site}/")
    page.click("text=virginica")
    assert page.input_value("#petal_length") == "5.4"
    page.click("button[type=submit]")
    assert page.locator("h1").inner_text() == "Iris virginica"


def test_usable_at_375_pixels(chromium, site):
    context = chromium.new_context(viewport={"width": 375, "height": 812}, device_scale_factor=2)
    page = context.new_page()
    for path in ("/", "/prediction?sepal_length=6.9&sepal_width=3.1&petal_length=5.4&petal_width=2.1"):
        page.goto(site + path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing forces sideways scrolling
    page.screenshot(path=str(IMAGES / "prediction-mobile.png"), full_page=True)
    context.close()


def test_focus_is_visible(page, site):
    page.goto(f"{site}/")
    page.focus("#sepal_length")
    outline = page.eval_on_selector("#sepal_length", "e => getComputedStyle(e).outlineStyle")
    page.keyboard.press("Tab")
    assert outline != "none"
