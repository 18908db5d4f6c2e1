#!/usr/bin/env bash
# Build the TensorRT engine on the board from an export directory copied from the workstation
# (guide, step 4). No torch and no checkpoint are needed; hashes and TensorRT limits are checked
# before the builder runs.
#   export/build_engine.sh EXPORT_DIR [OUT_DIR] [WORKSPACE_MIB]
# OUT_DIR defaults to EXPORT_DIR-engine; the timing cache EXPORT_DIR.cache is reused across builds
# on this board and TensorRT version (keep one per board type and TensorRT release).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 ]]; then
    echo "usage: export/build_engine.sh EXPORT_DIR [OUT_DIR] [WORKSPACE_MIB]" >&2
    exit 2
fi
src="${1%/}"
out="${2:-${src}-engine}"
workspace="${3:-2048}"
if [[ ! -f "$src/manifest.json" ]]; then
    echo "build_engine.sh: $src is not an export directory (no manifest.json); export with cass-deploy export" >&2
    exit 2
fi
exec cass-deploy export "$src" --engine --workspace "$workspace" --timing-cache "${src}.cache" --out "$out"
