#!/usr/bin/env bash
# Fix a Jetson's power mode and pin its clocks for repeatable latency (guide, step 3).
#   export/lock_clocks.sh [MODE]        nvpmodel mode (default 0: MAXN on AGX Orin / Orin NX;
#                                       on a JetPack 6.2 Orin Nano "Super", MAXN_SUPER is mode 2)
#   export/lock_clocks.sh --restore     put back the clocks saved by the last lock
# The clocks before locking are stored in ~/.cass-deploy/jetson_clocks.conf.
set -euo pipefail
# shellcheck source=export/common.sh
source "$(dirname "$0")/common.sh"

saved="${HOME}/.cass-deploy/jetson_clocks.conf"
[[ -f /etc/nv_tegra_release ]] || die "not an NVIDIA Jetson (no /etc/nv_tegra_release); nothing to lock"
for tool in nvpmodel jetson_clocks; do
    command -v "$tool" >/dev/null || die "$tool not found (it ships with L4T)"
done

if [[ "${1:-}" == "--restore" ]]; then
    [[ -f "$saved" ]] || die "no saved clocks at $saved; lock first"
    sudo jetson_clocks --restore "$saved"
    sudo jetson_clocks --show
    exit 0
fi

mode="${1:-0}"
[[ "$mode" =~ ^[0-9]+$ ]] || die "power mode must be a number (see: sudo nvpmodel -q --verbose), got '$mode'"
mkdir -p "$(dirname "$saved")"
sudo nvpmodel -m "$mode"
sudo jetson_clocks --store "$saved"
sudo jetson_clocks
sudo nvpmodel -q
sudo jetson_clocks --show   # check: MinFreq = MaxFreq = CurrentFreq for CPU, GPU and EMC
