"""Sweep bad inputs through every ``cass-deploy`` subcommand, as a careless user would.

For each case it checks what SPEC §7 and the README's "Failure behaviour" promise: the exit code
is the expected one (2 bad usage or input, 1 a failed gate or a diverged run), stderr carries one
``error:`` line and no traceback (nor an "internal error"), and the working directory is
byte-identical afterwards (no output, no ``.NAME.*.tmp`` or ``.old`` sibling, nothing half-written).

    python tools/failure_sweep.py                 # every case, in this process (fast)
    python tools/failure_sweep.py --subprocess    # each case in a fresh `python -m cass_deploy`
    python tools/failure_sweep.py -k export -v    # the cases whose name contains "export"

Exit 0 when every case behaves, 1 otherwise (the failing cases are listed). ``tests/test_failure_sweep.py``
runs the cases in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image

from cass_deploy.backends.probe import is_available
from cass_deploy.cli import main as cli_main
from cass_deploy.model.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _load_tiny() -> list[str]:
    """The tiny training run the test fixtures use (tests/fixtures/tiny.py, seconds on a CPU)."""
    spec = importlib.util.spec_from_file_location("cass_deploy_tiny_fixture", REPO / "tests" / "fixtures" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.TINY_OVERRIDES)


TINY = _load_tiny()
SETS = " ".join(f"--set {o}" for o in TINY)


@dataclass(frozen=True)
class Case:
    """One bad invocation: ``argv`` (a string with ``{placeholders}`` of :func:`build_fixtures`),
    the exit codes that are right for it and a fragment the error line must contain."""

    name: str
    argv: str
    codes: tuple[int, ...] = (2,)
    needle: str | None = None


KIT = REPO / "tests" / "protocol_kit.py"
KITTI = REPO.parent / "shared" / "data" / "kitti"
#: one command line per command for the broken adapters (the model flags are appended)
ADAPTER_ARGV = {
    "export": "export --out {w}/o",
    "verify": "verify --candidate {exp} --images 1",
    "validate": "validate --images 1",
    "profile": "profile --iters 1",
    "tune": "tune --images 2 --verify-images 2 --no-progress --out {w}/o",
    "diagnose": "diagnose --data synthetic --out {w}/o",
}


def _label_free_cases(add) -> None:
    """validate, label-free (issue 20): frames, teacher and video inputs."""
    add("validate/frames-none", "validate {exp} --data {w}/empty --teacher dense --json {w}/lf.json", needle="empty")
    add("validate/frames-mixed", "validate {exp} --data {mixed} --json {w}/lf.json", needle="mixed sizes")
    add("validate/teacher-score-0", "validate {exp} --teacher dense --teacher-score 0", needle="--teacher-score")
    add("validate/teacher-score-1", "validate {exp} --teacher dense --teacher-score 1", needle="--teacher-score")
    add(
        "validate/teacher-classes",
        "validate {exp} --teacher dense --teacher-classes person,bicycle --json {w}/lf.json",
        needle="share no vehicle class",
    )
    add("validate/every-0", "validate {exp} --data {video} --every 0", needle="--every")
    add("validate/video-truncated", "validate {exp} --data {badvideo} --json {w}/lf.json", needle="bad.mp4")


#: shorthands of :data:`TABLE`, put in when it is read (the other ``{...}`` are fixtures of :func:`build_fixtures`)
SHORTHANDS = {
    "{sets}": SETS,
    "{acc}": "accept {exp} --data synthetic --reference {refjson} --iters 1 --warmup 0",
    "{tune}": "tune {ckpt} --images 2 --verify-images 2 --no-progress",
    "{own}": "validate --model {kit}:own_class_names --weights {ckpt} --images 1 --class-map",
}

#: the plain cases, a row each: ``name | argv | needle | exit code`` (no needle: the error line may name anything;
#: no exit code: 2); an indented line goes on with the row above it, a ``#`` line is a comment
TABLE = """
# train
train/missing-config | train --config {w}/nope.yaml --out {w}/o | nope.yaml
train/yaml-syntax | train --config {badyaml} --out {w}/o | bad.yaml:
train/yaml-list | train --config {listyaml} --out {w}/o | mapping
train/unknown-key | train --set no.such=1 --out {w}/o | unknown config key
train/lr-text | train {sets} --set lr=abc --out {w}/o | lr
train/epochs-0 | train {sets} --set epochs=0 --out {w}/o | epochs
train/size-0 | train {sets} --set model.image_size=[0,0] --out {w}/o | image_size
train/size-odd | train {sets} --set model.image_size=[100,100] --out {w}/o | image_size
train/data-missing | train {sets} --set data.source={w}/nodata --out {w}/o | nodata
train/resume-garbage | train {sets} --resume {garbage} --out {w}/o | garbage.pt
train/resume-missing | train {sets} --resume {w}/none.pt --out {w}/o | none.pt
train/out-under-file | train {sets} --out {plain}/o | plain
train/out-read-only | train {sets} --out {ro}/o | o
train/out-is-file | train {sets} --out {plain} | plain
train/out-has-files | train {sets} --out {exp} | --force
train/diverges | train {sets} --set lr=1e30 --out {w}/o | diverged | 1
train/pruner-mode | train {sets} --set model.pruner.mode=foo --out {w}/o | foo
train/keep-ratio | train {sets} --set model.pruner.keep_ratio=0 --out {w}/o | keep_ratio
# diagnose
diagnose/size-0 | diagnose --image-size 0 0 --out {w}/o | --image-size
diagnose/size-negative | diagnose --image-size -16 32 --out {w}/o | -16
diagnose/size-odd | diagnose --image-size 100 100 --out {w}/o | 100 100
diagnose/images-0 | diagnose --num-images 0 --out {w}/o | --num-images
diagnose/keep-2 | diagnose --keep-ratio 2 --out {w}/o | --keep-ratio
diagnose/norm | diagnose --normalizations bogus --out {w}/o | bogus
diagnose/ckpt-missing | diagnose --checkpoint {w}/none.pt --out {w}/o | none.pt
diagnose/ckpt-garbage | diagnose --checkpoint {garbage} --out {w}/o | garbage.pt
diagnose/data-missing | diagnose --data {w}/nodata --out {w}/o | nodata
diagnose/out-under-file | diagnose --out {plain}/o | plain
diagnose/out-read-only | diagnose --out {ro}/o | o
diagnose/out-exists | diagnose --out {exp} | --force
diagnose/size-vs-ckpt | diagnose --checkpoint {ckpt} --image-size 32 32 --data synthetic --out {w}/o
# export
export/ckpt-missing | export {w}/none.pt --out {w}/o | none.pt
export/ckpt-garbage | export {garbage} --out {w}/o | garbage.pt
export/ckpt-is-json | export {plainjson} --out {w}/o | plain.json
export/size-0 | export {ckpt} --out {w}/o --image-size 0 0 | --image-size
export/size-odd | export {ckpt} --out {w}/o --image-size 100 160 | 100 160
export/keep-0 | export {ckpt} --out {w}/o --keep-ratio 0 | keep_ratio
export/keep-1.5 | export {ckpt} --out {w}/o --keep-ratio 1.5 | keep_ratio
export/batch-0 | export {ckpt} --out {w}/o --batch 0 | --batch
export/dynamic-order | export {ckpt} --out {w}/o --dynamic-batch 4 2 1 | --dynamic-batch
export/opset | export {ckpt} --out {w}/o --opset 99 | opset
export/int8-calib-0 | export {ckpt} --out {w}/o --precision int8 --calib-images 0 | --calib-images
export/calib-data | export {ckpt} --out {w}/o --precision int8 --calib-data {w}/nodata | nodata
export/target | export {ckpt} --out {w}/o --target bogus | bogus
export/profile-missing | export {ckpt} --out {w}/o --profile nope | nope
export/profile-bad-yaml | export {ckpt} --out {w}/o --profile {badyaml} | bad.yaml
export/engine-no-trt | export {ckpt} --out {w}/o --engine | TensorRT
export/engine-topk | export {ckpt} --out {w}/o --engine --image-size 4096 4096 | 3840
export/profile-topk | export {ckpt} --out {w}/o --profile jetson-orin-nx --image-size 4096 4096 | 3840
export/dla-on-11 | export {ckpt} --out {w}/o --target tensorrt11 --dla-core 0 | DLA
export/out-exists | export {ckpt} --out {exp} | --force
export/out-under-file | export {ckpt} --out {plain}/o | plain
export/out-read-only | export {ckpt} --out {ro}/o | o
export/out-over-input | export {ckpt} --out {w} --force | input
export/dir-without-engine | export {exp} --out {w}/o | --engine
export/dir-tampered | export {badexp} --engine --out {w}/o | SHA-256
export/dir-no-manifest | export {emptydir} --engine --out {w}/o | manifest.json
export/dense | export {dense} --out {w}/o | dense
# verify
verify/tampered | verify --reference {ckpt} --candidate {badexp} | SHA-256
verify/dropped-onnx | verify --reference {ckpt} --candidate {exp}/other.onnx | other.onnx
verify/lone-engine | verify --reference {ckpt} --candidate {lone_engine} | manifest.json
verify/missing | verify --reference {ckpt} --candidate {w}/none.onnx | none.onnx
verify/ref-garbage | verify --reference {garbage} --candidate {exp} | garbage.pt
verify/ref-missing | verify --reference {w}/none.pt --candidate {exp} | none.pt
verify/iou-1.5 | verify --reference {ckpt} --candidate {exp} --min-keep-iou 1.5 | --min-keep-iou
verify/err-negative | verify --reference {ckpt} --candidate {exp} --max-score-err -1 | --max-score-err
verify/images-0 | verify --reference {ckpt} --candidate {exp} --images 0 | --images
verify/json-under-file | verify --reference {ckpt} --candidate {exp} --json {plain}/v.json | plain
verify/json-read-only | verify --reference {ckpt} --candidate {exp} --json {ro}/v.json | v.json
verify/json-exists | verify --reference {ckpt} --candidate {exp} --json {plain} | --force
verify/json-is-dir | verify --reference {ckpt} --candidate {exp} --json {exp} --force | directory
verify/manifest-bad-json | verify --reference {ckpt} --candidate {badmanifest} | manifest.json
verify/manifest-lists-missing | verify --reference {ckpt} --candidate {nofile} | model.onnx
verify/data-missing | verify --reference {ckpt} --candidate {exp} --data {w}/nodata | nodata
verify/not-an-artefact | verify --reference {ckpt} --candidate {plainjson} | plain.json
# validate
validate/tampered | validate {badexp} --images 2 | SHA-256
validate/lone-engine | validate {lone_engine} | manifest.json
validate/missing | validate {w}/none.onnx | none.onnx
validate/iou-2 | validate {exp} --iou 2 | --iou
validate/gate-1.5 | validate {exp} --min-near-recall 1.5 | --min-near-recall
validate/images-0 | validate {exp} --images 0 | --images
validate/data-missing | validate {exp} --data {w}/nodata --images 2 | nodata
validate/json-under-file | validate {exp} --images 2 --json {plain}/v.json | plain
validate/json-read-only | validate {exp} --images 2 --json {ro}/v.json | v.json
validate/reference-json | validate {exp} --images 2 --reference {plainjson} | plain.json
validate/reference-missing | validate {exp} --images 2 --reference {w}/none.pt | none.pt
validate/predictor-part | validate {predexp} --images 2 | full
validate/garbage-ckpt | validate {garbage} --images 2 | garbage.pt
# profile
profile/tampered | profile {badexp} --iters 1 | SHA-256
profile/tampered-onnx | profile {badexp}/model.onnx --iters 1 | SHA-256
profile/dropped-onnx | profile {exp}/other.onnx --iters 1 | other.onnx
profile/lone-engine | profile {lone_engine} | manifest.json
profile/iters-0 | profile {exp} --iters 0 | --iters
profile/warmup-negative | profile {exp} --warmup -1 | --warmup
profile/until-ci-negative | profile {exp} --until-ci -0.1 | --until-ci
profile/max-time-0 | profile {exp} --max-time 0 | --max-time
demo/profile-until-ci-negative | demo --profile-until-ci -1 --out {w}/o | --profile-until-ci
demo/profile-max-time-nan | demo --profile-max-time nan --out {w}/o | --profile-max-time
profile/batch-0 | profile {exp} --batch 0 | --batch
profile/batch-vs-fixed | profile {exp} --batch 4 --iters 1 | batch
profile/sweep-2 | profile {ckpt} --sweep 0.5,2 --iters 1 | --sweep
profile/sweep-text | profile {ckpt} --sweep abc --iters 1 | --sweep
profile/sweep-on-export | profile {exp} --sweep 0.5 --iters 1 | --sweep
profile/backend-trt-ckpt | profile {ckpt} --backend tensorrt --iters 1 | tensorrt
profile/device | profile {ckpt} --device foo --iters 1 | foo
profile/out-under-file | profile {exp} --iters 1 --out {plain}/o | plain
profile/out-read-only | profile {exp} --iters 1 --out {ro}/o | o
profile/out-over-input | profile {exp} --iters 1 --out {exp} | input
profile/out-exists | profile {exp} --iters 1 --out {plain} | --force
profile/garbage-ckpt | profile {garbage} --iters 1 | garbage.pt
profile/unknown-suffix | profile {plainjson} --iters 1 | plain.json
# report
report/missing | report {w}/nope | nope
report/empty | report {emptydir} | history.json
report/out-not-html | report {run_ok} --out {w}/r.txt | .html
report/out-under-file | report {run_ok} --out {plain}/r.html | plain
report/out-read-only | report {run_ok} --out {ro}/r.html | r.html
# ablate, demo
ablate/seeds | ablate --seeds a,b --out {w}/o | --seeds
ablate/keep | ablate --keep-ratios 2 --out {w}/o | --keep-ratios
ablate/config | ablate --config {badyaml} --out {w}/o | bad.yaml
ablate/out-under-file | ablate --out {plain}/o | plain
ablate/val-images | ablate --val-images 0 --out {w}/o | --val-images
ablate/jobs-0 | ablate --jobs 0 --out {w}/o | --jobs
demo/config | demo --config {w}/nope.yaml --out {w}/o | nope.yaml
demo/set | demo --set lr=abc --out {w}/o | lr
demo/out-under-file | demo --out {plain}/o | plain
demo/out-exists | demo --out {exp} | --force
# more of the same, as a careless user types them
train/fields | train {sets} --set fields.far_max=2 --out {w}/o | far_max
train/train-images-0 | train {sets} --set data.train_images=0 --out {w}/o | train_images
train/bands | train {sets} --set model.pruner.mode=band --set model.pruner.bands=100 --out {w}/o
train/heads | train {sets} --set model.num_heads=5 --out {w}/o | num_heads
train/threads-0 | train {sets} --set threads=0 --out {w}/o | threads
train/max-minutes | train {sets} --set max_minutes=-1 --out {w}/o | max_minutes
train/config-dir | train --config {emptydir} --out {w}/o | empty
train/config-bad-json | train --config {badjson} --out {w}/o | bad.json
train/set-no-equals | train --set lr --out {w}/o | lr
train/section-scalar | train --set model=3 --out {w}/o | model
diagnose/fields | diagnose --fields 0.9 0.1 --out {w}/o | 0.9
diagnose/set | diagnose --set bogus=1 --out {w}/o | bogus
validate/fields | validate {exp} --images 2 --fields 0.9 0.1 | 0.9
validate/fields-range | validate {exp} --images 2 --fields 2 3 | 2
validate/providers | validate {exp} --images 2 --providers bogus | bogus
verify/providers | verify --reference {ckpt} --candidate {exp} --providers bogus | bogus
profile/providers | profile {exp} --iters 1 --providers bogus | bogus
export/workspace | export {ckpt} --out {w}/o --workspace -1 | workspace
export/dla-negative | export {ckpt} --out {w}/o --target tensorrt10-dla --dla-core -1 | dla
export/batch-and-dynamic | export {ckpt} --out {w}/o --batch 3 --dynamic-batch 1 2 4 | batch
# check (SPEC 7c): nothing written, one error line
check/missing | check {w}/none.onnx | none.onnx
check/nothing | check | check needs one of
check/both | check {ckpt} --model {w}/m.py:build --weights {ckpt} | check needs one of
check/model-no-weights | check --model {w}/m.py:build | --weights
check/ckpt-garbage | check {garbage} | garbage.pt
check/plain-file | check {plain} | plain
check/badexp | check {badexp} | model.onnx
check/badmanifest | check {badmanifest} | manifest.json
check/nofile | check {nofile} | model.onnx
check/emptydir | check {emptydir} | manifest.json
check/target | check {exp} --target bogus | bogus
check/dynamic-batch-0 | check {exp} --dynamic-batch 0 1 2 | --dynamic-batch
check/size-odd | check {ckpt} --image-size 100 160 | 100 160
check/json-exists | check {exp} --json {plainjson} | --force
ablate/variants | ablate --variants bogus --out {w}/o | bogus
report/exists | report {run_done} | --force
verify/not-onnx | verify --reference {ckpt} --candidate {textonnx} | text.onnx
profile/not-onnx | profile {textonnx} --iters 1 | text.onnx
profile/schema-2 | profile {schema2} --iters 1 | schema_version
profile/manifest-bad-values | profile {badvalues} --iters 1 | manifest
validate/manifest-bad-values | validate {badvalues} --images 2 | manifest
verify/manifest-bad-values | verify --reference {ckpt} --candidate {badvalues} | manifest
profile/manifest-bad-artefacts | profile {badartefacts} --iters 1 | manifest
profile/unreadable-onnx-rehashed | profile {rehashed} --iters 1 | model.onnx
validate/coco-bad | validate {exp} --images 2 --data {badcoco} | annotations
# accept
accept/export-missing | accept {w}/nothere --data synthetic --reference {refjson} --iters 1 --warmup 0
    --out {w}/o | nothere
