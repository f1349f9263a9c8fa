"""Mixed precision with NVIDIA ModelOpt's ONNX autocast, for every precision made this way
(`Maker.AUTOCAST`; its `PrecisionFacts.autocast_type` is autocast's low precision: "fp16", "bf16"),
keeping the overflow-prone parts in FP32.

Kept in FP32, by rule:
- op types whose FP16 form overflows or loses the sum on CLIP: LayerNormalization (variance of a
  residual stream with outlier channels), Softmax, reductions, Pow, Sqrt;
- everything after the last LayerNormalization: the EOT/CLS gather, the final projection and
  the L2 normalisation, where the embedding is formed and every rounding reaches the cosine;
- whatever autocast's reference run finds exceeding `DATA_MAX` on real calibration samples.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipexport._deps import require
from clipexport.errors import ExportError
from clipexport.precision._quiet import exact_name, quiet_libraries

if TYPE_CHECKING:
    import onnx

FP32_OP_TYPES = (
    "LayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceL2",
    "ReduceMax",
    "Pow",
    "Sqrt",
    "ReduceSumSquare",
)
# FP16's max is 65504; autocast keeps a node in FP32 when its inputs/outputs exceed this on the
# reference run. 512 is autocast's own default, leaving >100x headroom for inputs unlike the samples.
DATA_MAX = 512.0
REFERENCE_SAMPLES = 16


def tail_after_last_layernorm(model: "onnx.ModelProto") -> list[str]:
    """Names of the last LayerNormalization and every node downstream of it."""
    nodes = list(model.graph.node)
    last = max((i for i, n in enumerate(nodes) if n.op_type == "LayerNormalization"), default=None)
    if last is None:
        return []
    live = set(nodes[last].output)
    tail = [nodes[last].name]
    for node in nodes[last + 1 :]:
        if live.intersection(node.input):
            live.update(node.output)
            tail.append(node.name)
    return tail


def convert_autocast(
    fp32_path: Path, input_name: str, samples: np.ndarray, low_precision_type: str, keep_io_types: bool = True
) -> tuple["onnx.ModelProto", list[str]]:
    """(mixed-precision model, names of the nodes kept in FP32 by the tail rule); `low_precision_type`
    is the precision's `PrecisionFacts.autocast_type`."""
    onnx = require("onnx", f"{low_precision_type.upper()} conversion")
    autocast = require("modelopt.onnx.autocast", f"{low_precision_type.upper()} conversion")
    tail = tail_after_last_layernorm(onnx.load(str(fp32_path), load_external_data=False))
    with tempfile.TemporaryDirectory(prefix="clipexport-fp16-") as tmp:
        reference = Path(tmp) / "reference.npz"
        np.savez(reference, **{input_name: samples[:REFERENCE_SAMPLES]})
        try:
            with quiet_libraries(), contextlib.redirect_stderr(io.StringIO()):
                model = autocast.convert_to_mixed_precision(
                    str(fp32_path),
                    low_precision_type=low_precision_type,
                    op_types_to_exclude=list(FP32_OP_TYPES),
                    nodes_to_exclude=[exact_name(name) for name in tail],
                    data_max=DATA_MAX,
                    keep_io_types=keep_io_types,
                    calibration_data=str(reference),
                    providers=["cpu"],
                )
        except Exception as exc:
            raise ExportError(
                f"{low_precision_type.upper()} conversion of {fp32_path.name} failed: {type(exc).__name__}: {exc}"
            ) from exc
    return model, tail


def fp32_nodes(model: "onnx.ModelProto") -> list[str]:
    """Compute nodes whose outputs stayed float32 after conversion (shape plumbing and casts excluded)."""
    onnx = require("onnx", "FP16 conversion")
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    skip = {
        "Cast",
        "Shape",
        "Reshape",
        "Transpose",
        "Gather",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "Slice",
        "Expand",
        "Constant",
        "Identity",
        "Flatten",
    }
    return [
        n.name
        for n in model.graph.node
        if n.op_type not in skip and n.output and types.get(n.output[0]) == onnx.TensorProto.FLOAT
    ]
