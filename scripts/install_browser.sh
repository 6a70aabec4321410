#!/usr/bin/env bash
# Headless Chromium for the side-by-side sheet's browser test (tests/test_compare_sheet.py)
# and for looking at sheets by hand (chromium --headless --screenshot=...). The test drives
# it over the DevTools protocol on a pipe, so no driver and no Python package is needed.
# Installs Debian's `chromium` with apt-get only when no Chromium is found: a no-op on a
# machine that has one.
#   scripts/install_browser.sh           # install if missing
#   scripts/install_browser.sh --check   # only report; exit 1 if missing
set -euo pipefail

for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
        exit 0
    fi
done
if [ "${1:-}" = "--check" ]; then
    echo "missing: chromium (scripts/install_browser.sh installs it)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: chromium is missing and there is no apt-get here: install Chromium with your package manager" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "error: chromium is missing; run as root: apt-get install -y chromium" >&2
        exit 1
    fi
fi
echo "installing system package: chromium"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# apt's chatter goes to the log, shown only if the install fails.
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
        --no-install-recommends chromium; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "error: apt-get could not install chromium (output above)" >&2
    exit 1
fi
