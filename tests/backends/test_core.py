"""The core subset, on whatever Keras backend runs this process (``KERAS_BACKEND``).

(Its monitor-against-a-recorder and early-stopping cases are the suite's only copies: they
run on TensorFlow here too.)

The main suite runs it on TensorFlow; ``test_backends.py`` runs this file again in a process of
its own for JAX and for PyTorch. Everything here is checked against an independent reference:
NumPy's exact DMD, PyDMD, a recorder of the weights that reads them through Keras, analytic
answers, or the events read back with TensorBoard's own reader.
"""

import warnings

import keras
import numpy as np
import pytest
from helpers import (assert_same_spectrum, linear_system, numpy_exact_modes, phase_alignment,
                     weight_recorder)

import keras_koopman as kk
from keras_koopman import host_dmd
from keras_koopman._validation import check_window

BACKEND = keras.backend.backend()
SOLVERS = ("svd", "gram")


def as_backend(array):
    return keras.ops.convert_to_tensor(array, dtype=array.dtype.name)


def host(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor))


# ------------------------------------------------------------------------------------------
# the engine
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("method", ["exact", "rrr"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dmd_of_backend_tensors_finds_the_known_spectrum(rng, solver, method, dtype):
    values = np.array([0.95, 0.8 * np.exp(0.4j), 0.8 * np.exp(-0.4j), 0.5])
    x, _, _ = linear_system(values, n=40, m=14, rng=rng)
    result = kk.dmd(as_backend(x.astype(dtype)), rank=4, method=method, solver=solver)
    assert keras.ops.is_tensor(result.eigenvalues) and keras.ops.is_tensor(result.modes)
    assert keras.backend.standardize_dtype(result.eigenvalues.dtype) == "complex128"
    tolerance = 1e-8 if dtype == "float64" else 2e-3
    assert_same_spectrum(values, host(result.eigenvalues), tolerance)
    # The prediction continues the trajectory (the system is exactly linear).
    predicted = host(result.predict(np.arange(14)))
    np.testing.assert_allclose(predicted, x, atol=50 * tolerance * np.abs(x).max())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_gram_matrix_of_wide_snapshots_matches_numpy(rng, dtype):
    # 3 blocks of 2**13 columns and a rest (the blocked products on JAX), offset from zero
    # (the centred float32 path); NumPy's float64 product as the reference.
    from keras_koopman.portable import device as dev

    x = (rng.standard_normal((9, 3 * 2**13 + 5)) + 3.0).astype(dtype)
    wide = x.astype(np.float64)
    reference = wide @ wide.T
    if BACKEND == "tensorflow":
        from keras_koopman.dmd import snapshot_gram as gram
    else:
        gram = dev.gram
    tolerance = 1e-13 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(host(gram(as_backend(x))), reference,
                               rtol=0, atol=tolerance * np.abs(reference).max())
    values = np.array([0.97, 0.9 * np.exp(0.3j), 0.9 * np.exp(-0.3j)])
    trajectory, _, _ = linear_system(values, n=3 * 2**13 + 5, m=12, rng=rng)
    result = kk.dmd(as_backend(trajectory.astype(dtype)), rank=3, solver="gram")
    assert_same_spectrum(values, host(result.eigenvalues), 1e-8 if dtype == "float64" else 1e-3)


def test_dmd_agrees_with_numpy_and_pydmd_on_random_data(rng):
    pydmd = pytest.importorskip("pydmd")
    x = rng.standard_normal((30, 200))
    result = kk.dmd(as_backend(x), rank=5).numpy()
    reference = pydmd.DMD(svd_rank=5, exact=True)
    reference.fit(x.T)  # PyDMD is column-major
    order = assert_same_spectrum(reference.eigs, result.eigenvalues, 1e-10)
    values, modes = numpy_exact_modes(x, 5)
    assert_same_spectrum(values, result.eigenvalues, 1e-10)
    np.testing.assert_allclose(phase_alignment(reference.modes, result.modes[:, order]), 1.0,
                               atol=1e-10)
    ours = result.modes[:, order] * result.amplitudes[order]
    theirs = reference.modes * reference.amplitudes
    np.testing.assert_allclose(ours, theirs, atol=1e-9 * np.abs(theirs).max())
    assert result.rank == 5 and np.all(np.diff(result.singular_values) <= 0)


def test_dmd_bad_input_gives_clear_errors():
    good = np.ones((4, 3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        kk.dmd(as_backend(np.array([[1.0, np.nan], [0.5, 0.2], [0.2, 0.1]])))
    with pytest.raises(ValueError, match="2-D and time-major"):
        kk.dmd(as_backend(np.ones(5)))
    with pytest.raises(ValueError, match="at least 2 time steps"):
        kk.dmd(as_backend(np.ones((1, 3))))
    with pytest.raises(TypeError, match="real numbers"):
        kk.dmd(np.ones((4, 3)) * 1j)
    with pytest.raises(TypeError, match="rank"):
        kk.dmd(good, rank="three")
    with pytest.raises(ValueError, match="method"):
        kk.dmd(good, method="fast")
    with pytest.raises(ValueError, match="all zero"):
        kk.dmd(np.zeros((4, 3)))


def test_dmd_refuses_more_snapshots_than_its_gram_matrix_can_hold():
    # PyDMD's [n features, m snapshots] layout passed as it is: 20,000 "time steps" would need
    # a 3 GB [m, m] Gram matrix (JAX aborts the process when that allocation fails).
    pydmd_layout = as_backend(np.zeros((20_000, 16), np.float32))
    with pytest.raises(ValueError, match=r"snapshots has 20,000 time steps.*at most 16,384.*"
                                         r"PyDMD's \[n, m\] layout\), pass the transpose"):
        kk.dmd(pydmd_layout)
    with pytest.raises(ValueError, match="at most 16,384"):
        kk.dmd_batch(np.zeros((1, 16_385, 2), np.float32))
    host_dmd.check_snapshot_shape((16_384, 10))  # the bound itself passes (shape check only)
    with pytest.raises(ValueError, match="transpose") as wide:
        host_dmd.check_snapshot_shape((16_385, 10))
    with pytest.raises(ValueError, match="at most 16,384") as square:
        host_dmd.check_snapshot_shape((16_385, 20_000))  # more features: no transpose hint
    assert "transpose" not in str(square.value) and "(16385, 10)" in str(wide.value)
    for make in (lambda: kk.SnapshotBuffer(n_features=3, window=16_385),
                 lambda: kk.callbacks.KoopmanMonitor(window=16_385)):
        with pytest.raises(ValueError, match="window must be at most 16,384"):
            make()
    assert check_window(16_384, 2) == 16_384  # (a buffer that wide holds a 2 GiB Gram matrix)


def test_growth_rates_and_frequencies_are_analytic():
    angle, radius, dt = 0.3, 0.9, 0.5
    rotation = radius * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    x = [np.array([1.0, 0.0])]
    for _ in range(9):
        x.append(rotation @ x[-1])
    result = kk.dmd(as_backend(np.stack(x)), rank=2, dt=dt)
    np.testing.assert_allclose(np.sort(host(result.frequencies)),
                               [-angle / (2 * np.pi * dt), angle / (2 * np.pi * dt)], rtol=1e-9)
    np.testing.assert_allclose(host(result.growth_rates), np.log(radius) / dt, rtol=1e-9)


# ------------------------------------------------------------------------------------------
# the buffer
@pytest.mark.parametrize("n", [50, 3 * 8192 + 77])  # JAX's blocked Gram: no block, 3 and a rest
def test_snapshot_buffer_of_backend_tensors_matches_numpy(rng, n):
    x = rng.standard_normal((12, n)).cumsum(axis=0).astype(np.float32)
    buffer = kk.SnapshotBuffer(n_features=n, window=6)
    for row in x[:11]:
        buffer.append(as_backend(row))
    assert buffer.count == 11 and len(buffer) == 6
    kept = x[5:11]
    # (TensorFlow's buffer stores them relative to the first: equal up to one rounding.)
    np.testing.assert_allclose(host(buffer.snapshots()), kept, rtol=1e-6, atol=1e-6)
    wide = kept.astype(np.float64)
    np.testing.assert_allclose(host(buffer.gram()), wide @ wide.T, rtol=1e-6)  # every row new
    buffer.append(as_backend(x[11]))  # then one new row
    wide = x[6:].astype(np.float64)
    np.testing.assert_allclose(host(buffer.gram()), wide @ wide.T, rtol=1e-6)
    kept = x[6:]
    result = buffer.dmd(rank=3)
    values, modes = numpy_exact_modes(kept.astype(np.float64), 3)
    assert_same_spectrum(values, host(result.eigenvalues), 1e-3)
    np.testing.assert_allclose(np.linalg.norm(host(result.modes), axis=0), 1.0, rtol=1e-9)


def test_snapshot_buffer_refuses_bad_snapshots_and_keeps_its_contents():
    buffer = kk.SnapshotBuffer(n_features=3, window=4)
    buffer.append(np.array([1.0, 2.0, 3.0], np.float32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        buffer.append(np.array([1.0, np.nan, 3.0], np.float32))
    with pytest.raises(ValueError, match=r"shape \[n_features\] = \[3\]"):
        buffer.append(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="at least 2 snapshots"):
        buffer.dmd()
    assert buffer.count == 1
    np.testing.assert_array_equal(host(buffer.snapshots()), [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="window"):
        kk.SnapshotBuffer(n_features=3, window=1)


def dense_sketch(n, k, density=None, seed=0):
    """The ``[k, n]`` matrix of the sketch a buffer draws for these arguments, built from its
    sampled indices, rows and signs with NumPy."""
    from keras_koopman._sketch import make_sketch

    sketch = make_sketch(n, k, density, seed)
    matrix = np.zeros((k, n))
    np.add.at(matrix, (sketch.rows, sketch.indices), sketch.signs * sketch.scale)
    return matrix


@pytest.mark.parametrize("dtype,tolerance", [("float64", 1e-8), ("float32", 2e-3)])
def test_a_sketched_buffer_stores_the_sketch_and_keeps_the_eigenvalues(dtype, tolerance):
    n, k = 50_000, 128
    rng = np.random.default_rng(0)
    modes = rng.standard_normal((n, 4))
    x = (np.array([1.0, 0.9, 0.7, 0.5])[None] ** np.arange(10)[:, None]) @ modes.T
    buffer = kk.SnapshotBuffer(n, 10, dtype=dtype, sketch=k)
    for row in x:
        buffer.append(as_backend(row.astype(dtype)))
    assert buffer.sketch == k and not buffer.has_modes
    expected = x @ dense_sketch(n, k).T  # the same map on every backend, from the same seed
    scale = np.abs(expected).max()
    np.testing.assert_allclose(host(buffer.snapshots()), expected, rtol=0,
                               atol=scale * (1e-12 if dtype == "float64" else 1e-6))
    eigenvalues = np.sort_complex(host(buffer.dmd(rank=4, modes=False).eigenvalues))
    np.testing.assert_allclose(eigenvalues, [0.5, 0.7, 0.9, 1.0], atol=tolerance)
    assert buffer.nbytes < n * 10 * 8 / 5  # the sketch, not the vectors
    with pytest.raises(ValueError, match="sketched"):
        buffer.dmd(rank=4)
    with pytest.raises(ValueError, match="sketch must be smaller"):
        kk.SnapshotBuffer(10, 4, sketch=10)


def test_bfloat16_storage_keeps_the_motion_from_the_first_snapshot_in_half_the_memory():
    import ml_dtypes

    rng = np.random.default_rng(0)
    modes = rng.standard_normal((3_000, 4))
    x = 1.0 + 0.1 * (np.array([1.0, 0.9, 0.7, 0.5])[None] ** np.arange(8)[:, None]) @ modes.T
    x = x.astype(np.float32)
    full = kk.SnapshotBuffer(3_000, 8)
    half = kk.SnapshotBuffer(3_000, 8, storage_dtype="bfloat16")
    for row in x:
        full.append(as_backend(row))
        half.append(as_backend(row))
    assert keras.backend.standardize_dtype(half.storage_dtype) == "bfloat16"
    assert half.nbytes < 0.65 * full.nbytes
    # What it stores: the differences from the first snapshot rounded to bfloat16 (ml_dtypes,
    # not the backend), plus that first snapshot in float32.
    stored = (x - x[0]).astype(ml_dtypes.bfloat16).astype(np.float64) + x[0]
    np.testing.assert_allclose(host(half.snapshots()), stored, rtol=0, atol=1e-6)
    np.testing.assert_allclose(host(half.gram()), stored @ stored.T, rtol=1e-6)
    assert np.max(np.abs(stored - x)) < 2**-8 * np.max(np.abs(x - x[0]))
    result = half.dmd(rank=4)
    np.testing.assert_allclose(np.sort_complex(host(result.eigenvalues)), [0.5, 0.7, 0.9, 1.0],
                               atol=0.02)
    assert tuple(result.modes.shape) == (3_000, 4)
    half.reset()  # the next snapshot is the new reference
    half.append(as_backend(x[3]))
    half.append(as_backend(x[5]))
    again = (x[[3, 5]] - x[3]).astype(ml_dtypes.bfloat16).astype(np.float64) + x[3]
    np.testing.assert_allclose(host(half.snapshots()), again, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="storage_dtype"):
        kk.SnapshotBuffer(10, 4, storage_dtype="float16")


# ------------------------------------------------------------------------------------------
# the monitor inside fit
def make_data(seed=0, samples=64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, 6)).astype(np.float32)
    y = (x @ rng.standard_normal((6, 2)) + 0.1).astype(np.float32)
    return x, y


def make_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6,)),
                              keras.layers.Dense(5, activation="tanh", name="hidden"),
                              keras.layers.Dense(2, name="out")])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def test_monitor_records_match_an_independent_dmd_of_the_weights():
    x, y = make_data()
    model = make_model()
    monitor = kk.callbacks.KoopmanMonitor(window=6, rank=3)
    recorder = weight_recorder(["hidden", "out"])
    model.fit(x, y, epochs=9, batch_size=16, verbose=0, callbacks=[monitor, recorder])
    assert [r.epoch for r in monitor.records("hidden")] == list(range(1, 9))
    assert [r.step for r in monitor.records("out")] == list(range(2, 10))
    for name in ("hidden", "out"):
        trajectory = np.stack(recorder.snapshots[name]).astype(np.float64)  # start + 9 epochs
        np.testing.assert_allclose(host(monitor.buffers[name].snapshots()), trajectory[-6:],
                                   rtol=1e-6, atol=1e-7)
        values, _ = numpy_exact_modes(trajectory[-6:], 3)
        record = monitor.latest(name)
        assert record.snapshots == 6 and record.rank == 3 and monitor.stored(name) == 6
        assert_same_spectrum(values, record.eigenvalues, 5e-3)
        assert record.metrics["spectral_radius"] == pytest.approx(np.abs(values).max(),
                                                                  rel=5e-3)
    assert monitor.errors == []


def test_a_group_past_the_memory_budget_is_sketched_and_analysed_from_the_sketch():
    x, y = make_data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(600, name="wide"),
                              keras.layers.Dense(2, name="out")])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    # wide: 4,200 weights, out: 1,202; in full 5 * 4 * 5,402 bytes > the 40,000-byte budget.
    monitor = kk.callbacks.KoopmanMonitor(window=5, rank=3, snapshot_memory=40_000)
    recorder = weight_recorder(["wide", "out"])
    model.fit(x, y, epochs=6, batch_size=16, verbose=0, callbacks=[monitor, recorder])
    assert monitor.buffers["wide"].sketch == 2048 and monitor.buffers["out"].sketch is None
    trajectory = np.stack(recorder.snapshots["wide"])[-5:].astype(np.float64)
    sketched = trajectory @ dense_sketch(4200, 2048).T
    np.testing.assert_allclose(host(monitor.buffers["wide"].snapshots()), sketched,
                               rtol=1e-5, atol=1e-5)
    values, _ = numpy_exact_modes(sketched, 3)
    assert_same_spectrum(values, monitor.latest("wide").eigenvalues, 5e-3)
    values, _ = numpy_exact_modes(np.stack(recorder.snapshots["out"])[-5:].astype(np.float64), 3)
    assert_same_spectrum(values, monitor.latest("out").eigenvalues, 5e-3)
    assert monitor.errors == []
    # An int sketches every group with more than twice as many weights; None never sketches.
    explicit = kk.callbacks.KoopmanMonitor(window=5, sketch=700)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[explicit])
    assert explicit.buffers["wide"].sketch == 700 and explicit.buffers["out"].sketch is None
    never = kk.callbacks.KoopmanMonitor(window=5, sketch=None, snapshot_memory=1)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[never])
    assert all(b.sketch is None for b in never.buffers.values())


