#!/usr/bin/env bash
# The whole job on one machine, no containers: make a demo model, keygen,
# seal, then decrypt on tmpfs (/dev/shm), and check the bytes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /var/tmp/modelseal-demo.XXXXXX)   # the owner's side: disk is fine
shm=$(mktemp -d /dev/shm/modelseal-demo.XXXXXX)    # the pod's side: tmpfs only
trap 'rm -rf "$work" "$shm"' EXIT

python3 "$here/make_model.py" "$work/model"
modelseal keygen -o "$work/model.key" 2>/dev/null
modelseal seal "$work/model" -o "$work/model.seal" --key "$work/model.key" --compress zstd --name demo 2>/dev/null
modelseal inspect "$work/model.seal" 2>/dev/null | head -20

# The pod's init containers, in order: the key on tmpfs, then decrypt.
cp "$work/model.key" "$shm/key"
modelseal decrypt --in "$work/model.seal" --key "$shm/key" -o "$shm/model.tar" --delete-key
mkdir "$shm/model" && tar --zstd -xf "$shm/model.tar" -C "$shm/model" && rm "$shm/model.tar"
diff -r "$work/model" "$shm/model"
echo "demo: OK: the model decrypted on tmpfs matches the original byte for byte"
