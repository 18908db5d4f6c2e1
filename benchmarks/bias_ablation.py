"""The CASS bias ablation (issue 4): same split and seeds, every loss variant, dense reference.

    python benchmarks/bias_ablation.py [--seeds 0,1] [--out benchmarks/results/ablation]

Equivalent to ``cass-deploy ablate``; prints the Markdown table that goes into the README and
writes ablation.json (all runs, means, spreads, the selection verdicts).
"""

import sys

import common  # noqa: F401 - puts the repository on sys.path

from cass_deploy.cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", "benchmarks/results/ablation"]
    raise SystemExit(main(["ablate", *args]))