def test_a_bfloat16_monitor_records_the_spectrum_of_what_it_stores():
    import ml_dtypes

    x, y = make_data()
    model = make_model()
    monitor = kk.callbacks.KoopmanMonitor(window=6, rank=3, storage_dtype="bfloat16")
    recorder = weight_recorder(["hidden"])
    model.fit(x, y, epochs=9, batch_size=16, verbose=0, callbacks=[monitor, recorder])
    trajectory = np.stack(recorder.snapshots["hidden"]).astype(np.float32)  # start + 9 epochs
    start = trajectory[0]  # the first snapshot since the (only) reset
    stored = (trajectory - start).astype(ml_dtypes.bfloat16).astype(np.float64) + start
    np.testing.assert_allclose(host(monitor.buffers["hidden"].snapshots()), stored[-6:],
                               rtol=0, atol=1e-6)
    values, _ = numpy_exact_modes(stored[-6:], 3)
    assert_same_spectrum(values, monitor.latest("hidden").eigenvalues, 5e-3)
    assert monitor.errors == []


@pytest.mark.parametrize("per_call", [1, 4])
def test_monitor_every_n_batches_gathers_the_weights_after_those_batches(per_call):
    if per_call > 1 and BACKEND == "torch":
        pytest.skip("Keras on PyTorch runs one step a call")
    x, y = make_data(samples=96)
    # The reference: a twin trained one step a call, its weights recorded after every batch.
    twin = make_model(seed=1)
    recorder = weight_recorder(["hidden"], per_batch=True)
    twin.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0, callbacks=[recorder])
    model = make_model(seed=1)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse",
                  steps_per_execution=per_call)
    monitor = kk.callbacks.KoopmanMonitor(every=2, window=8, rank=3, analyze_every=1)
    model.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0, callbacks=[monitor])
    # 6 batches per epoch, a snapshot after every second: 9 + the starting weights.
    assert monitor.step == 9
    trajectory = np.stack(recorder.snapshots["hidden"]).astype(np.float64)
    every_second = np.concatenate([trajectory[:1], trajectory[2::2]])  # start, batch 2, 4...
    np.testing.assert_allclose(host(monitor.buffers["hidden"].snapshots()), every_second[-8:],
                               rtol=1e-5, atol=1e-6)
    values, _ = numpy_exact_modes(every_second[-8:], 3)
    assert_same_spectrum(values, monitor.latest("hidden").eigenvalues, 5e-3)
    np.testing.assert_allclose(np.concatenate([w.ravel() for w in
                                               model.get_layer("hidden").get_weights()]),
                               trajectory[-1], rtol=1e-5, atol=1e-6)  # training unchanged


