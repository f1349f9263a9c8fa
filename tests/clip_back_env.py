"""clip-retrieval's `clip_back` loaders, to load the folders `index --layout clip-retrieval` writes
with clip-retrieval's own code. clip-retrieval cannot join the test venv (it pins torch and
open_clip versions, and needs setuptools<81 to install), so its package and the few libraries
clip_back.py imports at its top are installed without their dependencies into
.clip-retrieval-site/ (built on first use, then reused; a lock keeps two runs from building it at
once), and its loaders run in a child process with that folder on the path, the package's
__init__ (which imports the inference stack, wandb and torch) skipped."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / ".clip-retrieval-site"
# clip_back.py's imports that the test venv lacks, pinned to what was checked.
PACKAGES = (
    "clip-retrieval==2.45.0",
    "flask==3.1.3",
    "flask-restful==0.3.10",
    "flask-cors==6.0.5",
    "werkzeug==3.1.9",
    "itsdangerous==2.2.0",
    "blinker==1.9.0",
    "aniso8601==10.0.1",
    "fire==0.7.1",
    "termcolor==3.3.0",
    "h5py==3.16.0",
    "prometheus-client==0.26.0",
)
LOADER = """
import importlib, json, sys, types
package = types.ModuleType("clip_retrieval")
package.__path__ = [sys.argv[1]]
sys.modules["clip_retrieval"] = package
clip_back = importlib.import_module("clip_retrieval.clip_back")
folder, columns = sys.argv[2], json.loads(sys.argv[3])
indexes = {name: clip_back.load_index(f"{folder}/{name}.index", False) for name in ("image", "text")}
provider, _ = clip_back.load_metadata_provider(folder, False, False, indexes["image"], columns, False)
rows = {name: int(index.ntotal) for name, index in indexes.items()}
print(json.dumps({"rows": rows, "metadata": provider.get(list(range(rows["image"])), columns)}))
"""


def clip_back_load(folder: Path, columns: list[str]) -> dict:
    """What clip_back's load_index and load_metadata_provider make of `folder`."""
    import json

    with open(REPO / ".clip-retrieval-site.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (SITE / "clip_retrieval" / "clip_back.py").is_file():
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(SITE), *PACKAGES],
                check=True,
                timeout=600,
            )
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(SITE / "clip_retrieval"), str(folder), json.dumps(columns)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(SITE), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
