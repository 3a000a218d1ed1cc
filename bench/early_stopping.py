"""KoopmanEarlyStopping vs keras.callbacks.EarlyStopping (patience 5 and 10).

Three tasks on data that ships with scikit-learn, each with a 300-epoch budget and validation on
a held-out 20%, restore_best_weights on for every method:

  digits MLP     64-64-10 classifier on the 1,797 digits, Adam(3e-3), batch 128
  diabetes MLP   10-32-1 regressor on the 442 diabetes cases (standardised), Adam(1e-3),
                 batch 32
  digits CNN     Conv2D(8, 3x3) + MaxPool + Dense(10) on the digits as 8x8 images, Adam(1e-2),
                 batch 128

The learning rates are chosen so that the validation loss reaches its minimum inside the budget
(with Adam(1e-3) both digits models were still improving at epoch 300, so patience 10 ran the
whole budget and no stopping rule could save epochs without losing more than 2%).

Per task and seed: epochs run and the final validation loss (after any restore). Goal:
KoopmanEarlyStopping runs at least 25% fewer epochs than patience 10 (median over seeds) with a
final validation loss within 2% of it.

Run:  python bench/early_stopping.py         (about 25 minutes here; writes bench/RESULTS.md)
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _results import header, report  # noqa: E402

import keras_koopman as kk  # noqa: E402

BUDGET = 300
METHODS = ("koopman", "patience 5", "patience 10")


def load(task, seed):
    from sklearn.datasets import load_diabetes, load_digits

    if task == "diabetes MLP":
        data = load_diabetes()
        x = (data.data - data.data.mean(0)) / data.data.std(0)
        y = (data.target - data.target.mean()) / data.target.std()
    else:
        data = load_digits()
        x, y = data.data / 16.0, data.target
        if task == "digits CNN":
            x = x.reshape(-1, 8, 8, 1)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order].astype("float32"), y[order]
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


def build(task, seed):
    keras.utils.set_random_seed(seed)
    if task == "digits MLP":
        layers = [keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                  keras.layers.Dense(10, activation="softmax")]
        loss, batch, rate = "sparse_categorical_crossentropy", 128, 3e-3
    elif task == "diabetes MLP":
        layers = [keras.Input((10,)), keras.layers.Dense(32, activation="relu"),
                  keras.layers.Dense(1)]
        loss, batch, rate = "mse", 32, 1e-3
    else:
        layers = [keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                  keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                  keras.layers.Dense(10, activation="softmax")]
        loss, batch, rate = "sparse_categorical_crossentropy", 128, 1e-2
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.Adam(rate), loss)
    return model, batch


def run(task, seed, method):
    (x, y), (x_val, y_val) = load(task, seed)
    model, batch = build(task, seed)
    if method == "koopman":
        monitor = kk.callbacks.KoopmanMonitor(window=12)
        stop = kk.callbacks.KoopmanEarlyStopping(monitor, restore_best_weights=True)
        callbacks = [monitor, stop]
    else:
        patience = int(method.split()[-1])
        callbacks = [keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)]
    start = time.perf_counter()
    history = model.fit(x, y, epochs=BUDGET, batch_size=batch, validation_data=(x_val, y_val),
                        verbose=0, callbacks=callbacks)
    seconds = time.perf_counter() - start
    final = float(model.evaluate(x_val, y_val, verbose=0))
    rule = "-"
    if method == "koopman":
        rule = stop.decisions[-1]["stop_rule"] or "budget" if stop.decisions else "budget"
    return len(history.history["loss"]), final, seconds, rule


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tasks", nargs="*", default=["digits MLP", "diabetes MLP", "digits CNN"])
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    rows, summary = [], []
    for task in args.tasks:
        results = {method: [] for method in METHODS}
        for seed in range(args.seeds):
            for method in METHODS:
                epochs, final, seconds, rule = run(task, seed, method)
                results[method].append((epochs, final))
                rows.append(f"| {task} | {seed} | {method} | {epochs} | {final:.4f} | "
                            f"{seconds:.1f} | {rule} |")
                print(rows[-1], flush=True)
        median = {m: (statistics.median(e for e, _ in r), statistics.median(v for _, v in r))
                  for m, r in results.items()}
        fewer = 1 - median["koopman"][0] / median["patience 10"][0]
        worse = median["koopman"][1] / median["patience 10"][1] - 1
        met = fewer >= 0.25 and worse <= 0.02
        summary.append(
            f"| {task} | {median['koopman'][0]:.0f} | {median['patience 5'][0]:.0f} | "
            f"{median['patience 10'][0]:.0f} | {fewer:+.0%} | {median['koopman'][1]:.4f} | "
            f"{median['patience 10'][1]:.4f} | {worse:+.1%} | {'met' if met else 'NOT met'} |"
        )
        print(summary[-1], flush=True)

    body = "\n".join([
        *header(f"python bench/early_stopping.py --seeds {args.seeds}"),
        f"- set-up: {BUDGET}-epoch budget, 20% held out for validation, restore_best_weights on; "
        "`KoopmanEarlyStopping` with its defaults (criterion 'either': weight spectrum or "
        "loss forecast; loss_window 20, horizon 30, min_gain 1%, patience 2, min_epochs 10), "
        "monitor window 12; Adam 3e-3 / 1e-3 / 1e-2 for digits MLP / diabetes / digits CNN; "
        "medians over seeds",
        "- goal per task: >= 25% fewer epochs than patience 10, final val loss within 2%",
        "",
        "| task | epochs koopman | epochs p5 | epochs p10 | fewer than p10 | val loss koopman "
        "| val loss p10 | worse than p10 | goal |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *summary,
        "",
        "| task | seed | method | epochs | final val loss | seconds | stopped by |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- |",
        *rows,
    ])
    report("Early stopping (`bench/early_stopping.py`)", body, args.output)


if __name__ == "__main__":
    main()
