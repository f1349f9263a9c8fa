"""Bulk embedding on this machine, in one run: the pipelined `clipexport embed -o DIR` against this
machine's ideal, against today's serial loop (`ClipRuntime.embed_images`, what `embed` did before),
against `clip-retrieval inference` (torch DataLoader workers) on the same images and weights, and
on Ray Data against the local engine; peak RSS of each process tree. Writes
benchmarks/results/bulk-embed.json.

    .venv/bin/python benchmarks/bulk_embed.py [--photos 2000] [--big 200] \\
        [--clip-retrieval /tmp/venv-cr/bin/clip-retrieval]

The ideal: 2 cores / (decode+preprocess CPU-seconds per image + model CPU-seconds per image),
each measured alone (process CPU time, all threads). Photos are generated: smooth colour fields
with edges and noise, JPEG quality 90, 0.5 MP (800x600) and 12 MP (4000x3000), so decoding costs
what a camera photo costs. clip-retrieval lives in its own venv (it pins numpy<2 through
autofaiss): python3 -m venv /tmp/venv-cr && /tmp/venv-cr/bin/pip install clip-retrieval 'setuptools<81'.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
from multiprocessing import get_context
import time
from pathlib import Path

import numpy as np

from precision import machine, write_result
from serve_peer import _tree_rss_mb

REPO = Path(__file__).resolve().parent.parent
CORES = len(os.sched_getaffinity(0))


def _make_photo(job: tuple[str, int, int, int]) -> None:
    from PIL import Image, ImageFilter

    path, w, h, seed = job
    if os.path.exists(path):
        return
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 64 + 1, w // 64 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    pixels = np.clip(np.asarray(image, np.float32) + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).filter(ImageFilter.EDGE_ENHANCE).save(path, quality=90)


def _photos(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[Path]:
    """`count` generated photos of `size` in `folder` (kept across runs), made on every core."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder / f"{i:05d}.jpg"), size[0], size[1], seed * 100_000 + i) for i in range(count)]
    with get_context("spawn").Pool(CORES) as pool:
        pool.map(_make_photo, jobs, chunksize=8)
    return [Path(j[0]) for j in jobs]


def random_vit_b32(artifact: Path) -> Path:
    """ViT-B-32 with seeded random weights exported to `artifact` (kept across runs)."""
    if not (artifact / "manifest.json").is_file():
        command = ["export", "ViT-B-32", "--pretrained", "random", "-o", str(artifact), "-q"]
        subprocess.run([sys.executable, "-m", "clipexport", *command], check=True)
    return artifact


def _checkpoint_and_artifacts(work: Path) -> tuple[Path, Path]:
    """One random ViT-B-32 checkpoint that both tools load; our artifact (fp32 + int8 cpu) from it."""
    ckpt = work / "vit-b-32-random.pt"
    artifact = work / "vit-b-32"
    if not ckpt.is_file():
        import open_clip
        import torch

        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32")
        torch.save(model.state_dict(), ckpt)
    if not (artifact / "manifest.json").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "clipexport",
                "export",
                "ViT-B-32",
                "--pretrained",
                str(ckpt),
                "-o",
                str(artifact),
                "-q",
            ],
            check=True,
        )
    manifest = json.loads((artifact / "manifest.json").read_text())
    if "int8" not in manifest["towers"]["vision"]["graphs"]:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "clipexport",
                "quantize",
                str(artifact),
                "--precision",
                "int8",
                "--target",
                "cpu",
                "--towers",
                "vision",
                "-q",
            ],
            check=True,
        )
    return ckpt, artifact


def _cpu_seconds_per_image(artifact: Path, photos: list[Path], precision: str) -> tuple[float, float]:
    """(decode+preprocess, model) CPU-seconds per image, each measured alone in this process."""
    from clipexport.runtime import ClipRuntime

    with ClipRuntime.load(artifact, precision={"vision": precision}, towers=("vision",)) as runtime:
        sample = photos[:64]
        runtime.preprocessor(sample[:2])
        start = time.process_time()
        pixels = runtime.preprocessor(sample)
        decode = (time.process_time() - start) / len(sample)
        runtime.encode_pixels(pixels[:32])
        start = time.process_time()
        for _ in range(2):
            runtime.encode_pixels(pixels[:32])
        model = (time.process_time() - start) / 64
    return decode, model


