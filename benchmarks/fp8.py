"""FP8 (E4M3) on the demo CLIP, simulated on this CPU, against FP16 and INT8, in one run: zero-shot
top-1/top-5 on the shipped held-out set (192 images, 48 classes) and min/mean cosine against
PyTorch FP32 per tower, each variant run by ONNX Runtime (FP8 and TensorRT-placement INT8 at the
graph optimisation they are checked at) and by OpenVINO. Writes benchmarks/results/fp8-demo.json.

    .venv/bin/python benchmarks/fp8.py

FP8 speed is not measured: no TensorRT on our machines, and ONNX Runtime's CPU kernels only
simulate FP8 (dequantize, then FP32 GEMMs), which says nothing about an H100's FP8 tensor cores.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from precision import machine, write_result

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    from clipexport.artifact.precision import Precision, Target
    from clipexport.export.pipeline import ExportOptions, export_model
    from clipexport.precision.pipeline import QuantizeOptions, quantize_artifact
    from clipexport.verify.run import VerifyOptions, verify_artifact

    heldout = REPO / "clipexport" / "data" / "demo" / "heldout"
    out: dict = {"machine": machine(), "model": "demo CLIP (shipped weights)", "set": str(heldout), "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cpu, trt = Path(tmp) / "demo", Path(tmp) / "demo-trt"
        export_model(ExportOptions(model="demo", output=cpu))
        shutil.copytree(cpu, trt)
        quantize_artifact(QuantizeOptions(artifact=cpu, precision=Precision.FP16))
        quantize_artifact(QuantizeOptions(artifact=cpu, precision=Precision.INT8, target=Target.CPU))
        quantize_artifact(QuantizeOptions(artifact=cpu, precision=Precision.FP8))
        quantize_artifact(QuantizeOptions(artifact=trt, precision=Precision.INT8, target=Target.TENSORRT))
        runs = [(cpu, ("fp32", "fp16", "int8", "fp8"), {"int8": "int8-cpu"}), (trt, ("int8",), {"int8": "int8-trt"})]
        for artifact, precisions, names in runs:
            report = verify_artifact(
                VerifyOptions(
                    artifact=artifact,
                    precisions=precisions,
                    backends=("onnxruntime", "openvino"),
                    labeled_images=heldout,
                    write_report=False,
                )
            )
            for a in report.accuracy:
                if a.backend == "pytorch":
                    out["pytorch_fp32"] = {"top1": a.top1, "top5": a.top5}
                    continue
                label = f"{names.get(a.precision, a.precision)}/{a.backend}"
                cos = {
                    r.tower: {"min": round(r.parity.min_cosine, 6), "mean": round(r.parity.mean_cosine, 6)}
                    for r in report.results
                    if r.precision == a.precision and r.backend == a.backend
                }
                out["variants"][label] = {
                    "top1": a.top1,
                    "top5": a.top5,
                    "drop_points": a.drop_points,
                    "agreement": round(a.agreement, 4),
                    "cosine": cos,
                }
                print(
                    f"{label:<22} top-1 {100 * a.top1:5.1f}%  drop {a.drop_points:+.2f} pt  "
                    f"vision min/mean cos {cos['vision']['min']:.5f}/{cos['vision']['mean']:.5f}  "
                    f"text {cos['text']['min']:.5f}/{cos['text']['mean']:.5f}",
                    flush=True,
                )
    out["speed"] = "not measured: ONNX Runtime / OpenVINO on a CPU only simulate FP8, and no TensorRT here"
    print(f"wrote {write_result('fp8-demo', out)}")


if __name__ == "__main__":
    main()
