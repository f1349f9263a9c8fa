"""Trace one tower to ONNX with a dynamic batch axis, check it, and smoke-run it."""

from __future__ import annotations

import io
import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from clipexport._deps import require
from clipexport.errors import ExportError, InputError, first_line
from clipexport.export.specs import BATCH_AXIS, MIN_OPSET, SEQUENCE_AXIS, TowerSpec
from clipexport.artifact.layout import MIN_TEXT_LENGTH
from clipexport.artifact.manifest import GraphDetails, GraphFile, TensorSpec, TowerArtifact, TowerProperties
from clipexport.artifact.precision import EXPORTED, MadeBy
from clipexport.vectors import l2_normalize

# A protobuf cannot exceed 2 GiB; leave headroom for the graph itself.
EXTERNAL_DATA_THRESHOLD_BYTES = int(1.8 * 2**30)
# The smoke run right after export only catches gross breakage (a batch size baked in, a
# dropped op); verify measures parity properly. Normalised FP32 outputs agree to ~1e-6,
# so 1e-3 on normalised outputs never trips on rounding.
SMOKE_MAX_ABS = 1e-3


def check_opset(opset: int) -> None:
    """Before any work: LayerNormalization needs 17, and the installed onnx knows up to some N."""
    if opset < MIN_OPSET:
        raise InputError(
            f"opset {opset} is too old: LayerNormalization needs opset >= {MIN_OPSET}; "
            f"pass --opset {MIN_OPSET} or higher"
        )
    newest = require("onnx", "exporting to ONNX").defs.onnx_opset_version()
    if opset > newest:
        raise InputError(
            f"opset {opset} is newer than the installed onnx supports ({newest}); "
            f"pass --opset between {MIN_OPSET} and {newest}"
        )


def export_tower(
    module: Any,
    spec: TowerSpec,
    example: Any,
    out_dir: Path,
    opset: int,
    properties: TowerProperties | None = None,
    trim_length: int | None = None,
    adjustments: tuple[str, ...] = (),
) -> TowerArtifact:
    """`trim_length`: for a variable-length text graph, the example cut after its last EOT, which
    the smoke run checks against the full-length output."""
    torch = require("torch", "exporting to ONNX")
    onnx = require("onnx", "exporting to ONNX")
    require("onnxscript", "exporting to ONNX")
    check_opset(opset)
    path = out_dir / f"{spec.tower.value}.onnx"
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = param_bytes > EXTERNAL_DATA_THRESHOLD_BYTES
    properties = properties or TowerProperties()
    dynamic = {0: torch.export.Dim(BATCH_AXIS)}
    input_shape: tuple[Any, ...] = (BATCH_AXIS, *example.shape[1:])
    if properties.variable_length:
        dynamic[1] = torch.export.Dim(SEQUENCE_AXIS, min=MIN_TEXT_LENGTH, max=int(example.shape[1]))
        input_shape = (BATCH_AXIS, SEQUENCE_AXIS)
    with torch.no_grad():
        try:
            expected = module(example).numpy()
        except Exception as exc:
            raise ExportError(
                f"the {spec.tower.value} tower does not run in PyTorch itself, so it cannot be traced: "
                f"{_root_cause(exc)}"
            ) from exc
        try:
            # The dynamo exporter prints its own progress lines; ours are enough.
            with contextlib.redirect_stdout(io.StringIO()):
                torch.onnx.export(
                    module,
                    (example,),
                    str(path),
                    input_names=[spec.input_name],
                    output_names=[spec.output_name],
                    dynamic_shapes=(dynamic,),
                    opset_version=opset,
                    dynamo=True,
                    external_data=external,
                    verbose=False,
                )
        except Exception as exc:
            raise ExportError(f"tracing the {spec.tower.value} tower to ONNX failed: {_root_cause(exc)}") from exc
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported {spec.tower.value} graph fails the ONNX checker: {exc}") from exc
    _smoke_run(path, spec, example.numpy(), expected, trim_length)
    graph = GraphFile.of(
        out_dir,
        path.name,
        external,
        GraphDetails(method="torch.onnx.export (dynamo)", made_by=MadeBy.EXPORT, adjustments=adjustments),
    )
    dim = int(expected.shape[-1])
    return TowerArtifact(
        inputs=(TensorSpec(spec.input_name, spec.input_dtype, input_shape),),
        outputs=(TensorSpec(spec.output_name, spec.output_dtype, (BATCH_AXIS, dim)),),
        opset=opset,
        graphs={EXPORTED: graph},
        properties=properties,
    )


def _smoke_run(
    path: Path, spec: TowerSpec, example: np.ndarray, expected: np.ndarray, trim_length: int | None = None
) -> None:
    """Run the graph at the traced batch size and at batch 1: a baked-in batch shows up here.
    A variable-length text graph also runs cut after its last end-of-text token."""
    ort = require("onnxruntime", "checking the exported graph")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    columns = [slice(None)] + ([slice(0, trim_length)] if trim_length else [])
    for rows, cols in [(slice(None), c) for c in columns] + [(slice(0, 1), slice(None))]:
        got = session.run([spec.output_name], {spec.input_name: example[rows, cols]})[0]
        want = expected[rows]
        if got.shape != want.shape or not np.allclose(
            l2_normalize(got), l2_normalize(want), atol=SMOKE_MAX_ABS, rtol=0
        ):
            raise ExportError(
                f"the exported {spec.tower.value} graph disagrees with PyTorch right after export "
                f"(shape {got.shape} vs {want.shape}); please report this model"
            )


def _root_cause(exc: BaseException) -> str:
    """The innermost error's first line: the exporter wraps the useful message in boilerplate."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {first_line(exc, 400, fallback='')}"