def _watched(command: list[str], env: dict | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS MB of the process tree, the finished process)."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = [0.0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], _tree_rss_mb(process.pid))
            time.sleep(0.2)

    watcher = threading.Thread(target=sample)
    watcher.start()
    stdout, stderr = process.communicate()
    watcher.join()
    if process.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} failed ({process.returncode}): {stderr[-2000:]}")
    return time.monotonic() - start, peak[0], subprocess.CompletedProcess(command, 0, stdout, stderr)


OURS = r"""
import json, sys
from pathlib import Path
import clipexport.cli  # the process as `clipexport embed` sets it up (Arrow's allocator)
from clipexport.bulk.job import BulkOptions, embed_dataset
from clipexport.bulk.input_list import InputSpec
r = embed_dataset(BulkOptions(artifact=Path(sys.argv[1]), output=Path(sys.argv[3]), inputs=InputSpec(images=[sys.argv[2]]),
                              precision=sys.argv[4]))
s = r.stats
print(json.dumps({"parent_ms_per_image": s.parent_ms_per_image, "parent_steady_ms_per_image": s.parent_steady_ms_per_image,
                  "bytes_per_image": s.bytes_per_image,
                  "workers": s.workers, "threads": s.threads, "split": s.split}))
"""


def _ours(artifact: Path, folder: Path, out: Path, precision: str) -> dict:
    """`embed -o DIR` with its defaults (through the library, to read what the run measured about
    itself: the parent's CPU per image outside the backend and the bytes moved per image)."""
    shutil.rmtree(out, ignore_errors=True)
    seconds, peak, done = _watched([sys.executable, "-c", OURS, str(artifact), str(folder), str(out), precision])
    from clipexport.bulk.dataset import read_manifest

    rows = read_manifest(out)["rows"]
    return {
        "seconds": seconds,
        "images_per_s": rows / seconds,
        "peak_rss_mb": peak,
        "rows": rows,
        **json.loads(done.stdout.strip().splitlines()[-1]),
    }


def _serial(artifact: Path, photos: list[Path], precision: str) -> dict:
    """Today's serial loop (what embed did before the pipeline): decode a batch, then run it."""
    code = (
        "import sys, time\nfrom clipexport.runtime import ClipRuntime\n"
        f"paths = {[str(p) for p in photos]!r}\n"
        f"r = ClipRuntime.load({str(artifact)!r}, precision={{'vision': {precision!r}}}, towers=('vision',))\n"
        "t = time.monotonic(); out = r.embed_images(paths, 32)\n"
        "print(len(out.indices), time.monotonic() - t)\n"
    )
    seconds, peak, done = _watched([sys.executable, "-c", code])
    rows, inner = done.stdout.split()
    return {"seconds": float(inner), "images_per_s": int(rows) / float(inner), "peak_rss_mb": peak}


