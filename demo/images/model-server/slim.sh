#!/bin/sh
# Run as root in the build stage of demo/images/model-server/Dockerfile, on the
# venv /opt/mlserver that the stage just installed: drop what a read-only
# serving container never runs, strip debug info, compile byte-code, and
# prove the result still loads and predicts.
set -eu
venv=/opt/mlserver
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# Test suites (pandas alone ships 46 MB of them) and C headers.
find "$site" -depth -type d \( -name tests -o -name test \) -exec rm -rf {} +
find "$site" -type d -name include -path '*/numpy/*' -prune -exec rm -rf {} +

# Wheels ship shared objects with symbol tables and debug info (ml_dtypes'
# extension: 24 MB). strip comes from binutils .debs, unpacked to a scratch
# directory and never installed (images/wheelhouse.sh fetches them). Files
# auditwheel rewrote with patchelf (an RPATH, or vendored into *.libs/) are
# left alone: strip breaks their segment layout ("ELF load command
# address/offset not page-aligned").
if ls /wheels/debs/*.deb >/dev/null 2>&1; then
    bu=/tmp/binutils
    for d in /wheels/debs/*.deb; do dpkg-deb -x "$d" "$bu"; done
    strip=$(ls "$bu"/usr/bin/*-linux-gnu-strip)
    readelf=$(ls "$bu"/usr/bin/*-linux-gnu-readelf)
    LD_LIBRARY_PATH="$bu/usr/lib/$(basename "$strip" -strip)"
    export LD_LIBRARY_PATH
    find "$venv" -type f -name '*.so*' ! -path '*.libs/*' | while read -r f; do
        head -c4 "$f" | grep -q ELF || continue
        "$readelf" -d "$f" | grep -qE '\((RPATH|RUNPATH)\)' && continue
        "$strip" --strip-unneeded "$f"
    done
    unset LD_LIBRARY_PATH
    rm -rf "$bu"
else
    echo "slim.sh: no binutils .debs; shared objects stay unstripped"
fi

# Byte-code once, never checked against sources: the root filesystem is
# read-only at run time, so Python could not write it then.
"$venv/bin/python" -m compileall -q -j0 --invalidation-mode unchecked-hash "$site" >/dev/null

# Smoke test: every shared object finds its libraries (manylinux wheels
# expect libstdc++ from the base image), and the runtime trains, pickles,
# loads and predicts, as the owner and the server will.
# (Extension modules only: the libraries auditwheel vendored into *.libs/
# are found through the extensions' RPATH, not their own.)
missing=$(find "$venv" -type f -name '*.so*' ! -path '*.libs/*' | while read -r f; do
    ldd "$f" 2>/dev/null | grep 'not found' | sed "s|^|$f: |"
done)
if [ -n "$missing" ]; then echo "$missing"; exit 1; fi
cd /tmp
"$venv/bin/python" - <<'PY'
import asyncio, io, joblib
import mlserver.cli.main, mlserver_sklearn  # noqa: F401  (the entry point and the runtime import)
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
X, y = load_iris(return_X_y=True)
buf = io.BytesIO()
joblib.dump(RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y), buf)
buf.seek(0)
assert joblib.load(buf).predict(X[:1])[0] == y[0]
PY
rm -rf /tmp/* /root/.cache
