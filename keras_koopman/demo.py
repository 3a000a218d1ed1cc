"""The keras-koopman demo: a digits MLP trained with the Koopman callbacks.

Run ``python -m keras_koopman.demo --logdir logs`` (or ``keras-koopman demo --logdir logs``):
trains an MLP on scikit-learn's digits with ``KoopmanMonitor``, ``KoopmanEarlyStopping`` and
``KoopmanRestart``, prints a line per analysis and a per-layer table at the end, writes
TensorBoard logs under ``--logdir`` and, with matplotlib installed, ``<logdir>/spectra.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

VERDICTS = {True: "converged", False: "moving"}


def _load_digits(seed):
    import numpy as np

    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise SystemExit(
            "the demo trains on scikit-learn's digits: pip install 'keras-koopman[examples]'"
        ) from error
    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.data))
    return (data.data[order] / 16.0).astype("float32"), data.target[order].astype("int32")


def _verdict(record, stop):
    from keras_koopman.callbacks import convergence
    from keras_koopman.callbacks.restart import UNSTABLE_MASS, unstable_fraction

    if record.rank == 0:
        return "still"
    mass, velocity = convergence(record, stop.tolerance)
    if unstable_fraction(record) >= UNSTABLE_MASS:  # KoopmanRestart's divergence share
        return "growing"
    return VERDICTS[mass >= stop.mass and velocity <= stop.max_velocity]


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="keras-koopman demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--logdir", default="logs", help="TensorBoard log directory")
    parser.add_argument("--epochs", type=int, default=150, help="epoch budget")
    parser.add_argument("--window", type=int, default=12, help="snapshots per analysis")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    import keras_koopman as kk

    keras.utils.set_random_seed(args.seed)
    x, y = _load_digits(args.seed)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(64, activation="relu", name="hidden_1"),
        keras.layers.Dense(32, activation="relu", name="hidden_2"),
        keras.layers.Dense(10, activation="softmax", name="output"),
    ])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    run_dir = os.path.join(args.logdir, "digits")
    monitor = kk.callbacks.KoopmanMonitor(window=args.window, log_dir=run_dir)
    stop = kk.callbacks.KoopmanEarlyStopping(monitor, restore_best_weights=True, verbose=1)
    restart = kk.callbacks.KoopmanRestart(monitor, verbose=1)

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            records = monitor.current()
            if not records:
                return
            parts = [
                f"{r.group} r={r.metrics['spectral_radius']:.3f} {_verdict(r, stop)}"
                for r in records
            ]
            print(f"epoch {epoch + 1:>3}  loss {logs['loss']:.4f}  "
                  f"val_acc {logs.get('val_accuracy', float('nan')):.3f}  | " + " | ".join(parts))

    print(f"training a digits MLP ({model.count_params():,} weights) for at most {args.epochs} "
          "epochs with KoopmanMonitor, KoopmanEarlyStopping and KoopmanRestart")
    start = time.perf_counter()
    history = model.fit(
        x, y, epochs=args.epochs, batch_size=64, validation_split=0.2, verbose=0,
        callbacks=[monitor, restart, stop, Progress(),
                   keras.callbacks.TensorBoard(run_dir)],
    )
    seconds = time.perf_counter() - start
    epochs = len(history.history["loss"])
    print(f"\n{epochs} epochs in {seconds:.1f} s"
          + (f"; stopped by KoopmanEarlyStopping at epoch {stop.stopped_epoch + 1}"
             if stop.stopped_epoch else "")
          + (f"; {len(restart.restarts)} restart(s)" if restart.restarts else ""))
    if stop.stopped_epoch:
        print(f"why it stopped: {stop.decisions[-1]['reason']}")
    print(f"final val_accuracy {history.history['val_accuracy'][-1]:.3f}\n")
    print(f"{'layer':<10} {'weights':>8} {'rank':>5} {'radius':>8} {'near 1':>7} "
          f"{'unstable':>9} {'max resid':>10}  verdict")
    latest = {}
    for group, buffer in monitor.buffers.items():
        record = monitor.latest(group)
        if record is None:
            continue
        latest[group] = record
        m = record.metrics
        print(f"{group:<10} {buffer.n_features:>8,} {record.rank:>5} "
              f"{m['spectral_radius']:>8.4f} {m['near_one_fraction']:>7.3f} "
              f"{m['unstable_count']:>9} {m['max_residual']:>10.2e}  {_verdict(record, stop)}")
    print("\nradius: largest |eigenvalue| (above 1: a growing direction); near 1: share of the "
          "amplitude at eigenvalue 1 (where training heads);\nverdict: the weights rule of "
          "KoopmanEarlyStopping for that layer (converged: the modes away from 1 have "
          "decayed);\nKoopmanEarlyStopping also stops on its loss rule (the Koopman forecast of "
          "val_loss), with layers still moving.")
    try:
        from keras_koopman.plot import plot_spectra

        path = plot_spectra(latest, os.path.join(args.logdir, "spectra.png"),
                            title="Koopman spectra of the digits MLP, last analysis")
        print(f"\nspectra drawn to {path}")
    except ImportError:
        print("\n(install matplotlib to also get spectra.png)")
    print(f"\nTensorBoard logs in {args.logdir}; view them with:\n"
          f"  tensorboard --logdir {args.logdir}\n"
          "then open the Koopman tab (spectra per layer and step) or Scalars (koopman/...).")
    return {"monitor": monitor, "stop": stop, "restart": restart, "history": history}


def cli(argv=None):
    """The ``keras-koopman`` console script: ``keras-koopman demo [options]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: keras-koopman demo [--logdir DIR] [--epochs N] [--window W] [--seed S]")
        return 0
    if argv[0] != "demo":
        print(f"keras-koopman: unknown command {argv[0]!r}; try 'keras-koopman demo'",
              file=sys.stderr)
        return 2
    main(argv[1:])
    return 0


if __name__ == "__main__":
    main()
