#!/bin/sh
# The old recipe's owner step (runs in modelseal/owner): a fresh passphrase
# for the old key server, and the model directory as `tar | gpg -c` with
# gpg's defaults, exactly what examples/kubernetes/legacy-original.yaml
# expects baked into its image. The tar only ever passes through a pipe.
#
#   /export/iris            the trained model (tmpfs, read-only here)
#   /keys/model             the passphrase the key server hands out (tmpfs)
#   /legacy/model.tar.gpg   the ciphertext (the disk volume standing in for the baked image)
set -eu
umask 077
GNUPGHOME=$(mktemp -d)  # /tmp: a small tmpfs; gpg keeps its random seed there
export GNUPGHOME
python3 -c 'import secrets, sys; sys.stdout.write(secrets.token_urlsafe(32))' >/keys/model
tar -C /export/iris -cf - . |
    gpg --batch --quiet --pinentry-mode loopback --passphrase-file /keys/model --symmetric \
        -o /legacy/model.tar.gpg.partial
mv /legacy/model.tar.gpg.partial /legacy/model.tar.gpg
chmod 0444 /legacy/model.tar.gpg
gpgconf --kill gpg-agent
rm -rf "$GNUPGHOME"
printf '{"stage": "legacy-owner", "event": "ready", "ciphertext": "/legacy/model.tar.gpg", "bytes": %s, "passphrase": "/keys/model"}\n' \
    "$(stat -c %s /legacy/model.tar.gpg)" >&2
