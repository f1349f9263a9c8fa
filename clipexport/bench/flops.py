"""FLOPs of one forward pass, counted from the ONNX graph at concrete input shapes.

Counts the GEMM-like ops, where CLIP spends its time: MatMul and Gemm (2*M*N*K) and Conv
(2 * output elements * input channels per group * kernel area). Elementwise ops, softmax and norms
are left out, as the usual "ViT-B/32 = 4.4 GMACs = 8.8 GFLOPs" figures do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from clipexport._deps import require


def graph_flops(path: Path, input_shapes: Mapping[str, Sequence[int]]) -> int:
    onnx = require("onnx", "counting FLOPs")
    model = onnx.load(str(path), load_external_data=False)
    for value in model.graph.input:
        if value.name in input_shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, input_shapes[value.name]):
                dim.ClearField("dim_param")
                dim.dim_value = int(size)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in inferred.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if not a or not out or min(a + out) < 0:
                continue
            k = a[-1] if node.op_type == "MatMul" or not _attr(node, "transA") else a[-2]
            total += 2 * int(np.prod(out)) * k
        elif node.op_type == "Conv":
            w, out = shapes.get(node.input[1]), shapes.get(node.output[0])
            if not w or not out or min(w + out) < 0:
                continue
            total += 2 * int(np.prod(out)) * int(np.prod(w[1:]))
    return total


def _attr(node, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)
