#!/usr/bin/env bash
# System packages the C++ runner needs to build: a C++17 compiler, CMake, and the
# headers of libpng, zlib, OpenSSL (libcrypto, for SHA-256) and nlohmann-json. Installs (Debian/Ubuntu, apt-get) only
# what is missing, so it is a no-op on a machine that has them.
#   deploy/cpp/install_deps.sh           # install what is missing
#   deploy/cpp/install_deps.sh --check   # only report; exit 1 if something is missing
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
[ -f /usr/include/png.h ] || missing+=(libpng-dev)
[ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
[ -f /usr/include/openssl/evp.h ] || missing+=(libssl-dev)
[ -f /usr/include/nlohmann/json.hpp ] || missing+=(nlohmann-json3-dev)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "missing system packages: ${missing[*]}" >&2
    exit 1
fi
exec "$(dirname "$0")/../../scripts/apt_install.sh" "${missing[@]}"
