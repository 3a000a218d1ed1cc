"""Why wall-time gains trail epoch gains, per row of a saved acceleration report.

Reads the JSON that ``bench/acceleration.py --save FILE`` wrote and prints, per task and
optimizer, medians over the seeds of: plain and accelerated seconds per epoch over the whole fit
(monitor, jumps, undone epochs and the first epoch's set-up included), the first epoch's seconds
of each, and the later epochs' seconds per epoch, accelerated over plain (paired per seed).

Run:  python bench/acceleration_costs.py /tmp/report.json
"""

import json
import statistics
import sys
from collections import defaultdict

with open(sys.argv[1]) as handle:
    data = json.load(handle)
rows = defaultdict(dict)
for key, run in data.items():
    task, optimizer, variant, seed = key.split("|")
    rows[(task, optimizer)].setdefault(variant, {})[seed] = run
print("| task / optimizer | plain s/epoch | accelerated s/epoch | ratio | plain 1st epoch s | "
      "accelerated 1st epoch s | later epochs: accelerated/plain |")
print("|---|---:|---:|---:|---:|---:|---:|")
for (task, optimizer), variants in rows.items():
    plain, fast = variants["plain"], variants["default"]
    med = statistics.median
    p = med(r["seconds"][-1] / len(r["seconds"]) for r in plain.values())
    f = med(r["seconds"][-1] / len(r["seconds"]) for r in fast.values())
    p1 = med(r["seconds"][0] for r in plain.values())
    f1 = med(r["seconds"][0] for r in fast.values())

    def per_later_epoch(run):
        return (run["seconds"][-1] - run["seconds"][0]) / (len(run["seconds"]) - 1)

    later = med(per_later_epoch(fast[s]) / per_later_epoch(plain[s]) for s in plain)
    print(f"| {task} / {optimizer} | {p:.4f} | {f:.4f} | {f / p:.2f}x | {p1:.3f} | {f1:.3f} | "
          f"{later:.2f}x |")
