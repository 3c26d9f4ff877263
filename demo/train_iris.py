#!/usr/bin/env python3
"""Train the demo's model and save it the way MLServer loads it (the owner's side).

    python3 demo/train_iris.py OUT_DIR      # in modelseal/owner (scikit-learn); OUT_DIR on tmpfs

A random forest on scikit-learn's bundled iris data (no download), trained
on every row except the ones demo/iris-rows.json names: the demo asks the
served model about exactly those, so its answers are about rows it never saw.
OUT_DIR receives MLServer's model directory, which the owner then seals:

    model-settings.json   name "iris", the scikit-learn runtime, the input it takes
    model.joblib          the fitted estimator; predict() returns the class label

The labels are strings, so the server answers "setosa", not 0. The model is
pickled: whoever can change model.joblib runs code in the server, which is
why it travels sealed and the chain refuses any changed byte.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import joblib
import numpy as np
import sklearn
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

ROWS = Path(__file__).with_name("iris-rows.json")


def held_out(data, rows: list[dict]) -> list[int]:
    """The demo rows' indices, after checking each row is the dataset's (so the file cannot drift)."""
    names = list(data.target_names)
    for r in rows:
        i = r["index"]
        if not np.allclose(data.data[i], r["features"]) or names[data.target[i]] != r["class"]:
            sys.exit(f"train_iris: {ROWS.name}: row {i} is not iris row {i} "
                     f"({data.data[i].tolist()}, {names[data.target[i]]})")
    return [r["index"] for r in rows]


def main(out: Path) -> None:
    spec = json.loads(ROWS.read_text())
    data = load_iris()
    hold = held_out(data, spec["rows"])
    train = np.setdiff1d(np.arange(len(data.target)), hold)
    labels = data.target_names[data.target]  # strings: the server answers with the class name
    model = RandomForestClassifier(n_estimators=100, random_state=0).fit(data.data[train], labels[train])

    settings = {
        "name": spec["model"],
        "implementation": "mlserver_sklearn.SKLearnModel",
        "platform": "sklearn",
        "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, len(spec["features"])]}],
        "parameters": {"uri": "./model.joblib", "version": "1"},
    }
    # Written into a staging directory, renamed when complete: the seal step
    # never sees half a model.
    staging = out.with_name(out.name + ".partial")
    staging.mkdir(mode=0o700)
    joblib.dump(model, staging / "model.joblib")
    (staging / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    os.rename(staging, out)
    print(json.dumps({"stage": "train", "event": "trained", "model": str(out), "estimator": "RandomForestClassifier",
                      "scikit_learn": sklearn.__version__, "train_rows": int(train.size), "held_out": hold,
                      "train_accuracy": round(float(model.score(data.data[train], labels[train])), 4),
                      "bytes": (out / "model.joblib").stat().st_size}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: train_iris.py OUT_DIR")
    main(Path(sys.argv[1]))
