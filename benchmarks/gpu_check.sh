#!/usr/bin/env bash
# benchmarks/gpu_check.sh OUT_DIR: one short run (<= 8 minutes) on a CUDA machine with torch, without
# TensorRT and without network. Runs the `gpu`-marked tests, the CASS loss benchmark and the runtime /
# profile benchmark with torch CUDA, and writes every figure into OUT_DIR:
#
#   gpu.txt           nvidia-smi (GPU name, driver, memory, compute capability) and torch's view of the GPU
#   env.txt           `cass-deploy env --json` (versions, backends usable here)
#   gpu-tests.txt     pytest -m gpu (+ gpu-tests.xml, JUnit)
#   loss-cuda.json    benchmarks/bench_loss.py --device cuda   (+ loss-cuda.txt, the printed table)
#   runtime-cuda.json benchmarks/bench_runtime.py --device cuda (+ runtime-cuda.txt)
#   summary.txt       what ran, exit code and seconds of each step
#
# Copy OUT_DIR to benchmarks/results/gpu-<gpu name>/ and commit it. Exits 2 (nothing written) without a
# CUDA GPU visible to torch, or when OUT_DIR exists and is not empty; exits 1 when a step fails.
# PYTHON (default: .venv/bin/python, else python3) is the interpreter with cass-deploy and CUDA torch.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"

die() {
    echo "$(basename "$0"): $*" >&2
    exit 2
}

[ "$#" -eq 1 ] || {
    echo "usage: benchmarks/gpu_check.sh OUT_DIR" >&2
    exit 2
}
out="$1"
if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
    die "$out exists and is not empty; give a new folder"
fi
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python="python3"; fi
fi
command -v "$python" >/dev/null 2>&1 || die "no Python interpreter $python (set PYTHON)"
gpu="$("$python" -c 'import torch, sys
if not torch.cuda.is_available():
    sys.exit("torch " + torch.__version__ + " sees no CUDA GPU (CPU build or no driver)")
print(torch.cuda.get_device_name(0))' 2>&1)" || die "needs a CUDA GPU visible to torch: ${gpu##*$'\n'}"

mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$root"
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1
status=0
# step NAME SECONDS CMD...: run CMD with a time limit, stdout+stderr to OUT/NAME.txt, a line in summary.txt
step() {
    local name="$1" limit="$2" start rc
    shift 2
    start=$(date +%s)
    rc=0
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1 || rc=$?
    printf '%-14s exit %-3s %4ss  %s\n' "$name" "$rc" "$(($(date +%s) - start))" "$*" | tee -a "$out/summary.txt"
    [ "$rc" -eq 0 ] || status=1
}

{
    echo "GPU (torch): $gpu"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>/dev/null || echo "nvidia-smi: not available"
    "$python" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"torch {torch.__version__} CUDA {torch.version.cuda}: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory >> 20} MiB, {p.multi_processor_count} SMs")'
} >"$out/gpu.txt" 2>&1
echo "gpu_check on $gpu, $(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$out/summary.txt"

step env 60 "$python" -m cass_deploy env --json
step gpu-tests 180 "$python" -m pytest -q -p no:xdist -p no:cacheprovider -m gpu --junitxml "$out/gpu-tests.xml" tests
step loss-cuda 120 "$python" benchmarks/bench_loss.py --device cuda --json "$out/loss-cuda.json"
step runtime-cuda 150 "$python" benchmarks/bench_runtime.py --device cuda --json "$out/runtime-cuda.json"

echo "figures in $out (summary.txt)"
exit "$status"
