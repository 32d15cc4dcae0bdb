#!/bin/sh
# Installs the Debian packages one purpose needs, and nothing when all is there:
#
#   scripts/deps.sh build   what `make` and `make demo` need: the mount itself
#   scripts/deps.sh test    build's, and what `make test` needs besides
#   scripts/deps.sh bench   test's, and the other filesystems `make bench` compares with
#
# The names are the same on Debian 12 and Ubuntu 22.04/24.04.  No GPU toolkit is
# needed: the GPU backends build from the declarations in gpu_direct/ and load their
# runtimes when first used.  Python packages go into the project's .venv (the
# Makefile's `venv`), pinned in scripts/requirements.txt, never system-wide.
set -eu

BUILD_PACKAGES="build-essential pkg-config libfuse3-dev fuse3 libjson-c-dev libcurl4-openssl-dev attr"
# valgrind: the parser run over the corpus (tests/test_corpus.py); rsync: the tools another
# user runs over a shared mount (tests/test_shared_mount.py); nginx-light and openssl: the
# HTTP(S) server remote sources are tested against, and its CA and certificate; curl: the
# independent client those servers are checked with.
TEST_PACKAGES="valgrind rsync nginx-light openssl curl"
# squashfuse, squashfs-tools: the C FUSE peer that make bench reads the same files through.
BENCH_PACKAGES="squashfuse squashfs-tools"

case "${1:-build}" in
build) packages=$BUILD_PACKAGES ;;
test) packages="$BUILD_PACKAGES $TEST_PACKAGES" ;;
bench) packages="$BUILD_PACKAGES $TEST_PACKAGES $BENCH_PACKAGES" ;;
*)
	echo "usage: scripts/deps.sh [build|test|bench]" >&2
	exit 2
	;;
esac

missing=""
for p in $packages; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
# Debian's own python3 needs python3-venv for `python3 -m venv`; pyenv's and others have it.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
	missing="$missing python3-venv"
fi
[ -n "$missing" ] || exit 0

if [ "$(id -u)" -eq 0 ]; then
	sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	sudo="sudo -n"
elif command -v sudo >/dev/null 2>&1 && [ -t 0 ]; then
	sudo="sudo" # asks for the password on this terminal
else
	echo "deps.sh: missing packages:$missing; install them as root with: apt-get install$missing" >&2
	exit 1
fi
echo "deps.sh: installing$missing"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
