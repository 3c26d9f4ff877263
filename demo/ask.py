#!/usr/bin/env python3
"""Ask the served model about rows of known class, print each answer beside it, fail on any wrong one.

    python3 demo/ask.py http://127.0.0.1:47562 [--rows demo/iris-rows.json] [--wait SECONDS]

Speaks the Open Inference Protocol (V2), as KServe, Triton and MLServer do:
waits for GET /v2/health/ready and /v2/models/<model>/ready, then for each row POSTs one FP32 tensor of
shape [1, 4] to /v2/models/<model>/infer and reads the class from the first
output (a label, or an index into the file's "classes"). Python's standard
library only: the demo's host needs nothing but python3.

Exit 0 when every answer is the row's class; 1 when one is wrong, the server
does not get ready in time or answers something that is not V2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROWS = Path(__file__).with_name("iris-rows.json")


class Unanswered(Exception):
    """The server did not give a V2 answer."""


def call(url: str, body: dict | None = None, timeout: float = 10) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        raise Unanswered(f"{url}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise Unanswered(f"{url}: {getattr(exc, 'reason', exc)}") from None
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError:
        raise Unanswered(f"{url}: not JSON: {text[:100]!r}") from None


def wait_ready(base: str, model: str, seconds: float) -> None:
    """The server ready, and the model loaded: MLServer reports itself ready with no model at all."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            call(f"{base}/v2/health/ready", timeout=2)
            call(f"{base}/v2/models/{model}/ready", timeout=2)
            return
        except Unanswered as exc:
            if time.monotonic() > deadline:
                raise Unanswered(f"not ready after {seconds:.0f}s ({exc})") from None
            time.sleep(0.5)


def predict(base: str, model: str, features: list[float], classes: list[str]) -> str:
    answer = call(f"{base}/v2/models/{model}/infer",
                  {"inputs": [{"name": "input-0", "shape": [1, len(features)], "datatype": "FP32",
                               "data": features}]})
    try:
        value = answer["outputs"][0]["data"][0]
    except (KeyError, IndexError, TypeError):
        raise Unanswered(f"no outputs[0].data[0] in {json.dumps(answer)[:200]}") from None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
        return classes[value]
    return str(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:47562")
    p.add_argument("--rows", type=Path, default=ROWS)
    p.add_argument("--wait", type=float, default=60, help="seconds to wait for the server and the model to be ready")
    p.add_argument("--label", default="", help="a prefix for the printed lines (which chain delivered the model)")
    args = p.parse_args(argv)
    spec = json.loads(args.rows.read_text())
    base, model, classes = args.url.rstrip("/"), spec["model"], spec["classes"]
    prefix = f"{args.label}: " if args.label else ""
    try:
        wait_ready(base, model, args.wait)
    except Unanswered as exc:
        print(f"{prefix}FAILED: {base}: {exc}", file=sys.stderr)
        return 1
    print(f"{prefix}POST {base}/v2/models/{model}/infer, one FP32 [1, {len(spec['features'])}] row each")
    print(f"{prefix}  {'row':>4}  {'features':<22}  {'expected':<11} {'answer':<11}")
    wrong = 0
    for row in spec["rows"]:
        try:
            got = predict(base, model, row["features"], classes)
        except Unanswered as exc:
            got, verdict = "-", f"FAILED: {exc}"
        else:
            verdict = "ok" if got == row["class"] else "WRONG"
        wrong += verdict != "ok"
        features = json.dumps(row["features"])
        print(f"{prefix}  {row['index']:>4}  {features:<22}  {row['class']:<11} {got:<11} {verdict}")
    total = len(spec["rows"])
    print(f"{prefix}{total - wrong}/{total} answers match the known class")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
