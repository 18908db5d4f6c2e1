"""Regenerate the TensorRT operator matrices in cass_deploy/backends/trt_ops/ from onnx-tensorrt.

Each stored matrix is NVIDIA's onnx-tensorrt ``docs/operators.md`` of one release branch, parsed
(``cass_deploy.backends.trt_ops.parse_operators_md``) and written with its source beside the data:

    # from a clone (git clone https://github.com/onnx/onnx-tensorrt): branch, commit and date from git
    python tools/regen_trt_ops.py --git-dir onnx-tensorrt/.git --ref 10.1-GA --name trt_10_1
    # from a copy of the file: say where it came from
    python tools/regen_trt_ops.py --md operators.md --name trt_10_15 --via "where the copy came from"
    (--branch / --commit / --date / --url when known; unknown ones stay null in the data)

``--check`` parses and compares with the stored file instead of writing (exit 1 when they differ).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from cass_deploy.backends.trt_ops import DATA_DIR, parse_operators_md
from cass_deploy.errors import InputError
from cass_deploy.io_utils import write_json

REPO_URL = "https://github.com/onnx/onnx-tensorrt"


def _git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, text=True, check=True).stdout


def from_git(git_dir: str, ref: str) -> tuple[str, dict]:
    """The file at ``ref`` and its source: the branch, the commit ``ref`` points to and the date and
    commit of the last change to docs/operators.md on it."""
    text = _git(git_dir, "show", f"{ref}:docs/operators.md")
    head = _git(git_dir, "rev-parse", ref).strip()
    last = _git(git_dir, "log", "-1", "--format=%H %cs", ref, "--", "docs/operators.md").split()
    return text, {
        "repository": "onnx/onnx-tensorrt",
        "branch": ref,
        "commit": head,
        "file_commit": last[0] if last else None,
        "date": last[1] if len(last) > 1 else None,
        "url": f"{REPO_URL}/blob/{head}/docs/operators.md",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--git-dir", help="a clone's git directory; with --ref")
    src.add_argument("--md", type=Path, help="a copy of docs/operators.md; with --branch/--commit/--date/--url")
    p.add_argument("--ref", help="branch or tag to read (e.g. 10.1-GA, release/10.15)")
    p.add_argument("--name", required=True, help="stored name, e.g. trt_10_15 (-> trt_ops/trt_10_15.json)")
    for flag in ("--branch", "--commit", "--date", "--url", "--via"):
        p.add_argument(flag, default=None)
    p.add_argument("--out-dir", type=Path, default=DATA_DIR)
    p.add_argument("--check", action="store_true", help="compare with the stored file, write nothing")
    p.add_argument("--force", action="store_true", help="overwrite the stored file")
    a = p.parse_args(argv)
    try:
        if a.git_dir:
            if not a.ref:
                p.error("--git-dir needs --ref")
            text, source = from_git(a.git_dir, a.ref)
        else:
            text = a.md.read_text()
            source = {"repository": "onnx/onnx-tensorrt", "branch": a.branch, "commit": a.commit, "date": a.date}
            source["url"] = a.url or (f"{REPO_URL}/blob/{a.branch}/docs/operators.md" if a.branch else REPO_URL)
        if a.via:
            source["retrieved_via"] = a.via
        data = {"source": source, **parse_operators_md(text)}
    except (OSError, subprocess.CalledProcessError, InputError) as exc:
        print(f"regen_trt_ops: error: {exc}", file=sys.stderr)
        return 2
    out = a.out_dir / f"{a.name}.json"
    if a.check:
        same = out.is_file() and json.loads(out.read_text()) == json.loads(json.dumps(data))
        print(f"{out}: {'up to date' if same else 'differs from the source'}")
        return 0 if same else 1
    write_json(out, data, force=a.force)
    n = len(data["operators"])
    bad = sum(not r["supported"] for r in data["operators"].values())
    print(f"wrote {out}: TensorRT {data['tensorrt']}, {n} operators ({bad} unsupported), from {source['url']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
