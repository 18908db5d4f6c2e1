"""``cass-deploy export``: checkpoint → ONNX (predictor or full) → optional TensorRT engine."""

from __future__ import annotations

import argparse
from pathlib import Path

from cass_deploy.backends.probe import lazy_import
from cass_deploy.errors import InputError
from cass_deploy.export.device_engine import engine_from_export
from cass_deploy.export.settings import apply_profile, request_from

# torch is imported only for a checkpoint: building an engine from an export directory on the device
# (the Jetson workflow) needs neither torch nor the checkpoint.
pipeline = lazy_import("cass_deploy.export.pipeline")

HELP = "export a checkpoint to ONNX (fp32/fp16/int8) and optionally a TensorRT engine, with a manifest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="trained checkpoint (.pt), or an export directory to build its engine "
                                      "on this device (with --engine; no torch or checkpoint needed)")
    p.add_argument("--out", required=True, help="output directory (model.onnx, model.engine, manifest.json)")
    p.add_argument("--profile", help="deployment profile name or YAML (jetson-orin-nano, jetson-orin-nx, "
                                     "jetson-agx-orin, x86-gpu, cpu); explicit flags override it")
    p.add_argument("--parts", choices=("predictor", "full"), default=None,
                   help="predictor: importance predictor + pruner only; full: the whole pruned detector (default)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None)
    p.add_argument("--batch", type=int, default=None, help="fixed batch size (default 1)")
    p.add_argument("--dynamic-batch", type=int, nargs=3, metavar=("MIN", "OPT", "MAX"), default=None,
                   help="symbolic batch dimension with a TensorRT optimisation profile")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim simplification")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="export at another input size (position embedding resampled)")
    p.add_argument("--pruner", dest="pruner_mode", choices=("global", "band", "threshold"), default=None)
    p.add_argument("--keep-ratio", type=float, default=None)
    p.add_argument("--no-keep-predictor-fp32", action="store_true",
                   help="also convert the predictor and pruner to fp16/int8 (default: they stay fp32)")
    p.add_argument("--calib-data", default="synthetic", help="int8 calibration images: 'synthetic' or a dataset dir")
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--calib-method", choices=("minmax", "entropy", "percentile"), default="minmax")
    p.add_argument("--target", default=None,
                   help="limits to check: onnxruntime-cpu, onnxruntime-cuda, tensorrt10, tensorrt11, tensorrt10-dla")
    p.add_argument("--engine", action="store_true", default=None, help="also build a TensorRT engine (needs TensorRT)")
    p.add_argument("--workspace", dest="workspace_mib", type=int, default=None, help="TensorRT workspace in MiB")
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file (read and updated)")
    p.add_argument("--dla-core", type=int, default=None, help="build for this DLA core (Jetson, TensorRT 10)")
    p.add_argument("--no-gpu-fallback", action="store_true", help="forbid DLA layers falling back to the GPU")
    p.add_argument("--strongly-typed", action="store_true", default=None,
                   help="TensorRT 10: strongly typed network (TensorRT 11 always is)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output directory")


def run(args: argparse.Namespace) -> int:


    src = Path(args.checkpoint)
    if src.is_dir():
        if not args.engine:
            raise InputError(f"{src} is an export directory: add --engine to build its TensorRT engine here")
        engine_from_export(src, Path(args.out), workspace_mib=args.workspace_mib,
                           timing_cache=Path(args.timing_cache) if args.timing_cache else None,
                           dla_core=args.dla_core, gpu_fallback=not args.no_gpu_fallback,
                           strongly_typed=args.strongly_typed, force=args.force)
        return 0
    kwargs = dict(checkpoint=Path(args.checkpoint), out=Path(args.out), parts=args.parts, precision=args.precision,
                  batch=args.batch, dynamic_batch=tuple(args.dynamic_batch) if args.dynamic_batch else None,
                  opset=args.opset, simplify=False if args.no_simplify else None,
                  image_size=tuple(args.image_size) if args.image_size else None, pruner_mode=args.pruner_mode,
                  keep_ratio=args.keep_ratio, keep_predictor_fp32=False if args.no_keep_predictor_fp32 else None,
                  calib_data=args.calib_data, calib_images=args.calib_images, calib_method=args.calib_method,
                  target=args.target, engine=args.engine, workspace_mib=args.workspace_mib,
                  timing_cache=Path(args.timing_cache) if args.timing_cache else None, dla_core=args.dla_core,
                  gpu_fallback=False if args.no_gpu_fallback else None, strongly_typed=args.strongly_typed,
                  force=args.force)
    kwargs = apply_profile(kwargs, args.profile)
    pipeline.run_export(request_from(**kwargs))
    return 0
