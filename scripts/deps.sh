#!/bin/sh
# Installs what safetensorsfs needs to build and test, and nothing when all is there.
# Debian packages via apt-get (as root, or through sudo); Python packages go into the
# project's venv (Makefile target `venv`), never system-wide.
set -eu

# squashfuse and squashfs-tools: make bench's comparison with another FUSE filesystem.
PACKAGES="build-essential pkg-config libfuse3-dev fuse3 libjson-c-dev attr valgrind libamdhip64-dev squashfuse squashfs-tools"

missing=""
for p in $PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
# Debian's own python3 needs python3-venv for `python3 -m venv`; pyenv's and others have it.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
	missing="$missing python3-venv"
fi
[ -n "$missing" ] || exit 0

if [ "$(id -u)" -eq 0 ]; then
	sudo=""
elif command -v sudo >/dev/null 2>&1; then
	sudo="sudo"
else
	echo "deps.sh: missing packages:$missing; install them as root (apt-get install$missing)" >&2
	exit 1
fi
echo "deps.sh: installing$missing"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