accept/reference-missing | accept {exp} --data synthetic --reference {w}/none.json --iters 1 --warmup 0
    --out {w}/o | none.json
accept/reference-bad-json | accept {exp} --data synthetic --reference {badjson} --iters 1 --warmup 0
    --out {w}/o | bad.json
accept/reference-not-validate | accept {exp} --data synthetic --reference {plainjson} --iters 1 --warmup 0
    --out {w}/o | plain.json
accept/tampered-onnx | accept {badexp} --data synthetic --reference {refjson} --iters 1 --warmup 0
    --out {w}/o | model.onnx
accept/out-under-file | {acc} --out {plain}/o | plain
accept/out-exists | {acc} --out {exp} | --force
accept/iters-0 | accept {exp} --data synthetic --reference {refjson} --iters 0 --warmup 0 --out {w}/o | --iters
accept/drop-2 | {acc} --max-recall-drop 2 --out {w}/o | --max-recall-drop
# tune
tune/ckpt-missing | tune {w}/none.pt --out {w}/o --no-progress | none.pt
tune/ckpt-garbage | tune {garbage} --out {w}/o --no-progress | garbage.pt
tune/keep-text | {tune} --keep 0.5,abc --out {w}/o | --keep
tune/keep-1.5 | {tune} --keep 1.5 --out {w}/o | keep
tune/precision | {tune} --precision fp8 --out {w}/o | fp8
tune/drop-2 | {tune} --max-recall-drop 2 --out {w}/o | --max-recall-drop
tune/confidence-1 | {tune} --confidence 1 --out {w}/o | --confidence
tune/out-under-file | {tune} --out {plain}/o | plain
tune/out-not-tune-dir | {tune} --out {exp} | tune
# --class-map that does not fit the adapter's classes
validate/class-map-unknown-name | {own} van=car | 'van', not a class of
validate/class-map-unknown-class | {own} vehicle=tram | 'tram' is not a class
validate/class-map-no-pairs | {own} vehicle | vehicle
tune/class-map-unknown-class | {tune} --class-map lorry=tram --out {w}/o | 'tram' is not a class
# an export whose ONNX renames an output the manifest declares
profile/outputs-not-declared | profile {renamed} --iters 1 --no-verify-hash | not declared: boxes
verify/outputs-not-declared | verify --reference {ckpt} --candidate {renamed}
    --no-verify-hash | declared but missing: det_boxes
