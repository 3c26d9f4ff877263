"""The contract every model source passes, as rclone's fstests: one suite, run by each backend's tiny module.

What a backend promises (sources/__init__.py), checked against a real store on 127.0.0.1:

- range reads: the whole object byte-exact through readinto and read_view alike; read_prefix(n)
  is exactly the first n bytes (fewer only at the end); the size is the object's;
- resume: a connection cut mid-body is resumed from the last good byte (a Range starting there),
  and the bytes are still exact;
- identity: an object replaced mid-download never yields a mix of two versions: the download
  fails with exit 4 and leaves nothing, or (a store that reads by a pinned version or digest)
  it yields the original bytes;
- errors: a missing object exits 3, a denied one 3, a store that keeps failing 5 after the retries;
  nothing is left behind;
- writing: `seal -o URI` then `run --source URI` gives the model back; an aborted write leaves
  nothing in the store (no object, no unfinished upload); a backend without writing refuses
  with exit 2.

How a backend joins: a module tests/contract/test_<scheme>.py with a `Store` subclass (the URIs of
names, how to put, read and replace an object, what a failed write may leave, the flags and the
connection the CLI and the library need, and the server the faults go to) and

    class TestMyScheme(Contract):
        @pytest.fixture
        def store(self, ...):  # the servers it needs (session fixtures from tests/support)
            yield MyStore(...)

Every test here then runs against it; a capability the store does not have (no connection to cut
for a local file, no denial for root) is declared on the Store and its test is skipped saying why.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

from conftest import modelseal
from modelseal import sealfile
from modelseal.errors import UsageError
from modelseal.connection import Connection
from modelseal.sources import open_sink, open_source
from modelseal.sources.ranged import RangedStream
from support.faults import Fault
from support.http import Server
from support.models import make_model
from support.signing import files

MiB = 1 << 20
#: Body bytes of the first data answer before the cut: inside the first part of every backend.
CUT = 300_000
KEY = bytes(range(32))
CREATED = "2026-01-01T00:00:00Z"


def sealed(payload: bytes, name: str = "contract") -> bytes:
    """A real .seal of `payload` (what every store holds, so the OCI writer accepts it too)."""
    out = io.BytesIO()
    w = sealfile.seal_writer(out, sealfile.Header(key_id="", name=name, version="1", created=CREATED), KEY)
    w.write(payload)
    w.close()
    return out.getvalue()


OLD = sealed(os.urandom(3 * MiB))
NEW = sealed(os.urandom(3 * MiB))  # the same length, other bytes
assert len(OLD) == len(NEW) and OLD != NEW


class Store:
    """One backend's store, as the suite uses it; a subclass fills in what its backend needs."""

    #: Where faults go (an ObjectServer, or a FaultProxy in front of the real store); None: no connection.
    faults: Server | None = None
    #: Whether the backend writes (`seal -o`); a backend that does not must refuse with exit 2.
    writes: bool = True
    #: What a mid-download replacement does: "fails" (exit 4, nothing left) or "reads-old" (a pinned version).
    replaced: str = "fails"
    #: Why the store cannot deny a read (None: it can, with denial()).
    cannot_deny: str | None = None

    def uri(self, name: str) -> str:
        raise NotImplementedError

    def put(self, name: str, data: bytes) -> str:
        """Store `data` under `name`; its URI."""
        raise NotImplementedError

    def replace(self, name: str, data: bytes) -> None:
        """Replace the object (the same name, new bytes), as another writer would."""
        raise NotImplementedError

    def read(self, name: str) -> bytes | None:
        """What the store holds under `name`, None when nothing."""
        raise NotImplementedError

    def leftovers(self) -> list[str]:
        """What an aborted write may have left behind (partial files, unfinished uploads): [] when clean."""
        return []

    def write_uri(self, name: str) -> str:
        """The URI a write goes to: parts small enough that an abort comes after some were sent."""
        return self.uri(name)

    def args(self) -> list[str]:
        """The CLI flags that reach the store."""
        return []

    def connection(self) -> Connection:
        """The same, for the library in this process."""
        return Connection()

    def data_path(self, name: str) -> str | None:
        """A part of the path of the requests that carry the object's bytes (what a cut targets)."""
        return None

    def denial(self) -> Fault:
        return Fault("status", status=403, times=1000)

    def outage(self) -> Fault:
        return Fault("status", status=503, times=1000)


def _read_all(stream: Any, view: bool) -> bytes:
    out = bytearray()
    with stream:
        if view:
            while chunk := stream.read_view(256 * 1024):
                out += chunk
        else:
            buf = bytearray(200_000)  # not a divisor of the parts: reads straddle them
            while n := stream.readinto(buf):
                out += buf[:n]
    return bytes(out)


def _nothing(out: Path) -> bool:
    return os.listdir(out) == []


