"""The keras-koopman demo: a digits MLP trained with the Koopman callbacks.

Run ``python -m keras_koopman.demo --logdir logs`` (or ``keras-koopman demo --logdir logs``):
trains an MLP on scikit-learn's digits with ``KoopmanMonitor``, ``KoopmanEarlyStopping`` and
``KoopmanRestart``, prints a line per analysis and a per-layer table at the end, writes
TensorBoard logs under ``--logdir`` and, with matplotlib installed, ``<logdir>/spectra.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import threading
import time

VERDICTS = {True: "converged", False: "moving"}
# What each verdict means, in the words of the callbacks' docstrings (printed under the table).
LEGEND = (
    "radius: largest |eigenvalue|; at 1: share of the modes' amplitude with |eigenvalue - 1| <= "
    "{tolerance:g} (where training heads);\noutside: eigenvalues with |eigenvalue| > "
    "{outside:g} (growing directions; the same tolerance, so none is both).\n"
    "verdict: converged = KoopmanEarlyStopping's weights rule holds for the layer (at least "
    "{mass:g} of it at 1, velocity <= {velocity:g});\nmoving = not yet; growing = at least "
    "{share:.0%} of it in modes with |eigenvalue| > {growth:g} (KoopmanRestart's divergence "
    "test; it restarts\nonly when the loss stalls too, and early growth with momentum is "
    "normal); still = the weights did not move over the window.")


# TensorFlow's native (absl) log lines: written to the process's stderr by C++ while it loads
# and when it first compiles (CUDA probing, oneDNN, XLA service), whatever TF_CPP_MIN_LOG_LEVEL
# says, so they can only be filtered at the file descriptor.
_NATIVE_LOG = re.compile(rb"^(?:[IWEF]\d{4} [\d:.]+\s+\d+ [\w.-]+:\d+\] |"
                         rb"WARNING: All log messages before absl::InitializeLog\(\) is called)")


@contextlib.contextmanager
def without_native_logs():
    """Within the block, TensorFlow's native log lines are dropped from stderr (file
    descriptor 2); every other line (Python warnings, tracebacks) passes on as it comes."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr is not a file (captured): leave it
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as source:
            for line in source:
                if not _NATIVE_LOG.match(line):
                    os.write(saved, line)

    thread = threading.Thread(target=forward, name="keras-koopman stderr filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)  # the pipe's last writer closes: the filter reads to its end
        thread.join(timeout=10)
        os.close(saved)


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
    from keras_koopman.callbacks.activity import IDLE_MOTION
    from keras_koopman.callbacks.restart import UNSTABLE_MASS, unstable_fraction

    if record.rank == 0 or record.metrics.get("motion", 0.0) < IDLE_MOTION:
        return "still"  # layer_activity's idle motion: the weights did not move
    mass, velocity = convergence(record, stop.tolerance)
    if unstable_fraction(record) >= UNSTABLE_MASS:  # KoopmanRestart's divergence share
        return "growing"
    return VERDICTS[mass >= stop.mass and velocity <= stop.max_velocity]


def _legend(monitor, stop):
    from keras_koopman.callbacks.restart import GROWTH, UNSTABLE_MASS

    return LEGEND.format(tolerance=monitor.tolerance, outside=1 + monitor.tolerance,
                         mass=stop.mass, velocity=stop.max_velocity, share=UNSTABLE_MASS,
                         growth=1 + GROWTH)


def _add_arguments(parser):
    parser.add_argument("--logdir", default="logs",
                        help="TensorBoard log directory (the run goes to LOGDIR/digits)")
    parser.add_argument("--epochs", type=int, default=150, help="epoch budget")
    parser.add_argument("--window", type=int, default=12,
                        help="snapshots per Koopman analysis")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights, the data order and the validation split")


def _parser(prog):
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_arguments(parser)
    return parser


def main(argv=None):
    """``python -m keras_koopman.demo [options]``: parses the options (TensorFlow is imported
    only after that, so ``--help`` answers at once) and runs :func:`run`."""
    return run(_parser("python -m keras_koopman.demo").parse_args(argv))


def run(args):
    """Trains the demo model with the options ``args`` (``logdir``, ``epochs``, ``window``,
    ``seed``), keeping TensorFlow's native log lines out of the output; returns the monitor,
    the two decision callbacks and Keras's history."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with without_native_logs():
        return _train(args)


def _train(args):
    import keras

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
            held = monitor.stored()  # one device read for every group
            if held < monitor.window or not records:
                # Verdicts wait for a full window: a spectrum of 3-4 snapshots is a rough fit.
                text = f"collecting snapshots ({held}/{monitor.window})"
            else:
                text = " | ".join(
                    f"{r.group} r={r.metrics['spectral_radius']:.3f} {_verdict(r, stop)}"
                    for r in records)
            print(f"epoch {epoch + 1:>3}  loss {logs['loss']:.4f}  "
                  f"val_acc {logs.get('val_accuracy', float('nan')):.3f}  | {text}")

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
    print(f"{'layer':<10} {'weights':>8} {'rank':>5} {'radius':>8} {'at 1':>7} "
          f"{'outside':>9} {'max resid':>10}  verdict")
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
    print("\n" + _legend(monitor, stop))
    try:
        from keras_koopman.plot import plot_spectra

        path = plot_spectra(latest, os.path.join(args.logdir, "spectra.png"),
                            title="Koopman spectra of the digits MLP, last analysis",
                            tolerance=monitor.tolerance)
        print(f"\nspectra drawn to {path}")
    except ImportError:
        print("\n(install matplotlib to also get spectra.png)")
    print(f"\nTensorBoard logs in {args.logdir}; view them with:\n"
          f"  tensorboard --logdir {args.logdir}\n"
          "then open the Koopman tab (spectra per layer and step) or Scalars (koopman/...).")
    return {"monitor": monitor, "stop": stop, "restart": restart, "history": history}


def cli(argv=None):
    """The ``keras-koopman`` console script: ``keras-koopman demo [options]``,
    ``keras-koopman --help``, ``keras-koopman --version``. Returns the exit status."""
    from keras_koopman import __version__

    parser = argparse.ArgumentParser(
        prog="keras-koopman",
        description="Koopman mode analysis of Keras training: watch and steer model.fit.",
        epilog="'keras-koopman COMMAND --help' shows the options of a command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="train a digits MLP with the Koopman callbacks and write TensorBoard logs",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_arguments(demo)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as done:  # --help, --version, or a usage error (status 2)
        return done.code or 0
    if args.command is None:
        parser.print_help()
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    main()
