"""Surgery on explicit-quantization (Q/DQ) graphs: which nodes are quantized, and putting chosen
nodes back in high precision without recalibrating.

Works on any QDQ graph (ONNX Runtime's or ModelOpt's placement): a node is "quantized" when one
of its inputs comes from a DequantizeLinear. Restoring it rewires those inputs to the original
high-precision tensors (the Q's input for activations, the FP32 model's weight for initializers),
then drops the Q/DQ nodes nobody reads any more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np

from clipexport._deps import require

if TYPE_CHECKING:
    import onnx

QUANTIZE = "QuantizeLinear"
DEQUANTIZE = "DequantizeLinear"


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the compute nodes fed by a DequantizeLinear, in graph (topological) order."""
    producers = _producers(model)
    out = []
    for node in model.graph.node:
        if node.op_type in (QUANTIZE, DEQUANTIZE):
            continue
        if any(producers.get(name) is not None and producers[name].op_type == DEQUANTIZE for name in node.input):
            out.append(node.name)
    return out


def restore_high_precision(
    quantized: onnx.ModelProto, original: onnx.ModelProto, names: Iterable[str]
) -> onnx.ModelProto:
    """A copy of `quantized` in which the nodes `names` read high-precision inputs again."""
    onnx = require("onnx", "editing quantized graphs")
    from onnx import numpy_helper

    wanted = set(names)
    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    graph = model.graph
    producers = _producers(model)
    inits = {init.name: init for init in graph.initializer}
    original_inits = {init.name: init for init in original.graph.initializer}
    original_nodes = {node.name: node for node in original.graph.node}
    added: dict[str, str] = {}
    for node in graph.node:
        if node.name not in wanted:
            continue
        for index, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != DEQUANTIZE:
                continue
            source = producers.get(dq.input[0])
            if source is not None and source.op_type == QUANTIZE:
                node.input[index] = source.input[0]  # activation: read what the Q read
                continue
            if dq.input[0] not in inits:
                continue
            # A quantized weight: the original model's tensor when the node kept its name,
            # else the dequantized values (carrying only the weight's own rounding).
            dtype = numpy_helper.to_array(inits[dq.input[1]]).dtype
            twin = original_nodes.get(node.name)
            weight_name = twin.input[index] if twin is not None and index < len(twin.input) else None
            if weight_name in original_inits:
                values = numpy_helper.to_array(original_inits[weight_name]).astype(dtype)
            else:
                values = dequantize(dq, inits).astype(dtype)
            key = f"{dq.output[0]}__high_precision"
            if key not in added:
                graph.initializer.append(numpy_helper.from_array(values, key))
                added[key] = key
            node.input[index] = key
    remove_dead_nodes(model)
    return model


def dequantize(dq: onnx.NodeProto, inits: dict) -> np.ndarray:
    from onnx import helper, numpy_helper

    values = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 and dq.input[2] else 0.0
    if scale.ndim == 1 and scale.size > 1:  # per-axis
        axis = next((helper.get_attribute_value(a) for a in dq.attribute if a.name == "axis"), 1) % values.ndim
        shape = [1] * values.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) else zero
    return (values - zero) * scale


def remove_dead_nodes(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nobody reads, then initializers nobody reads (in place)."""
    graph = model.graph
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        keep = [node for node in graph.node if any(out in used for out in node.output if out)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {name for node in graph.node for name in node.input} | _subgraph_inputs(graph)
    keep_inits = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    names = {init.name for init in keep_inits} | {name for node in graph.node for name in node.output}
    keep_info = [v for v in graph.value_info if v.name in names]
    del graph.value_info[:]
    graph.value_info.extend(keep_info)


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    # If/Loop bodies may read outer-scope initializers by name.
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
                names |= {name for n in sub.node for name in n.input}
                names |= _subgraph_inputs(sub)
    return names


def _producers(model: onnx.ModelProto) -> dict:
    out = {}
    for node in model.graph.node:
        for name in node.output:
            out[name] = node
    return out