def test_two_monitors_gathering_every_n_batches_each_take_their_own():
    x, y = make_data(samples=96)
    twin = make_model(seed=3)
    recorder = weight_recorder(["out"], per_batch=True)
    twin.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=[recorder])
    trajectory = np.stack(recorder.snapshots["out"]).astype(np.float64)  # start + 12 batches
    model = make_model(seed=3)
    second = kk.callbacks.KoopmanMonitor(every=2, window=4, observables=["out"])
    third = kk.callbacks.KoopmanMonitor(every=3, window=4, observables=["out"])
    stop = kk.callbacks.KoopmanEarlyStopping(second)  # a decision callback forwards hooks
    model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0,
              callbacks=[second, third, stop])
    for monitor, every in ((second, 2), (third, 3)):
        assert monitor.step == 12 // every
        np.testing.assert_allclose(host(monitor.buffers["out"].snapshots()),
                                   trajectory[::every][-4:], rtol=1e-5, atol=1e-6)
    if BACKEND != "tensorflow":  # no batch hook: Keras keeps its callbacks asynchronous
        assert keras.callbacks.CallbackList([second, third, stop], model=model)._async_train


@pytest.mark.parametrize("xla", [False, True])
def test_a_monitor_of_a_fit_that_raised_does_not_gather_in_the_next_fit(xla):
    if xla and BACKEND != "tensorflow":
        pytest.skip("TensorFlow's XLA train function (JAX always compiles its step)")
    x, y = make_data()
    model = make_model(seed=4)
    if xla:  # the gather inside the train function
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", jit_compile=True)

    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                raise RuntimeError("boom")

    first = kk.callbacks.KoopmanMonitor(every=2, window=4, observables=["out"])
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[first, Boom()])
    first.tracker.sync()  # (TensorFlow counts snapshots taken in the step on the device)
    step, held = first.step, host(first.buffers["out"].snapshots())
    second = kk.callbacks.KoopmanMonitor(every=2, window=4, observables=["out"])
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[second])
    first.tracker.sync()
    assert first.step == step  # nothing gathered into the first monitor's buffers
    np.testing.assert_array_equal(host(first.buffers["out"].snapshots()), held)
    assert second.step == 8  # 16 batches, every 2
    final = np.concatenate([w.ravel() for w in model.get_layer("out").get_weights()])
    np.testing.assert_allclose(host(second.buffers["out"].snapshots())[-1], final, rtol=1e-6)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="TensorFlow gathers from a batch hook there")
