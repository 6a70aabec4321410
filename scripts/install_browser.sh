#!/usr/bin/env bash
# Headless Chromium for the browser tests (tests/evaluation/test_compare_sheet.py,
# tests/deploy/test_serving.py) and for looking at pages by hand (chromium --headless
# --screenshot=...), and a CJK font so that Chinese prompts render (without one they show as
# empty boxes). The tests drive the browser over the DevTools protocol on a pipe, so no driver
# and no Python package is needed. Installs Debian's `chromium` and `fonts-noto-cjk` with
# apt-get, each only when missing: a no-op on a machine that has both.
#   scripts/install_browser.sh           # install what is missing
#   scripts/install_browser.sh --check   # only report; exit 1 if something is missing
set -euo pipefail

missing=()
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    missing+=(chromium)
fi
# Any font fontconfig knows for Chinese will do; fontconfig comes with chromium.
if ! command -v fc-list >/dev/null 2>&1 || [ -z "$(fc-list :lang=zh family 2>/dev/null)" ]; then
    missing+=(fonts-noto-cjk)
fi
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "missing: ${missing[*]} (scripts/install_browser.sh installs them)" >&2
    exit 1
fi
exec "$(dirname "$0")/apt_install.sh" "${missing[@]}"
