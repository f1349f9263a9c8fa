"""The registries hold their claim: a stage branches on a precision's facts, never on its name, so
a precision made like FP16 but of another type (a throwaway bf16 here) really is that type, in
the graph and in the PyTorch baseline; and every precision and backend has a parity test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipexport.artifact import precision as registry
from clipexport.artifact.manifest import Tower, read_manifest
from clipexport.artifact.precision import Maker, Precision, PrecisionFacts
from clipexport.parity.gates import GATES
from clipexport.runtime.backends import BackendKind

BF16 = PrecisionFacts(
    Maker.AUTOCAST, strongly_typed=True, allow_tf32=True, torch_dtype="bfloat16", autocast_type="bf16"
)


def _elem_types(model) -> set[int]:
    types = {t.data_type for t in model.graph.initializer}
    types |= {v.type.tensor_type.elem_type for v in model.graph.value_info}
    types |= {a.t.data_type for n in model.graph.node for a in n.attribute if a.HasField("t")}
    types |= {a.i for n in model.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
    return types


def test_a_throwaway_bf16_made_like_fp16_is_really_bf16(tiny_vit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx
    import torch

    from clipexport.bench.run import _TorchRunner
    from clipexport.precision import pipeline

    # The temporary registry: the FP16 slot holds a bf16 precision made the same way.
    monkeypatch.setitem(registry._FACTS, Precision.FP16, BF16)
    options = pipeline.QuantizeOptions(artifact=tiny_vit, precision=Precision.FP16, towers=(Tower.VISION,))
    # ONNX Runtime's CPU kernels have no bf16 Conv: the candidate's validation refuses it in one line,
    # and the artifact is left as it was.
    from clipexport.errors import BackendError

    before = sorted(p.name for p in tiny_vit.iterdir())
    with pytest.raises(BackendError, match="Could not find an implementation") as refused:
        pipeline.quantize_artifact(options)
    assert "\n" not in str(refused.value)
    assert sorted(p.name for p in tiny_vit.iterdir()) == before
    # What the maker made, caught where it is validated: bf16, no fp16 anywhere.
    made, real = [], pipeline.run_model

    def caught(model, *args, **kwargs):
        if isinstance(model, (str, Path)):  # the FP32 reference
            return real(model, *args, **kwargs)
        made.append(model)
        raise SystemExit("stop: the graph is what this test checks")

    monkeypatch.setattr(pipeline, "run_model", caught)
    with pytest.raises(SystemExit):
        pipeline.quantize_artifact(options)
    types = _elem_types(made[0])
    assert onnx.TensorProto.BFLOAT16 in types and onnx.TensorProto.FLOAT16 not in types, types
    assert sorted(p.name for p in tiny_vit.iterdir()) == before

    # The PyTorch baseline runs what the facts name: bfloat16, not a silent float32 or float16.
    runner = _TorchRunner(torch.nn.Linear(4, 2), torch, "cpu", BF16.torch_dtype)
    assert next(runner.module.parameters()).dtype is torch.bfloat16
    assert runner.run(np.ones((1, 4), np.float32)).dtype == np.float32


# Each backend's parity against PyTorch, and where it is tested (a GPU backend's test skips here,
# naming what it needs).
PARITY_TESTS = {
    BackendKind.ONNXRUNTIME: (
        "test_targets.py",
        "test_verify_gates_hold_for_every_precision_on_openvino_and_onnxruntime",
    ),
    BackendKind.OPENVINO: ("test_targets.py", "test_verify_gates_hold_for_every_precision_on_openvino_and_onnxruntime"),
    BackendKind.TENSORRT: ("test_build.py", "test_build_and_verify_engines_on_gpu"),
    BackendKind.ONNXRUNTIME_TRT: ("test_build.py", "test_onnxruntime_trt_meets_the_gates_on_a_gpu"),
}


def test_every_precision_and_backend_has_a_gate_and_a_parity_test(demo_quantized: Path) -> None:
    assert set(GATES) == set(Precision), "a precision without a gate"
    manifest = read_manifest(demo_quantized)
    for tower in Tower:  # the shared quantized demo holds every precision, so verify --precision all checks each
        assert set(manifest.tower(tower).graphs) == {p.value for p in Precision}
    assert set(PARITY_TESTS) == set(BackendKind), "a backend without a parity test: add it to PARITY_TESTS"
    here = Path(__file__).parent
    for module, name in PARITY_TESTS.values():
        assert f"def {name}(" in (here / module).read_text(encoding="utf-8"), (module, name)
