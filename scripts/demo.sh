#!/bin/bash
# The demo: write a small model with the official safetensors library, mount it,
# look around the way a user would, read one tensor partially, unmount.
set -euo pipefail
BIN=$(realpath "${1:-build/safetensorsfs}")
PY=$(realpath -s "${PYTHON:-.venv/bin/python}")
MAKE_MODEL=$(realpath scripts/make_demo_model.py)
work=$(mktemp -d /tmp/safetensorsfs-demo.XXXXXX)
cleanup() {
	cd /
	if mountpoint -q "$work/mnt"; then fusermount3 -u "$work/mnt"; fi
	rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
model=demo.safetensors
mnt=mnt
mkdir -p "$mnt"

echo "# in $work: a small model written by the official safetensors library"
"$PY" "$MAKE_MODEL" "$model"
show() { printf '\n$ %s\n' "$*"; "$@"; }

show "$BIN" "$model" "$mnt"
show ls -R "$mnt"
show getfattr -d "$mnt"
show getfattr -d "$mnt/model/layers/0/attn/q_proj/weight"
printf '\n$ cat %s | xxd | head -n 4\n' "$mnt/model/embed_tokens/weight"
# head closes the pipe early; that is not a failure.
(set +o pipefail; cat "$mnt/model/embed_tokens/weight" | xxd | head -n 4)
t="$mnt/model/layers/1/mlp/up_proj/weight"
off=$(getfattr --only-values -n user.safetensors.offset "$t")
size=$(stat -c %s "$t")
echo
echo "# a partial load straight from the backing file: the tensor's first 64 bytes, by its offset"
show dd if="$model" iflag=skip_bytes,count_bytes skip="$off" count=64 status=none of=part.bin
show cmp part.bin <(head -c 64 "$t")
echo "same bytes as the first 64 of the ${size}-byte tensor file"
show fusermount3 -u "$mnt"