class Contract:
    """The tests; a backend's module subclasses this with its `store` fixture (module docstring)."""

    # ---- range reads

    @pytest.mark.parametrize("view", [False, True], ids=["readinto", "read_view"])
    def test_the_whole_object_byte_exact(self, store: Store, view: bool) -> None:
        source = open_source(store.put("m", OLD), store.connection())
        assert source.size == len(OLD)
        assert _read_all(source.open(), view) == OLD

    def test_a_stream_of_parallel_parts_is_declared(self, store: Store) -> None:
        """Pods are sized by the declaration (inject: the reader's memory on top of the stage's)."""
        source = open_source(store.put("m", OLD), store.connection())
        with source.open() as stream:
            assert isinstance(stream, RangedStream) == type(source).PARALLEL_PARTS

    def test_read_prefix_is_exactly_the_first_bytes(self, store: Store) -> None:
        source = open_source(store.put("m", OLD), store.connection())
        for n in (1, 1000, sealfile.MAX_HEADER + 10, len(OLD), len(OLD) + 100):
            assert source.read_prefix(n) == OLD[:n], n

    def test_fetch_model_byte_exact(self, store: Store, shm: Path) -> None:
        r = modelseal("fetch-model", "--source", store.put("m", OLD), "-o", str(shm / "m.seal"), *store.args())
        assert r.code == 0, r.stderr
        assert (shm / "m.seal").read_bytes() == OLD

    # ---- resume

    def test_a_cut_is_resumed_from_the_last_good_byte(self, store: Store) -> None:
        if store.faults is None:
            pytest.skip("a local file has no connection to cut")
        uri = store.put("m", OLD)
        store.faults.reset_counters()
        store.faults.add_fault(Fault("cut", after=CUT, method="GET", path=store.data_path("m"), times=1))
        assert _read_all(open_source(uri, store.connection()).open(), view=True) == OLD
        with store.faults.lock:
            ranges = [r for m, _, r in store.faults.requests if m == "GET" and r]
        assert any(r.startswith(f"bytes={CUT}-") for r in ranges), ranges  # resumed, not restarted

    # ---- identity

    def test_an_object_replaced_mid_download_is_never_mixed(self, store: Store, shm: Path) -> None:
        uri = store.put("m", OLD)
        if store.faults is None:  # no connection to break: replace it while the stream is open
            stream = open_source(uri, store.connection()).open()
            first = bytes(stream.read_view(MiB))
            store.replace("m", NEW)
            assert first + _read_all(stream, view=True) == OLD
            return
        store.faults.add_fault(
            Fault("cut", after=CUT, method="GET", path=store.data_path("m"), times=1),
            Fault("tamper", method="GET", path=store.data_path("m"), before=lambda: store.replace("m", NEW), times=1))
        r = modelseal("fetch-model", "--source", uri, "-o", str(shm / "m.seal"), *store.args())
        if store.replaced == "fails":
            assert r.code == 4, r.stderr
            assert _nothing(shm)
        else:
            assert r.code == 0, r.stderr
            assert (shm / "m.seal").read_bytes() == OLD

    # ---- errors to exit codes

    def test_a_missing_object_is_exit_3(self, store: Store, shm: Path) -> None:
        store.put("m", OLD)  # the store exists; this name does not
        r = modelseal("fetch-model", "--source", store.uri("missing"), "-o", str(shm / "m.seal"), *store.args())
        assert r.code == 3, r.stderr
        assert _nothing(shm)

    def test_a_denied_read_is_exit_3(self, store: Store, shm: Path) -> None:
        if store.cannot_deny or store.faults is None:
            pytest.skip(store.cannot_deny or "no server to deny the read")
        uri = store.put("m", OLD)
        store.faults.add_fault(store.denial())
        r = modelseal("fetch-model", "--source", uri, "-o", str(shm / "m.seal"), *store.args())
        assert r.code == 3, r.stderr
        assert _nothing(shm)

    def test_a_store_that_keeps_failing_is_exit_5_after_the_retries(self, store: Store, shm: Path) -> None:
        if store.faults is None:
            pytest.skip("a local file has no service to fail")
        uri = store.put("m", OLD)
        store.faults.reset_counters()
        store.faults.add_fault(store.outage())
        r = modelseal("fetch-model", "--source", uri, "-o", str(shm / "m.seal"), "--retries", "2", *store.args())
        assert r.code == 5, r.stderr
        assert _nothing(shm)
        assert store.faults.count() >= 2  # it did retry

    # ---- writing

    def test_seal_to_the_store_and_run_from_it(self, store: Store, shm: Path) -> None:
        model = make_model(shm / "model", 2 * MiB)
        (shm / "key").write_bytes(os.urandom(32))
        uri = store.write_uri("w")
        r = modelseal("seal", str(model), "-o", uri, "--key", str(shm / "key"), *store.args())
        if not store.writes:
            assert r.code == 2 and "cannot write sealed output there" in r.error(), r.stderr
            return
        assert r.code == 0, r.stderr
        r = modelseal("run", "--source", uri, "--key", str(shm / "key"), "-o", str(shm / "out" / "model"),
                      *store.args())
        assert r.code == 0, r.stderr
        assert files(shm / "out" / "model") == files(model)

    def test_an_aborted_write_leaves_nothing(self, store: Store) -> None:
        uri = store.write_uri("a")
        if not store.writes:
            with pytest.raises(UsageError, match="cannot write sealed output there"):
                open_sink(uri, store.connection())
            return
        sink = open_sink(uri, store.connection())
        data = OLD * 4  # over S3's 5 MiB part minimum: parts are sent before the abort
        for i in range(0, len(data), MiB):
            sink.write(data[i:i + MiB])
        sink.abort()
        assert store.read("a") is None
        assert store.leftovers() == []

    def test_what_is_written_is_what_the_store_holds(self, store: Store) -> None:
        if not store.writes:
            pytest.skip("the backend does not write")
        sink = open_sink(store.write_uri("c"), store.connection())
        sink.write(OLD)
        sink.close()
        assert store.read("c") == OLD
        assert store.leftovers() == []

