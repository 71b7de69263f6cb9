"""The upload page in a real headless Chromium, with and without JavaScript, against the live server.

Needs the Debian packages chromium and chromium-driver (never a downloaded browser); the browser
tests skip without them. UI_SCREENSHOT=path saves a screenshot of the answered page there.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import requests

from serving.images import ACCEPTED_FORMATS

from .support import colour_image

pytestmark = pytest.mark.slow  # starts servers, browsers or full-size models

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
UPLOAD_LIMIT = 300_000
NOT_AN_IMAGE = f"The uploaded file is not an image this server reads ({', '.join(ACCEPTED_FORMATS)})."


@pytest.fixture(scope="module")
def server(serve):
    return serve("--max-upload-bytes", str(UPLOAD_LIMIT))


def _chromium(profile: Path, javascript: bool = True):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(
            "needs Debian packages chromium and chromium-driver "
            f"({CHROMIUM}, {CHROMEDRIVER}): apt-get install -y chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=900,640",
    ):
        options.add_argument(flag)
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = _chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def browser_without_js(tmp_path_factory):
    driver = _chromium(tmp_path_factory.mktemp("chromium-profile-nojs"), javascript=False)
    yield driver
    driver.quit()


def _upload(driver, server, path: Path, wait_for: str):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server.url + "/")
    driver.find_element(By.ID, "image").send_keys(str(path))
    driver.find_element(By.ID, "submit").click()
    # Without JavaScript the click loads a new page: elements of the old one go stale meanwhile.
    WebDriverWait(driver, 30, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: d.find_element(By.ID, wait_for).is_displayed()
    )


def _shown_predictions(driver) -> list[tuple[str, float, float]]:
    """(label, bar value, percentage shown) per row on the page."""
    from selenium.webdriver.common.by import By

    rows = []
    for row in driver.find_elements(By.CSS_SELECTOR, "#predictions .prediction"):
        label = row.find_element(By.CLASS_NAME, "label").text
        bar = float(row.find_element(By.TAG_NAME, "progress").get_attribute("value"))
        percent = float(row.find_element(By.CLASS_NAME, "probability").text.rstrip("%"))
        rows.append((label, bar, percent))
    return rows


def _severe_console_messages(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_uploading_an_image_shows_its_predictions(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    image = tmp_path / "leaf.png"
    image.write_bytes(colour_image("green", size=(240, 160)))
    _upload(browser, server, image, wait_for="answer")

    rows = _shown_predictions(browser)
    assert [label for label, _, _ in rows][0] == "green"
    assert sorted(label for label, _, _ in rows) == ["blue", "green", "red"]
    assert rows[0][1] > 0.9 and rows[0][2] > 90
    assert browser.find_element(By.ID, "model-name").text == "colour"
    assert float(browser.find_element(By.ID, "total-ms").text) > 0
    assert not browser.find_element(By.ID, "error").is_displayed()
    thumbnail = browser.find_element(By.ID, "thumbnail")
    width = browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", thumbnail)
    assert width == 240 and thumbnail.get_attribute("src").startswith("blob:")  # app.js drew this page
    # Catches broken static files and anything the page's Content-Security-Policy blocked.
    assert _severe_console_messages(browser) == []
    browser.save_screenshot(str(tmp_path / "page.png"))
    if os.environ.get("UI_SCREENSHOT"):
        shutil.copyfile(tmp_path / "page.png", os.environ["UI_SCREENSHOT"])


def test_several_files_show_the_jobs_progress_image_by_image(browser, server, tmp_path):
    """Several files go as one job; its events fill a progress bar and a row per image."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    colours = ["red", "green", "blue", "green", "red"]
    paths = []
    for i, colour in enumerate(colours):
        path = tmp_path / f"{i}-{colour}.png"
        path.write_bytes(colour_image(colour, size=(120, 80), seed=i))
        paths.append(str(path))
    browser.get(server.url + "/")
    browser.find_element(By.ID, "image").send_keys("\n".join(paths))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "job-count").text == f"{len(colours)} / {len(colours)}"
    )
    rows = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#job-results .job-image")]
    assert rows == [f"{i}-{colour}.png: {colour}" for i, colour in enumerate(colours)]
    progress = browser.find_element(By.ID, "job-progress")
    assert progress.get_attribute("value") == progress.get_attribute("max") == str(len(colours))
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert _severe_console_messages(browser) == []


def test_a_text_file_named_jpg_gets_a_readable_error(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    fake = tmp_path / "holiday.jpg"
    fake.write_text("These are my holiday notes, not a photo.\n")
    _upload(browser, server, fake, wait_for="error")
    assert browser.find_element(By.ID, "error").text == NOT_AN_IMAGE
    assert not browser.find_element(By.ID, "answer").is_displayed()


def test_a_too_large_upload_gets_the_limit_in_words(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (UPLOAD_LIMIT + 1000))
    _upload(browser, server, big, wait_for="error")
    assert browser.find_element(By.ID, "error").text == (
        f"The upload is larger than the limit of {UPLOAD_LIMIT} bytes."
    )


def test_without_javascript_the_form_still_answers(browser_without_js, server, tmp_path):
    from selenium.webdriver.common.by import By

    image = tmp_path / "sky.png"
    image.write_bytes(colour_image("blue"))
    _upload(browser_without_js, server, image, wait_for="answer")
    assert _shown_predictions(browser_without_js)[0][0] == "blue"
    assert browser_without_js.find_element(By.ID, "model-name").text == "colour"
    thumbnail = browser_without_js.find_element(By.ID, "thumbnail")
    assert thumbnail.get_attribute("src").startswith("data:image/jpeg;base64,")  # the server drew this page

    fake = tmp_path / "notes.jpg"
    fake.write_text("not a photo")
    _upload(browser_without_js, server, fake, wait_for="error")
    assert browser_without_js.find_element(By.ID, "error").text == NOT_AN_IMAGE


# The same form post without a browser: runs where Chromium is absent too.


def test_form_post_answers_html_and_predict_stays_json(server):
    page = requests.post(server.url + "/", files={"image": ("a.png", colour_image("red"))}, timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert re.search(r'<span class="label">red</span>', page.text)
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]

    bad = requests.post(server.url + "/", files={"image": ("a.jpg", b"plain text")}, timeout=30)
    assert bad.status_code == 400 and NOT_AN_IMAGE in bad.text

    missing = requests.post(server.url + "/", data={"other": "x"}, timeout=30)
    assert missing.status_code == 400 and "Choose an image first" in missing.text

    api = server.predict(colour_image("red"), headers={"Accept": "text/html"})
    assert api.headers["Content-Type"] == "application/json" and api.json()["success"] is True


def test_the_page_loads_only_its_own_assets(server):
    page = requests.get(server.url + "/", timeout=10)
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith(("/", "data:")) for s in sources), sources  # no CDN
    for asset in ("/static/app.js", "/static/style.css"):
        assert requests.get(server.url + asset, timeout=10).status_code == 200
