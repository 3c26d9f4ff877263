#!/usr/bin/env python3
"""The demo's model server: serves the model the init stages unpacked.

Python standard library only. It stands in for TensorFlow Serving or
Triton in the compose demo: it reads the model directory from the shared
tmpfs volume (mounted read-only), checks it, and answers

    POST /predict   {"inputs": [x0, x1, x2, x3]}
                 -> {"label": "...", "index": i, "scores": [...], "model": "..."}
    GET  /healthz   200 once the model is loaded

The model is demo/make_model.py's linear classifier: config.json gives
`inputs`, `outputs` and `labels`; variables/weights.f32 holds
outputs x inputs float32 little-endian numbers, row-major by output
(weights[o * inputs + i] multiplies input i for output o), no bias.
scores = W @ x; the label is the argmax.

Env: MODEL_DIR (default /models/demo), HOST (127.0.0.1), PORT (8501).
"""

from __future__ import annotations

import json
import os
import struct
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 64 << 10


def log(event: str, **fields) -> None:
    print(json.dumps({"stage": "model-server", "event": event, **fields}), file=sys.stderr, flush=True)


class Model:
    def __init__(self, directory: str) -> None:
        with open(os.path.join(directory, "config.json"), "rb") as f:
            config = json.load(f)
        self.name = str(config.get("name", os.path.basename(directory)))
        self.n_in, self.n_out = int(config["inputs"]), int(config["outputs"])
        self.labels = [str(x) for x in config["labels"]]
        if len(self.labels) != self.n_out:
            raise ValueError(f"config.json has {len(self.labels)} labels for {self.n_out} outputs")
        with open(os.path.join(directory, "variables", "weights.f32"), "rb") as f:
            raw = f.read()
        want = 4 * self.n_in * self.n_out
        if len(raw) != want:
            raise ValueError(f"weights.f32 is {len(raw)} bytes, expected {want} ({self.n_out}x{self.n_in} float32)")
        flat = struct.unpack(f"<{self.n_in * self.n_out}f", raw)
        self.rows = [flat[o * self.n_in:(o + 1) * self.n_in] for o in range(self.n_out)]

    def predict(self, inputs: list) -> dict:
        if not isinstance(inputs, list) or len(inputs) != self.n_in:
            raise ValueError(f"inputs must be a list of {self.n_in} numbers")
        x = [float(v) for v in inputs]
        scores = [sum(w * v for w, v in zip(row, x)) for row in self.rows]
        best = max(range(self.n_out), key=scores.__getitem__)
        return {"model": self.name, "label": self.labels[best], "index": best,
                "scores": [round(s, 6) for s in scores]}


def handler(model: Model) -> type:
    class Handler(BaseHTTPRequestHandler):
        server_version = "modelseal-demo-server"

        def reply(self, status: int, obj: dict) -> None:
            body = json.dumps(obj).encode() + b"\n"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/healthz":
                self.reply(200, {"status": "ok", "model": model.name})
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/predict":
                self.reply(404, {"error": "not found"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 < length <= MAX_BODY:
                    raise ValueError(f"body must be 1..{MAX_BODY} bytes")
                request = json.loads(self.rfile.read(length))
                result = model.predict(request.get("inputs") if isinstance(request, dict) else None)
            except (ValueError, TypeError) as exc:
                self.reply(400, {"error": str(exc)})
                return
            log("predict", label=result["label"])
            self.reply(200, result)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet; we log JSON
            pass

    return Handler


def main() -> int:
    directory = os.environ.get("MODEL_DIR", "/models/demo")
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8501"))
    try:
        model = Model(directory)
    except (OSError, ValueError, KeyError) as exc:
        log("load_failed", path=directory, error=str(exc))
        return 1
    log("loaded", path=directory, model=model.name, inputs=model.n_in, outputs=model.n_out)
    server = ThreadingHTTPServer((host, port), handler(model))
    log("listening", url=f"http://{host}:{port}")
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 in a container: exit on stop
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
