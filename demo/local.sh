#!/usr/bin/env bash
# The whole job on one machine, no containers: make a demo model, keygen,
# seal, then decrypt + unpack (and the single-pass run) on tmpfs, and check the bytes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /var/tmp/modelseal-demo.XXXXXX)   # the owner's side: disk is fine
shm=$(mktemp -d /dev/shm/modelseal-demo.XXXXXX)    # the pod's side: tmpfs only
trap 'rm -rf "$work" "$shm"' EXIT

python3 "$here/make_model.py" "$work/model"
modelseal keygen -o "$work/model.key" 2>/dev/null
modelseal seal "$work/model" -o "$work/model.seal" --key "$work/model.key" --compress zstd --name demo 2>/dev/null
modelseal inspect "$work/model.seal" 2>/dev/null | head -20

# The pod's init containers, in order: the key on tmpfs, decrypt, unpack.
cp "$work/model.key" "$shm/key"
modelseal decrypt --in "$work/model.seal" --key "$shm/key" -o "$shm/model.tar" --delete-key
modelseal unpack --in "$shm/model.tar" -o "$shm/model" --delete-input
diff -r "$work/model" "$shm/model"

# The same in one streaming pass: no ciphertext or tar file, only the tree.
cp "$work/model.key" "$shm/key"
modelseal run --source "file://$work/model.seal" --key "$shm/key" -o "$shm/model-run" --delete-key
diff -r "$work/model" "$shm/model-run"
echo "demo: OK: both unpacked models on tmpfs match the original byte for byte"
