# shellcheck shell=bash
# Sourced by the export/ scripts: one way to refuse (message on stderr, exit 2) and to check arguments.

# die MESSAGE...: "<script>: MESSAGE" on stderr, exit 2 (bad usage or input).
die() {
    echo "$(basename "$0"): $*" >&2
    exit 2
}

# need_args MIN MAX COUNT USAGE: exit 2 with "usage: USAGE" unless MIN <= COUNT <= MAX.
need_args() {
    if (($3 < $1 || $3 > $2)); then
        echo "usage: $4" >&2
        exit 2
    fi
}
