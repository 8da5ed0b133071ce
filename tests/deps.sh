#!/bin/sh
# Installs what the test suite needs beyond cargo: Xen's public headers (the
# ABI test compiles C against them) and a C compiler. Installs only as root
# with apt-get; otherwise says what is missing and the ABI test skips.
set -eu
need=""
[ -f /usr/include/xen/io/blkif.h ] || need="$need libxen-dev"
command -v cc >/dev/null 2>&1 || need="$need gcc"
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "deps: installing$need"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
else
    echo "deps: missing$need (install them to run the ABI test against Xen's headers)"
fi
