"""A small, real training run for the secure partition (the bundled example).

    job = xnat_bridge.submit("t1", script="train_example.py")

Reads every data file under ``$DATASET_DIR`` (NIfTI ``.nii``/``.nii.gz``,
EDF ``.edf``, ``.csv``; JSON sidecars and notes are skipped), computes simple
per-file statistics of its numeric content, and trains a scikit-learn random
forest to tell the files' scans/resources apart (e.g. T1w vs T2w volumes),
scored with cross-validation. Writes ``metrics.json`` and ``model.pkl`` into
``$OUTPUT_DIR``. Runs in seconds on the demo data; needs numpy and scikit-learn.
"""

import gzip
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score

KINDS = (".nii", ".nii.gz", ".edf", ".csv")


def kind(path: Path) -> str | None:
    name = path.name.lower()
    return next((k for k in KINDS if name.endswith(k)), None)


def values(path: Path, k: str) -> np.ndarray:
    """The file's numbers, roughly: voxels, samples or table cells (as float64)."""
    if k == ".csv":
        rows = np.genfromtxt(path, delimiter=",", skip_header=1)
        return np.asarray(rows, dtype=float).ravel()
    raw = gzip.decompress(path.read_bytes()) if k == ".nii.gz" else path.read_bytes()
    if k in (".nii", ".nii.gz"):
        offset = int(np.frombuffer(raw[108:112], "<f4")[0]) or 352
        return np.frombuffer(raw[offset:len(raw) - (len(raw) - offset) % 2], "<i2").astype(float)
    header = int(raw[184:192].decode("ascii", "replace").strip() or 256)  # EDF header bytes
    body = raw[header:len(raw) - (len(raw) - header) % 2]
    return np.frombuffer(body, "<i2").astype(float)


def features(v: np.ndarray) -> list[float]:
    if v.size == 0:
        return [0.0] * 8
    q = np.percentile(v, [5, 25, 50, 75, 95])
    return [float(v.mean()), float(v.std()), *map(float, q), float(np.log1p(v.size))]


def label(rel: Path, k: str) -> str:
    parts = rel.parts
    if "SCANS" in parts and parts.index("SCANS") + 1 < len(parts):
        return f"scan-{parts[parts.index('SCANS') + 1]}{k}"
    return k


def main() -> int:
    data = Path(os.environ["DATASET_DIR"])
    out = Path(os.environ["OUTPUT_DIR"])
    started = time.time()
    X, y, names = [], [], []
    for path in sorted(data.rglob("*")):
        k = kind(path) if path.is_file() else None
        if k is None:
            continue
        rel = path.relative_to(data)
        X.append(features(values(path, k)))
        y.append(label(rel, k))
        names.append(str(rel))
        print(f"features {len(X):4d}: {rel} ({y[-1]})", flush=True)
    if not X:
        print("no NIfTI/EDF/CSV files in the dataset", file=sys.stderr)
        return 2
    X, y = np.array(X), np.array(y)
    classes, counts = np.unique(y, return_counts=True)
    model = RandomForestClassifier(n_estimators=50, random_state=0)
    metrics = {"files": len(y), "classes": {str(c): int(n) for c, n in zip(classes, counts)}}
    folds = int(min(5, counts.min()))
    if len(classes) >= 2 and folds >= 2:
        scores = cross_val_score(model, X, y, cv=StratifiedKFold(folds, shuffle=True, random_state=0))
        metrics.update(cv_folds=folds, accuracy=float(scores.mean()), accuracy_std=float(scores.std()))
    else:
        metrics.update(cv_folds=0, accuracy=None, note="one class only: trained, not cross-validated")
    model.fit(X, y)
    metrics.update(train_accuracy=float(model.score(X, y)), seconds=round(time.time() - started, 3),
                   feature_names=["mean", "std", "p5", "p25", "p50", "p75", "p95", "log_n"])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    with open(out / "model.pkl", "wb") as f:
        pickle.dump(model, f)
    print(f"trained on {len(y)} files, {len(classes)} classes: accuracy {metrics['accuracy']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
