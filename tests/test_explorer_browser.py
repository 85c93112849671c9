"""The explorer page in a real headless browser (Debian's chromium driven by selenium through chromedriver): the
server on a free loopback port, a scene captioned, a word clicked (the overlay changes), a typed caption aligned,
a POPE question asked, a screenshot, then a corrupt upload whose message appears on the page.

`make test` installs chromium and chromium-driver with apt when they are missing; this test is skipped, with the
reason, only where no browser is present. EXPLORER_SCREENSHOT=docs/explorer.png also writes the screenshot there
(the README's picture)."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest

from spark_vlm.explorer.server import create_app, serve
from spark_vlm.explorer.session import RunPair

pytestmark = pytest.mark.slow  # a browser and a server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Without the background-networking flags chromium stalls on an offline machine.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1200,1000")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(explorer_runs):
    runs = explorer_runs  # conftest.py: test_explorer.build_runs, once per session
    app = create_app([RunPair(runs["stage1"], runs["stage2"]), RunPair(runs["stage1"], runs["oracle2"])])
    port = free_port()
    uvicorn_server = serve(app, port)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the explorer server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    uvicorn_server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.skip(f"no browser: {', '.join(missing)} missing (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def test_the_page_in_a_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    find = browser.find_element
    browser.get(server)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert len(browser.find_elements(By.CLASS_NAME, "pair")) == 2  # two run pairs side by side

    words_input = find(By.ID, "max-words")
    words_input.clear()
    words_input.send_keys("8")  # fewer decoding steps: a quicker test
    scene = find(By.ID, "scene")
    scene.clear()
    scene.send_keys("3")
    find(By.ID, "show-scene").click()
    words = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#words-0 .word"))
    before = find(By.ID, "overlay-0").get_attribute("src")
    words[min(1, len(words) - 1)].click()
    wait.until(lambda d: d.find_element(By.ID, "overlay-0").get_attribute("src") != before)
    assert "active" in words[min(1, len(words) - 1)].get_attribute("class")
    assert "scene 3:" in find(By.ID, "truth").text and "CHAIR" in find(By.ID, "chair-0").text
    oracle_words = browser.find_elements(By.CSS_SELECTOR, "#words-1 .word")
    if oracle_words:
        oracle_words[0].click()

    find(By.ID, "typed").send_keys("a red circle left of a blue square")
    find(By.ID, "align").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tokens-0 img"))
    find(By.ID, "ask").click()
    wait.until(lambda d: "model:" in d.find_element(By.ID, "pope-0").text)
    assert find(By.ID, "error").text == ""
    browser.save_screenshot(str(tmp_path / "explorer.png"))
    if os.environ.get("EXPLORER_SCREENSHOT"):
        browser.save_screenshot(os.environ["EXPLORER_SCREENSHOT"])

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    find(By.ID, "upload").send_keys(str(corrupt))
    wait.until(lambda d: d.find_element(By.ID, "error").text)
    assert "the uploaded file" in find(By.ID, "error").text and "Traceback" not in browser.page_source
    browser.save_screenshot(str(tmp_path / "explorer_error.png"))
