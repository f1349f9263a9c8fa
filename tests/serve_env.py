"""The serving virtualenv that `clipexport serve` needs, built on demand: by the test suite's
`serve_python` fixture and by .ci/run (`python tests/serve_env.py`), the same steps in one place.

PyTriton pins numpy<2 (so it cannot share the main venv) and its python backend's stub embeds
the shared libpython of the Python it runs; a pyenv build on a machine that also has the system
libpython of that version is not its own match, Debian's /usr/bin/python3.X is. Built once into
.venv-serve (or CLIPEXPORT_SERVE_PYTHON names a ready one); a lock keeps two runs from building
it at once."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-serve"
CANDIDATES = ("/usr/bin/python3.11", "/usr/bin/python3.12", "/usr/bin/python3.10")
BUILD_TIMEOUT_S = 1200


def _works(python: Path) -> bool:
    try:
        return (
            subprocess.run(
                [
                    str(python),
                    "-c",
                    "import pytriton, clipexport, tritonclient.http, starlette, uvicorn, multipart, prometheus_client, faiss",
                ],
                capture_output=True,
                timeout=120,
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


def _system_python() -> str | None:
    for candidate in CANDIDATES:
        if (
            os.access(candidate, os.X_OK)
            and subprocess.run([candidate, "-c", "import venv, ensurepip"], capture_output=True).returncode == 0
        ):
            return candidate
    return None


def ensure_serve_python() -> tuple[Path | None, str]:
    """(python, "") when a serving Python is ready or was just built; (None, why) otherwise."""
    named = os.environ.get("CLIPEXPORT_SERVE_PYTHON")
    if named:
        python = Path(named)
        return (python, "") if _works(python) else (None, f"CLIPEXPORT_SERVE_PYTHON={named} cannot import pytriton")
    python = VENV / "bin" / "python"
    with open(REPO / ".venv-serve.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.is_file() and _works(python):
            return python, ""
        base = _system_python()
        if base is None:
            return None, (
                f"no system Python with venv and ensurepip among {', '.join(CANDIDATES)} (the python backend "
                "needs one whose shared libpython is its own build; e.g. apt install python3-venv)"
            )
        steps = [
            [base, "-m", "venv", "--clear", str(VENV)],
            [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
            [str(python), "-m", "pip", "install", "--quiet", "-e", f"{REPO}[serve,search]"],
        ]
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                return None, f"building {VENV} timed out at: {' '.join(step)}"
            if done.returncode != 0:
                raise RuntimeError(f"building {VENV} failed at {' '.join(step)}:\n{done.stderr[-2000:]}")
    return python, ""


if __name__ == "__main__":
    ready, why = ensure_serve_python()
    print(f"serving Python: {ready}" if ready else f"no serving Python: {why}", file=sys.stderr)
