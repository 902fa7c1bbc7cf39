"""The golden cases made by the reference (../shared/golden, or $MOBA_GOLDEN_DIR), and a place to record numbers."""
import json
import os

import numpy as np

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def golden_dir():
    return os.environ.get("MOBA_GOLDEN_DIR") or os.path.normpath(os.path.join(REPO, "..", "shared", "golden"))


def golden_cases():
    """Case folder names; empty if the directory is missing (test_golden_dir_present then fails)."""
    root = golden_dir()
    if not os.path.isdir(root):
        return []
    return sorted(c for c in os.listdir(root) if os.path.isfile(os.path.join(root, c, "case.json")))


def load_golden(name):
    path = os.path.join(golden_dir(), name)
    with open(os.path.join(path, "case.json")) as f:
        meta = json.load(f)
    arrays = {n: np.load(os.path.join(path, n + ".npy"))
              for n in ("q", "k", "v", "do", "o", "dq", "dk", "dv", "cu_seqlens")}
    return meta, arrays


def record(name, **errors):
    """Appends measured errors to $MOBA_TEST_REPORT (one line per check), so a GPU run leaves numbers for docs/."""
    path = os.environ.get("MOBA_TEST_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(name + " " + " ".join("%s=%.3e" % kv for kv in errors.items()) + "\n")
