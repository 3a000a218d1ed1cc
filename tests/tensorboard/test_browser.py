"""The Koopman tab in a real TensorBoard, in headless Chromium (Debian's, driven by Playwright).

Skips only when Chromium is absent; `.ci/run` installs it, so CI always runs this.
Set KK_SCREENSHOT=path to also save the screenshot there (how docs/koopman-tab.png is made).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import keras
import numpy as np
import pytest

import keras_koopman as kk

CHROMIUM = os.environ.get("KK_CHROMIUM", "/usr/bin/chromium")
HOSTILE = "<img src=x onerror=window.__pwned=1>"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"Chromium is not installed at {CHROMIUM}"
)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def train_with_monitor(logdir):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(128, 6)).astype("float32")
    y = np.tanh(x @ np.random.default_rng(1).normal(size=(6, 3))).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh",
                                                                    name="hidden"),
                              keras.layers.Dense(3, name="out")])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    monitor = kk.callbacks.KoopmanMonitor(window=6, log_dir=str(logdir))
    model.fit(x, y, epochs=10, batch_size=32, verbose=0, callbacks=[monitor])
    return monitor


@pytest.fixture(scope="module")
def tensorboard_server(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logs")
    monitor = train_with_monitor(logdir / "fit")
    hostile = kk.callbacks.KoopmanMonitor(window=4, log_dir=str(logdir / HOSTILE))
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="dense")])
    model.compile("sgd", "mse")
    model.fit(np.ones((8, 2)), np.ones((8, 1)), epochs=5, verbose=0, callbacks=[hostile])
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
         "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    try:
        while True:
            try:
                tags = get_json(f"{base}/data/plugin/koopman/tags")
                if "fit" in tags and HOSTILE in tags:
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                output = process.stdout.read() if process.stdout else ""
                pytest.fail(f"TensorBoard did not serve the Koopman tags in time:\n{output}")
            time.sleep(0.5)
        yield base, monitor
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )
        yield browser
        browser.close()


def koopman_frame(page):
    """The plugin's iframe, once its first plot is drawn."""
    deadline = time.time() + 60
    while time.time() < deadline:
        for frame in page.frames:
            if "plugin_entry.html?name=koopman" in frame.url:
                frame.wait_for_selector(".kk-root[data-ready=true]", timeout=30_000)
                return frame
        page.wait_for_timeout(200)
    raise AssertionError(f"no Koopman iframe; frames: {[f.url for f in page.frames]}")


def marks(frame):
    return frame.eval_on_selector_all(
        "#plane circle.eig", "els => els.map(e => [e.getAttribute('cx'), e.getAttribute('cy')])"
    )


def test_the_koopman_tab_draws_each_steps_eigenvalues(tensorboard_server, browser, tmp_path):
    base, monitor = tensorboard_server
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{base}/#koopman")
    frame = koopman_frame(page)
    frame.select_option("#run", "fit")
    frame.select_option("#tag", "koopman/hidden")
    frame.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('steps')"
    )
    records = monitor.records("hidden")
    served = get_json(f"{base}/data/plugin/koopman/spectra?run=fit&tag=koopman/hidden")["steps"]
    assert len(served) == len(records)

    # The newest step is selected first: one mark per eigenvalue of the newest analysis.
    newest = marks(frame)
    assert len(newest) == records[-1].rank == len(served[-1]["eigenvalues"]) > 0
    assert frame.get_attribute("#plane", "data-step") == str(served[-1]["step"])
    assert frame.eval_on_selector_all("#moduli polyline.trace", "els => els.length") >= 1

    # Hovering a mark shows its value.
    frame.hover("#plane circle.eig")
    tip = frame.text_content("#tooltip")
    assert "|λ| =" in tip and "residual" in tip

    shot = tmp_path / "koopman-tab.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("KK_SCREENSHOT"):
        shutil.copy(shot, os.environ["KK_SCREENSHOT"])

    # Moving the slider to the first step (keyboard, as a user would) redraws the marks.
    frame.focus("#step")
    page.keyboard.press("Home")
    frame.wait_for_function(
        f"() => document.querySelector('#plane').dataset.step === '{served[0]['step']}'"
    )
    oldest = marks(frame)
    assert len(oldest) == records[0].rank == len(served[0]["eigenvalues"])
    assert oldest != newest

    assert errors == []
    page.close()


def test_a_hostile_run_name_shows_as_text_and_runs_nothing(tensorboard_server, browser):
    base, _ = tensorboard_server
    page = browser.new_page()
    page.goto(f"{base}/#koopman")
    frame = koopman_frame(page)
    options = frame.eval_on_selector_all("#run option", "els => els.map(e => e.textContent)")
    assert HOSTILE in options
    frame.select_option("#run", HOSTILE)
    frame.wait_for_function(
        "() => document.querySelector('#plane').querySelectorAll('circle.eig').length > 0"
    )
    assert frame.evaluate("() => document.querySelectorAll('img').length") == 0
    assert frame.evaluate("() => window.__pwned === undefined")
    assert page.evaluate("() => window.__pwned === undefined")
    page.close()
