#!/usr/bin/env python3
"""Write a synthetic model tree for demo/local.sh's byte-for-byte checks.

Random float32 weights with a JSON config, shaped like a model directory,
plus a larger random shard so the bytes cross many encryption segments.
No server answers with it: the compose demo trains and serves a real model
(demo/train_iris.py, MLServer).
"""

import json
import os
import random
import struct
import sys

out = sys.argv[1]
os.makedirs(os.path.join(out, "variables"), exist_ok=True)
rng = random.Random(1234)
n_in, n_out = 4, 3
weights = [rng.uniform(-1, 1) for _ in range(n_in * n_out)]
with open(os.path.join(out, "variables", "weights.f32"), "wb") as f:
    f.write(struct.pack(f"<{len(weights)}f", *weights))
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({"name": "iris-linear", "inputs": n_in, "outputs": n_out,
               "labels": ["setosa", "versicolor", "virginica"]}, f)
with open(os.path.join(out, "variables", "shard-00001.bin"), "wb") as f:
    f.write(rng.randbytes(int(os.environ.get("DEMO_SHARD_BYTES", 8 * 2**20))))
os.makedirs(os.path.join(out, "assets.extra"), exist_ok=True)  # an empty directory, as SavedModels have
