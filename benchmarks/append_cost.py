"""What `embed -o DS --append` costs against a full run (issue 28: 10% more images for at most
15% of a full run): N generated 0.5 MP JPEGs embedded by ViT-B-32 (random weights, ONNX Runtime
CPU FP32) from scratch, then N/10 more added with --append; and the full run over all of them,
for the ratio, in the same session.

    python benchmarks/append_cost.py --photos 400 > benchmarks/results/append-cost-2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bulk_embed import _photos, random_vit_b32  # noqa: E402


def _embed(artifact: Path, folder: Path, out: Path, *extra: str) -> float:
    began = time.perf_counter()
    command = [sys.executable, "-m", "clipexport", "embed", str(artifact), "--images", str(folder), "-o", str(out)]
    subprocess.run([*command, "-q", *extra], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/clipexport-bulk-bench"))
    parser.add_argument("--photos", type=int, default=400)
    args = parser.parse_args()
    artifact = random_vit_b32(args.work / "vit-b-32-random")
    more = args.photos // 10
    photos = _photos(args.work / "photos-0.5mp", args.photos, (800, 600), seed=1)
    extra = _photos(args.work / "photos-0.5mp-more", more, (800, 600), seed=2)
    folder = args.work / "append-corpus"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for path in photos:
        (folder / path.name).symlink_to(path)
    out = args.work / "append-ds"
    shutil.rmtree(out, ignore_errors=True)
    first = _embed(artifact, folder, out)
    for path in extra:
        (folder / f"more-{path.name}").symlink_to(path)
    appended = _embed(artifact, folder, out, "--append")
    full_out = args.work / "append-full"
    shutil.rmtree(full_out, ignore_errors=True)
    full = _embed(artifact, folder, full_out)
    print(
        json.dumps(
            {
                "benchmark": "append_cost",
                "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
                "photos": args.photos,
                "appended": more,
                "model": "ViT-B-32 random weights, ONNX Runtime CPU FP32, 800x600 JPEGs",
                "seconds": {"first run": first, "append": appended, "full run over all": full},
                "append_over_full": appended / full,
                "goal": "append of 10% more <= 0.15 of a full run (issue 28)",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
