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
    FP8 = "fp8"  # E4M3 Q/DQ: Hopper, Ada, Blackwell (compute capability 8.9+)

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
    def parse(
        cls, name: "str | Precision", option: str = "--precision", allowed: "tuple[Precision, ...] | None" = None
    ) -> "Precision":
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


class _Named(str, Enum):
    def __str__(self) -> str:  # f-strings and messages show the value, on every Python
        return self.value


class Target(_Named):
    """Where a Q/DQ graph's placement is meant to run (`quantize --target`)."""

    TENSORRT = "tensorrt"  # ModelOpt's placement, which TensorRT fuses
    CPU = "cpu"  # ONNX Runtime's quantizer: MatMul/Gemm only, what CPU kernels run fast


class CalibrationMethod(_Named):
    ENTROPY = "entropy"
    MAX = "max"
    PERCENTILE = "percentile"


class MadeBy(_Named):
    """The command that wrote a graph (recorded in the manifest)."""

    EXPORT = "export"
    QUANTIZE = "quantize"
    BUILD = "build"  # `build` makes a missing FP16 graph itself


@dataclass(frozen=True)
class PrecisionFacts:
    maker: Maker
    # TensorRT builds the graph strongly typed (TensorRT 11's only mode; 10.x's flag): FP16 and Q/DQ
    # graphs carry their own types (FP32 LayerNorms, explicit scales) that a weakly typed build
    # would be free to change.
    strongly_typed: bool
    # TF32 GEMMs drop parity to ~1e-3: an "fp32" engine must be FP32.
    allow_tf32: bool
    # Calibrated Q/DQ: the Q/DQ placements `quantize --target` may ask for, the first the default,
    # and ModelOpt's quantize_mode when it is the quantizer.
    targets: tuple[Target, ...] = ()
    modelopt_mode: str | None = None
    methods: tuple[CalibrationMethod, ...] | None = None  # the calibration methods it takes (None: any)
    # Op types the quantizer must leave unquantized (ModelOpt's op_types_to_exclude): FP8 keeps the
    # residual adds and LayerNorms in high precision, as NVIDIA's CLIP FP8 recipe does.
    high_precision_ops: tuple[str, ...] = ()
    # The type PyTorch eager runs for `bench`'s baseline of this precision (a torch dtype's name;
    # None: there is none).
    torch_dtype: str | None = None
    # Autocast precisions: ModelOpt autocast's low_precision_type ("fp16", "bf16").
    autocast_type: str | None = None
    # The lowest CUDA compute capability whose TensorRT kernels run it (None: any).
    min_compute_capability: tuple[int, int] | None = None
    # ONNX Runtime's highest graph optimisation that keeps the graph valid ("basic": its Q/DQ
    # fusions turn FP8 Q/DQ into an invalid MatMulIntegerToFloat; None: the default level).
    ort_max_optimization: str | None = None

    @property
    def calibrated(self) -> bool:
        return self.maker is Maker.CALIBRATED_QDQ

    @property
    def autocast(self) -> bool:
        return self.maker is Maker.AUTOCAST


_FACTS = {
    Precision.FP32: PrecisionFacts(Maker.EXPORT, strongly_typed=False, allow_tf32=False, torch_dtype="float32"),
    Precision.FP16: PrecisionFacts(
        Maker.AUTOCAST, strongly_typed=True, allow_tf32=True, torch_dtype="float16", autocast_type="fp16"
    ),
    Precision.INT8: PrecisionFacts(
        Maker.CALIBRATED_QDQ,
        strongly_typed=True,
        allow_tf32=True,
        targets=(Target.TENSORRT, Target.CPU),
        modelopt_mode="int8",
    ),
    # NVIDIA's FP8 (E4M3) kernels start at Ada (sm_89) and Hopper (sm_90); Orin (8.7) has none.
    Precision.FP8: PrecisionFacts(
        Maker.CALIBRATED_QDQ,
        strongly_typed=True,
        allow_tf32=True,
        targets=(Target.TENSORRT,),
        modelopt_mode="fp8",
        min_compute_capability=(8, 9),
        methods=(CalibrationMethod.MAX,),  # ModelOpt's FP8 calibrates amax
        high_precision_ops=("Add", "LayerNormalization"),
        ort_max_optimization="basic",
    ),
}

QUANTIZED = tuple(p for p in Precision if not p.made_by_export)
EXPORTED = next(p for p in Precision if p.made_by_export)  # the graph export writes; the reference of every other
