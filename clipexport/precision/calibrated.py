"""Calibrated Q/DQ graphs (INT8, FP8: the precisions whose `PrecisionFacts.maker` is
CALIBRATED_QDQ), placed for one of two targets.

- Target.TENSORRT: NVIDIA ModelOpt's ONNX quantizer (`quantize_mode` from the precision's facts:
  "int8" or "fp8"), which places Q/DQ where TensorRT fuses them and stores the rest in FP16: the
  graph a strongly typed TensorRT build compiles as is. FP8 also leaves its `high_precision_ops`
  (Add, LayerNormalization) unquantized.
- Target.CPU (INT8 only): ONNX Runtime's quantizer on MatMul/Gemm only, per-channel symmetric S8S8, FP32
  elsewhere: ONNX Runtime fuses these into integer GEMMs, the part of CLIP where the FLOPs are.
  (Measured on a 2-core AVX2 machine: ~2x FP32 for the ViT-B-32 image tower, while the TensorRT
  placement runs slower than FP32 on ONNX Runtime's CPU provider.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from clipexport._deps import require
from clipexport.errors import ExportError, InputError
from clipexport.artifact.manifest import Tower
from clipexport.artifact.precision import CalibrationMethod, Precision, Target
from clipexport.precision._quiet import exact_name, quiet_libraries
from clipexport.precision.calibration import CalibrationData

if TYPE_CHECKING:
    import onnx

CALIBRATION_BATCH_SIZE = 8
CPU_OP_TYPES = ("MatMul", "Gemm")
# Percentile calibration clips the top 0.001% of |activation|: CLIP's residual stream carries a
# few huge outlier channels, and MinMax/percentile differ only in how much of that tail to keep.
PERCENTILE = 99.999


DEFAULT_METHOD = {Target.TENSORRT: CalibrationMethod.ENTROPY, Target.CPU: CalibrationMethod.MAX}


def sensitive_defaults(model: "onnx.ModelProto", tower: Tower) -> list[str]:
    """Nodes that stay in high precision from the start: the vision tower's first convolution
    (patch embedding / ResNet stem, which sees raw pixels) and the last MatMul/Gemm (the final
    projection into the shared embedding space, whose error reaches every cosine directly)."""
    nodes = list(model.graph.node)
    keep = []
    if tower is Tower.VISION:
        keep += [n.name for n in nodes if n.op_type == "Conv"][:1]
    keep += [n.name for n in nodes if n.op_type in CPU_OP_TYPES][-1:]
    return keep


def quantize_qdq(
    fp32_path: Path,
    data: CalibrationData,
    precision: Precision,
    target: Target,
    method: CalibrationMethod,
    exclude: list[str],
) -> "onnx.ModelProto":
    """A calibrated Q/DQ graph of `precision` (INT8, FP8) with `target`'s placement."""
    onnx = require("onnx", "Q/DQ quantization")
    name = precision.value.upper()
    if target is Target.TENSORRT and method is CalibrationMethod.PERCENTILE:
        raise InputError(
            "percentile calibration is available with --target cpu; ModelOpt's TensorRT placement "
            "calibrates with --method entropy or max"
        )
    with tempfile.TemporaryDirectory(prefix="clipexport-int8-") as tmp:
        out = Path(tmp) / "quantized.onnx"
        if target is Target.TENSORRT:
            _modelopt(
                fp32_path,
                out,
                data,
                method,
                exclude,
                precision.facts.modelopt_mode or "int8",
                precision.facts.high_precision_ops,
            )
        else:
            quantization = require("onnxruntime.quantization", "INT8 quantization for the CPU")
            with quiet_libraries():
                _onnxruntime(quantization, fp32_path, out, data, method, exclude)
        if not out.is_file():
            raise ExportError(f"the {target.value} {name} quantizer wrote no graph for the {data.tower.value} tower")
        return onnx.load(str(out))


def _modelopt(
    fp32_path: Path,
    out: Path,
    data: CalibrationData,
    method: CalibrationMethod,
    exclude: list[str],
    mode: str,
    exclude_ops: tuple[str, ...] = (),
) -> None:
    import json
    import subprocess
    import sys

    require("modelopt.onnx.quantization", f"{mode.upper()} quantization for TensorRT")
    sample_shape = "x".join(str(d) for d in (CALIBRATION_BATCH_SIZE, *data.calibration.shape[1:]))
    np.save(out.parent / "calibration.npy", data.calibration)
    job = {
        "fp32": str(fp32_path),
        "out": str(out),
        "input_name": data.input_name,
        "data": str(out.parent / "calibration.npy"),
        "method": method.value,
        "shapes": f"{data.input_name}:{sample_shape}",
        "eps": _calibration_eps(),
        "exclude": [exact_name(name) for name in exclude],
        "mode": mode,
        "exclude_ops": list(exclude_ops),
    }
    (out.parent / "job.json").write_text(json.dumps(job), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "clipexport.precision._modelopt_worker", str(out.parent / "job.json")],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExportError(f"ModelOpt {mode.upper()} quantization of the {data.tower.value} tower failed: {last[:400]}")


def _onnxruntime(
    quantization: Any, fp32_path: Path, out: Path, data: CalibrationData, method: CalibrationMethod, exclude: list[str]
) -> None:
    ort_method = {
        CalibrationMethod.MAX: quantization.CalibrationMethod.MinMax,
        CalibrationMethod.ENTROPY: quantization.CalibrationMethod.Entropy,
        CalibrationMethod.PERCENTILE: quantization.CalibrationMethod.Percentile,
    }[method]
    quantization.quantize_static(
        str(fp32_path),
        str(out),
        _Reader(data),
        quant_format=quantization.QuantFormat.QDQ,
        op_types_to_quantize=list(CPU_OP_TYPES),
        nodes_to_exclude=list(exclude),
        per_channel=True,
        activation_type=quantization.QuantType.QInt8,
        weight_type=quantization.QuantType.QInt8,
        calibrate_method=ort_method,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "CalibPercentile": PERCENTILE},
    )


def _calibration_eps() -> list[str]:
    from clipexport.runtime.backends.onnxruntime import choose_providers

    ort = require("onnxruntime", "INT8 calibration")
    return ["cuda:0", "cpu"] if "CUDAExecutionProvider" in choose_providers(ort.get_available_providers()) else ["cpu"]


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over the calibration array, in fixed batches."""

    def __init__(self, data: CalibrationData):
        self.data = data
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iterate()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        array = self.data.calibration
        for start in range(0, len(array), CALIBRATION_BATCH_SIZE):
            yield {self.data.input_name: array[start : start + CALIBRATION_BATCH_SIZE]}
