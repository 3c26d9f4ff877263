"""Each image's size per architecture, uncompressed and compressed, for images/sizes.sh and the README.

Uncompressed: Docker's own figure (`docker image inspect .Size`, the sum of
the layers' file bytes). Compressed: what a node downloads, the config plus
each layer gzip-compressed as `make publish` pushes it (release.oci, gzip
level 6). Per architecture, the distinct layers of the four stage images
(shared layers once: what a node pulls and stores for a pod using all four)
are totalled the same two ways.
"""

from __future__ import annotations

import argparse
import subprocess
import tarfile
import tempfile
from pathlib import Path

from . import oci

#: The four-stage chain, whose distinct layers are totalled (what a node pulls for such a pod).
STAGES = ("fetch-key", "fetch-model", "decrypt", "unpack")
BASES = ("base", "cloud-base")
MB = 1_000_000  # docker's "MB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m release.sizes")
    p.add_argument("--tag", default="latest")
    p.add_argument("--archs", required=True, help="amd64,arm64")
    p.add_argument("--engine-arch", required=True)
    p.add_argument("--stages", required=True, help="every stage image, comma-separated (images/targets.sh)")
    a = p.parse_args(argv)
    print(f"{'IMAGE':34s} {'ARCH':5s} {'BYTES':>10s} {'MB':>7s} {'GZIP_MB':>8s} {'LAYERS':>6s}")
    for arch in a.archs.split(","):
        suffix = "" if arch == a.engine_arch else f"-{arch}"
        names = [f"modelseal/{n}:{a.tag}{suffix}" for n in BASES + tuple(a.stages.split(","))]
        present = [n for n in names
                   if subprocess.run(["docker", "image", "inspect", n], capture_output=True).returncode == 0]
        for n in names:
            if n not in present:
                print(f"{n:34s} {arch:5s} {'missing':>10s}")
        if not present:
            continue
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            images = oci.save(present, Path(tmp))
            files = _file_bytes(images)
            for n in present:
                img = images[n]
                size = int(subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", n], check=True,
                                          capture_output=True, text=True).stdout)
                gz = len(img.config) + sum(x.size for x in img.layers)
                print(f"{n:34s} {arch:5s} {size:10d} {size / MB:7.1f} {gz / MB:8.1f} {len(img.layers):6d}")
            distinct = {x.diff_id: x for n in present if n.split("/")[1].split(":")[0] in STAGES
                        for x in images[n].layers}
            total = sum(files[d] for d in distinct)
            gz = sum(x.size for x in distinct.values())
            print(f"{'4 stages, distinct layers':34s} {arch:5s} {total:10d} {total / MB:7.1f} {gz / MB:8.1f} "
                  f"{len(distinct):6d}")
    return 0


def _file_bytes(images: dict[str, oci.Image]) -> dict[str, int]:
    """Each layer's regular-file bytes (Docker's measure: tar headers and padding excluded)."""
    out: dict[str, int] = {}
    for img in images.values():
        for layer in img.layers:
            if layer.diff_id not in out:
                with tarfile.open(layer.path, "r:gz") as t:
                    out[layer.diff_id] = sum(m.size for m in t if m.isreg())
    return out


if __name__ == "__main__":
    raise SystemExit(main())
