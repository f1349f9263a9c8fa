"""The graph precisions an artifact can hold, and every fact about each that more than one stage
needs. Adding a precision (fp8, bf16) means one member here, one gate (parity/gates.py), one
converter (precision/pipeline.py); the CLI choices are derived from this enum.

stdlib only: the runtime and the CLI's option parsing import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from clipexport.errors import InputError


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:  # f-strings and messages show the value, on every Python
        return self.value

    @property
    def facts(self) -> "PrecisionFacts":
        return _FACTS[self]

    @property
    def made_by_export(self) -> bool:
        """The exported graph itself; every other precision is made from it by `quantize`."""
        return self.facts.maker is Maker.EXPORT

    @property
    def strongly_typed(self) -> bool:
        return self.facts.strongly_typed

    @property
    def allow_tf32(self) -> bool:
        return self.facts.allow_tf32

    @classmethod
    def parse(cls, name: "str | Precision", option: str = "--precision",
              allowed: "tuple[Precision, ...] | None" = None) -> "Precision":
        """Validate a user's precision name once, at the edge: case-insensitive, one clear line
        listing what is accepted here (so no message can suggest making an fp32 graph by quantize)."""
        choices = allowed or tuple(cls)
        expected = ", ".join(p.value for p in choices)
        try:
            value = cls(name.lower() if isinstance(name, str) else name)
        except ValueError:
            raise InputError(f"unknown precision '{name}' for {option} (expected one of: {expected})") from None
        if value not in choices:
            raise InputError(f"{option} {value.value} is not accepted here (expected one of: {expected})")
        return value


class Maker(str, Enum):
    EXPORT = "export"  # traced from PyTorch
    AUTOCAST = "autocast"  # mixed precision by ModelOpt autocast: needs no calibration data
    CALIBRATED_QDQ = "calibrated-qdq"  # explicit Q/DQ from calibration data


@dataclass(frozen=True)
class PrecisionFacts:
    maker: Maker
    # TensorRT builds the graph strongly typed (TensorRT 11's only mode; 10.x's flag): FP16 and Q/DQ
    # graphs carry their own types (FP32 LayerNorms, explicit scales) that a weakly typed build
    # would be free to change.
    strongly_typed: bool
    # TF32 GEMMs drop parity to ~1e-3: an "fp32" engine must be FP32.
    allow_tf32: bool


_FACTS = {
    Precision.FP32: PrecisionFacts(Maker.EXPORT, strongly_typed=False, allow_tf32=False),
    Precision.FP16: PrecisionFacts(Maker.AUTOCAST, strongly_typed=True, allow_tf32=True),
    Precision.INT8: PrecisionFacts(Maker.CALIBRATED_QDQ, strongly_typed=True, allow_tf32=True),
}

QUANTIZED = tuple(p for p in Precision if not p.made_by_export)
