"""Build your own monitor: per-layer SnapshotBuffers and DMD on a digits MLP.

The library's KoopmanMonitor does this for you (see ``python -m keras_koopman.demo``); this
example shows the foundation pieces it is made of.

Every epoch the weights of each layer are copied (on device, inside one compiled tf.function) into a
``kk.SnapshotBuffer``; every epoch after the third, ``buffer.dmd()`` gives the layer's Koopman
spectrum, whose summary scalars go to TensorBoard next to the loss. At the end the spectrum of
each layer is printed, and with ``--plot`` drawn on the complex plane.

Run:
    python examples/digits_spectrum.py --epochs 40 --logdir logs/digits
    tensorboard --logdir logs/digits          # Scalars: koopman/<layer>/spectral_radius, ...

Reading the output: eigenvalues at 1 carry where the weights are heading (the fixed point);
eigenvalues inside the unit circle are transients that die out, the closer to 0 the faster;
eigenvalues outside it are growing directions (unstable training).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_koopman as kk  # noqa: E402


class LayerSnapshots(keras.callbacks.Callback):
    """Copies each layer's trainable weights into its own SnapshotBuffer every epoch.

    A stand-in for ``kk.callbacks.KoopmanMonitor`` (arriving with the callbacks), built only
    from the public foundation API.
    """

    def __init__(self, window, log_dir=None, rank=None):
        super().__init__()
        self.window = window
        self.rank = rank
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "koopman")) if log_dir else None
        self.buffers = {}
        self.layers = {}

    def on_train_begin(self, logs=None):
        for layer in self.model.layers:
            if layer.trainable_weights:
                n = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
                self.layers[layer.name] = layer.trainable_weights
                self.buffers[layer.name] = kk.SnapshotBuffer(n, self.window, name=layer.name)

        @tf.function(jit_compile=True)
        def gather_all():
            # One compiled step: flatten every layer's weights and append them in place.
            return [
                self.buffers[name].append_op(
                    tf.concat([tf.reshape(w.value, [-1]) for w in weights], axis=0)
                )
                for name, weights in self.layers.items()
            ]

        self._gather = gather_all
        self._gather()  # the initial weights are step 0

    def on_epoch_end(self, epoch, logs=None):
        finite = self._gather()
        for name, ok in zip(self.layers, finite):
            if not bool(ok):
                print(f"warning: layer {name} has NaN/Inf weights; snapshot skipped", file=sys.stderr)
        if self.writer is None:
            return
        with self.writer.as_default(step=epoch + 1):
            for name, buffer in self.buffers.items():
                if len(buffer) < 3:
                    continue
                metrics = kk.spectrum.summary(buffer.dmd(rank=self.rank))
                for key, value in metrics.items():
                    tf.summary.scalar(f"koopman/{name}/{key}", tf.cast(value, tf.float32))
        self.writer.flush()


def load_digits(seed):
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order], y[order]


def describe(name, buffer, rank):
    result = buffer.dmd(rank=rank).numpy()
    metrics = {key: float(value) for key, value in kk.spectrum.summary(result).items()}
    leading = ", ".join(
        f"{v.real:+.4f}{v.imag:+.4f}j" for v in result.eigenvalues[: min(5, result.rank)]
    )
    print(
        f"{name:<8} {buffer.n_features:>7} {result.rank:>4} {metrics['spectral_radius']:>8.4f} "
        f"{metrics['near_one_fraction']:>7.3f} {int(metrics['unstable_count']):>8} "
        f"{metrics['max_residual']:>10.2e}  {leading}"
    )
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--window", type=int, default=20, help="snapshots kept per layer")
    parser.add_argument("--logdir", default="logs/digits", help="TensorBoard log directory")
    parser.add_argument("--plot", default=None, help="also draw the spectra to this PNG")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    x, y = load_digits(args.seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(10, activation="softmax", name="output"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    snapshots = LayerSnapshots(window=args.window, log_dir=args.logdir)
    start = time.perf_counter()
    history = model.fit(
        x,
        y,
        epochs=args.epochs,
        batch_size=64,
        validation_split=0.2,
        verbose=2,
        callbacks=[snapshots, keras.callbacks.TensorBoard(args.logdir)],
    )
    print(
        f"\ntrained {args.epochs} epochs in {time.perf_counter() - start:.1f} s; "
        f"val_accuracy {history.history['val_accuracy'][-1]:.3f}"
    )
    print(f"\nKoopman spectrum of each layer over the last {args.window} epochs:")
    print(
        f"{'layer':<8} {'params':>7} {'rank':>4} {'radius':>8} {'at_1':>7} {'outside':>8} "
        f"{'max_resid':>10}  leading eigenvalues"
    )
    results = {name: describe(name, buffer, None) for name, buffer in snapshots.buffers.items()}
    print(f"\nTensorBoard logs in {args.logdir}: tensorboard --logdir {args.logdir}")
    if args.plot:
        from keras_koopman.plot import plot_spectra

        print(f"spectra drawn to {plot_spectra(results, args.plot)}")
    return results


if __name__ == "__main__":
    main()
