"""Triton `config.pbtxt` text (protobuf text format of Triton's ModelConfig), written by hand so
that generating a repository needs no Triton package; the tests parse every file with Triton's
own schema (`tritonclient`'s model_config_pb2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

# numpy dtype name (the manifest's) -> Triton data type
TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "bytes": "TYPE_STRING",
}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # numpy name, or "bytes"
    dims: tuple[int, ...]  # without the batch dimension; -1 is variable

    def text(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        return f'{{ name: "{self.name}" data_type: {TRITON_TYPES[self.dtype]} dims: [ {dims} ] }}'


@dataclass(frozen=True)
class Batching:
    max_batch_size: int
    preferred: tuple[int, ...] = ()
    max_queue_delay_us: int = 0

    def text(self) -> str:
        preferred = f"preferred_batch_size: [ {', '.join(map(str, self.preferred))} ] " if self.preferred else ""
        return f"dynamic_batching {{ {preferred}max_queue_delay_microseconds: {self.max_queue_delay_us} }}"


@dataclass(frozen=True)
class Step:
    model: str
    inputs: Mapping[str, str]  # the step model's input -> ensemble tensor
    outputs: Mapping[str, str]  # the step model's output -> ensemble tensor

    def text(self) -> str:
        ins = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in self.inputs.items())
        outs = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in self.outputs.items())
        return f'{{ model_name: "{self.model}" model_version: -1 {ins} {outs} }}'


@dataclass(frozen=True)
class ModelConfig:
    name: str
    inputs: Sequence[Tensor]
    outputs: Sequence[Tensor]
    max_batch_size: int
    platform: str | None = None  # onnxruntime_onnx, tensorrt_plan, ensemble
    backend: str | None = None  # python
    batching: Batching | None = None
    instance_kind: str | None = None  # KIND_GPU / KIND_CPU; None for ensembles
    instances: int = 1
    parameters: Mapping[str, str] = field(default_factory=dict)
    steps: Sequence[Step] = ()
    cc_model_filenames: Mapping[str, str] = field(default_factory=dict)
    cuda_graphs: bool = False
    default_model_filename: str | None = None  # Triton's OpenVINO backend reads model.xml unless told

    def text(self) -> str:
        lines = [f'name: "{self.name}"']
        if self.platform:
            lines.append(f'platform: "{self.platform}"')
        if self.backend:
            lines.append(f'backend: "{self.backend}"')
        if self.default_model_filename:
            lines.append(f'default_model_filename: "{self.default_model_filename}"')
        lines.append(f"max_batch_size: {self.max_batch_size}")
        lines.append("input [\n  " + ",\n  ".join(t.text() for t in self.inputs) + "\n]")
        lines.append("output [\n  " + ",\n  ".join(t.text() for t in self.outputs) + "\n]")
        if self.batching:
            lines.append(self.batching.text())
        if self.instance_kind:
            lines.append(f"instance_group [ {{ count: {self.instances} kind: {self.instance_kind} }} ]")
        for key, value in self.cc_model_filenames.items():
            lines.append(f'cc_model_filenames {{ key: "{key}" value: "{value}" }}')
        if self.cuda_graphs:
            lines.append("optimization { cuda { graphs: true } }")
        for key, value in self.parameters.items():
            lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{_escape(value)}" }} }}')
        if self.steps:
            lines.append("ensemble_scheduling { step [\n  " + ",\n  ".join(s.text() for s in self.steps) + "\n] }")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
