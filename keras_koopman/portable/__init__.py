"""The backend-neutral path: keras-koopman on Keras's JAX and PyTorch backends.

TensorFlow is the reference backend, with its own engine (:mod:`keras_koopman.dmd`,
:mod:`keras_koopman.buffers`, the compiled gathers of the tracker). On JAX and PyTorch the same
results come from this package, TensorFlow not needed:

* :mod:`~keras_koopman.portable.device`: the few device operations (float64 Gram matrices,
  in-place ring-buffer writes, complex assembly, reading to the host), on ``keras.ops`` where
  it has them and on JAX or torch directly where it does not (JAX: one jitted function with
  donated buffers; torch: ``copy_`` in place);
* :mod:`~keras_koopman.portable.engine`: :func:`dmd` on the backend's tensors (the O(n) work on
  the device, the small ``[m, m]`` eigenproblems on the host in float64, as
  :mod:`keras_koopman.host_dmd` does for TensorFlow's monitor);
* :mod:`~keras_koopman.portable.buffer`: :class:`SnapshotBuffer` on the backend's arrays;
* :mod:`~keras_koopman.portable.tracker`: the tracker that
  :class:`~keras_koopman.callbacks.KoopmanMonitor` drives on these backends.
"""
