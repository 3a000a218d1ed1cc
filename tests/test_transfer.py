"""pack_outputs / unpack_outputs: nested graph outputs reach the host in one vector, unchanged."""

import numpy as np
import tensorflow as tf

from keras_koopman._tf import pack_outputs, unpack_outputs


def outputs(n):
    """A nested structure of every dtype the analyses return (shapes depend on ``n``)."""
    rng = np.random.default_rng(n)
    return [
        {"finite": tf.constant(n % 2 == 0), "rank": tf.constant(n, tf.int32),
         "eigenvalues": tf.constant(rng.normal(size=n) + 1j * rng.normal(size=n)),
         "residuals": tf.constant(rng.random(n)),
         "counts": tf.constant(rng.integers(-2**40, 2**40, size=(2, n)), tf.int64),
         "motion": tf.constant(rng.random(), tf.float32)},
        (tf.constant(rng.random((n, 3)), tf.float32), tf.zeros([0], tf.complex128)),
    ]


def test_every_leaf_comes_back_exactly_with_its_dtype_and_shape():
    function = tf.function(lambda n: pack_outputs(outputs(n)), autograph=False)
    for n in (1, 4, 7):  # one trace per n (a Python number): layouts of several traces coexist
        expected = outputs(n)
        vector = function(n)
        assert vector.shape.rank == 1 and vector.dtype == tf.float64
        got = unpack_outputs(vector)
        flat_expected, flat_got = tf.nest.flatten(expected), tf.nest.flatten(got)
        assert tf.nest.map_structure(lambda _: 0, got) == tf.nest.map_structure(
            lambda _: 0, expected)
        for want, have in zip(flat_expected, flat_got):
            assert isinstance(have, np.ndarray)
            assert have.dtype == want.dtype.as_numpy_dtype
            np.testing.assert_array_equal(have, want.numpy())


def test_a_dynamic_shape_is_read_from_the_vector():
    @tf.function(input_signature=[tf.TensorSpec([None], tf.complex128)], autograph=False)
    def function(values):
        return pack_outputs({"values": values, "size": tf.size(values)})

    for size in (0, 3, 11):
        values = np.arange(size) * (1 - 2j)
        got = unpack_outputs(function(tf.constant(values, tf.complex128)))
        np.testing.assert_array_equal(got["values"], values)
        assert got["size"] == size
    assert function.experimental_get_tracing_count() == 1
