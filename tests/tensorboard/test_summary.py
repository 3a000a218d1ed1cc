"""kk.tensorboard.spectrum: the [r, 4] tensor summary, read back with TensorBoard's reader."""

import json

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import keras_koopman as kk
from keras_koopman.tensorboard import metadata


def read_tensors(logdir):
    accumulator = event_accumulator.EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


def test_spectrum_summary_round_trips_through_the_event_file(tmp_path):
    eigenvalues = np.array([1.0 + 0.0j, 0.5 + 0.25j, 0.5 - 0.25j])
    amplitudes = np.array([3.0, -1.0 + 1.0j, -1.0 - 1.0j])
    residuals = np.array([1e-3, 2e-2, 2e-2])
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        assert kk.tensorboard.spectrum("koopman/dense", eigenvalues, 4, amplitudes, residuals)
        assert kk.tensorboard.spectrum("koopman/dense", eigenvalues[:1], 5, description="*hi*")
    writer.flush()

    accumulator = read_tensors(tmp_path)
    assert accumulator.Tags()["tensors"] == ["koopman/dense"]
    events = accumulator.Tensors("koopman/dense")
    assert [e.step for e in events] == [4, 5]
    first = tf.make_ndarray(events[0].tensor_proto)
    assert first.dtype == np.float32 and first.shape == (3, 4)
    np.testing.assert_allclose(first[:, 0], eigenvalues.real)
    np.testing.assert_allclose(first[:, 1], eigenvalues.imag)
    np.testing.assert_allclose(first[:, 2], np.abs(amplitudes), rtol=1e-6)
    np.testing.assert_allclose(first[:, 3], residuals, rtol=1e-6)
    second = tf.make_ndarray(events[1].tensor_proto)
    assert second.shape == (1, 4) and np.all(np.isnan(second[:, 2:]))

    summary_metadata = accumulator.SummaryMetadata("koopman/dense")
    assert summary_metadata.plugin_data.plugin_name == "koopman"
    content = json.loads(summary_metadata.plugin_data.content)
    assert content["version"] == metadata.FORMAT_VERSION
    assert metadata.parse_plugin_metadata(summary_metadata.plugin_data.content)["version"] == 1


def test_modes_summary_sits_beside_its_spectrum_and_bins_past_max_units(tmp_path, monkeypatch):
    weights = np.array([[0.1, 0.2, 0.3, 0.4, 0.0], [0.5, 0.0, 0.0, 0.25, 0.25]])
    writer = tf.summary.create_file_writer(str(tmp_path / "full"))
    with writer.as_default():
        assert kk.tensorboard.modes("koopman/d", weights, 1, description="*d*")
    writer.close()
    monkeypatch.setattr(metadata, "MAX_UNITS", 2)  # 5 units in bins of 3: [0-2], [3-4]
    writer = tf.summary.create_file_writer(str(tmp_path / "binned"))
    with writer.as_default():
        assert kk.tensorboard.modes("koopman/d", weights, 1)
    writer.close()
    for run, expected, size in (("full", weights, 1),
                                ("binned", [[0.6, 0.4], [0.5, 0.5]], 3)):
        accumulator = read_tensors(tmp_path / run)
        assert accumulator.Tags()["tensors"] == ["koopman/d/modes"]
        (event,) = accumulator.Tensors("koopman/d/modes")
        stored = tf.make_ndarray(event.tensor_proto)
        assert stored.dtype == np.float32 and event.step == 1
        np.testing.assert_allclose(stored, expected, rtol=1e-6)
        content = accumulator.SummaryMetadata("koopman/d/modes").plugin_data.content
        assert json.loads(content) == {"version": 1, "kind": "modes", "units": 5,
                                       "unit_size": size}
        assert metadata.summary_kind(content) == metadata.MODES
    for bad in (np.ones(3), np.ones((0, 3))):
        with pytest.raises(ValueError, match="unit_weights must be"):
            kk.tensorboard.modes("koopman/d", bad, 1)


def test_spectrum_of_a_dmd_result(tmp_path):
    x = np.stack([0.9**k * np.array([1.0, 2.0, 3.0]) for k in range(6)])
    result = kk.dmd(x, rank=1)
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default(step=7):
        kk.tensorboard.spectrum(
            "koopman/model", result.eigenvalues, amplitudes=result.amplitudes,
            residuals=result.residuals,
        )
    writer.flush()
    (event,) = read_tensors(tmp_path).Tensors("koopman/model")
    value = tf.make_ndarray(event.tensor_proto)
    assert event.step == 7
    np.testing.assert_allclose(value[0, 0], 0.9, rtol=1e-6)
    np.testing.assert_allclose(value[0, 2], np.abs(result.amplitudes.numpy()[0]), rtol=1e-6)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="amplitudes"):
        kk.tensorboard.spectrum("koopman/x", [1.0, 0.5], step=0, amplitudes=[1.0])
    with pytest.raises(ValueError, match="residuals"):
        kk.tensorboard.spectrum("koopman/x", [1.0, 0.5], step=0, residuals=[1.0, 2.0, 3.0])


def test_without_a_default_writer_nothing_is_written():
    assert not bool(kk.tensorboard.spectrum("koopman/x", [1.0], step=0))


@pytest.mark.parametrize("content", [b"not json", b'{"version": 99}'])
def test_plugin_content_from_the_future_or_garbage_is_refused(content):
    with pytest.raises(ValueError):
        metadata.parse_plugin_metadata(content)


def test_event_summary_round_trips_with_its_own_plugin_content(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        assert kk.tensorboard.event("early_stop", "Epoch 4: converged; λ at 1", step=3)
    writer.flush()
    accumulator = read_tensors(tmp_path)
    assert accumulator.Tags()["tensors"] == ["koopman_events/early_stop"]
    (event,) = accumulator.Tensors("koopman_events/early_stop")
    assert event.step == 3
    assert tf.make_ndarray(event.tensor_proto).item().decode() == "Epoch 4: converged; λ at 1"
    content = accumulator.SummaryMetadata("koopman_events/early_stop").plugin_data.content
    assert metadata.summary_kind(content) == metadata.EVENT
    assert metadata.summary_kind(metadata.create_summary_metadata().plugin_data.content) == (
        metadata.SPECTRUM)
    newer = json.dumps({"version": metadata.EVENT_FORMAT_VERSION + 1, "kind": "event"})
    assert metadata.summary_kind(newer.encode()) is None
    assert metadata.summary_kind(b'{"version": 1, "kind": "modes?"}') is None
