"""`dalle serve` driven by a real headless Chromium: generate, download, enlarge, edit, bad input.

Skipped when Debian's ``chromium`` / ``chromium-driver`` or selenium are missing (``.ci/run``
installs them). Screenshots of every state go to ``tests/artifacts/serve/`` (git-ignored).

The README's screenshot comes from this test run with the default model::

    DALLE_SERVE_MODEL=default DALLE_SERVE_README_SHOT=docs/images/serve.png \\
        python -m pytest -q tests/serve/test_browser.py
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install -e '.[serve]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra has it)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="headless browser test needs Debian's chromium and chromium-driver "
                                       "(apt-get install -y chromium chromium-driver)")

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "serve"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,860", "--hide-scrollbars"]
PROMPTS = ["a red circle above a blue square", "an emoji of a cat face"]


@pytest.fixture(scope="module")
def url(request, tmp_path_factory):
    from serve.app import LocalServer, create_app
    from serve.model import ServedModel
    choice = os.environ.get("DALLE_SERVE_MODEL")
    if choice:
        model = ServedModel(None if choice == "default" else choice, device="cpu")
    else:
        model = ServedModel(request.getfixturevalue("tiny_bundle_dir"), device="cpu")
    with LocalServer(create_app(model)) as base:
        yield base


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    profile = tmp_path_factory.mktemp("chromium-profile")
    downloads = tmp_path_factory.mktemp("downloads")
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def done_or_failed(driver) -> bool:
    """True when the request finished; fails at once with the page's message when it failed."""
    error = driver.find_element("id", "error")
    if error.is_displayed():
        raise AssertionError(f"the page shows an error: {error.text}")
    return driver.find_element("id", "status-text").text.startswith("done")


def shot(driver, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def fill(driver, element_id: str, value) -> None:
    el = driver.find_element("id", element_id)
    el.clear()
    if value != "":
        el.send_keys(str(value))


def css(driver, selector: str):
    return driver.find_elements("css selector", selector)


def text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def downloaded(driver, name: str) -> Path:
    path = driver.downloads / name
    wait_for(lambda: path.is_file() and not list(driver.downloads.glob("*.crdownload")), 30, f"download {name}")
    return path


def test_generate_download_edit_and_bad_input_in_a_real_browser(browser, url, tmp_path):
    d = browser
    d.get(url)
    wait_for(lambda: d.find_element("tag name", "body").get_attribute("data-ready") == "1", 30, "the page")
    shot(d, "01_start")

    # --- generate: two prompts, n = 3, a random seed, then a fixed one
    fill(d, "prompts", "\n".join(PROMPTS))
    fill(d, "n", 3)
    fill(d, "guidance", 2)
    d.find_element("id", "random-seed").click()
    assert d.find_element("id", "seed").get_attribute("value").isdigit()
    fill(d, "seed", 7)
    d.find_element("id", "submit").click()
    wait_for(lambda: done_or_failed(d), 300, "generation")
    cards = css(d, "#results-generate .card.result")
    assert len(cards) == 2 * 3
    assert [h.text for h in css(d, "#results-generate .row h3")] == PROMPTS
    assert all(c.find_element("css selector", ".score").text.startswith("score ") for c in cards)
    wait_for(lambda: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
                         for img in css(d, "#results-generate img")), 30, "the images to load")
    readme_shot = shot(d, "02_generated")
    if os.environ.get("DALLE_SERVE_README_SHOT"):
        shutil.copyfile(readme_shot, os.environ["DALLE_SERVE_README_SHOT"])

    # --- click to enlarge, click to close
    cards[0].find_element("css selector", "img").click()
    assert d.find_element("id", "lightbox").is_displayed()
    assert PROMPTS[0] in text(d, "lightbox-caption")
    shot(d, "03_enlarged")
    d.find_element("id", "lightbox").click()
    assert not d.find_element("id", "lightbox").is_displayed()

    # --- download one PNG and the grid: prompt and seed are in the PNG metadata
    link = cards[4].find_element("css selector", "a.download")
    seed_title = cards[4].find_element("css selector", ".seed-label").get_attribute("title")
    link.click()
    png = Image.open(downloaded(d, link.get_attribute("download")))
    assert png.text["prompt"] == PROMPTS[1]
    assert png.text["image_seed"] in seed_title
    assert json.loads(png.text["settings"])["seed"] == 7
    css(d, "#results-generate .grid-link")[0].click()
    grid = Image.open(downloaded(d, "grid.png"))
    assert json.loads(grid.text["prompts"]) == PROMPTS

    # --- edit: upload, keep one row (overlay shown before sampling), completions beside the input
    picture = tmp_path / "picture.png"
    rows = np.zeros((48, 64, 3), np.uint8)
    rows[:24] = (220, 40, 40)
    rows[24:] = (40, 60, 220)
    Image.fromarray(rows).save(picture)
    d.find_element("id", "tab-btn-edit").click()
    d.find_element("id", "edit-file").send_keys(str(picture))
    fill(d, "edit-prompt", PROMPTS[0])
    fill(d, "keep-rows", 1)
    wait_for(lambda: d.find_element("id", "edit-preview-box").is_displayed(), 10, "the preview")
    shaded = css(d, "#edit-preview-box .overlay div")
    grid_side = d.execute_script("return info.image_grid")
    assert len(shaded) == 1
    assert abs(float(shaded[0].get_attribute("style").split("top:")[1].split("%")[0]) - 100 / grid_side) < 1e-6
    shot(d, "04_edit_preview")
    d.find_element("id", "submit").click()
    wait_for(lambda: done_or_failed(d) and css(d, "#results-edit .card.input"), 300, "the edit")
    assert len(css(d, "#results-edit .card.result")) == 3
    assert "keep 1 row" in css(d, "#results-edit .card.input .meta")[0].text
    assert not css(d, "#results-generate")[0].is_displayed()          # each tab shows its own results
    shot(d, "05_edited")

    # --- bad input: a non-image upload, an empty prompt, n = 0
    bogus = tmp_path / "notes.txt"
    bogus.write_text("this is not an image")
    d.find_element("id", "edit-file").send_keys(str(bogus))
    d.find_element("id", "submit").click()
    wait_for(lambda: d.find_element("id", "error").is_displayed(), 30, "the upload error")
    assert "not an image" in text(d, "error")
    shot(d, "06_error_not_an_image")

    d.find_element("id", "tab-btn-generate").click()
    fill(d, "prompts", "")
    d.find_element("id", "submit").click()
    wait_for(lambda: "empty prompt" in text(d, "error"), 30, "the empty-prompt error")
    shot(d, "07_error_empty_prompt")

    fill(d, "prompts", PROMPTS[0])
    fill(d, "n", 0)
    d.find_element("id", "submit").click()
    wait_for(lambda: "must be at least 1" in text(d, "error"), 30, "the n = 0 error")
    assert "Traceback" not in d.page_source
    shot(d, "08_error_n0")
