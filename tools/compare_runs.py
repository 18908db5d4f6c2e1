"""Do two demo runs hold the same numbers? ``python tools/compare_runs.py RUN_BEFORE RUN_AFTER``.

Compares summary.json, verify.json, validate-fp32.json, validate-int8.json and train/history.json of
two ``cass-deploy demo`` run directories value by value, latencies, wall times and paths aside (they
differ between any two runs). For refactors that must not change behaviour: exit 1 when a value
differs.
"""

import json
import sys
from pathlib import Path

# timings and what is computed from them only (latency intervals, speed-ups, wall seconds), paths
SKIP = {"seconds", "train_seconds", "latency_ms_p50", "latency_ms_p50_ci", "speedups", "run_dir", "report", "created"}


def walk(a, b, path, diffs, counts):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in SKIP:
                continue
            if k not in a or k not in b:
                diffs.append(f"{path}.{k}: only in {'after' if k in b else 'before'}")
                continue
            walk(a[k], b[k], f"{path}.{k}", diffs, counts)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diffs.append(f"{path}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{path}[{i}]", diffs, counts)
    elif isinstance(a, float) or isinstance(b, float):
        counts[0] += 1
        if a != b:
            diffs.append(f"{path}: {a} != {b}")
    elif isinstance(a, str) and isinstance(b, str) and ("/" in a or "runs" in a):
        return  # paths of the run directories differ by design
    else:
        counts[1] += 1
        if a != b:
            diffs.append(f"{path}: {a!r} != {b!r}")


before, after = Path(sys.argv[1]), Path(sys.argv[2])
total = [0, 0]
failed = False
for name in ["summary.json", "verify.json", "validate-fp32.json", "validate-int8.json", "train/history.json"]:
    # the run directory's name appears inside keys (verify names candidates by path): normalise it
    a = json.loads((before / name).read_text().replace(before.name, "RUN"))
    b = json.loads((after / name).read_text().replace(after.name, "RUN"))
    if name == "train/history.json":  # per-epoch wall times differ; losses and metrics must not
        SKIP.update({"seconds", "epoch_seconds", "time", "elapsed"})
    diffs, counts = [], [0, 0]
    walk(a, b, name, diffs, counts)
    total[0] += counts[0]
    total[1] += counts[1]
    print(f"{name}: {counts[0]} numbers and {counts[1]} other values compared, {len(diffs)} differ")
    failed = failed or bool(diffs)
    for d in diffs[:20]:
        print("   ", d)
print(f"total: {total[0]} numbers, {total[1]} other values compared")
raise SystemExit(1 if failed else 0)
