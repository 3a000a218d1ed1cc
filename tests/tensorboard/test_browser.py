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


def open_page(browser):
    """A 1280x900 page and the list its JavaScript errors go to."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page, errors


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


class Marks(kk.callbacks.KoopmanCallback):
    """Writes events of training through KoopmanCallback.log_event: {epoch: [(kind, reason)]}."""

    def __init__(self, monitor, marks):
        super().__init__(monitor)
        self.marks = marks

    def decide(self, epoch, logs):
        for kind, reason in self.marks.get(epoch, []):
            self.log_event(kind, reason)


FIT_EVENTS = {4: [("restart", "Epoch 5: divergence: |λ| > 1 <b>bold?</b>")],
              7: [("jump_kept", "Epoch 8: jump of epoch 7, horizon 10: kept"),
                  ("pruning", "epoch 7: sparsity 0.500 (koopman)")]}
GAP_RANKS = [3, 1, 3, 3, 1, 3]  # run "gaps": steps 0-5 with these many eigenvalues


def write_gaps(logdir):
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        for step, rank in enumerate(GAP_RANKS):
            kk.tensorboard.spectrum("koopman/g", 0.9 * np.exp(1j * np.linspace(0, 1, rank)),
                                    step=step)
    writer.close()


def write_subrun_event(logdir):
    """An event in a subdirectory of the run (where UpdateKoopmanPruning writes)."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        kk.tensorboard.event("pruning", "epoch 7: sparsity 0.800 (magnitude)", step=7)
    writer.close()


def train_with_monitor(logdir):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(128, 6)).astype("float32")
    y = np.tanh(x @ np.random.default_rng(1).normal(size=(6, 3))).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh",
                                                                    name="hidden"),
                              keras.layers.Dense(3, name="out")])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    monitor = kk.callbacks.KoopmanMonitor(window=6, log_dir=str(logdir))
    model.fit(x, y, epochs=10, batch_size=32, verbose=0,
              callbacks=[monitor, Marks(monitor, FIT_EVENTS)])
    return monitor


@pytest.fixture(scope="module")
def tensorboard_server(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logs")
    monitor = train_with_monitor(logdir / "fit")
    hostile = kk.callbacks.KoopmanMonitor(window=4, log_dir=str(logdir / HOSTILE))
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="dense")])
    model.compile("sgd", "mse")
    model.fit(np.ones((8, 2)), np.ones((8, 1)), epochs=5, verbose=0,
              callbacks=[hostile, Marks(hostile, {3: [("restart", HOSTILE)],
                                                  4: [(HOSTILE.replace(" ", "_").replace(
                                                      "<", "").replace(">", "").replace(
                                                      "=", "-").replace(".", "-"),
                                                      HOSTILE)]})])
    write_gaps(logdir / "gaps")
    write_subrun_event(logdir / "fit" / "pruning")
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
                if "fit" in tags and HOSTILE in tags and "gaps" in tags:
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


def open_group(browser, base, run, tag):
    """A page on the Koopman tab showing ``tag`` of ``run``: (page, its error list, frame)."""
    page, errors = open_page(browser)
    page.goto(f"{base}/#koopman")
    frame = koopman_frame(page)
    frame.select_option("#run", run)
    frame.select_option("#tag", tag)
    return page, errors, frame


def marks(frame):
    return frame.eval_on_selector_all(
        "#plane circle.eig", "els => els.map(e => [e.getAttribute('cx'), e.getAttribute('cy')])"
    )


def test_the_koopman_tab_draws_each_steps_eigenvalues(tensorboard_server, browser, tmp_path):
    base, monitor = tensorboard_server
    page, errors, frame = open_group(browser, base, "fit", "koopman/hidden")
    frame.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('steps')"
    )
    records = monitor.records("hidden")
    served = get_json(f"{base}/data/plugin/koopman/spectra?run=fit&tag=koopman/hidden")["steps"]
    assert len(served) == len(records)
    frame.wait_for_function(
        f"() => document.querySelector('#plane').dataset.step === '{served[-1]['step']}' && "
        "document.querySelector('#tag').value === 'koopman/hidden'")

    # The newest step is selected first: one mark per eigenvalue of the newest analysis.
    newest = marks(frame)
    assert len(newest) == records[-1].rank == len(served[-1]["eigenvalues"]) > 0
    assert frame.get_attribute("#plane", "data-step") == str(served[-1]["step"])
    assert frame.eval_on_selector_all("#moduli polyline.trace", "els => els.length") >= 1

    # Hovering a mark shows its value.
    frame.hover("#plane circle.eig")
    tip = frame.text_content("#tooltip")
    assert "|λ| =" in tip and "residual" in tip

    frame.wait_for_selector("#overview-card[data-loaded=true]")  # every group drawn too
    if records[-1].rank > 1:  # the picture shows a mode other than the one at 1
        frame.dispatch_event("#plane circle.eig[data-index='1']", "click")
        frame.wait_for_function("() => document.querySelector('#modes').dataset.index === '1'"
                                " && Number(document.querySelector('#modes').dataset.bars) > 0")
    frame.hover("#status")  # the pointer off the marks: no tooltip over the picture
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
    # Its events carry the hostile string as reason (and, made a legal kind, as kind too).
    frame.wait_for_function("() => [...document.querySelectorAll('#moduli g.event')].map("
                            "e => e.dataset.step).join() === '3,4'")
    frame.click("#moduli g.event[data-step='3']")
    assert frame.text_content("#event-detail") == f"step 3\nrestart: {HOSTILE}"
    frame.hover("#moduli g.event[data-step='4']", force=True)
    assert HOSTILE in frame.text_content("#tooltip")
    assert HOSTILE in frame.text_content("#moduli-legend") or "img" in frame.text_content(
        "#moduli-legend")
    assert frame.evaluate("() => document.querySelectorAll('img').length") == 0
    assert frame.evaluate("() => window.__pwned === undefined")
    assert page.evaluate("() => window.__pwned === undefined")
    page.close()


