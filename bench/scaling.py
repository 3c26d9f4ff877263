#!/usr/bin/env python3
"""Parallel segment decryption (issue 14): what bounds each stage, the scaling here, a projection for 16 cores.

Measured in this process, on one 1 GiB `.seal` on tmpfs (best of BENCH_ROUNDS):
- whether AESGCM.decrypt_into releases the GIL: CPU seconds per wall second
  of two threads calling it at once, next to two threads hashing (hashlib
  releases it), which is why modelseal.parallel uses processes;
- the single-core rate of each stage on its own: reading the ciphertext from
  tmpfs (1 MiB reads), AES-GCM decrypt_into of 1 MiB segments, writing 1 GiB
  into a new tmpfs file (page allocation + copy), and memcpy for scale;
- the decrypting reader's throughput with nothing written, in process
  (--workers 1) and with 2, 3 and 4 worker processes, with the CPU seconds
  the parent and the workers spent per GiB (getrusage of self and children).

Projection for 16 cores, stated as a pipeline model: a stage that one thread
runs goes at its single-core rate; the workers' stage at N times the rate
one worker reaches (its measured decrypt rate, IPC included); the
dispatching thread at 1 / (its CPU seconds per segment); the whole at the
slowest of these, as long as every thread has a core (reader, dispatcher,
writer, N workers). On 16 cores the default is 8 workers (parallel.py); the
model is printed for that and for AES-GCM 4x and 12x slower than this
machine's (older cores without VAES; software AES), where the workers matter.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from measure import fill, record, table
from modelseal import parallel
from modelseal.streaming import AES256_GCM_HKDF_1MB as P, DecryptingReader, EncryptingWriter

SHM = os.environ.get("BENCH_DIR", "/dev/shm")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SIZE = 1 << 30
GB = 1e9


def best(fn) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_self_children() -> tuple[float, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def main() -> None:
    d = tempfile.mkdtemp(prefix="bench-scaling-", dir=SHM)
    try:
        plain, sealed = os.path.join(d, "plain"), os.path.join(d, "payload")
        fill(plain, SIZE)
        key = os.urandom(32)
        with open(plain, "rb") as src, open(sealed, "wb") as out:
            w = EncryptingWriter(out, key, b"aad")
            while chunk := src.read(1 << 20):
                w.write(chunk)
            w.close()
        os.unlink(plain)
        buf = bytearray(P.segment_size)

        def read() -> None:
            fd = os.open(sealed, os.O_RDONLY)
            while os.readv(fd, [buf]):
                pass
            os.close(fd)

        aead, nonce = AESGCM(os.urandom(32)), os.urandom(12)
        ct = aead.encrypt(nonce, bytes(P.plaintext_size), None)
        pt = bytearray(P.plaintext_size)
        data = memoryview(bytearray(os.urandom(1 << 20)))

        def decrypt() -> None:
            for _ in range(1024):
                aead.decrypt_into(nonce, ct, None, pt)

        def write() -> None:
            path = os.path.join(d, "w")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            for _ in range(1024):
                os.write(fd, data)
            os.close(fd)
            os.unlink(path)

        other = bytearray(1 << 20)

        def memcpy() -> None:
            for _ in range(1024):
                other[:] = data

        # Does AESGCM.decrypt_into release the GIL (in the installed cryptography)? Two threads
        # decrypting use ~1 CPU-second per wall second if it does not; hashlib (which does) ~2.
        import hashlib
        import threading

        import cryptography

        def parallelism(work) -> float:
            threads = [threading.Thread(target=work) for _ in range(2)]
            c0, t0 = time.process_time(), time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return (time.process_time() - c0) / (time.perf_counter() - t0)

        def aes_loop() -> None:
            out = bytearray(P.plaintext_size)
            for _ in range(1024):
                aead.decrypt_into(nonce, ct, None, out)

        def sha_loop() -> None:
            for _ in range(256):
                hashlib.sha256(data).digest()

        gil = {f"AESGCM.decrypt_into (cryptography {cryptography.__version__})": parallelism(aes_loop),
               "hashlib.sha256 (releases the GIL)": parallelism(sha_loop)}
        for name, ratio in gil.items():
            record("two threads: CPU seconds per wall second (2.0: in parallel; 1.0: the GIL is held)", name,
                   0.0, note=f"{ratio:.2f} CPU s per wall s")
        print(table("two threads at once", [[k, f"{v:.2f}"] for k, v in gil.items()], ["call", "CPU s / wall s"]))
        print()

        stages = {"read ciphertext from tmpfs": best(read), "AES-GCM decrypt_into, 1 core": best(decrypt),
                  "write into a new tmpfs file": best(write), "memcpy (for scale)": best(memcpy)}
        rows = [[name, f"{SIZE / s / GB:.2f}"] for name, s in stages.items()]
        print(table("single-core rate of each stage, 1 GiB, best of rounds", rows, ["stage", "GB/s"]))
        for name, s in stages.items():
            record("stage rates, one core, in process", name, s, size=SIZE, note=f"{SIZE / s / GB:.2f} GB/s")

        # A worker's start-up (a fresh interpreter importing cryptography), from a one-segment payload.
        tiny = os.path.join(d, "tiny")
        with open(tiny, "wb") as out:
            w = EncryptingWriter(out, key, b"aad")
            w.write(b"x")
            w.close()
        starts = []
        for _ in range(ROUNDS):
            c0 = cpu_self_children()
            with open(tiny, "rb", buffering=0) as src:
                for _ in DecryptingReader(src, key, b"aad", workers=4).segments(ring=4):
                    pass
            starts.append((cpu_self_children()[1] - c0[1]) / 4)
        start_cpu = min(starts)
        results = {}
        for n in (1, 2, 3, 4):
            def consume(n=n) -> None:
                with open(sealed, "rb", buffering=0) as src:
                    for _ in DecryptingReader(src, key, b"aad", workers=n).segments(ring=4):
                        pass

            consume()  # warm-up (worker start-up is part of every timed run)
            times, cpus = [], []
            for _ in range(ROUNDS):
                c0 = cpu_self_children()
                start = time.perf_counter()
                consume()
                times.append(time.perf_counter() - start)
                c1 = cpu_self_children()
                cpus.append((c1[0] - c0[0], c1[1] - c0[1]))
            i = times.index(min(times))
            results[n] = (times[i], *cpus[i])
        one = results[1][0]
        rows = [[("in process" if n == 1 else f"{n} worker processes"), f"{t:.3f}", f"{SIZE / t / GB:.2f}",
                 f"{one / t:.2f}", f"{parent:.2f}", f"{kids:.2f}"] for n, (t, parent, kids) in results.items()]
        cores = len(os.sched_getaffinity(0))
        print()
        print(table(f"decrypting reader, nothing written, {cores} cores, load {os.getloadavg()[0]:.1f}", rows,
                    ["decryption", "seconds", "GB/s", "x in process", "parent CPU s", "workers CPU s"]))
        for n, (t, parent, kids) in results.items():
            record(f"decryption scaling on {cores} cores (nothing written)",
                   "in process (--workers 1)" if n == 1 else f"--workers {n}", t, size=SIZE,
                   vs="in process (--workers 1)", ratio=one / t,
                   note=f"parent {parent:.2f} + workers {kids:.2f} CPU s/GiB")

        # The projection (see the module docstring): CPU seconds per byte of each thread.
        r = stages["read ciphertext from tmpfs"] / SIZE
        a_ = stages["AES-GCM decrypt_into, 1 core"] / SIZE
        w = stages["write into a new tmpfs file"] / SIZE
        n_best = max(results)
        _, parent_n, kids = results[n_best]
        _, parent_1, _ = results[1]
        main_1 = max(0.0, parent_1 / SIZE - r - a_)  # in process: the decrypting thread's cost beyond AES
        main_n = max(1e-12, parent_n / SIZE - r)  # with workers: the dispatching thread (reads are the reader's)
        ipc = max(0.0, (kids - n_best * start_cpu) / SIZE - a_)  # a worker's cost beyond AES (pipes, wake-ups)
        lines = []
        for label, slow in (("this CPU's AES-GCM", 1.0), ("AES-GCM 4x slower", 4.0), ("AES-GCM 12x slower", 12.0)):
            for cores_ in (2, 16):
                n = parallel.default_workers(cores_)
                costs = {"read": r, "write": w}
                if n <= 1:
                    costs["decryption"] = a_ * slow + main_1
                else:
                    costs["dispatch"] = main_n
                    costs["decryption"] = (a_ * slow + ipc) / n
                bound = max(costs, key=costs.get)
                rate = 1 / costs[bound]
                lines.append([label, str(cores_), str(n), f"{rate / GB:.2f}", bound])
                record(f"projection: decrypt pipeline, {label}", f"{cores_} cores, --workers {n} (default)",
                       SIZE * costs[bound], size=SIZE, note=f"bound by {bound}")
        print()
        print(table("projected decrypt throughput (pipeline model, rates measured above)", lines,
                    ["AES", "cores", "workers", "GB/s", "bound by"]))
        print(f"\nper 1 MiB segment: reading {r * P.segment_size * 1e6:.0f} us, AES {a_ * P.segment_size * 1e6:.0f} us, "
              f"writing {w * P.segment_size * 1e6:.0f} us; in process the decrypting thread adds "
              f"{main_1 * P.segment_size * 1e6:.0f} us; with {n_best} workers the dispatcher costs "
              f"{main_n * P.segment_size * 1e6:.0f} us and a worker {ipc * P.segment_size * 1e6:.0f} us beyond AES; "
              f"a worker's start: {start_cpu * 1e3:.0f} ms CPU")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
