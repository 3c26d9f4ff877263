#!/usr/bin/env python3
"""A .seal with the header and the exact length of a large model, without writing the model.

    tools/sized_seal.py OUT.seal GB [SHARDS]

The header declares what `seal` records for SHARDS safetensors shards of GB
gigabytes (10^9 bytes) in all plus five small config and tokenizer files;
the file is then extended, sparse, to the length its ciphertext would have.
`modelseal inspect --resources OUT.seal` reads exactly these two things (the
header's sizes and the file's length), so its output is the one a real
model of that size gets: README.md's 70 GB example was made this way. The
payload itself is not a real ciphertext (decrypting it fails, exit 4).
"""

from __future__ import annotations

import os
import sys

from modelseal import sealfile
from modelseal.streaming import AES256_GCM_HKDF_1MB as P

SMALL = [700, 180, 50_000, 9_000_000, 400]  # config, generation_config, tokenizer_config, tokenizer, special tokens


def main() -> None:
    path, gb = sys.argv[1], float(sys.argv[2])
    shards = int(sys.argv[3]) if len(sys.argv) > 3 else max(1, round(gb / 4.9))
    total = int(gb * 1e9)
    files = [total // shards] * (shards - 1) + [total - total // shards * (shards - 1)] + SMALL
    tar = sum(512 + -(-n // 512) * 512 for n in files) + 512 + 2 * 512  # headers and data, "./", end blocks
    tar = -(-tar // 10240) * 10240  # whole 10 KiB records
    sizes = sealfile.Sizes(tar_bytes=tar, file_bytes=sum(files), files=len(files))
    name = os.path.basename(path).removesuffix(".seal")
    with open(path, "wb") as out:
        sealfile.seal_writer(out, sealfile.Header(key_id="", name=name, sizes=sizes), os.urandom(32)).close()
    os.truncate(path, os.path.getsize(path) - P.ciphertext_size(0) + P.ciphertext_size(tar))


if __name__ == "__main__":
    main()
