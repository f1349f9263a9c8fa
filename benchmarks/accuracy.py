"""Accuracy, not only cosine: the trained demo CLIP (clipexport/demo) against the same
architecture with random weights, through the whole pipeline in one run.

For each model: export, FP16, INT8 --target cpu and INT8 --target tensorrt (run on ONNX Runtime
CPU), each INT8 also with the accuracy-targeted fallback (quantize --labeled-images on a separate
generated validation folder, bound 1 point), then `verify --labeled-images` on the shipped held-out set: zero-shot top-1/top-5 per
variant and its drop against PyTorch FP32, min/mean cosine, the nodes the INT8 fallback restored,
and CPU throughput of both towers vs FP32 (batch 32). What training changed: the largest
activation per transformer block, how many nodes FP16 conversion kept in FP32, the INT8 nodes
ranked most sensitive. Writes benchmarks/results/accuracy-demo.json.

    .venv/bin/python benchmarks/accuracy.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from precision import best_time, machine, write_result


def _activation_ranges(loaded) -> dict[str, float]:
    """max |x| at the output of every transformer block (vision and text) on the held-out images
    and the class prompts: where FP16 overflow and INT8 outliers come from."""
    import torch

    from clipexport.datasets import load_labelled_folder
    from clipexport.runtime.preprocess import open_image

    labelled = load_labelled_folder(_heldout())
    model = loaded.vision.model
    ranges: dict[str, float] = {}
    hooks = []
    for tower, blocks in (("vision", model.visual.transformer.resblocks), ("text", model.transformer.resblocks)):
        for i, block in enumerate(blocks):

            def hook(_m, _i, out, key=f"{tower}.block{i}"):
                ranges[key] = max(ranges.get(key, 0.0), float(out.abs().max()))

            hooks.append(block.register_forward_hook(hook))
    with torch.no_grad():
        pixels = torch.stack([loaded.image_transform(open_image(p)) for p in labelled.paths[:96]])
        model.encode_image(pixels)
        model.encode_text(loaded.tokenize([t.format(p) for p in labelled.prompts for t in labelled.templates]))
    for h in hooks:
        h.remove()
    return ranges


def _heldout() -> Path:
    return Path(__file__).resolve().parent.parent / "clipexport" / "data" / "demo" / "heldout"


def run(name: str, pretrained: str | None, tmp: Path, repeats: int) -> dict:
    import onnxruntime as ort

    from clipexport.artifact.manifest import read_manifest
    from clipexport.artifact.precision import Precision
    from clipexport.datasets import load_labelled_folder
    from clipexport.demo.shapes import CLASSES, write_labelled_folder
    from clipexport.precision.accuracy import DEFAULT_MAX_ACCURACY_DROP, AccuracyTarget
    from clipexport.runtime.backends.onnxruntime import _level, graph_optimization
    from clipexport.export.pipeline import ExportOptions, export_model
    from clipexport.precision.calibrated import Target
    from clipexport.precision.pipeline import QuantizeOptions, quantize_artifact
    from clipexport.sources import load_model
    from clipexport.verify.run import VerifyOptions, verify_artifact

    out: dict = {"weights": pretrained or "trained (shipped checkpoint)"}
    loaded = load_model("demo", pretrained)
    tokens = loaded.tokenize([f"a {c}." for c in CLASSES[:32]]).numpy().astype(np.int64)
    out["activation_max_abs"] = _activation_ranges(loaded)
    variants = {}
    # The accuracy-targeted fallback validates on its own generated folder, never on the held-out set it is scored on.
    validation = tmp / "validation"
    if not validation.is_dir():
        write_labelled_folder(validation, per_class=2, seed=20_000)
    target_accuracy = AccuracyTarget(
        load_labelled_folder(validation, _heldout() / "templates.txt"), DEFAULT_MAX_ACCURACY_DROP
    )
    for label, kind, target, accuracy_target in (
        ("fp16", Precision.FP16, None, None),
        ("int8-cpu", Precision.INT8, Target.CPU, None),
        ("int8-cpu+accuracy-fallback", Precision.INT8, Target.CPU, target_accuracy),
        ("int8-tensorrt", Precision.INT8, Target.TENSORRT, None),
        ("int8-tensorrt+accuracy-fallback", Precision.INT8, Target.TENSORRT, target_accuracy),
    ):
        artifact = tmp / f"{name}-{label}"
        export_model(ExportOptions(model="demo", output=artifact, pretrained=pretrained))
        kwargs = {"target": target, "sensitivity": True, "accuracy": accuracy_target} if target else {}
        _, outcomes = quantize_artifact(QuantizeOptions(artifact=artifact, precision=kind, **kwargs))
        report = verify_artifact(
            VerifyOptions(artifact=artifact, precisions=("fp32", kind.value), labeled_images=_heldout())
        )
        manifest = read_manifest(artifact)
        details = manifest.tower("vision").graph(kind).details
        text_details = manifest.tower("text").graph(kind).details
        accuracy = {a.precision if a.backend != "pytorch" else "pytorch": a for a in report.accuracy}
        timing: dict[str, dict[str, float]] = {}
        feeds = {"vision": np.random.default_rng(0).standard_normal((32, 3, 64, 64), dtype=np.float32), "text": tokens}
        for precision in ("fp32", kind.value):
            for tower, x in feeds.items():
                graph = artifact / manifest.tower(tower).graph(precision).file
                so = ort.SessionOptions()
                level = graph_optimization(Precision(precision), target)
                if level:  # as the runtime loads these graphs
                    so.graph_optimization_level = _level(ort, level)
                session = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
                feed = {session.get_inputs()[0].name: x}
                timing.setdefault(precision, {})[tower] = 32 / best_time(lambda: session.run(None, feed), repeats)
        variants[label] = {
            "top1": accuracy[kind.value].top1,
            "top5": accuracy[kind.value].top5,
            "drop_points": accuracy[kind.value].drop_points,
            "agreement": accuracy[kind.value].agreement,
            "min_cosine": {r.tower: r.parity.min_cosine for r in report.results if r.precision == kind.value},
            "mean_cosine": {r.tower: r.parity.mean_cosine for r in report.results if r.precision == kind.value},
            "restored_nodes": {"vision": len(details.fallback_nodes), "text": len(text_details.fallback_nodes)},
            "accuracy_fallback_nodes": {
                t: len(d.high_precision_nodes.get("accuracy_fallback", ()))
                for t, d in (("vision", details), ("text", text_details))
            },
            "accuracy_fallback": dict(details.accuracy_fallback),
            "fp32_nodes_kept": {"vision": len(details.fp32_nodes), "text": len(text_details.fp32_nodes)},
            "per_s_cpu_batch32": timing[kind.value],
            "speed_vs_fp32": {t: timing[kind.value][t] / timing["fp32"][t] for t in feeds},
            "most_sensitive": {o.tower.value: [s.to_dict() for s in o.sensitivity[:5]] for o in outcomes},
        }
        out["pytorch_fp32"] = {"top1": accuracy["pytorch"].top1, "top5": accuracy["pytorch"].top5}
        out["onnx_fp32"] = {
            "top1": accuracy["fp32"].top1,
            "top5": accuracy["fp32"].top5,
            "min_cosine": {r.tower: r.parity.min_cosine for r in report.results if r.precision == "fp32"},
        }
        out["per_s_cpu_batch32_fp32"] = timing["fp32"]
        print(name, label, variants[label], flush=True)
    out["variants"] = variants
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "machine": machine(),
            "heldout": str(_heldout()),
            "trained": run("trained", None, Path(tmp), args.repeats),
            "random": run("random", "random", Path(tmp), args.repeats),
        }
    print(write_result("accuracy-demo", result))


if __name__ == "__main__":
    main()
