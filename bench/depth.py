"""Does kk.depth.suggest_depth find the number of scales in a target?

Synthetic targets on 16,384 uniform points of [0, 1): k = 1..5 scales, each one to three tones
within 20% of the scale's frequency (random amplitudes 0.3-1, random phases); the lowest scale
at 3-5 cycles, each next one 4-6 times higher (well separated; the top tone stays below the
grid's Nyquist frequency). Every k is drawn ``--draws``
times clean and ``--draws`` times with Gaussian noise of 0.5x the target's RMS. A draw counts
as right when ``suggest_depth`` returns exactly k layers. Also on non-uniform samples (the same
targets at 16,384 sorted random points; suggest_depth takes SciPy's Lomb-Scargle periodogram).

Goals (issue 18): >= 95% right overall and >= 90% on the non-uniform set-up. Draws are numbered
from ``--first`` (default 100): draws 0-19 are the ones the method was developed on, so the
report uses others.

Run:  python bench/depth.py          (about 15 minutes here, mostly Lomb-Scargle; writes
                                      bench/RESULTS.md)
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from _results import header, report  # noqa: E402

from keras_koopman.depth import suggest_depth  # noqa: E402

POINTS = 16384
KS = (1, 2, 3, 4, 5)


def target(k, rng, x):
    y = np.zeros_like(x)
    frequency = rng.uniform(3.0, 5.0)
    for _ in range(k):
        for _ in range(rng.integers(1, 4)):
            f = frequency * rng.uniform(0.8, 1.2)
            y += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * x + rng.uniform(0, 2 * np.pi))
        frequency *= rng.uniform(4.0, 6.0)
    return y


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--first", type=int, default=100, help="number of the first draw")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    started = time.time()

    setups = ("uniform, clean", "uniform, noise 0.5x RMS", "non-uniform, noise 0.5x RMS")
    confusion = {s: np.zeros((len(KS), 7), int) for s in setups}
    for setup in setups:
        for k in KS:
            for draw in range(args.first, args.first + args.draws):
                rng = np.random.default_rng([k, draw, setups.index(setup)])
                if setup.startswith("non-uniform"):
                    x = np.sort(rng.uniform(0, 1, POINTS))
                else:
                    x = np.arange(POINTS) / POINTS
                y = target(k, rng, x)
                if "noise" in setup:
                    y = y + rng.normal(0, 0.5 * np.sqrt(np.mean(y ** 2)), y.shape)
                found = suggest_depth(x, y).n_layers
                confusion[setup][k - 1, min(found, 6)] += 1
            right = confusion[setup][k - 1, k]
            print(f"{setup}, k={k}: {right}/{args.draws} right [{time.time() - started:.0f} s]",
                  flush=True)
    lines, total_right, total = [], 0, 0
    for setup in setups:
        table = confusion[setup]
        right = int(sum(table[k - 1, k] for k in KS))
        total_right += right
        total += int(table.sum())
        lines += [
            f"**{setup}**: {right}/{table.sum()} right ({right / table.sum():.0%})",
            "",
            "| true k | found 0 | 1 | 2 | 3 | 4 | 5 | 6+ |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *[f"| {k} | " + " | ".join(str(v) for v in table[k - 1]) + " |" for k in KS],
            "",
        ]
        print(lines[-(len(KS) + 5)], flush=True)
    rate = total_right / total
    table = confusion[setups[-1]]
    uneven = sum(table[k - 1, k] for k in KS) / table.sum()
    body = "\n".join([
        *header(f"python bench/depth.py --draws {args.draws} --first {args.first}"),
        f"- set-up: {POINTS} points, k = 1..5 scales 4-6x apart, 1-3 tones a scale, "
        f"{args.draws} draws per k and set-up (draws {args.first}-{args.first + args.draws - 1}, "
        f"seeded `[k, draw, set-up]`; nothing was tuned on them); `suggest_depth` with its "
        f"defaults; run time {time.time() - started:.0f} s",
        f"- overall: {total_right}/{total} = {rate:.1%} right (goal >= 95%: "
        f"{'met' if rate >= 0.95 else 'NOT met'}); non-uniform: {uneven:.0%} (goal >= 90%: "
        f"{'met' if uneven >= 0.9 else 'NOT met'})",
        "",
        *lines,
    ])
    report("Depth suggestion (`bench/depth.py`)", body, args.output)


if __name__ == "__main__":
    main()
