"""Running contenders side by side: wall time and peak RSS of child processes, tables."""

from __future__ import annotations

import json
import os
import statistics
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field


GNU_TIME = shutil.which("time", path="/usr/bin:/bin") or "/usr/bin/time"

# The images ship compiled bytecode (images/base/strip.sh); a developer shell often
# sets PYTHONDONTWRITEBYTECODE, which would make every modelseal process here
# compile the library first (~0.1 s per command). The warm-up round fills a cache.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "modelseal-bench-pycache"))


@dataclass
class Sample:
    seconds: float
    rss_kib: int


@dataclass
class Contender:
    name: str
    argv: list[str] | None = None
    shell: str | None = None
    setup: callable = None  # run before each repetition (e.g. remove outputs), untimed
    samples: list[Sample] = field(default_factory=list)

    def once(self, env: dict | None = None) -> Sample:
        if self.setup:
            self.setup()
        cmd = self.argv if self.argv is not None else ["bash", "-c", self.shell]
        # GNU time reports the command's own peak RSS; wait4 on a child spawned
        # from this process would count our memory too (vfork shares it).
        with tempfile.NamedTemporaryFile("r") as rss:
            start = time.perf_counter()
            proc = subprocess.run([GNU_TIME, "-f", "%M", "-o", rss.name, *cmd], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env=env)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"{self.name} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
            return Sample(seconds, int(rss.read().split()[-1]))

    @property
    def median(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def best(self) -> float:
        return min(s.seconds for s in self.samples)

    @property
    def rss_mib(self) -> float:
        return max(s.rss_kib for s in self.samples) / 1024


def interleave(contenders: list[Contender], rounds: int, warmup: int = 1, env: dict | None = None) -> None:
    """Alternate contenders round by round so drift in the machine hits all alike."""
    for r in range(warmup + rounds):
        for c in contenders:
            s = c.once(env)
            if r >= warmup:
                c.samples.append(s)


def count_cpu(contenders: list[Contender]) -> dict[str, list[float]]:
    """CPU seconds (user + sys) of each repetition of each contender, from the children's rusage: what a
    client costs when the wall time is bound by a server sharing the cores. Call before interleave()."""
    import resource

    cpu: dict[str, list[float]] = {}
    for c in contenders:
        def counted(env=None, c=c, once=c.once):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            sample = once(env)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.setdefault(c.name, []).append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            return sample
        c.once = counted  # type: ignore[method-assign]
    return cpu


def measured_cpu(cpu: dict[str, list[float]], name: str, warmup: int = 1) -> float:
    """The median CPU seconds of a contender's timed repetitions (the warm-up ones left out)."""
    return statistics.median(cpu[name][warmup:])


def table(title: str, rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [title, fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)


def fill(path: str, size: int, chunk: int = 1 << 24) -> None:
    """Random bytes (model weights are high-entropy): no compressor gets a free ride."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n


def rm(*paths: str):
    """A setup step that removes outputs (and their .partial) before a repetition."""
    def clean() -> None:
        for p in paths:
            for q in (p, p + ".partial"):
                if os.path.exists(q):
                    os.unlink(q)
    return clean


def record(bench: str, contender: str, seconds: float, *, rss_mib: float | None = None, size: int | None = None,
           vs: str = "", ratio: float | None = None, goal: float | None = None, note: str = "") -> None:
    """One row of `make bench`'s table (bench/all.py), appended to $BENCH_RESULTS when it is set.

    `ratio` is the baseline's time over this one's (above 1: faster than `vs`);
    `goal` the ratio this row should reach (the issue's targets), shown as met or not.
    """
    path = os.environ.get("BENCH_RESULTS")
    if not path:
        return
    row = {"bench": bench, "contender": contender, "seconds": seconds, "rss_mib": rss_mib,
           "mib_s": size / seconds / 2**20 if size and seconds else None, "vs": vs, "ratio": ratio,
           "goal": goal, "note": note, "load": os.getloadavg()[0]}
    if os.environ.get("BENCH_START_LOAD"):  # bench/all.py: the load before this benchmark started
        row["start_load"] = float(os.environ["BENCH_START_LOAD"])
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def record_group(bench: str, contenders: list["Contender"], base: "Contender", size: int | None = None,
                 goals: dict[str, float] | None = None, notes: dict[str, str] | None = None) -> None:
    """record() each contender of one side-by-side comparison against `base`."""
    for c in contenders:
        record(bench, c.name, c.median, rss_mib=c.rss_mib, size=size, vs=base.name,
               ratio=base.median / c.median, goal=(goals or {}).get(c.name), note=(notes or {}).get(c.name, ""))
