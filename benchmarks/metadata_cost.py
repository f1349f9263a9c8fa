"""What keeping the inputs' metadata costs `embed -o DIR` (issue 28: at most 5% of throughput on
0.5 MP photos): a webdataset tar of generated 0.5 MP JPEGs, each with a caption (`.txt`) and a
LAION-style `.json`, embedded by ViT-B-32 (random weights, ONNX Runtime CPU FP32) with every
column kept (the default: caption, the JSON fields, source, width, height) and with none
(`--keep-columns ''`), alternately, in the same run.

    python benchmarks/metadata_cost.py --photos 400 --repeats 3 > benchmarks/results/metadata-cost-2core.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bulk_embed import _photos, random_vit_b32  # noqa: E402


def _tar(path: Path, photos: list[Path]) -> Path:
    if path.is_file():
        return path
    with tarfile.open(path, "w") as tar:
        for i, photo in enumerate(photos):
            key = f"{i:09d}"
            tar.add(photo, arcname=f"{key}.jpg")
            caption = f"a generated photo number {i}, with some noise and soft colours".encode()
            meta = json.dumps(
                {
                    "key": key,
                    "url": f"https://example.com/{key}.jpg",
                    "caption": caption.decode(),
                    "width": 800,
                    "height": 600,
                    "status": "success",
                    "exif": "{}",
                }
            ).encode()
            for name, data in ((f"{key}.txt", caption), (f"{key}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _run(artifact: Path, shard: Path, out: Path, keep: list[str]) -> float:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    began = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "clipexport",
        "embed",
        str(artifact),
        "--images",
        str(shard),
        "-o",
        str(out),
        "-q",
        *keep,
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/clipexport-bulk-bench"))
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    artifact = random_vit_b32(args.work / "vit-b-32-random")
    photos = _photos(args.work / "photos-0.5mp", args.photos, (800, 600), seed=1)
    shard = _tar(args.work / f"captioned-{args.photos}.tar", photos)
    seconds: dict[str, list[float]] = {"all columns": [], "none": []}
    for _ in range(args.repeats):
        seconds["all columns"].append(_run(artifact, shard, args.work / "meta-all", []))
        seconds["none"].append(_run(artifact, shard, args.work / "meta-none", ["--keep-columns", ""]))
    import pyarrow.parquet as pq

    columns = pq.read_schema(next((args.work / "meta-all").glob("part-*.parquet"))).names
    rate = {name: args.photos / statistics.median(values) for name, values in seconds.items()}
    print(
        json.dumps(
            {
                "benchmark": "metadata_cost",
                "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
                "photos": args.photos,
                "size": "800x600 JPEG",
                "model": "ViT-B-32 random weights, ONNX Runtime CPU FP32",
                "columns_kept": columns,
                "seconds": seconds,
                "images_per_s": rate,
                "cost_of_metadata": 1 - rate["all columns"] / rate["none"],
                "goal": "at most 0.05 (issue 28)",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