def moduli_state(frame):
    return frame.evaluate("""() => ({
        lines: [...document.querySelectorAll('#moduli polyline.trace')].map(
            e => [e.dataset.k, e.getAttribute('points').split(' ').length]),
        dots: [...document.querySelectorAll('#moduli circle.gap-dot')].map(e => e.dataset.k),
        legend: document.querySelector('#moduli-legend').textContent,
        label: (document.querySelector('#now-label') || {}).textContent,
        events: [...document.querySelectorAll('#moduli g.event')].map(e => e.dataset.step),
    })""")


def test_the_moduli_plot_has_a_legend_a_labelled_cursor_and_gaps(tensorboard_server, browser):
    base, _ = tensorboard_server
    page, errors = open_page(browser)
    page.goto(f"{base}/#koopman")
    frame = koopman_frame(page)
    frame.select_option("#run", "gaps")
    frame.wait_for_function("() => document.querySelector('#plane').dataset.step === '5' && "
                            "document.querySelector('#plane').dataset.count === '3'")
    state = moduli_state(frame)
    # |λ1| at every step: one line of 6 points. |λ2| and |λ3| are missing at steps 1 and 4:
    # a line over steps 2-3 and lone dots at 0 and 5 each, never a line across the gap.
    assert sorted(state["lines"]) == [["0", 6], ["1", 2], ["2", 2]]
    assert sorted(state["dots"]) == ["1", "1", "2", "2"]
    assert "|λ1|" in state["legend"] and "|λ3|" in state["legend"]
    assert "|λ4|" not in state["legend"]
    assert state["label"] == "step 5" and state["events"] == []
    frame.focus("#step")
    page.keyboard.press("Home")
    frame.wait_for_function("() => document.querySelector('#now-label').textContent === 'step 0'")
    assert errors == []
    page.close()


def test_events_of_training_are_marked_with_their_reasons(tensorboard_server, browser):
    base, _ = tensorboard_server
    page, errors = open_page(browser)
    deadline = time.time() + 30
    while len(get_json(f"{base}/data/plugin/koopman/events?run=fit")["events"]) < 4:
        assert time.time() < deadline, "TensorBoard did not load fit/pruning"
        time.sleep(0.5)
    page.goto(f"{base}/#koopman")
    frame = koopman_frame(page)
    frame.select_option("#run", "fit")
    frame.wait_for_function("() => [...document.querySelectorAll('#moduli g.event')].map("
                            "e => e.dataset.step).join() === '4,7'")
    served = get_json(f"{base}/data/plugin/koopman/events?run=fit")["events"]
    assert sorted((e["step"], e["kind"], e["run"]) for e in served) == [
        (4, "restart", "fit"), (7, "jump_kept", "fit"), (7, "pruning", "fit"),
        (7, "pruning", "fit/pruning")]
    state = moduli_state(frame)
    assert state["events"] == ["4", "7"]
    assert "restart" in state["legend"] and "jump kept" in state["legend"]
    assert "pruning update" in state["legend"]

    frame.hover("#moduli g.event[data-step='7']")
    tip = frame.text_content("#tooltip")
    assert "jump kept: Epoch 8: jump of epoch 7" in tip and "pruning update: epoch 7" in tip
    assert "pruning update: epoch 7: sparsity 0.800 (magnitude) (fit/pruning)" in tip

    frame.click("#moduli g.event[data-step='4']")
    detail = frame.text_content("#event-detail")
    assert detail == "step 4\nrestart: Epoch 5: divergence: |λ| > 1 <b>bold?</b>"
    assert frame.evaluate("() => document.querySelectorAll('#event-detail b').length") == 0
    spectra = get_json(f"{base}/data/plugin/koopman/spectra?run=fit&tag=koopman/hidden")
    nearest = min((s["step"] for s in spectra["steps"]), key=lambda step: abs(step - 4))
    assert frame.get_attribute("#plane", "data-step") == str(nearest)  # the click selects it
    assert errors == []
    page.close()


