"""The Koopman TensorBoard plugin, driven over WSGI the way TensorBoard's own plugin tests do."""

import argparse
import json
from importlib import metadata as importlib_metadata

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend import application
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from werkzeug import test as werkzeug_test

import keras_koopman as kk
from helpers import numpy_exact_modes
from keras_koopman.tensorboard import metadata
from keras_koopman.tensorboard.plugin import STORED_STEPS, KoopmanLoader, KoopmanPlugin

ROUTE = "/data/plugin/koopman"


def spectrum_at(step):
    """A made-up spectrum that changes with the step: r = 1 + step % 4 eigenvalues."""
    r = 1 + step % 4
    angles = np.linspace(0, np.pi / 2, r)
    eigenvalues = (0.5 + 0.1 * step / (1 + step)) * np.exp(1j * angles)
    return eigenvalues, np.arange(1, r + 1, dtype=float), np.full(r, 0.01 * step)


def write_run(logdir, steps, tags=("koopman/dense",), description=None):
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        for step in steps:
            for tag in tags:
                eigenvalues, amplitudes, residuals = spectrum_at(step)
                kk.tensorboard.spectrum(tag, eigenvalues, step, amplitudes, residuals,
                                        description=description)
            tf.summary.scalar("loss", 1.0 / (1 + step), step=step)  # not ours: never listed
    writer.flush()
    writer.close()


def client_for(logdir, sampling_hints=None):
    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={metadata.PLUGIN_NAME: STORED_STEPS}
    )
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    context = base_plugin.TBContext(logdir=str(logdir), data_provider=provider,
                                    sampling_hints=sampling_hints)
    plugin = KoopmanPlugin(context)
    return werkzeug_test.Client(application.TensorBoardWSGI([plugin], data_provider=provider))


@pytest.fixture
def logdir(tmp_path):
    write_run(tmp_path / "run_a", range(6), tags=("koopman/dense", "koopman/out"),
              description="weights of *dense*")
    write_run(tmp_path / "run_b", [0, 3, 9])
    return tmp_path


def test_tags_lists_every_run_and_group_with_its_newest_step(logdir):
    response = client_for(logdir).get(f"{ROUTE}/tags")
    assert response.status_code == 200
    body = response.get_json()
    for run in body.values():
        for info in run.values():
            assert info.pop("last_wall_time") > 0
    assert body == {
        "run_a": {
            "koopman/dense": {"description": "weights of *dense*", "max_step": 5},
            "koopman/out": {"description": "weights of *dense*", "max_step": 5},
        },
        "run_b": {"koopman/dense": {"description": "", "max_step": 9}},
    }


