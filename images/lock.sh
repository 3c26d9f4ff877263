#!/usr/bin/env bash
# Write the sha256 of every wheel the images may install into
# images/requirements-core.txt and requirements-cloud.txt, for both
# architectures, so the image builds can run `pip install --require-hashes`:
#
#   images/lock.sh          # after changing a pin (needs PyPI; the builds do not)
#
# The pins themselves are edited by hand (name==version, one per line, every
# transitive dependency too); this only (re)writes the --hash lines under them.
# Each pin's wheels are downloaded as the images' Python sees them (CPython
# 3.11, manylinux down from bookworm's glibc 2.36) for x86_64 and aarch64, and
# hashed (pip hash's sha256). A wheel pip needs that has no pin of its own is
# refused, so the files stay complete: --require-hashes would fail on it later.
# Env: PIP (default "python3 -m pip"); pip's configuration files and
# PIP_FIND_LINKS are ignored, so the hashes are PyPI's files, not a local copy's.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
PIP=${PIP:-python3 -m pip}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for arch in x86_64 aarch64; do
    platforms=()
    for v in $(seq 36 -1 17); do platforms+=("--platform" "manylinux_2_${v}_$arch"); done
    platforms+=("--platform" "manylinux2014_$arch")
    # The pins without their hashes (pip would check the old ones).
    for f in core cloud; do
        sed -e 's/\\$//' -e 's/--hash=[^ ]*//g' "$here/requirements-$f.txt" >"$tmp/$f.txt"
    done
    echo "lock: downloading the pinned wheels for cp311 manylinux $arch" >&2
    # shellcheck disable=SC2086  # PIP is a command line on purpose
    env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $PIP download --quiet --dest "$tmp/$arch" \
        --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}" \
        -r "$tmp/core.txt" -r "$tmp/cloud.txt" >&2
done

python3 - "$tmp" "$here/requirements-core.txt" "$here/requirements-cloud.txt" <<'PY'
import glob, hashlib, os, re, sys

tmp, files = sys.argv[1], sys.argv[2:]
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
wheels = {}  # (name, version) -> {sha256}
for path in glob.glob(os.path.join(tmp, "*", "*.whl")):
    name, version = os.path.basename(path).split("-")[:2]
    with open(path, "rb") as f:
        wheels.setdefault((norm(name), version), set()).add(hashlib.sha256(f.read()).hexdigest())

pinned = set()
for path in files:
    out, logical = [], ""
    for raw in open(path):
        line = raw.rstrip("\n")
        logical += line.rstrip("\\").rstrip() + " "
        if line.endswith("\\"):
            continue
        text, logical = logical.strip(), ""
        req = re.sub(r"--hash=\S+", "", text.split("#")[0]).strip()
        if not req:
            out.append(text)
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", req)
        if not m:
            sys.exit(f"lock: {path}: {req!r} is not name==version")
        key = (norm(m[1]), m[2])
        if key not in wheels:
            sys.exit(f"lock: {path}: no wheel downloaded for {req}")
        pinned.add(key)
        out.append(" \\\n".join([req] + [f"    --hash=sha256:{h}" for h in sorted(wheels[key])]))
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"lock: {os.path.relpath(path)}: {sum(1 for line in out if '==' in line)} pins hashed", file=sys.stderr)
unpinned = sorted(f"{n}=={v}" for n, v in wheels if (n, v) not in pinned)
if unpinned:
    sys.exit("lock: needed but not pinned in images/requirements-*.txt: " + ", ".join(unpinned))
PY
