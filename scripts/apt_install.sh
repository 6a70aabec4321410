#!/usr/bin/env bash
# Install Debian/Ubuntu packages with apt-get (as root, or through sudo); apt's output is
# shown only if the install fails. Shared by the scripts that find what is missing
# (scripts/install_browser.sh, deploy/cpp/install_deps.sh).
#   scripts/apt_install.sh PACKAGE...
set -euo pipefail

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing system packages ($*) and no apt-get here: install them with your package manager" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "error: missing system packages ($*); run as root: apt-get install -y $*" >&2
        exit 1
    fi
fi
echo "installing system packages: $*"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
        --no-install-recommends "$@"; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "error: apt-get could not install $* (output above)" >&2
    exit 1
fi
