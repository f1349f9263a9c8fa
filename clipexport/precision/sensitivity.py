"""Per-layer sensitivity of a Q/DQ graph, and the fallback that keeps the worst layers in high
precision until the accuracy target holds.

Sensitivity is local: each quantized node is run alone, on the exact high-precision tensors the
model feeds it for the sensitivity samples, and its output is compared with the unquantized
node's. One pass of the model plus one tiny graph per node, so it stays cheap on a ViT-L. The
fallback then checks end to end: it restores the 1, 2, 4, ... worst nodes and re-measures the
whole tower on the validation split until the target gate holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipexport._deps import require
from clipexport.errors import ExportError
from clipexport.artifact.manifest import TowerArtifact
from clipexport.precision import qdq
from clipexport.progress import Progress, silent
from clipexport.parity.gates import Gate
from clipexport.parity.stats import EmbeddingParity, embedding_parity

if TYPE_CHECKING:
    import onnx

EVAL_BATCH_SIZE = 8


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    op_type: str
    error: float  # ||y_int8 - y|| / ||y|| of the node's output over the sensitivity samples

    def to_dict(self) -> dict[str, object]:
        return {"node": self.node, "op_type": self.op_type, "relative_error": self.error}


@dataclass(frozen=True)
class FallbackResult:
    model: "onnx.ModelProto"
    restored: tuple[str, ...]  # nodes put back in high precision, worst first
    parity: EmbeddingParity  # on the validation split, vs the FP32 graph
    steps: tuple[tuple[int, float, float], ...]  # (nodes restored, min cosine, mean cosine) per try


def run_model(
    model: "onnx.ModelProto | Path", tower: TowerArtifact, data: np.ndarray, optimization: str | None = None
) -> np.ndarray:
    """Embeddings of `data` from a graph file or an in-memory graph, on ONNX Runtime's CPU provider
    (`optimization`: the graph optimisation cap, see onnxruntime.graph_optimization)."""
    from clipexport.runtime.backends.onnxruntime import OnnxRuntimeBackend

    graph = model if isinstance(model, Path) else model.SerializeToString()
    with OnnxRuntimeBackend(
        graph, tower, providers=["CPUExecutionProvider"], optimization=optimization
    ) as backend:  # checks outputs are finite
        return np.concatenate(
            [backend.run(data[i : i + EVAL_BATCH_SIZE]) for i in range(0, len(data), EVAL_BATCH_SIZE)]
        )


FeedPlan = tuple[list[str], str]  # (input tensors of the node's tiny graph, its output tensor)


def layer_sensitivity(
    quantized: "onnx.ModelProto",
    original: "onnx.ModelProto",
    samples: np.ndarray,
    input_name: str,
    progress: Progress = silent,
) -> list[LayerSensitivity]:
    """Every quantized node's local error, worst first, in three phases: plan each node's tiny
    graph, capture the high-precision tensors they need in one model run, run each tiny graph."""
    nodes = qdq.quantized_nodes(quantized)
    if not nodes:
        return []
    plans = _feed_plans(quantized, nodes)
    progress(f"capturing activations for {len(nodes)} quantized nodes")
    captured = _capture(quantized, original, nodes, plans, samples, input_name)
    return sorted(_node_errors(quantized, nodes, plans, captured, progress), key=lambda r: r.error, reverse=True)


def _feed_plans(quantized: "onnx.ModelProto", nodes: list[str]) -> dict[str, FeedPlan]:
    """Per node, the high-precision activations its tiny graph is fed (weights stay inside it)."""
    producers = {out: node for node in quantized.graph.node for out in node.output}
    inits = {init.name for init in quantized.graph.initializer}
    by_name = {node.name: node for node in quantized.graph.node}
    plans: dict[str, FeedPlan] = {}
    for name in nodes:
        node = by_name[name]
        feeds = []
        for tensor in node.input:
            if not tensor or tensor in inits:
                continue
            producer = producers.get(tensor)
            if producer is not None and producer.op_type == qdq.DEQUANTIZE:
                source = producers.get(producer.input[0])
                if source is None:  # a quantized weight: part of the tiny graph
                    continue
                tensor = source.input[0] if source.op_type == qdq.QUANTIZE else tensor
                if tensor in inits:  # a float weight quantized in the graph (ModelOpt's form)
                    continue
            feeds.append(tensor)
        plans[name] = (feeds, node.output[0])
    return plans


def _capture(
    quantized: "onnx.ModelProto",
    original: "onnx.ModelProto",
    nodes: list[str],
    plans: dict[str, FeedPlan],
    samples: np.ndarray,
    input_name: str,
) -> dict[str, list[np.ndarray]]:
    """One run of the all-high-precision graph captures every tensor the tiny graphs need, per batch."""
    onnx = require("onnx", "measuring layer sensitivity")
    ort = require("onnxruntime", "measuring layer sensitivity")
    reference = qdq.restore_high_precision(quantized, original, nodes)
    wanted = sorted({t for feeds, out in plans.values() for t in [*feeds, out]} - {input_name})
    existing = {o.name for o in reference.graph.output}
    reference.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted if t not in existing)
    session = ort.InferenceSession(reference.SerializeToString(), providers=["CPUExecutionProvider"])
    captured: dict[str, list[np.ndarray]] = {t: [] for t in [*wanted, input_name]}
    for start in range(0, len(samples), EVAL_BATCH_SIZE):
        batch = samples[start : start + EVAL_BATCH_SIZE]
        captured[input_name].append(batch)
        for tensor, value in zip(wanted, session.run(wanted, {input_name: batch})):
            captured[tensor].append(value)
    return captured


def _node_errors(
    quantized: "onnx.ModelProto",
    nodes: list[str],
    plans: dict[str, FeedPlan],
    captured: dict[str, list[np.ndarray]],
    progress: Progress,
) -> list[LayerSensitivity]:
    """||y_int8 - y|| / ||y|| of each node alone, fed the captured high-precision inputs."""
    onnx = require("onnx", "measuring layer sensitivity")
    ort = require("onnxruntime", "measuring layer sensitivity")
    by_name = {node.name: node for node in quantized.graph.node}
    extractor = onnx.utils.Extractor(quantized)
    results = []
    for index, name in enumerate(nodes):
        feeds, out = plans[name]
        progress(f"sensitivity {index + 1}/{len(nodes)}: {name}")
        small = extractor.extract_model(feeds, [out])
        small.graph.ClearField("value_info")  # shapes of the batch the extractor saw: let ORT infer
        tiny = ort.InferenceSession(small.SerializeToString(), providers=["CPUExecutionProvider"])
        errors, norms = 0.0, 0.0
        for batch in range(len(captured[out])):
            got = tiny.run([out], {t: captured[t][batch] for t in feeds})[0].astype(np.float64)
            want = captured[out][batch].astype(np.float64)
            # Attention masks carry -inf by design: compare where the reference is finite, and
            # count a new non-finite value as an infinite error.
            finite = np.isfinite(want)
            if not np.array_equal(np.isfinite(got), finite):
                errors = float("inf")
                break
            errors += float(np.sum((got[finite] - want[finite]) ** 2))
            norms += float(np.sum(want[finite] ** 2))
        results.append(LayerSensitivity(name, by_name[name].op_type, float(np.sqrt(errors / max(norms, 1e-30)))))
    return results


def fallback_until(
    quantized: "onnx.ModelProto",
    original: "onnx.ModelProto",
    tower: TowerArtifact,
    validation: np.ndarray,
    expected: np.ndarray,
    ranking: list[str],
    target: Gate,
    progress: Progress = silent,
    optimization: str | None = None,
) -> FallbackResult:
    """Restore the 1, 2, 4, ... most sensitive nodes until `target` holds on the validation split
    (called once the fully quantized graph has missed it)."""
    steps = []
    counts = [2**i for i in range(len(ranking).bit_length()) if 2**i < len(ranking)] + [len(ranking)]
    for count in dict.fromkeys(counts):
        restored = tuple(ranking[:count])
        candidate = qdq.restore_high_precision(quantized, original, restored)
        parity = embedding_parity(expected, run_model(candidate, tower, validation, optimization))
        steps.append((count, parity.min_cosine, parity.mean_cosine))
        progress(
            f"validation with {count} node(s) in high precision: min cos {parity.min_cosine:.5f}, "
            f"mean {parity.mean_cosine:.5f}"
        )
        if not target.failures(parity.min_cosine, parity.mean_cosine, parity.max_abs_diff):
            return FallbackResult(candidate, restored, parity, tuple(steps))
    raise ExportError(
        f"INT8 accuracy stays below min cosine {target.min_cosine} even with every quantized node in high "
        f"precision (last: {steps[-1][1]:.5f}); the high-precision part itself disagrees: try --precision fp16"
    )