class NoReads:
    """A data provider that lists but refuses to read: what ``/tags`` may use."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        if name.startswith("read_"):
            raise AssertionError(f"/tags called {name}")
        return getattr(self._inner, name)


def test_tags_answers_from_the_listing_without_reading_a_tensor(logdir):
    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={metadata.PLUGIN_NAME: STORED_STEPS})
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    inner = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    context = base_plugin.TBContext(logdir=str(logdir), data_provider=NoReads(inner))
    client = werkzeug_test.Client(application.TensorBoardWSGI([KoopmanPlugin(context)],
                                                              data_provider=inner))
    response = client.get(f"{ROUTE}/tags")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert set(response.get_json()) == {"run_a", "run_b"}


def test_spectra_returns_every_step_with_what_was_written(logdir):
    response = client_for(logdir).get(f"{ROUTE}/spectra", query_string={"run": "run_b",
                                                                         "tag": "koopman/dense"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["run"] == "run_b" and body["tag"] == "koopman/dense"
    assert body["warnings"] == [] and body["downsampled"] is False
    assert [s["step"] for s in body["steps"]] == [0, 3, 9]
    for entry in body["steps"]:
        eigenvalues, amplitudes, residuals = spectrum_at(entry["step"])
        got = np.array(entry["eigenvalues"])
        np.testing.assert_allclose(got[:, 0] + 1j * got[:, 1], eigenvalues, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(entry["amplitudes"], amplitudes, rtol=1e-6)
        np.testing.assert_allclose(entry["residuals"], residuals, rtol=1e-6, atol=1e-9)
        assert entry["wall_time"] > 0


def test_unknown_amplitudes_and_residuals_come_back_as_null(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path / "run"))
    with writer.as_default():
        kk.tensorboard.spectrum("koopman/g", np.array([0.9, 0.5j]), step=1)
    writer.flush()
    body = client_for(tmp_path).get(f"{ROUTE}/spectra?run=run&tag=koopman/g").get_json()
    (entry,) = body["steps"]
    assert entry["amplitudes"] == [None, None] and entry["residuals"] == [None, None]
    np.testing.assert_allclose(entry["eigenvalues"], [[0.9, 0.0], [0.0, 0.5]], rtol=1e-6)


@pytest.mark.parametrize(
    "query,words",
    [
        ({}, "missing query parameter run and tag"),
        ({"run": "run_a"}, "missing query parameter tag"),
        ({"tag": "koopman/dense"}, "missing query parameter run"),
        ({"run": "nope", "tag": "koopman/dense"}, "unknown run 'nope'"),
        ({"run": "run_b", "tag": "koopman/out"}, "unknown tag 'koopman/out' in run 'run_b'"),
        ({"run": "run_a", "tag": "loss"}, "unknown tag 'loss'"),
    ],
)
def test_bad_queries_get_400_with_a_message(logdir, query, words):
    response = client_for(logdir).get(f"{ROUTE}/spectra", query_string=query)
    assert response.status_code == 400
    assert words in response.get_json()["error"]


def test_a_tensor_of_the_wrong_shape_is_skipped_with_a_warning(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path / "run"))
    with writer.as_default():
        kk.tensorboard.spectrum("koopman/g", np.array([0.5]), step=0)
        tf.summary.write("koopman/g", tf.zeros([3, 2]), step=1,
                         metadata=metadata.create_summary_metadata())
        kk.tensorboard.spectrum("koopman/g", np.array([0.7]), step=2)
    writer.flush()
    response = client_for(tmp_path).get(f"{ROUTE}/spectra?run=run&tag=koopman/g")
    assert response.status_code == 200
    body = response.get_json()
    assert [s["step"] for s in body["steps"]] == [0, 2]
    assert len(body["warnings"]) == 1 and "step 1" in body["warnings"][0]
    assert "[3, 2]" in body["warnings"][0]


def test_a_newer_summary_format_is_left_out_of_the_tags(tmp_path):
    newer = metadata.create_summary_metadata()
    newer.plugin_data.content = json.dumps({"version": metadata.FORMAT_VERSION + 1}).encode()
    writer = tf.summary.create_file_writer(str(tmp_path / "run"))
    with writer.as_default():
        tf.summary.write("koopman/future", tf.zeros([1, 4]), step=0, metadata=newer)
        kk.tensorboard.spectrum("koopman/now", np.array([0.5]), step=0)
    writer.flush()
    assert set(client_for(tmp_path).get(f"{ROUTE}/tags").get_json()["run"]) == {"koopman/now"}


def test_long_runs_are_downsampled_evenly_keeping_first_and_last(tmp_path):
    write_run(tmp_path / "run", range(40))
    client = client_for(tmp_path, sampling_hints={metadata.PLUGIN_NAME: 10})
    body = client.get(f"{ROUTE}/spectra?run=run&tag=koopman/dense").get_json()
    steps = [s["step"] for s in body["steps"]]
    assert body["downsampled"] is True and len(steps) == 10
    assert steps[0] == 0 and steps[-1] == 39 and steps == sorted(steps)
    assert max(np.diff(steps)) - min(np.diff(steps)) <= 1


def test_index_js_is_served_as_an_es_module_with_a_render_function(logdir):
    response = client_for(logdir).get(f"{ROUTE}/index.js")
    assert response.status_code == 200
    assert response.mimetype == "application/javascript"
    source = response.get_data(as_text=True)
    assert "export async function render()" in source
    assert "innerHTML" not in source  # names go in as text only
    assert "http://" not in source.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in source


def test_tensorboard_entry_page_imports_the_module(logdir):
    response = client_for(logdir).get("/data/plugin_entry.html?name=koopman")
    assert response.status_code == 200
    assert 'import("./index.js")' in response.get_data(as_text=True)


def test_plugin_metadata_for_tensorboard(logdir):
    plugin = KoopmanPlugin(base_plugin.TBContext(logdir=str(logdir)))
    assert plugin.plugin_name == "koopman"
    assert plugin.data_plugin_names() == ("koopman",)
    assert plugin.is_active() is False
    frontend = plugin.frontend_metadata()
    assert frontend.es_module_path == "/index.js" and frontend.tab_name == "Koopman"
    listing = client_for(logdir).get("/data/plugins_listing").get_json()
    assert listing["koopman"]["enabled"] is True


def test_the_loader_raises_tensorboards_sample_limit_unless_the_user_set_one():
    flags = argparse.Namespace(samples_per_plugin={})
    KoopmanLoader().fix_flags(flags)
    assert flags.samples_per_plugin == {"koopman": STORED_STEPS}
    flags = argparse.Namespace(samples_per_plugin={"koopman": 50, "scalars": 9})
    KoopmanLoader().fix_flags(flags)
    assert flags.samples_per_plugin == {"koopman": 50, "scalars": 9}
    plugin = KoopmanLoader().load(base_plugin.TBContext())
    assert isinstance(plugin, KoopmanPlugin)


def test_installed_package_registers_the_tensorboard_entry_point():
    entry_points = importlib_metadata.entry_points(group="tensorboard_plugins")
    (entry,) = [e for e in entry_points if e.name == "koopman"]
    assert entry.load() is KoopmanLoader


def test_spectra_written_by_the_monitor_during_fit_are_served(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = x @ np.ones((4, 2), "float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="hidden"),
                              keras.layers.Dense(2, name="out")])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    monitor = kk.callbacks.KoopmanMonitor(window=5, log_dir=str(tmp_path / "fit"))
    recorded = {"hidden": [], "out": []}

    def record(*_):
        for name, weights in recorded.items():
            layer = model.get_layer(name)
            weights.append(np.concatenate([layer.kernel.numpy().ravel(), layer.bias.numpy()]))

    recorder = keras.callbacks.LambdaCallback(on_train_begin=record,
                                              on_epoch_end=lambda epoch, logs: record())
    model.fit(x, y, epochs=6, batch_size=16, verbose=0, callbacks=[monitor, recorder])
    client = client_for(tmp_path)
    tags = client.get(f"{ROUTE}/tags").get_json()
    assert set(tags["fit"]) == {"koopman/hidden", "koopman/out"}
    for group in ("hidden", "out"):
        records = monitor.records(group)
        assert tags["fit"][f"koopman/{group}"]["max_step"] == records[-1].epoch
        body = client.get(f"{ROUTE}/spectra", query_string={"run": "fit",
                                                           "tag": f"koopman/{group}"}).get_json()
        assert len(body["steps"]) == len(records)
        newest = np.array(body["steps"][-1]["eigenvalues"])
        np.testing.assert_allclose(newest[:, 0] + 1j * newest[:, 1], records[-1].eigenvalues,
                                   rtol=1e-5, atol=1e-6)
        modes = client.get(f"{ROUTE}/modes", query_string={
            "run": "fit", "tag": f"koopman/{group}", "step": records[-1].epoch}).get_json()
        units = model.get_layer(group).units
        assert (modes["units"], modes["unit_size"]) == (units, 1)
        np.testing.assert_allclose(np.array(modes["weights"]), monitor.unit_weights[group],
                                   rtol=1e-5, atol=1e-7)  # the newest analysis's, read back
        assert len(modes["weights"]) == min(records[-1].rank, 8)
        # Against an independent recorder: exact DMD in NumPy of the weights after each epoch.
        window = np.array(recorded[group][-5:], np.float64)
        _, numpy_modes = numpy_exact_modes(window, records[-1].rank)
        layer = model.get_layer(group)
        power, size = np.abs(numpy_modes[:, 0]) ** 2, int(np.prod(layer.kernel.shape))
        shares = power[:size].reshape(-1, units).sum(axis=0) + power[size:]
        np.testing.assert_allclose(modes["weights"][0], shares / shares.sum(), atol=1e-3)
    assert "koopman/hidden/modes" not in tags["fit"]  # listed with the spectra it belongs to


def test_modes_of_logs_without_them_are_empty_and_bad_queries_get_400(logdir):
    client = client_for(logdir)  # spectra written without modes (as earlier versions did)
    body = client.get(f"{ROUTE}/modes?run=run_b&tag=koopman/dense&step=3").get_json()
    assert body == {"run": "run_b", "tag": "koopman/dense", "step": 3, "units": 0,
                    "unit_size": 1, "weights": []}
    for query, words in (("run=run_b&tag=koopman/dense", "missing query parameter step"),
                         ("run=run_b&tag=koopman/dense&step=x", "step must be an integer"),
                         ("run=run_b&tag=koopman/out&step=3", "unknown tag"),
                         ("run=nope&tag=koopman/dense&step=3", "unknown tag")):
        response = client.get(f"{ROUTE}/modes?{query}")
        assert response.status_code == 400 and words in response.get_json()["error"]


# ----------------------------------------------------------------------------------------------
# Events of training


def write_events(logdir, events):
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        for kind, reason, step in events:
            assert kk.tensorboard.event(kind, reason, step=step)
    writer.flush()
    writer.close()


def test_events_come_back_oldest_first_and_stay_out_of_tags_and_spectra(logdir):
    write_events(logdir / "run_a", [("restart", "Epoch 3: non-finite; redrawn", 2),
                                    ("early_stop", "Epoch 6: <b>still</b> \u03bb", 5),
                                    ("jump_kept", "kept", 1)])
    client = client_for(logdir)
    body = client.get(f"{ROUTE}/events?run=run_a").get_json()
    assert body["run"] == "run_a"
    assert [(e["kind"], e["step"], e["reason"]) for e in body["events"]] == [
        ("jump_kept", 1, "kept"), ("restart", 2, "Epoch 3: non-finite; redrawn"),
        ("early_stop", 5, "Epoch 6: <b>still</b> \u03bb")]
    assert {e["run"] for e in body["events"]} == {"run_a"}
    assert all(e["wall_time"] > 0 for e in body["events"])
    assert set(client.get(f"{ROUTE}/tags").get_json()["run_a"]) == {"koopman/dense",
                                                                    "koopman/out"}
    response = client.get(f"{ROUTE}/spectra?run=run_a&tag=koopman_events/restart")
    assert response.status_code == 400 and "unknown tag" in response.get_json()["error"]


def test_logs_without_events_give_an_empty_list_and_a_missing_run_a_400(logdir):
    client = client_for(logdir)
    assert client.get(f"{ROUTE}/events?run=run_b").get_json() == {"run": "run_b", "events": []}
    assert client.get(f"{ROUTE}/events?run=nope").get_json() == {"run": "nope", "events": []}
    response = client.get(f"{ROUTE}/events")
    assert response.status_code == 400 and "missing query parameter run" in response.get_json()[
        "error"]


def test_an_event_kind_must_be_a_plain_name():
    with pytest.raises(ValueError, match="event kind"):
        kk.tensorboard.event("a/b", "x", step=0)


def test_events_of_runs_in_subdirectories_come_with_the_run(logdir):
    # UpdateKoopmanPruning writes to <log_dir>/pruning: a run of events without spectra.
    write_events(logdir / "run_a" / "pruning", [("pruning", "epoch 3: sparsity 0.500", 3)])
    write_events(logdir / "run_ab", [("restart", "not a subdirectory of run_a", 1)])
    client = client_for(logdir)
    body = client.get(f"{ROUTE}/events?run=run_a").get_json()
    assert [(e["run"], e["kind"], e["step"]) for e in body["events"]] == [
        ("run_a/pruning", "pruning", 3)]
    assert "run_a/pruning" not in client.get(f"{ROUTE}/tags").get_json()


def test_a_monitor_without_unit_modes_writes_spectra_only(tmp_path):
    import keras

    with pytest.raises(TypeError, match="unit_modes must be True or False"):
        kk.callbacks.KoopmanMonitor(unit_modes="yes")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    monitor = kk.callbacks.KoopmanMonitor(window=4, log_dir=str(tmp_path / "fit"),
                                          unit_modes=False)
    model.fit(np.ones((16, 4)), np.zeros((16, 3)), epochs=4, verbose=0, callbacks=[monitor])
    assert monitor.history and monitor.unit_weights == {}
    client = client_for(tmp_path)
    assert list(client.get(f"{ROUTE}/tags").get_json()["fit"]) == ["koopman/dense"]
    step = monitor.history[-1].epoch
    body = client.get(f"{ROUTE}/modes?run=fit&tag=koopman/dense&step={step}").get_json()
    assert body["units"] == 0 and body["weights"] == []
