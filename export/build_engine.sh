#!/usr/bin/env bash
# Build the TensorRT engine on the board from an export directory copied from the workstation
# (guide, step 4). No torch and no checkpoint are needed; hashes and TensorRT limits are checked
# before the builder runs.
#   export/build_engine.sh EXPORT_DIR [OUT_DIR] [WORKSPACE_MIB]
# OUT_DIR defaults to EXPORT_DIR-engine; the timing cache EXPORT_DIR.cache is reused across builds
# on this board and TensorRT version (keep one per board type and TensorRT release).
set -euo pipefail
# shellcheck source=export/common.sh
source "$(dirname "$0")/common.sh"

need_args 1 3 $# "export/build_engine.sh EXPORT_DIR [OUT_DIR] [WORKSPACE_MIB]"
src="${1%/}"
[[ -f "$src/manifest.json" ]] || die "$src is not an export directory (no manifest.json); export with cass-deploy export"
out="${2:-${src}-engine}"
workspace="${3:-2048}"
exec cass-deploy export "$src" --engine --workspace "$workspace" --timing-cache "${src}.cache" --out "$out"
