"""Every model family end to end on tiny random models built offline (the same builders the
tests use): export, verify at FP32 (and FP16 / INT8 --target cpu where the README claims them),
and the runtime tokenizer's ids against the source library's on the tricky corpus; verified on
ONNX Runtime and on OpenVINO (CPU).
Writes benchmarks/results/families.json; the README's family table quotes it.

    .venv/bin/python benchmarks/families.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from precision import machine, write_result  # noqa: E402

BACKENDS = ("onnxruntime", "openvino")  # every family on both CPU runtimes


def _artifacts(tmp: Path) -> dict[str, tuple[Path, object]]:
    """family -> (artifact, reference tokenizer: texts -> ids)."""
    import transformers
    from open_clip.tokenizer import HFTokenizer

    import helpers
    from clipexport.export.pipeline import ExportOptions, export_model

    configs = TESTS / "configs"

    def export(name: str, model: str, pretrained: str | None = "random", **kw) -> Path:
        out = tmp / name
        export_model(ExportOptions(model=model, output=out, pretrained=pretrained, **kw))
        return out

    def hf_reference(folder: Path, length: int):
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        return lambda texts: tok(texts, padding="max_length", max_length=length, truncation=True, return_tensors="np")[
            "input_ids"
        ]

    import open_clip

    clip_bpe = lambda texts: open_clip.get_tokenizer("ViT-B-32")(texts).numpy()  # noqa: E731
    out: dict[str, tuple[Path, object]] = {}
    for name, config in (
        ("open_clip-vit", "tiny-vit.json"),
        ("open_clip-vit-quickgelu", "tiny-vit-quickgelu.json"),
        ("open_clip-modified-resnet", "tiny-rn.json"),
        ("open_clip-timm-convnext", "tiny-convnext.json"),
        ("open_clip-mobileclip", "tiny-mobileclip.json"),
    ):
        out[name] = (export(name, str(configs / config)), clip_bpe)
    helpers.train_unigram_tokenizer(64).save_pretrained(tmp / "siglip-tok")
    out["open_clip-siglip"] = (
        export("open_clip-siglip", str(configs / "tiny-siglip.json"), tokenizer=tmp / "siglip-tok"),
        lambda t: HFTokenizer(str(tmp / "siglip-tok"), context_length=64, clean="canonicalize")(t).numpy(),
    )
    xlmr = helpers.save_tiny_xlmr_text_tower(tmp / "xlmr")
    out["open_clip-hf-text"] = (
        export("open_clip-hf-text", str(configs / "tiny-xlmr.json"), text_config=xlmr),
        lambda t: HFTokenizer(str(xlmr), context_length=77)(t).numpy(),
    )
    builders = {
        "hf-clip": (helpers.save_tiny_hf_clip, 77),
        "hf-siglip": (helpers.save_tiny_hf_siglip, 64),
        "hf-siglip2-fixed": (helpers.save_tiny_hf_siglip2_fixed, 64),
    }
    for name, (build, length) in builders.items():
        folder = build(tmp / f"{name}-model")
        out[name] = (export(name, str(folder), None), hf_reference(folder, length))
    for name, length in (("hf-chinese-clip", 52), ("hf-altclip", 64), ("hf-metaclip-2", 77)):
        folder = helpers.save_tiny_hf_family(name.removeprefix("hf-").replace("-", "_"), tmp / f"{name}-model")
        out[name] = (export(name, str(folder), None), hf_reference(folder, length))
    return out


def main() -> None:
    from test_families import PRECISION_FAMILIES
    from test_tokenizer import TRICKY

    from clipexport.datasets import DEFAULT_CAPTIONS
    from clipexport.precision.calibration import CalibrationSource
    from clipexport.precision.calibrated import Target
    from clipexport.precision.pipeline import Precision, QuantizeOptions, quantize_artifact
    from clipexport.runtime import ClipRuntime
    from clipexport.verify.run import VerifyOptions, verify_artifact

    corpus = TRICKY + list(DEFAULT_CAPTIONS)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family, (artifact, reference) in _artifacts(Path(tmp)).items():
            precisions = ["fp32"]
            if family in PRECISION_FAMILIES:
                small = CalibrationSource(size=24)
                quantize_artifact(QuantizeOptions(artifact=artifact, precision=Precision.FP16, calibration=small))
                quantize_artifact(
                    QuantizeOptions(artifact=artifact, precision=Precision.INT8, calibration=small, target=Target.CPU)
                )
                precisions += ["fp16", "int8"]
            report = verify_artifact(
                VerifyOptions(artifact=artifact, precisions=tuple(precisions), num_images=8, backends=BACKENDS)
            )
            with ClipRuntime.load(artifact) as runtime:
                got = runtime.tokenizer(corpus)
            want = reference(corpus)
            equal = sum(np.array_equal(got[i], want[i]) for i in range(len(corpus)))
            rows[family] = {
                "passed": report.passed,
                "passed_by_backend": {b: all(r.passed for r in report.results if r.backend == b) for b in BACKENDS},
                "failures": [
                    f"{r.backend} {r.tower}/{r.precision}: {'; '.join(r.failures)}"
                    for r in report.results
                    if not r.passed
                ],
                "min_cosine": {f"{r.backend}:{r.tower}/{r.precision}": r.parity.min_cosine for r in report.results},
                "token_ids_equal": f"{equal}/{len(corpus)}",
            }
            print(family, rows[family], flush=True)
    print(
        write_result(
            "families", {"machine": machine(), "weights": "random (tiny models built offline)", "families": rows}
        )
    )


if __name__ == "__main__":
    main()
