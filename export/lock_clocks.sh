#!/usr/bin/env bash
# Fix a Jetson's power mode and pin its clocks for repeatable latency (guide, step 3).
#   export/lock_clocks.sh [MODE]        nvpmodel mode (default 0: MAXN on AGX Orin / Orin NX;
#                                       on a JetPack 6.2 Orin Nano "Super", MAXN_SUPER is mode 2)
#   export/lock_clocks.sh --restore     put back the clocks saved by the last lock
# The clocks before locking are stored in ~/.cass-deploy/jetson_clocks.conf.
set -euo pipefail

saved="${HOME}/.cass-deploy/jetson_clocks.conf"
if [[ ! -f /etc/nv_tegra_release ]]; then
    echo "lock_clocks.sh: not an NVIDIA Jetson (no /etc/nv_tegra_release); nothing to lock" >&2
    exit 2
fi
for tool in nvpmodel jetson_clocks; do
    command -v "$tool" >/dev/null || { echo "lock_clocks.sh: $tool not found (it ships with L4T)" >&2; exit 2; }
done

if [[ "${1:-}" == "--restore" ]]; then
    [[ -f "$saved" ]] || { echo "lock_clocks.sh: no saved clocks at $saved; lock first" >&2; exit 2; }
    sudo jetson_clocks --restore "$saved"
    sudo jetson_clocks --show
    exit 0
fi

mode="${1:-0}"
if ! [[ "$mode" =~ ^[0-9]+$ ]]; then
    echo "lock_clocks.sh: power mode must be a number (see: sudo nvpmodel -q --verbose), got '$mode'" >&2
    exit 2
fi
mkdir -p "$(dirname "$saved")"
sudo nvpmodel -m "$mode"
sudo jetson_clocks --store "$saved"
sudo jetson_clocks
sudo nvpmodel -q
sudo jetson_clocks --show   # check: MinFreq = MaxFreq = CurrentFreq for CPU, GPU and EMC