# the command line itself
cli/unknown-command | frobnicate
cli/unknown-flag | export {ckpt} --frob
"""


def _table_cases(table: str) -> list[Case]:
    """The cases of a table laid out as :data:`TABLE`, in its order."""
    cases = []
    for row in re.sub(r"\n +", " ", table).splitlines():
        if not row.strip() or row.startswith("#"):
            continue
        name, argv, needle, code = (row.split(" | ") + [None, None])[:4]
        for short, text in SHORTHANDS.items():
            argv = argv.replace(short, text)
        cases.append(Case(name, argv, (int(code),) if code else (2,), needle))
    return cases


def _cases() -> list[Case]:
    c = _table_cases(TABLE)

    def add(name, argv, codes=(2,), needle=None):
        c.append(Case(name, argv, codes, needle))

    _label_free_cases(add)
    for name in ("history-dict", "history-items", "verify-list", "profile-latency", "validate-list", "diag", "json"):
        add(f"report/bad-{name}", f"report {{run_{name.replace('-', '_')}}}", needle=".json")
    # --model adapters that break the protocol (tests/protocol_kit.py), weights that do not fit
    broken = {
        "lacks_class_names": ("export", "lacks class_names"),
        "wrong_output_names": ("verify", "output_names('full') must hold"),
        "wrong_shape": ("validate", "keep_mask has shape [2, 6, 10]"),
        "wrong_dtype": ("profile", "det_classes is int64, expected int32"),
        "wrong_k": ("tune", "k=25 does not match keep_ratio 0.5"),
        "nondeterministic": ("diagnose", "not deterministic in eval mode"),
        "not_a_module": ("export", "returned a function, not a torch nn.Module"),
    }
    for name, (command, needle) in broken.items():
        argv = f"{ADAPTER_ARGV[command]} --model {{kit}}:{name} --weights {{ckpt}}"
        add(f"{command}/adapter-{name.replace('_', '-')}", argv, needle=needle)
    for fault, needle in (("missing", "missing keys: head.cls.bias"), ("extra", "unexpected keys: extra.weight")):
        add(f"validate/adapter-weights-{fault}", f"validate --model {{kit}}:reference_plain --weights {{w}}/{fault}.pt",
            needle=needle)  # fmt: skip
    if KITTI.is_dir():
        add("verify/kitti-size", "verify --reference {ckpt} --candidate {exp} --data {kitti} --images 1",
            needle="375x1242 images but the model takes 96x160")  # fmt: skip
    # where a sweep's units run (SPEC 7d): a cluster that is not there, resources that are not there
    tune = SHORTHANDS["{tune}"]
    for cmd, head in (("ablate", f"ablate {SETS} --seeds 0 --no-band"), ("tune", tune)):
        add(f"{cmd}/address-unreachable", head + " --address 127.0.0.1:1 --out {w}/o", needle="127.0.0.1:1")
        add(f"{cmd}/address-format", head + " --address nohost --out {w}/o", needle="nohost")
        add(f"{cmd}/gpus-negative", head + " --gpus-per-run -1 --out {w}/o", needle="--gpus-per-run")
        add(f"{cmd}/cpus-0", head + " --cpus-per-run 0 --out {w}/o", needle="--cpus-per-run")
        add(f"{cmd}/retries-negative", head + " --retries -1 --out {w}/o", needle="--retries")
        if not is_available("cuda"):  # GPUs asked on a machine without them: in this process, and on Ray
            add(f"{cmd}/gpus-none-here", head + " --jobs 1 --gpus-per-run 1 --out {w}/o", needle="--gpus-per-run")
            if is_available("ray"):
                add(f"{cmd}/gpus-none-ray", head + " --jobs 2 --gpus-per-run 1 --out {w}/o", needle="--gpus-per-run")
    return c


CASES = _cases()


# --------------------------------------------------------------------------- fixtures


def _cli(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return cli_main(argv)
        except SystemExit as exc:
            return int(exc.code or 0)


def build_fixtures(root: Path, checkpoint: Path | None = None) -> dict[str, str]:
    """Everything the cases point at, under ``root``: a tiny checkpoint (``checkpoint``, or trained
    now with :data:`TINY`), exports of it, tampered copies and bad files."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    w = root / "work"
    w.mkdir(parents=True)
    f: dict[str, str] = {"w": str(w)}
    if checkpoint is None:
        checkpoint = root / "src" / "train" / "best.pt"
        assert (
            _cli(["train", "--no-progress", *sum((["--set", o] for o in TINY), []), "--out", str(checkpoint.parent)])
            == 0
        )
    shutil.copy(checkpoint, w / "best.pt")
    f["ckpt"] = str(w / "best.pt")
    assert _cli(["export", f["ckpt"], "--out", str(w / "exp")]) == 0
    f["exp"] = str(w / "exp")
    assert _cli(["export", f["ckpt"], "--out", str(w / "predexp"), "--parts", "predictor"]) == 0
    f["predexp"] = str(w / "predexp")
    shutil.copy(w / "exp" / "model.onnx", w / "exp" / "other.onnx")
    for name in ("badexp", "badmanifest", "nofile"):
        shutil.copytree(w / "exp", w / name)
        f[name] = str(w / name)
    data = bytearray((w / "badexp" / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (w / "badexp" / "model.onnx").write_bytes(bytes(data))
    (w / "badmanifest" / "manifest.json").write_text("{ not json")
    (w / "nofile" / "model.onnx").unlink()
    (w / "lone.engine").write_bytes(b"not an engine")
    f["lone_engine"] = str(w / "lone.engine")
    (w / "garbage.pt").write_bytes(b"definitely not a checkpoint")
    f["garbage"] = str(w / "garbage.pt")
    (w / "plain").write_text("a plain file\n")
    f["plain"] = str(w / "plain")
    (w / "plain.json").write_text('{"reference": "x"}')
    f["plainjson"] = str(w / "plain.json")
    assert _cli(["validate", f["exp"], "--images", "2", "--json", str(w / "ref.json")]) in (0, 1)
    f["refjson"] = str(w / "ref.json")
    argv = ["verify", "--reference", f["ckpt"], "--candidate", f["exp"], "--images", "2"]
    assert _cli([*argv, "--save-polygraphy", str(w / "reference-outputs")]) in (0, 1)
    (w / "bad.yaml").write_text("epochs: 2\nmodel:\n  image_size: [96, 160\n  embed_dim: 32\n")
    f["badyaml"] = str(w / "bad.yaml")
    (w / "list.yaml").write_text("- 1\n- 2\n")
    f["listyaml"] = str(w / "list.yaml")
    (w / "empty").mkdir()
    f["emptydir"] = str(w / "empty")
    ck = load_checkpoint(f["ckpt"], pruner_mode="none")
    save_checkpoint(w / "dense.pt", ck.model, ck.cass_config)
    f["dense"] = str(w / "dense.pt")
    runs = {
        "ok": ("verify.json", {"candidates": []}),
        "history_dict": ("history.json", {"epoch": 1}),
        "history_items": ("history.json", [{"epoch": "one"}]),
        "verify_list": ("verify.json", {"candidates": {"a": 1}}),
        "profile_latency": (
            "profile.json",
            {"results": [{"label": "a", "backend": "b", "device": "c", "batch": 1, "latency_ms": {"mean": "x"}}]},
        ),
        "validate_list": ("validate-a.json", {"result": [1, 2]}),
        "diag": ("diagnostics.json", {"breakdowns": [{"normalization": "patch"}]}),
        "json": ("history.json", "[1, 2"),
    }
    for key, (name, content) in runs.items():
        d = w / f"run-{key}"
        d.mkdir()
        (d / name).write_text(content if isinstance(content, str) else json.dumps(content))
        f[f"run_{key}"] = str(d)
    (w / "bad.json").write_text('{"epochs": 2,,}')
    f["badjson"] = str(w / "bad.json")
    (w / "text.onnx").write_text("this is text\n")
    f["textonnx"] = str(w / "text.onnx")
    run_done = w / "run-done"
    shutil.copytree(w / "run-ok", run_done)
    (run_done / "report.html").write_text("<html></html>")
    f["run_done"] = str(run_done)
    manifest = json.loads((w / "exp" / "manifest.json").read_text())
    for name, change in (
        ("schema2", {"schema_version": 2}),
        ("badvalues", {"image_size": "abc", "batch": {"dynamic": False, "size": "x"}, "k": "many"}),
        ("badartefacts", {"artefacts": {"onnx": "model.onnx", "engine": 3}}),
    ):
        shutil.copytree(w / "exp", w / name)
        (w / name / "manifest.json").write_text(json.dumps({**manifest, **change}))
        f[name] = str(w / name)
    shutil.copytree(w / "exp", w / "rehashed")
    (w / "rehashed" / "model.onnx").write_bytes(b"not an onnx model at all")
    rehashed = json.loads(json.dumps(manifest))
    rehashed["artefacts"]["onnx"]["sha256"] = hashlib.sha256(b"not an onnx model at all").hexdigest()
    (w / "rehashed" / "manifest.json").write_text(json.dumps(rehashed))
    f["rehashed"] = str(w / "rehashed")
    _adapter_fixtures(w, f)
    coco = w / "coco"
    (coco / "images").mkdir(parents=True)
    (coco / "annotations.json").write_text('{"images": [{"id": 1, "file_name": "a.png"}], "annotations": 7}')
    f["badcoco"] = str(coco)
    f.update(label_free_fixtures(w))
    ro = root / "read-only"
    if os.geteuid() == 0:
        ro = Path("/sys")  # root ignores file modes; /sys refuses new files
    else:
        ro.mkdir()
        ro.chmod(0o555)
    f["ro"] = str(ro)
    return f


def _adapter_fixtures(w: Path, f: dict[str, str]) -> None:
    """The protocol kit, weights with a missing / an extra key, and an export whose ONNX renames an output."""
    f["kit"], f["kitti"] = str(KIT), str(KITTI)
    state = {k: v for k, v in load_checkpoint(f["ckpt"]).model.state_dict().items()}
    torch.save({k: v for k, v in state.items() if k != "head.cls.bias"}, w / "missing.pt")
    torch.save({**state, "extra.weight": torch.zeros(1)}, w / "extra.pt")
    shutil.copytree(w / "exp", w / "renamed")
    m = onnx.load(str(w / "renamed" / "model.onnx"))
    for node in m.graph.node:
        node.output[:] = ["boxes" if o == "det_boxes" else o for o in node.output]
    next(o for o in m.graph.output if o.name == "det_boxes").name = "boxes"
    onnx.save(m, str(w / "renamed" / "model.onnx"))
    f["renamed"] = str(w / "renamed")


def label_free_fixtures(w: Path) -> dict[str, str]:
    """Frames of mixed sizes, a two-frame video (PyAV) and the same video cut in half."""
    mixed = w / "mixed"
    mixed.mkdir()
    Image.new("RGB", (160, 96)).save(mixed / "a.png")
    Image.new("RGB", (120, 90)).save(mixed / "b.png")
    video = w / "v.mp4"
    try:
        av = importlib.import_module("av")
        with av.open(str(video), "w") as c:
            st = c.add_stream("mpeg4", rate=5)
            st.width, st.height, st.pix_fmt = 160, 96, "yuv420p"
            for i in range(2):
                frame = av.VideoFrame.from_ndarray(np.full((96, 160, 3), 40 * i, np.uint8), format="rgb24")
                for pkt in st.encode(frame):
                    c.mux(pkt)
            for pkt in st.encode():
                c.mux(pkt)
    except ImportError:  # without PyAV the video cases still refuse (no PyAV is an input error too)
        video.write_bytes(b"\x00" * 64)
    data = video.read_bytes()
    (w / "bad.mp4").write_bytes(data[: len(data) // 2])
    return {"mixed": str(mixed), "video": str(video), "badvideo": str(w / "bad.mp4")}


# --------------------------------------------------------------------------- running


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_case(case: Case, fixtures: dict[str, str], subprocess_mode: bool = False) -> tuple[list[str], str]:
    """(problems, stderr) of one case; no problems when it behaves."""
    argv = case.argv.format(**fixtures).split()
    work = Path(fixtures["w"])
    before = snapshot(work)
    if subprocess_mode:
        done = subprocess.run(
            [sys.executable, "-m", "cass_deploy", *argv], capture_output=True, text=True, cwd=REPO, timeout=600
        )
        rc, err = done.returncode, done.stderr
    else:
        sink_err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(sink_err):
            try:
                rc = cli_main(argv)
            except SystemExit as exc:
                rc = int(exc.code or 0)
            except BaseException as exc:  # what would be a traceback
                rc, sink_err = -1, io.StringIO(f"Traceback (escaped main): {type(exc).__name__}: {exc}\n")
        err = sink_err.getvalue()
    problems = []
    if rc not in case.codes:
        problems.append(f"exit {rc}, expected {' or '.join(map(str, case.codes))}")
    if "Traceback" in err or "internal error" in err:
        problems.append("traceback or internal error")
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    if len(lines) != 1:
        problems.append(f"{len(lines)} error lines")
    elif case.needle and case.needle not in lines[0]:
        problems.append(f"error line does not name {case.needle!r}")
    after = snapshot(work)
    if after != before:
        changed = sorted(set(after) ^ set(before) | {k for k in after if k in before and after[k] != before[k]})
        problems.append(f"files changed: {changed[:4]}")
    return problems, err


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    ap.add_argument("--subprocess", action="store_true", help="each case in a fresh interpreter")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each case's error line")
    args = ap.parse_args(argv)
    cases = [c for c in CASES if args.k in c.name]
    os.chdir(REPO)  # the commands' default configs are relative to the repository
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fixtures = build_fixtures(Path(tmp))
        print(f"fixtures built in {time.perf_counter() - t0:.0f} s; {len(cases)} cases")
        bad = 0
        for case in cases:
            problems, err = run_case(case, fixtures, args.subprocess)
            line = next((ln for ln in err.splitlines() if "error:" in ln), "")
            if problems:
                bad += 1
                print(f"FAIL {case.name}: {'; '.join(problems)}\n     {case.argv}\n     {err.strip()[-400:]}")
            elif args.verbose:
                print(f"ok   {case.name}: {line[:160]}")
        if Path(fixtures["ro"]).name == "read-only":
            Path(fixtures["ro"]).chmod(0o755)
    print(f"{len(cases) - bad} of {len(cases)} cases behave ({time.perf_counter() - t0:.0f} s in all)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