def _clip_retrieval(executable: Path, ckpt: Path, folder: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    seconds, peak, _ = _watched(
        [
            str(executable),
            "inference",
            "--input_dataset",
            str(folder),
            "--output_folder",
            str(out),
            "--input_format",
            "files",
            "--clip_model",
            f"open_clip:ViT-B-32/{ckpt}",
            "--batch_size",
            "64",
            "--num_prepro_workers",
            str(CORES),
            "--enable_text",
            "False",
            "--enable_metadata",
            "False",
            "--write_batch_size",
            "100000",
        ],
        env,
    )
    import pyarrow.parquet as pq

    embeddings = np.concatenate([np.load(p) for p in sorted((out / "img_emb").glob("*.npy"))])
    paths = [
        path
        for p in sorted((out / "metadata").glob("*.parquet"))
        for path in pq.read_table(p).column("image_path").to_pylist()
    ]
    return {
        "seconds": seconds,
        "images_per_s": len(embeddings) / seconds,
        "peak_rss_mb": peak,
        "embeddings": dict(zip(paths, embeddings)),
    }


def _ray(artifact: Path, folder: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    code = (
        "import ray, time\nfrom pathlib import Path\n"
        f"ray.init(num_cpus={CORES}, include_dashboard=False, log_to_driver=False)\n"
        "from clipexport.bulk.job import BulkOptions, Engine, RayOptions, embed_dataset\n"
        "from clipexport.bulk.input_list import InputSpec\n"
        f"o = BulkOptions(artifact=Path({str(artifact)!r}), output=Path({str(out)!r}), "
        f"inputs=InputSpec(images=[{str(folder)!r}]), engine=Engine.RAY, ray=RayOptions(actors=1))\n"
        "t = time.monotonic(); r = embed_dataset(o); print(r.rows, time.monotonic() - t)\n"
    )
    seconds, peak, done = _watched([sys.executable, "-c", code])
    rows, inner = done.stdout.split()[-2:]
    return {"seconds": float(inner), "images_per_s": int(rows) / float(inner), "peak_rss_mb": peak}


def _steady_state(executable: Path, ckpt: Path, artifact: Path, photos: list[Path], work: Path, n: int) -> dict:
    """Ours and clip-retrieval on n then 2n photos, alternating (ours n, peer n, ours 2n, peer 2n):
    the whole-run rates, and the marginal rate n / (t(2n) - t(n)), which leaves out what each pays
    once (imports, model load, workers starting)."""
    runs: dict = {}
    for count in (n, 2 * n):
        folder = _links(work / f"links-{count}", photos, count)
        runs[f"ours/{count}"] = _ours(artifact, folder, work / f"out-steady-ours-{count}", "fp32")
        peer = _clip_retrieval(executable, ckpt, folder, work / f"out-steady-peer-{count}")
        peer.pop("embeddings")
        runs[f"clip-retrieval/{count}"] = peer
        print("steady state", count, runs[f"ours/{count}"]["seconds"], peer["seconds"], flush=True)
    marginal = {
        tool: n / (runs[f"{tool}/{2 * n}"]["seconds"] - runs[f"{tool}/{n}"]["seconds"])
        for tool in ("ours", "clip-retrieval")
    }
    return {
        "photos": f"{n} and {2 * n} 0.5 MP photos (links over the generated ones), FP32, alternating",
        "runs": {k: {m: v[m] for m in ("seconds", "images_per_s", "peak_rss_mb")} for k, v in runs.items()},
        "marginal_images_per_s": marginal,
        "ours_over_clip_retrieval_whole_run": runs[f"ours/{2 * n}"]["images_per_s"]
        / runs[f"clip-retrieval/{2 * n}"]["images_per_s"],
        "ours_over_clip_retrieval_marginal": marginal["ours"] / marginal["clip-retrieval"],
    }


def _links(folder: Path, photos: list[Path], count: int) -> Path:
    """`count` distinct paths over `photos` (symlinks), for a corpus larger than the photos on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        link = folder / f"{i:06d}.jpg"
        if not link.exists():
            link.symlink_to(photos[i % len(photos)])
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/clipexport-bulk-bench"))
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--big", type=int, default=200)
    parser.add_argument("--clip-retrieval", type=Path, default=None)
    parser.add_argument(
        "--local-only",
        action="store_true",
        help="re-measure the ideal, the local engine and the serial loop only, keeping the other runs "
        "of the last result (the earlier local figures move to runs_before)",
    )
    parser.add_argument(
        "--steady-state",
        type=int,
        default=0,
        metavar="N",
        help="only measure ours against clip-retrieval on N and 2N photos (whole-run and marginal rates), "
        "kept in the last result under steady_state",
    )
    args = parser.parse_args()
    work = args.work
    small = _photos(work / "photos-0.5mp", args.photos, (800, 600), 1)
    big = _photos(work / "photos-12mp", args.big, (4000, 3000), 2)
    ckpt, artifact = _checkpoint_and_artifacts(work)
    if args.steady_state:
        if not (args.clip_retrieval and args.clip_retrieval.is_file()):
            raise SystemExit("--steady-state needs --clip-retrieval PATH (the clip-retrieval executable)")
        earlier = json.loads((REPO / "benchmarks" / "results" / "bulk-embed.json").read_text())
        earlier["steady_state"] = {
            "machine": machine(),
            **_steady_state(args.clip_retrieval, ckpt, artifact, small, work, args.steady_state),
        }
        print(json.dumps(earlier["steady_state"], indent=1))
        print(write_result("bulk-embed", earlier))
        return
    result: dict = {"machine": machine(), "cores": CORES, "photos": {"0.5mp": len(small), "12mp": len(big)}, "runs": {}}
    if args.local_only:
        earlier = json.loads((REPO / "benchmarks" / "results" / "bulk-embed.json").read_text())
        result = {**earlier, "runs": dict(earlier["runs"])}
        result["runs_before"] = {k: v for k, v in earlier["runs"].items() if k.startswith(("ours/", "serial/"))}
    for label, photos in (("0.5mp", small), ("12mp", big)):
        for precision in ("fp32", "int8"):
            decode, model = _cpu_seconds_per_image(artifact, photos, precision)
            ideal = CORES / (decode + model)
            run = _ours(artifact, photos[0].parent, work / f"out-{label}-{precision}", precision)
            run.update(
                decode_cpu_ms=1e3 * decode,
                model_cpu_ms=1e3 * model,
                ideal_images_per_s=ideal,
                fraction_of_ideal=run["images_per_s"] / ideal,
            )
            result["runs"][f"ours/{label}/{precision}"] = run
            print(label, precision, {k: round(v, 3) for k, v in run.items()}, flush=True)
    serial = _serial(artifact, big, "fp32")
    result["runs"]["serial/12mp/fp32"] = serial
    result["pipelined_over_serial_12mp"] = result["runs"]["ours/12mp/fp32"]["images_per_s"] / serial["images_per_s"]
    print("serial 12mp", serial, "ratio", result["pipelined_over_serial_12mp"], flush=True)
    if args.local_only:
        peer = result["runs"].get("clip-retrieval/0.5mp/fp32")
        for precision in ("fp32", "int8") if peer else ():
            result[f"ours_over_clip_retrieval_{precision}"] = (
                result["runs"][f"ours/0.5mp/{precision}"]["images_per_s"] / peer["images_per_s"]
            )
        if "ray/0.5mp/fp32" in result["runs"]:
            result["ray_overhead"] = (
                1 - result["runs"]["ray/0.5mp/fp32"]["images_per_s"] / result["runs"]["ours/0.5mp/fp32"]["images_per_s"]
            )
        print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "runs_before")}, indent=1))
        print(write_result("bulk-embed", result))
        return
    ray_run = _ray(artifact, small[0].parent, work / "out-ray")
    result["runs"]["ray/0.5mp/fp32"] = ray_run
    result["ray_overhead"] = 1 - ray_run["images_per_s"] / result["runs"]["ours/0.5mp/fp32"]["images_per_s"]
    print("ray", ray_run, "overhead", result["ray_overhead"], flush=True)
    demo = work / "demo"
    if not (demo / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "clipexport", "export", "demo", "-o", str(demo), "-q"], check=True)
    few = _links(work / "links-2k", small, 2000)
    many = _links(work / "links-20k", small, 20000)
    rss = {
        n: _ours(demo, folder, work / f"out-rss-{n}", "fp32")["peak_rss_mb"]
        for n, folder in (("2000", few), ("20000", many))
    }
    result["peak_rss_mb_by_corpus"] = rss
    result["rss_20k_over_2k"] = rss["20000"] / rss["2000"]
    print("rss", rss, flush=True)
    if args.clip_retrieval and not args.clip_retrieval.is_file():
        print(f"clip-retrieval not installed at {args.clip_retrieval}; skipped", flush=True)
    elif args.clip_retrieval:
        peer = _clip_retrieval(args.clip_retrieval, ckpt, small[0].parent, work / "out-clip-retrieval")
        from clipexport.bulk.dataset import read_embeddings

        ids, rows = [], []
        for _, shard_ids, shard_rows in read_embeddings(work / "out-0.5mp-fp32").shards():
            ids += shard_ids
            rows.append(shard_rows)
        ours = np.concatenate(rows)
        theirs_by_path = peer.pop("embeddings")
        matched = [i for i, path in enumerate(ids) if path in theirs_by_path]
        theirs = np.stack([theirs_by_path[ids[i]] for i in matched]).astype(np.float32)
        theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
        peer["rows_matched"] = len(matched)
        peer["min_cosine_vs_ours"] = float((ours[matched] * theirs).sum(axis=1).min()) if matched else None
        result["runs"]["clip-retrieval/0.5mp/fp32"] = peer
        for precision in ("fp32", "int8"):
            result[f"ours_over_clip_retrieval_{precision}"] = (
                result["runs"][f"ours/0.5mp/{precision}"]["images_per_s"] / peer["images_per_s"]
            )
        print("clip-retrieval", peer, flush=True)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    print(write_result("bulk-embed", result))


if __name__ == "__main__":
    main()