def test_the_overview_shows_every_group_and_a_click_opens_one(tensorboard_server, browser):
    base, monitor = tensorboard_server
    page, errors, frame = open_group(browser, base, "fit", "koopman/hidden")
    frame.wait_for_selector("#overview-card[data-loaded=true]")
    frame.focus("#step")
    page.keyboard.press("Home")
    first = str(monitor.records("hidden")[0].epoch)
    frame.wait_for_function(f"() => document.querySelector('#plane').dataset.step === '{first}'")
    tiles = frame.eval_on_selector_all(
        "#overview .kk-tile",
        "els => els.map(e => [e.dataset.tag, e.dataset.step, e.classList.contains('selected'),"
        " e.querySelectorAll('circle.eig').length])")
    by_epoch = {g: {r.epoch: r.rank for r in monitor.records(g)} for g in ("hidden", "out")}
    assert [t[0] for t in tiles] == ["koopman/hidden", "koopman/out"]
    for tag, step, selected, count in tiles:
        group = tag.split("/")[1]
        assert step == first and selected == (group == "hidden")
        assert count == by_epoch[group][int(first)] > 0

    frame.click("#overview .kk-tile[data-tag='koopman/out']")
    frame.wait_for_function("() => document.querySelector('#tag').value === 'koopman/out' && "
                            "document.querySelector('#overview .kk-tile.selected').dataset.tag"
                            " === 'koopman/out'")
    assert frame.get_attribute("#plane", "data-step") == first  # the same step, now of "out"
    assert frame.get_attribute("#plane", "data-count") == str(by_epoch["out"][int(first)])
    assert errors == []
    page.close()


def test_clicking_an_eigenvalue_shows_its_mode_across_the_layers_units(tensorboard_server,
                                                                       browser):
    base, monitor = tensorboard_server
    page, errors, frame = open_group(browser, base, "fit", "koopman/hidden")
    record = monitor.records("hidden")[-1]
    frame.wait_for_function(
        f"() => document.querySelector('#modes-card').dataset.step === '{record.epoch}'")
    assert frame.get_attribute("#modes", "data-index") == "0"  # the leading one at first
    index = min(record.rank, 8) - 1  # the last eigenvalue with per-unit weights
    # Dispatched, not clicked at a point: marks near 1 may overlap.
    frame.dispatch_event(f"#plane circle.eig[data-index='{index}']", "click")
    frame.wait_for_function(
        f"() => document.querySelector('#modes').dataset.index === '{index}'")
    assert frame.get_attribute(f"#plane circle.eig[data-index='{index}']", "class") == (
        "eig selected")
    bars = frame.eval_on_selector_all(
        "#modes rect.bar", "els => els.map(e => [Number(e.dataset.unit), "
        "Number(e.getAttribute('height')), e.classList.contains('top')])")
    weights = monitor.unit_weights["hidden"][index]  # of the newest analysis
    assert len(bars) == len(weights) == 8  # Dense(8): one bar per unit
    heights = np.array([height for _, height, _ in sorted(bars)])
    # Bar heights are proportional to the shares the monitor computed.
    np.testing.assert_allclose(heights / heights.max(), weights / weights.max(), atol=0.02)
    assert {unit for unit, _, top in bars if top} == set(np.argsort(-weights)[:3].tolist())
    text = frame.text_content("#modes-text")
    half = int(np.searchsorted(np.cumsum(np.sort(weights)[::-1]), 0.5 - 1e-12) + 1)
    assert f"{half} of 8 units carry half of this mode" in text
    assert f"unit {int(np.argmax(weights))} ({100 * weights.max():.0f}%)" in text

    # A step not read yet, and two clicks before its modes arrive: the bars are those of the
    # eigenvalue highlighted last.
    first = monitor.records("hidden")[0]
    frame.focus("#step")
    page.keyboard.press("Home")
    frame.wait_for_function(f"() => document.querySelector('#plane').dataset.step === "
                            f"'{first.epoch}'")
    last = min(first.rank, 8) - 1
    frame.dispatch_event("#plane circle.eig[data-index='0']", "click")
    frame.dispatch_event(f"#plane circle.eig[data-index='{last}']", "click")
    frame.wait_for_function(
        f"() => document.querySelector('#modes-card').dataset.step === '{first.epoch}' && "
        f"document.querySelector('#modes').dataset.index === '{last}'")
    served = get_json(f"{base}/data/plugin/koopman/modes?run=fit&tag=koopman/hidden&"
                      f"step={first.epoch}")["weights"][last]
    heights = np.array([h for _, h in sorted(frame.eval_on_selector_all(
        "#modes rect.bar", "els => els.map(e => [Number(e.dataset.unit), "
        "Number(e.getAttribute('height'))])"))])
    np.testing.assert_allclose(heights / heights.max(), np.array(served) / max(served),
                               atol=0.02)
    assert frame.get_attribute(f"#plane circle.eig[data-index='{last}']", "class") == (
        "eig selected")

    # Spectra written without modes (kk.tensorboard.spectrum alone, or older logs): a note.
    frame.select_option("#run", "gaps")
    frame.wait_for_function("() => document.querySelector('#modes-text').textContent"
                            ".includes('No per-unit weights at this step')")
    assert frame.get_attribute("#modes", "data-bars") == "0"
    assert errors == []
    page.close()
