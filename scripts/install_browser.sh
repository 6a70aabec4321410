#!/usr/bin/env bash
# Headless Chromium for the side-by-side sheet's browser test (tests/evaluation/test_compare_sheet.py)
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
exec "$(dirname "$0")/apt_install.sh" chromium