def test_a_loop_that_never_calls_the_train_function_is_told_every_n_takes_nothing():
    model = make_model(seed=5)
    monitor = kk.callbacks.KoopmanMonitor(every=2, window=4)
    callbacks = keras.callbacks.CallbackList([monitor], model=model, epochs=2, steps=4)
    callbacks.on_train_begin()
    start = monitor.step
    kernel = model.get_layer("out").kernel
    with pytest.warns(RuntimeWarning, match="did not call it") as caught:
        for epoch in range(2):
            callbacks.on_epoch_begin(epoch)
            for batch in range(4):  # a step of its own: not model.train_function
                callbacks.on_train_batch_begin(batch)
                kernel.assign(kernel * 0.9)
                callbacks.on_train_batch_end(batch)
            callbacks.on_epoch_end(epoch)
    callbacks.on_train_end()
    ours = [w for w in caught if "did not call it" in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__  # once, at the user's line
    assert monitor.step == start  # no snapshot was taken, and none is made up


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(5, activation="tanh", name="hidden")
        self.out = keras.layers.Dense(2, name="out")

    def call(self, x):
        return self.out(self.hidden(x))


@pytest.mark.parametrize("every", ["epoch", 2])
def test_a_subclassed_model_is_watched_even_where_fit_builds_it_in_the_first_step(every):
    x, y = make_data()
    keras.utils.set_random_seed(0)
    net = SubclassedNet()
    net.compile(keras.optimizers.SGD(0.05), "mse")
    monitor = kk.callbacks.KoopmanMonitor(window=12, rank=2, every=every)
    seen = []

    class Recorder(keras.callbacks.Callback):  # through Keras, after the monitor's hooks
        def on_train_batch_end(self, batch, logs=None):
            if every != "epoch":
                seen.append(self.model.get_layer("out").get_weights())

        def on_epoch_end(self, epoch, logs=None):
            if every == "epoch":
                seen.append(self.model.get_layer("out").get_weights())

    net.fit(x, y, epochs=5, batch_size=16, shuffle=False, verbose=0,
            callbacks=[monitor, Recorder()])
    assert set(monitor.buffers) == {"hidden", "out"} and monitor.errors == []
    trajectory = np.stack([np.concatenate([w.ravel() for w in ws]) for ws in seen])
    if every != "epoch":
        trajectory = trajectory[1::2]  # the weights after batches 2, 4, ...
    assert monitor.step == len(trajectory)  # step 0: the weights training started from
    stored = host(monitor.buffers["out"].snapshots())  # the window holds every snapshot
    # TensorFlow builds the model in the first step: its initial weights were never seen.
    assert len(stored) == len(trajectory) + (BACKEND != "tensorflow")
    np.testing.assert_allclose(stored[-len(trajectory):], trajectory, rtol=1e-5, atol=1e-6)
    values, _ = numpy_exact_modes(stored.astype(np.float64), 2)
    assert_same_spectrum(values, monitor.latest("out").eigenvalues, 5e-3)


def test_nan_weights_are_survived_with_one_warning_and_training_goes_on():
    x, y = make_data()
    model = make_model(seed=2)
    monitor = kk.callbacks.KoopmanMonitor(window=5)
    saved = {}

    class Poison(keras.callbacks.Callback):
        """NaN in the hidden kernel at the end of epoch 2 (before the monitor's snapshot),
        the real kernel back before epoch 3 trains."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                kernel = self.model.get_layer("hidden").kernel
                saved["kernel"] = keras.ops.convert_to_numpy(kernel)
                kernel.assign(np.full(kernel.shape, np.nan, "float32"))

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 3:
                self.model.get_layer("hidden").kernel.assign(saved["kernel"])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=7, batch_size=16, verbose=0,
                            callbacks=[Poison(), monitor])
    ours = [w for w in caught if "KoopmanMonitor" in str(w.message)]
    assert len(ours) == 1 and "hidden" in str(ours[0].message)
    assert len(history.history["loss"]) == 7 and np.isfinite(history.history["loss"][-1])
    assert [e["group"] for e in monitor.errors] == ["hidden"]
    assert "hidden" in monitor.nonfinite_groups
    assert max(r.epoch for r in monitor.records("hidden")) < 2
    assert max(r.epoch for r in monitor.records("out")) == 6  # the other group goes on
    np.testing.assert_array_equal(model.get_layer("hidden").get_weights()[0].shape, (6, 5))
    assert np.all(np.isfinite(model.get_layer("hidden").get_weights()[0]))


def test_an_unknown_layer_raises_when_the_fit_starts():
    x, y = make_data()
    monitor = kk.callbacks.KoopmanMonitor(observables=["hidden", "nope"])
    with pytest.raises(ValueError, match="nope"):
        make_model().fit(x, y, epochs=1, verbose=0, callbacks=[monitor])


# ------------------------------------------------------------------------------------------
# decisions
def regression(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(128, 3)).astype("float32")
    return x, x @ np.array([[1.0], [-2.0], [0.5]], "float32")


def linear_model(learning_rate, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="dense")])
    model.compile(keras.optimizers.SGD(learning_rate), "mse")
    return model


def test_early_stopping_stops_converged_least_squares_and_not_diverging_training():
    x, y = regression()
    model = linear_model(0.1)
    monitor = kk.callbacks.KoopmanMonitor(window=8)
    stop = kk.callbacks.KoopmanEarlyStopping(monitor, patience=2, min_epochs=5,
                                             criterion="weights")
    history = model.fit(x, y, epochs=200, batch_size=128, verbose=0, callbacks=[monitor, stop])
    assert 5 <= stop.stopped_epoch < 100
    assert len(history.history["loss"]) == stop.stopped_epoch + 1
    assert history.history["loss"][-1] < 1e-3 * history.history["loss"][0]
    assert stop.decisions[-1]["converged"] and not stop.decisions[0]["converged"]

    model = linear_model(1.2)  # beyond 2 / largest curvature: the weights blow up
    monitor = kk.callbacks.KoopmanMonitor(window=8)
    stop = kk.callbacks.KoopmanEarlyStopping(monitor, patience=2, min_epochs=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the weights overflow to Inf at the end
        history = model.fit(x, y, epochs=40, batch_size=128, verbose=0,
                            callbacks=[monitor, stop])
    assert stop.stopped_epoch == 0 and len(history.history["loss"]) == 40
    assert not any(d["converged"] for d in stop.decisions)


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data[:600] / 16).astype("float32"), data.target[:600]


def mlp(bias="zeros", seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(32, activation="relu", bias_initializer=bias, name="h1"),
        keras.layers.Dense(32, activation="relu", bias_initializer=bias, name="h2"),
        keras.layers.Dense(10, activation="softmax", name="out"),
    ])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    return model


def test_restart_redraws_a_dead_initialization_and_leaves_a_good_one():
    x, y = digits()
    model = mlp(keras.initializers.Constant(-10.0))  # dead ReLUs: nothing moves
    monitor = kk.callbacks.KoopmanMonitor(window=6)
    restart = kk.callbacks.KoopmanRestart(monitor, check_epoch=3, max_restarts=1,
                                          initializers={"kernel": "he_normal"})
    seen = {}

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            layer = self.model.get_layer("h1")
            seen[epoch] = {"bias": layer.get_weights()[1].copy(),
                           "kernel": layer.get_weights()[0].copy(),
                           "iterations": int(keras.ops.convert_to_numpy(
                               self.model.optimizer.iterations))}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = model.fit(x, y, epochs=6, batch_size=64, verbose=0,
                            callbacks=[monitor, restart, Spy()])
    assert [r["epoch"] for r in restart.restarts] == [2]
    np.testing.assert_array_equal(seen[2]["bias"], 0.0)  # the bias default, not -10 again
    assert seen[2]["iterations"] == 0
    assert np.std(seen[2]["kernel"]) == pytest.approx(np.sqrt(2 / 64), rel=0.2)  # he_normal
    # The redrawn network trains: the loss after the restart falls below the dead one's.
    assert history.history["loss"][-1] < 0.8 * history.history["loss"][2]

    good = mlp(seed=1)
    monitor = kk.callbacks.KoopmanMonitor(window=6)
    restart = kk.callbacks.KoopmanRestart(monitor, check_epoch=4)
    good.fit(x, y, epochs=5, batch_size=64, verbose=0, callbacks=[monitor, restart])
    assert restart.restarts == [] and restart.verdicts == [{"epoch": 3, "reason": None}]


# ------------------------------------------------------------------------------------------
# TensorBoard
def test_summaries_are_written_and_read_back_with_tensorboard(tmp_path):
    pytest.importorskip("tensorflow")  # writes the events on every backend, as Keras does
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    x, y = make_data()
    monitor = kk.callbacks.KoopmanMonitor(window=5, log_dir=tmp_path)
    make_model().fit(x, y, epochs=5, verbose=0, callbacks=[monitor])
    events = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    for group in ("hidden", "out"):
        spectra = events.Tensors(f"koopman/{group}")
        records = monitor.records(group)
        assert [e.step for e in spectra] == [r.epoch for r in records] == [1, 2, 3, 4]
        spectrum = tensor_util.make_ndarray(spectra[-1].tensor_proto)
        np.testing.assert_allclose(spectrum[:, 0], records[-1].eigenvalues.real, rtol=1e-5,
                                   atol=1e-6)
        radius = tensor_util.make_ndarray(
            events.Tensors(f"koopman/{group}/spectral_radius")[-1].tensor_proto)
        assert float(radius) == pytest.approx(records[-1].metrics["spectral_radius"], rel=1e-6)
        # The tab's modes view: per-unit shares of the leading modes, each row summing to 1.
        modes = tensor_util.make_ndarray(events.Tensors(f"koopman/{group}/modes")[-1]
                                         .tensor_proto)
        assert modes.shape[1] == (5 if group == "hidden" else 2)
        np.testing.assert_allclose(np.nansum(modes, axis=1)[~np.isnan(modes).all(axis=1)], 1.0,
                                   rtol=1e-5)


# ------------------------------------------------------------------------------------------
# what the other backends do not have yet
@pytest.mark.skipif(BACKEND == "tensorflow", reason="every part runs on TensorFlow")
def test_parts_not_ported_yet_say_so_clearly():
    with pytest.raises(ImportError, match="needs the TensorFlow backend"):
        kk.callbacks.KoopmanTracker  # noqa: B018  (the TensorFlow tracker itself)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX only")
def test_jax_computes_the_gram_in_float64():
    import jax

    kk.dmd(np.ones((3, 2)) * np.array([[1.0], [0.5], [0.25]]))
    assert jax.config.read("jax_enable_x64")
    assert kk.dmd(as_backend(np.eye(4)[:3])).singular_values.dtype == np.float64


# ------------------------------------------------------------------------------------------
# the negative-Sobolev loss
@pytest.mark.parametrize("shape,axis,window", [((4, 33), -1, None), ((64, 3), 0, "hann"),
                                               ((2, 10, 5), 1, "even"),
                                               ((3, 8, 6, 2), (1, 2), None),
                                               ((2, 7, 9), (1, 2), "hann")])
@pytest.mark.parametrize("s", [0.0, 1.0, 2.0])
def test_negative_sobolev_matches_numpy_full_fft(rng, shape, axis, window, s):
    from helpers import sobolev_reference

    y_true, y_pred = rng.normal(size=shape), rng.normal(size=shape)
    axes = axis if isinstance(axis, tuple) else (axis,)
    got = kk.losses.negative_sobolev(as_backend(y_true), as_backend(y_pred), s=s, axis=axis,
                                     length=2.0, window=window)
    assert keras.ops.is_tensor(got)
    expected = sobolev_reference(y_pred - y_true, s, axes, (2.0,) * len(axes), window)
    np.testing.assert_allclose(host(got), expected, rtol=1e-10)
    single = kk.losses.negative_sobolev(as_backend(y_true.astype("float32")),
                                        as_backend(y_pred.astype("float32")), s=s, axis=axis,
                                        length=2.0, window=window)
    assert keras.backend.standardize_dtype(single.dtype) == "float32"
    np.testing.assert_allclose(host(single), expected, rtol=2e-4)


def test_negative_sobolev_trains_in_compile_and_warns_on_a_default_batch():
    x = np.linspace(0, 1, 128, endpoint=False)[:, None].astype("float32")
    y = (np.sin(2 * np.pi * x) + np.random.default_rng(0).normal(0, 1, x.shape)).astype(
        "float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(32, activation="tanh"),
                              keras.layers.Dense(1)])
    loss = kk.losses.NegativeSobolev(s=1.0, axis=0)
    model.compile(keras.optimizers.Adam(0.01), loss=loss)
    history = model.fit(x, y, batch_size=len(x), shuffle=False, epochs=30, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    # The loss Keras reports is the loss of the whole grid.
    from helpers import sobolev_reference

    residual = keras.ops.convert_to_numpy(model(x)).astype(np.float64) - y
    value = float(model.evaluate(x, y, batch_size=len(x), verbose=0))
    assert value == pytest.approx(float(sobolev_reference(residual, 1.0, (0,), (1.0,))[0]),
                                  rel=1e-4)
    with pytest.warns(UserWarning, match="batch of 32 points"):
        model.fit(x, y, epochs=1, verbose=0, shuffle=False)


# ------------------------------------------------------------------------------------------
# depth
@pytest.mark.parametrize("method", ["fourier", "dmd"])
def test_suggest_depth_counts_two_separated_tones(method):
    x = np.linspace(0, 1, 512, endpoint=False)
    y = np.sin(2 * np.pi * 3 * x) + 0.5 * np.sin(2 * np.pi * 40 * x)
    suggestion = kk.depth.suggest_depth(x, y, method=method)
    assert suggestion.n_layers == 2
    # (The periodogram's peaks are centroids of its bins: within 1% of the tones.)
    np.testing.assert_allclose([scale.frequency for scale in suggestion.scales], [3.0, 40.0],
                               rtol=1e-2)
    # Power 1 : 0.25 between the tones, as their amplitudes say.
    np.testing.assert_allclose([scale.share for scale in suggestion.scales], [0.8, 0.2],
                               rtol=2e-2)


# ------------------------------------------------------------------------------------------
# jumps along the modes
def least_squares_data(seed=0):
    rng = np.random.default_rng(seed)
    x = (2.0 * rng.normal(size=(64, 1))).astype("float32")
    y = (x @ np.array([[1.0, -2.0, 0.5]]) + np.array([0.3, -0.1, 0.2])
         + rng.normal(0, 0.1, (64, 3))).astype("float32")
    return x, y


def least_squares_model(learning_rate):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(3, name="dense")])
    model.compile(keras.optimizers.SGD(learning_rate), "mse")
    return model


def test_a_jump_lands_on_the_least_squares_solution():
    # Full-batch gradient descent on least squares is affine: the DMD's limit is the
    # normal-equations solution (float32 weights: to float32 rounding of the trajectory).
    x, y = least_squares_data()
    design = np.hstack([x, np.ones((len(x), 1))]).astype(np.float64)
    solution = np.linalg.lstsq(design, y.astype(np.float64), rcond=None)[0]
    model = least_squares_model(0.3)
    monitor = kk.callbacks.KoopmanMonitor(window=8, rank=3, observables="model")
    jump = kk.callbacks.KoopmanAccelerator(monitor, every=7, horizon=100_000, probe=(x, y),
                                           max_horizon=100_000)
    model.fit(x, y, epochs=7, batch_size=len(x), shuffle=False, verbose=0,
              callbacks=[monitor, jump])
    (attempt,) = jump.jumps
    assert attempt["accepted"] and attempt["loss_after"] < attempt["loss_before"]
    kernel, bias = model.get_layer("dense").get_weights()
    np.testing.assert_allclose(np.vstack([kernel, bias]), solution, atol=2e-3)
    plain = least_squares_model(0.3)
    plain.fit(x, y, epochs=7, batch_size=len(x), shuffle=False, verbose=0)
    kernel, bias = plain.get_layer("dense").get_weights()
    assert np.max(np.abs(np.vstack([kernel, bias]) - solution)) > 1e-2


def test_a_rejected_jump_leaves_the_weights_bit_identical():
    x, y = least_squares_data()
    model = least_squares_model(0.3)
    monitor = kk.callbacks.KoopmanMonitor(window=8, rank=3, observables="model")
    before = {}

    class Keep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            before[epoch] = [w.copy() for w in self.model.get_weights()]

    jump = kk.callbacks.KoopmanAccelerator(monitor, every=6, horizon=64, probe=(x, -5.0 * y))
    model.fit(x, y, epochs=6, batch_size=len(x), shuffle=False, verbose=0,
              callbacks=[Keep(), monitor, jump])
    (attempt,) = jump.jumps
    assert not attempt["accepted"] and attempt["loss_after"] > attempt["loss_before"]
    for restored, expected in zip(model.get_weights(), before[5]):
        np.testing.assert_array_equal(restored, expected)
    assert jump.horizon == 32


def training_state(model):
    return ([w.copy() for w in model.get_weights()],
            [np.array(v.numpy()) for v in model.optimizer.variables])


def test_a_jump_the_next_epoch_finds_worse_is_undone_exactly(monkeypatch):
    # A jump far off the trajectory (every weight times 30): the next epoch's training loss is
    # worse, so the weights and the Adam moments go back bit for bit to the end of the jump's
    # epoch (recorded by a callback that runs before the accelerator), on every backend's
    # training state (JAX keeps it outside the variables during an epoch).
    x, y = least_squares_data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(3, name="dense")])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    monitor = kk.callbacks.KoopmanMonitor(window=6, rank=3)
    jump = kk.callbacks.KoopmanAccelerator(monitor, every=5, horizon=4)

    def far_away(self):
        return [(variables, [30.0 * v.value for v in variables])
                for variables in self.monitor.groups.values()]

    monkeypatch.setattr(kk.callbacks.KoopmanAccelerator, "_targets", far_away)
    states, after = {}, {}

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            states[epoch] = training_state(self.model)

    class After(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            after[epoch] = training_state(self.model)

    model.fit(x, y, epochs=6, batch_size=16, shuffle=False, verbose=0,
              callbacks=[Record(), monitor, jump, After()])
    (attempt,) = jump.jumps
    assert attempt["epoch"] == 4 and not attempt["accepted"]
    assert attempt["loss_after"] > attempt["loss_before"] and jump.horizon == 2
    np.testing.assert_allclose(after[4][0][0], 30.0 * states[4][0][0], rtol=1e-6)  # jumped
    weights, optimizer = after[5]  # ... and undone at the end of epoch 5
    for restored, expected in zip(weights, states[4][0]):
        np.testing.assert_array_equal(restored, expected)
    slots = {id(v) for v in kk.callbacks.accelerator.optimizer_slots(model.optimizer)}
    assert slots
    for variable, value, expected in zip(model.optimizer.variables, optimizer, states[4][1]):
        if id(variable) in slots:
            np.testing.assert_array_equal(value, expected)
    assert monitor.buffers["dense"].count == 1  # a new trajectory from the restored weights


def test_dmd_batch_equals_kk_dmd_on_each_sequence(rng):
    x = rng.standard_normal((4, 7, 5)).cumsum(axis=1)
    batch = kk.dmd_batch(as_backend(x), rank=3)
    ranks = host(batch.rank)
    for b in range(4):
        single = kk.dmd(x[b], rank=3).numpy()
        assert ranks[b] == single.rank
        k = single.rank
        assert_same_spectrum(single.eigenvalues, host(batch.eigenvalues)[b, :k], 1e-8)
        np.testing.assert_allclose(host(batch.predict([9]))[b, 0], host(single.predict([9]))[0],
                                   rtol=1e-7, atol=1e-9)


def test_node_wise_jump_equals_per_node_kk_dmd():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(128, 3)).astype("float32")
    y = np.stack([np.sin(x[:, 0]) + x[:, 1], x[:, 2] * x[:, 0]], axis=1).astype("float32")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)),
                              keras.layers.Dense(5, activation="tanh", name="hidden"),
                              keras.layers.Dense(2, name="out")])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    monitor = kk.callbacks.KoopmanMonitor(window=7, rank=3)
    seen = {}

    class Capture(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.update({name: host(buffer.snapshots())
                         for name, buffer in monitor.buffers.items()})

    jump = kk.callbacks.KoopmanAccelerator(monitor, every=6, horizon=4, observables="nodes",
                                           guard=None)
    model.fit(x, y, epochs=6, batch_size=128, shuffle=False, verbose=0,
              callbacks=[monitor, Capture(), jump])
    (attempt,) = jump.jumps
    assert attempt["accepted"]
    for name in ("hidden", "out"):
        kernel, bias = model.get_layer(name).get_weights()
        snapshots = seen[name].astype(np.float64)
        m, units, fan_in = len(snapshots), bias.shape[0], kernel.shape[0]
        for unit in range(units):
            columns = [i * units + unit for i in range(fan_in)] + [fan_in * units + unit]
            result = kk.dmd(snapshots[:, columns], rank=3).numpy()
            values = np.where(np.abs(result.eigenvalues - 1) <= monitor.tolerance, 1.0,
                              result.eigenvalues)
            expected = np.real(result.modes @ (result.amplitudes * values ** (m - 1 + 4)))
            np.testing.assert_allclose(np.append(kernel[:, unit], bias[unit]), expected,
                                       rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# pruning
def pruning_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    return x, np.tanh(x[:, :2]).sum(1, keepdims=True).astype("float32")


def pruning_mlp(seed=0, width=24):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)),
                             keras.layers.Dense(width, activation="tanh", name="hidden"),
                             keras.layers.Dense(1, name="out")])


def masks_and_kernels(model):
    return [(weight.numpy(), mask.numpy()) for wrapper in kk.pruning.pruning_wrappers(model)
            for weight, mask in wrapper.masked]


def test_pruned_weights_stay_exact_zeros_and_magnitude_pruning_is_global():
    x, y = pruning_data()
    pruned = kk.pruning.prune_koopman(pruning_mlp(), 0.5, criterion="magnitude",
                                      schedule=kk.pruning.ConstantSparsity(
                                          0.5, begin_step=0, frequency=1000, unit="epoch"))
    pruned.compile(keras.optimizers.SGD(0.0), "mse")  # weights do not move: exact reference
    before = np.concatenate([np.abs(w.numpy()).ravel()
                             for wrapper in kk.pruning.pruning_wrappers(pruned)
                             for w, _ in wrapper.masked])
    pruned.fit(x, y, epochs=1, verbose=0, callbacks=[kk.pruning.UpdateKoopmanPruning()])
    threshold = np.sort(before)[int(0.5 * before.size) - 1]
    masks = np.concatenate([m.ravel() for _, m in masks_and_kernels(pruned)])
    np.testing.assert_array_equal(masks == 0, before <= threshold)

    schedule = kk.pruning.ConstantSparsity(0.8, begin_step=1, frequency=100, unit="epoch")
    pruned = kk.pruning.prune_koopman(pruning_mlp(), 0.8, schedule=schedule,
                                      criterion="magnitude")
    pruned.compile(keras.optimizers.Adam(1e-2), "mse")
    pruned.fit(x, y, epochs=10, batch_size=32, verbose=0,
               callbacks=[kk.pruning.UpdateKoopmanPruning(window=3)])
    total = zeros = 0
    for weight, mask in masks_and_kernels(pruned):
        assert np.all(weight[mask == 0] == 0.0)  # exact zeros after 9 epochs of Adam
        assert np.any(weight[mask == 1] != 0.0)
        total, zeros = total + mask.size, zeros + int((mask == 0).sum())
    assert zeros == int(np.floor(0.8 * total))


def test_a_step_schedule_prunes_between_batches_to_the_exact_count():
    x, y = pruning_data()  # 8 batches of 32 per epoch
    schedule = kk.pruning.PolynomialDecay(0.0, 0.8, begin_step=4, end_step=24, frequency=4,
                                          unit="step")
    pruned = kk.pruning.prune_koopman(pruning_mlp(), 0.8, schedule=schedule,
                                      criterion="magnitude")
    pruned.compile(keras.optimizers.Adam(1e-2), "mse")
    update = kk.pruning.UpdateKoopmanPruning(window=3)
    seen = []  # (step, masks) right after each update, read from the variables
    apply = update._apply

    def recording(pools):
        out = apply(pools)
        seen.append(np.concatenate([m.numpy().ravel() for _, m in
                                    [pair for w in update.wrappers for pair in w.masked]]))
        return out

    update._apply = recording
    if BACKEND != "tensorflow":  # a begin hook: Keras keeps its callbacks asynchronous
        assert keras.callbacks.CallbackList([update], model=pruned)._async_train
    after = []  # the kernels after each step, through Keras (an independent recorder)

    class Kernels(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            after.append(np.concatenate([w.ravel() for w, _ in masks_and_kernels(self.model)]))

    pruned.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[update, Kernels()])
    assert [u["step"] for u in update.updates] == [4, 8, 12, 16, 20, 24]
    previous = np.ones_like(seen[0])
    for record, masks in zip(update.updates, seen):
        assert int((masks == 0).sum()) == int(np.floor(record["sparsity"] * masks.size))
        # The update after step t is in place for step t + 1, whose weights it holds at zero
        # (the entries it prunes were not zero after step t).
        t, new = record["step"], (masks == 0) & (previous == 1)
        assert np.all(after[t + 1][masks == 0] == 0.0)
        assert np.all(after[t][new] != 0.0)
        previous = masks
    assert previous.sum() < previous.size  # (something was pruned)
    for earlier, later in zip(seen, seen[1:]):
        assert np.all(later[earlier == 0] == 0)  # pruned entries stay pruned
    for weight, mask in masks_and_kernels(pruned):  # 8 more steps of Adam after the last
        assert np.all(weight[mask == 0] == 0.0)
        assert np.any(weight[mask == 1] != 0.0)


def test_an_update_after_an_epochs_last_step_is_in_place_for_its_validation():
    x, y = pruning_data()  # 8 batches of 32: step 7 is the epoch's last
    schedule = kk.pruning.ConstantSparsity(0.5, begin_step=7, frequency=100, unit="step")
    pruned = kk.pruning.prune_koopman(pruning_mlp(), 0.5, schedule=schedule,
                                      criterion="magnitude")
    pruned.compile(keras.optimizers.Adam(1e-2), "mse")
    seen = {}

    class AtValidation(keras.callbacks.Callback):  # listed after the update
        def on_test_begin(self, logs=None):
            if "masks" not in seen:
                seen["masks"] = [m for _, m in masks_and_kernels(self.model)]

    update = kk.pruning.UpdateKoopmanPruning(window=3)
    pruned.fit(x, y, epochs=1, batch_size=32, verbose=0, validation_data=(x, y),
               callbacks=[update, AtValidation()])
    assert [u["step"] for u in update.updates] == [7]
    zeros = sum(int((m == 0).sum()) for m in seen["masks"])
    assert zeros == sum(int(np.floor(0.5 * m.size)) for m in seen["masks"]) > 0


@pytest.mark.parametrize("unit", ["epoch", "step"])
def test_pruning_holds_in_a_subclassed_model_whose_call_takes_no_training_argument(unit):
    # (On TensorFlow the wrappers are built in the first trace of the train step, after
    # on_train_begin: the update attaches to them and watches them once they are; a step
    # schedule updates in that first epoch already.)
    schedule = None if unit == "epoch" else kk.pruning.PolynomialDecay(
        0.0, 0.5, begin_step=4, end_step=12, frequency=4, unit="step")

    class Net(keras.Model):  # Keras passes no training flag to the layers of this call
        def __init__(self):
            super().__init__()
            self.hidden = kk.pruning.KoopmanPruning(keras.layers.Dense(16, activation="tanh"),
                                                    0.5, criterion="magnitude",
                                                    schedule=schedule)
            self.out = keras.layers.Dense(1)

        def call(self, x):
            return self.out(self.hidden(x))

    x, y = pruning_data()
    keras.utils.set_random_seed(0)
    net = Net()
    net.compile(keras.optimizers.Adam(1e-2), "mse")
    update = kk.pruning.UpdateKoopmanPruning(window=3)
    net.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[update])
    if unit == "step":  # 8 steps an epoch
        assert [u["step"] for u in update.updates] == [4, 8, 12]
    (weight, mask), = net.hidden.masked
    kernel, kept = host(weight.value), host(mask.value)
    assert int((kept == 0).sum()) == kept.size // 2
    assert np.all(kernel[kept == 0] == 0.0)  # after more epochs of Adam
    assert np.any(kernel[kept == 1] != 0.0)
    # Without the callback: the layers got no training flag, and the mask constraint (which
    # the optimizer applies only in training) still refuses (warns on JAX).
    if BACKEND == "jax":
        with pytest.warns(UserWarning, match="UpdateKoopmanPruning"):
            net.fit(x, y, epochs=1, batch_size=32, verbose=0)
        assert np.all(host(weight.value)[kept == 0] == 0.0)
    else:  # (refused where the optimizer applies the mask; eagerly after its step, masked)
        with pytest.raises(Exception, match="UpdateKoopmanPruning"):
            net.fit(x, y, epochs=1, batch_size=32, verbose=0)
        assert np.all(host(weight.value)[kept == 0] == 0.0)
    net.fit(x, y, epochs=1, batch_size=32, verbose=0,
            callbacks=[kk.pruning.UpdateKoopmanPruning(window=3)])  # and trains with it again
    assert np.all(host(weight.value)[kept == 0] == 0.0)


@pytest.mark.parametrize("horizon", [None, 6])
def test_koopman_update_matches_the_numpy_reference(horizon):
    from helpers import reference_scores

    x, y = pruning_data(seed=1)
    schedule = kk.pruning.PolynomialDecay(0.3, 0.6, begin_step=4, end_step=8, frequency=4,
                                          unit="epoch")
    pruned = kk.pruning.prune_koopman(pruning_mlp(), 0.6, schedule=schedule)
    pruned.compile(keras.optimizers.SGD(0.05), "mse")
    update = kk.pruning.UpdateKoopmanPruning(window=4, rank=4, horizon=horizon)
    seen, decide = {}, update.decide

    def recording(epoch, logs):  # the window and masks the update sees, then the update
        seen[epoch] = [(host(update.monitor.buffers[name].snapshots()), m.numpy().ravel(),
                        w.numpy().ravel()) for name, (_, w, m) in update._groups.items()]
        decide(epoch, logs)
        seen[epoch, "masks"] = np.concatenate([m.numpy().ravel() for _, (_, _, m)
                                               in update._groups.items()])

    update.decide = recording
    pruned.fit(x, y, epochs=9, batch_size=32, verbose=0, callbacks=[update])
    assert [(u["step"], u["criterion"]) for u in update.updates] == [(4, "koopman"),
                                                                      (8, "koopman")]
    previous = None
    for epoch in (4, 8):
        scores = np.concatenate([reference_scores(s, m, w, s.shape[0] - 1, horizon)
                                 for s, m, w in seen[epoch]])
        masks = seen[epoch, "masks"]
        count = int(np.floor(schedule(epoch)[1] * masks.size))
        assert int((masks == 0).sum()) == count
        if previous is not None:
            assert np.all(masks[previous == 0] == 0)  # pruned entries stay pruned
        expected = np.ones(masks.size)
        expected[np.argsort(scores, kind="stable")[:count]] = 0
        differ = np.flatnonzero(expected != masks)
        cut = np.sort(scores)[count - 1]  # disagreements only where the two round apart
        assert np.all(np.abs(scores[differ] - cut) <= 1e-4 * abs(cut) + 1e-7), differ
        assert differ.size <= 2
        previous = masks
    for wrapper in kk.pruning.pruning_wrappers(pruned):
        assert update.updates[-1]["layers"][wrapper.name] == pytest.approx(wrapper.sparsity())


def test_a_pruned_model_trains_only_with_the_callback_and_strips_to_the_same_model():
    x, y = pruning_data()
    pruned = kk.pruning.prune_koopman(pruning_mlp(width=8), 0.5, criterion="magnitude",
                                      schedule=kk.pruning.ConstantSparsity(
                                          0.5, begin_step=0, frequency=100, unit="epoch"))
    pruned.compile(keras.optimizers.Adam(1e-2), "mse")
    initial = [w.copy() for w, _ in masks_and_kernels(pruned)]
    if BACKEND == "jax":  # trains on, warned, masks fixed (a refusal would lose the weights)
        with pytest.warns(UserWarning, match="UpdateKoopmanPruning") as caught:
            pruned.fit(x, y, epochs=1, verbose=0)
        # Raised inside Keras's trace of the step, the warning names the user's fit line.
        assert {w.filename for w in caught if "UpdateKoopmanPruning" in str(w.message)} == {
            __file__}
        for old, (new, mask) in zip(initial, masks_and_kernels(pruned)):
            assert np.all(mask == 1) and not np.array_equal(old, new)
    else:
        with pytest.raises(Exception, match="UpdateKoopmanPruning"):
            pruned.fit(x, y, epochs=1, verbose=0)
    pruned.fit(x, y, epochs=2, verbose=0, callbacks=[kk.pruning.UpdateKoopmanPruning()])
    trained = [w.copy() for w, _ in masks_and_kernels(pruned)]
    if BACKEND == "jax":  # a later fit: the masks hold, pruned weights stay exact zeros
        with pytest.warns(UserWarning, match="UpdateKoopmanPruning"):
            pruned.fit(x, y, epochs=1, verbose=0)
        for old, (new, mask) in zip(trained, masks_and_kernels(pruned)):
            assert np.all(new[mask == 0] == 0.0) and not np.array_equal(old, new)
        trained = [w.copy() for w, _ in masks_and_kernels(pruned)]
    else:
        with pytest.raises(Exception, match="UpdateKoopmanPruning"):  # a later fit, too
            pruned.fit(x, y, epochs=1, verbose=0)
        for old, (new, _) in zip(trained, masks_and_kernels(pruned)):
            np.testing.assert_array_equal(old, new)  # the refused fit trained nothing
    small = kk.pruning.strip_pruning(pruned)
    assert not kk.pruning.pruning_wrappers(small)
    np.testing.assert_allclose(small.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
    kernel = small.get_layer("hidden").get_weights()[0]
    assert 0.3 < np.mean(kernel == 0) < 0.7


def test_dmd_batch_bad_input_gives_the_errors_of_dmd():
    with pytest.raises(TypeError, match="real numbers"):
        kk.dmd_batch(np.ones((2, 4, 3)) * 1j)
    with pytest.raises(ValueError, match="3-D and time-major"):
        kk.dmd_batch(np.ones((4, 3)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        kk.dmd_batch(np.full((2, 4, 3), np.nan))


def test_spectrum_metrics_are_analytic():
    values = np.array([1.005, 0.5j, -0.5j, 1.2, -1.0])
    amplitudes = np.array([3.0, 1.0, 1.0, 0.5, 0.5])
    assert float(kk.spectrum.spectral_radius(values)) == pytest.approx(1.2)
    assert float(kk.spectrum.near_one_fraction(values)) == pytest.approx(0.2)
    assert float(kk.spectrum.near_one_fraction(values, amplitudes=amplitudes)) == \
        pytest.approx(3.0 / 6.0)
    assert int(kk.spectrum.unstable_count(values)) == 1
    assert float(kk.spectrum.max_residual(np.array([0.1, np.nan, 0.3]))) == pytest.approx(0.3)
    assert np.isnan(float(kk.spectrum.max_residual(np.array([np.nan]))))
    result = kk.dmd(np.outer(0.9 ** np.arange(8), [1.0, 2.0]), rank=1)
    metrics = kk.spectrum.summary(result)
    assert float(metrics["spectral_radius"]) == pytest.approx(0.9, rel=1e-9)
    assert int(metrics["unstable_count"]) == 0


def test_scores_spectra_and_plots_take_a_result_where_the_backend_keeps_it(tmp_path):
    # A torch result on a GPU cannot go through np.asarray: each of these copies it to the
    # host first. The trajectory is w_k = w_inf + 0.6^k d (analytic limit w_inf).
    pytest.importorskip("matplotlib")
    from keras_koopman.plot import plot_spectra

    w_inf = np.array([2.0, -1.5, 1.8, -2.2, 0.01, -0.02, 0.015, 0.0])
    d = np.array([-1.9, 1.4, -1.7, 2.1, 3.0, -3.5, 2.8, 3.2])
    result = kk.dmd(as_backend(np.stack([w_inf + 0.6**k * d for k in range(6)])), rank=2)
    assert keras.ops.is_tensor(result.modes)
    np.testing.assert_allclose(kk.pruning.koopman_scores(result, newest=5), np.abs(w_inf),
                               atol=1e-6)
    assert sorted(kk.spectrum.regions(result).tolist()) == ["at 1", "inside"]  # 1 and 0.6
    path = plot_spectra({"toy": result}, str(tmp_path / "spectra.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
