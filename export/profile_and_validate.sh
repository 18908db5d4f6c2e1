#!/usr/bin/env bash
# Profile the deployed model on the target, then validate its near-field recall against the dense
# reference saved on the workstation (guide, steps 5 and 6). Exits with validate's code: 0 when every
# gate passes, 1 when one fails (so a deployment script can stop), 2 on bad input.
#   export/profile_and_validate.sh MODEL REFERENCE_JSON DATA [OUT_DIR]
# MODEL: an export directory (its engine when one is there and TensorRT is usable, else its ONNX),
# a .engine or a .onnx. Gates: MIN_NEAR_RECALL (default 0.90) and MAX_RECALL_DROP (default 0.02)
# from the environment; WARMUP / ITERS (default 50 / 500) for the profile; IMAGES (default: validate's)
# must be the number the reference was made with, or validate refuses to compare.
set -euo pipefail
# shellcheck source=export/common.sh
source "$(dirname "$0")/common.sh"

need_args 3 4 $# "export/profile_and_validate.sh MODEL REFERENCE_JSON DATA [OUT_DIR]"
model="${1%/}"
reference="$2"
data="$3"
out="${4:-$(basename "$model")-acceptance}"
[[ ! -e "$out" ]] || die "$out already exists; remove it or name another OUT_DIR"

cass-deploy profile "$model" --warmup "${WARMUP:-50}" --iters "${ITERS:-500}" --out "$out/profile"
cass-deploy validate "$model" --data "$data" --reference "$reference" ${IMAGES:+--images "$IMAGES"} \
    --min-near-recall "${MIN_NEAR_RECALL:-0.90}" --max-recall-drop "${MAX_RECALL_DROP:-0.02}" \
    --json "$out/validate.json"
