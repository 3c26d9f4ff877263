#!/bin/sh
# Run as root inside the build stage of images/base/Dockerfile. Works for both
# kinds of base (python:3.11-slim-bookworm: python in /usr/local; Debian's
# python3: /usr), since both are Debian bookworm underneath.
set -eu

# Ask the base interpreter, not the venv's (first on PATH), for its paths.
basepy=$(readlink -f /opt/modelseal/bin/python3)
py() { "$basepy" -c "import sysconfig; print($1)"; }
stdlib=$(py 'sysconfig.get_paths()["stdlib"]')
syssite=$(py 'sysconfig.get_paths()["purelib"]')

venvsite=$(/opt/modelseal/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# glibc's iconv modules, wherever libc6 put them for this image's architecture
# (/usr/lib/x86_64-linux-gnu/gconv on amd64, /usr/lib/aarch64-linux-gnu/gconv on arm64).
gconv=$(dpkg -L "libc6:$(dpkg --print-architecture)" | grep '/gconv$' | head -n1)

# zstandard ships two 12 MB backends; CPython always loads the C one, so the
# CFFI one is dead weight.
rm -f "$venvsite"/zstandard/_cffi*.so "$venvsite"/zstandard/backend_cffi.py

# Wheels ship shared objects with debug info (zstandard's C backend: 11.6 MB,
# 1 MB stripped). strip comes from binutils .debs that wheelhouse.sh fetched,
# unpacked to a scratch dir (never installed); without them, skip this step.
if ls /wheels/debs/*.deb >/dev/null 2>&1; then
    bu=/tmp/binutils
    for d in /wheels/debs/*.deb; do dpkg-deb -x "$d" "$bu"; done
    strip=$(ls "$bu"/usr/bin/*-linux-gnu-strip)
    find /opt/modelseal /usr/local -type f -name '*.so*' -print | while read -r f; do
        LD_LIBRARY_PATH=$(dirname "$strip")/../lib/$(basename "$strip" -strip) \
            "$strip" --strip-unneeded "$f"
    done
    rm -rf "$bu"
else
    echo "strip.sh: no binutils .debs in the wheelhouse; shared objects stay unstripped"
fi
rm -rf /wheels

# Package management has no use in a read-only init container: drop apt, perl
# (only debconf needs it), gpgv and the TLS stack only apt links. Via dpkg, so
# /var/lib/dpkg/status stays true for image scanners; dpkg itself is tiny.
pkgs=""
for p in apt libapt-pkg6.0 debconf perl-base gpgv debian-archive-keyring \
         libgnutls30 libp11-kit0 libtasn1-6 libnettle8 libhogweed6 libidn2-0 \
         libunistring2 libstdc++6; do
    if dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
        pkgs="$pkgs $p"
    fi
done
# shellcheck disable=SC2086
[ -z "$pkgs" ] || dpkg --purge --force-remove-essential --force-depends $pkgs

# Docs, locales, glibc iconv modules (Python has its own codecs), the Python
# parts no stage imports, and the base image's own pip/setuptools/wheel.
rm -rf /var/lib/apt /var/cache/apt /var/cache/debconf /var/log/* /etc/apt \
    /usr/share/man /usr/share/info /usr/share/locale /usr/share/lintian \
    ${gconv:+"$gconv"} \
    "$stdlib"/test "$stdlib"/idlelib "$stdlib"/tkinter "$stdlib"/turtledemo \
    "$stdlib"/ensurepip "$stdlib"/lib2to3 "$stdlib"/pydoc_data "$stdlib"/turtle.py \
    "$stdlib"/lib-dynload/_tkinter* \
    "$syssite"/pip "$syssite"/pip-* "$syssite"/setuptools "$syssite"/setuptools-* \
    "$syssite"/wheel "$syssite"/wheel-* "$syssite"/pkg_resources \
    "$syssite"/_distutils_hack "$syssite"/distutils-precedence.pth \
    /usr/local/bin/pip* /usr/local/bin/idle* /usr/local/bin/2to3* \
    /usr/local/bin/pydoc* /usr/local/bin/wheel /usr/local/include "$stdlib"/config-* \
    /root/.cache /var/tmp/*
find /usr/share/doc -type f ! -name copyright -delete 2>/dev/null || true
find / -xdev -depth -type d \( -name test -o -name tests -o -name idle_test \) \
    -path '*python3*' -exec rm -rf {} +

# Byte-code for everything, never checked against sources at run time: the
# root filesystem is read-only, so Python could not write it later, and
# python:slim ships its stdlib without any .pyc.
python3 -m compileall -q -j0 --invalidation-mode unchecked-hash "$stdlib" /opt/modelseal

# A named non-root user (65532, as in distroless) for tools that look it up.
grep -q '^nonroot:' /etc/passwd ||
    echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin' >>/etc/passwd
grep -q '^nonroot:' /etc/group || echo 'nonroot:x:65532:' >>/etc/group
mkdir -p /home/nonroot
chown 65532:65532 /home/nonroot

# Smoke test: every ELF file still finds its libraries, the interpreter's C
# modules load, and the library's entry point runs.
missing=$(find / -xdev -type f \( -perm -u+x -o -name '*.so*' \) -print 2>/dev/null |
    while read -r f; do
        head -c4 "$f" 2>/dev/null | grep -q 'ELF' || continue
        ldd "$f" 2>/dev/null | grep 'not found' | sed "s|^|$f: |"
    done)
if [ -n "$missing" ]; then echo "$missing"; exit 1; fi
python3 -c 'import ssl, hashlib, zlib, lzma, bz2, ctypes, json, sqlite3, uuid, zoneinfo, tarfile, zipfile, cryptography.hazmat.primitives.ciphers.aead, zstandard'
modelseal --help >/dev/null
rm -rf /tmp/* /root/.cache
