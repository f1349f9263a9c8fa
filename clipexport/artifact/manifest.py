"""The artifact contract: manifest.json describes every graph in an artifact folder completely,
so the runtime, the precision step and the builder need nothing but the folder.

stdlib only (no numpy, no torch): the runtime imports this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from clipexport.artifact.fields import FieldReader
from clipexport.artifact.layout import MANIFEST_NAME, TRIMMABLE_POOLING, inside
from clipexport.artifact.precision import CalibrationMethod, MadeBy, Precision, Target
from clipexport.errors import ManifestError
from clipexport.files import check_recorded_sha256, sha256_file, write_json_atomic

# Bump when a reader of the previous version would misread a new manifest.
# 2: graph details and tower properties are typed records (1 had free-form dicts of the same keys).
SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (1, 2)
_FIX = "re-export the model"


class Tower(str, Enum):
    VISION = "vision"
    TEXT = "text"

    def __str__(self) -> str:  # f-strings and messages show the value, on every Python
        return self.value


class SourceKind(str, Enum):
    OPEN_CLIP = "open_clip"
    HF = "hf"


Dim = int | str  # a fixed size, or the name of a symbolic (dynamic) axis


_FIELDS = FieldReader("manifest.json", ManifestError, _FIX)
_MISSING = object()


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = _MISSING) -> Any:
    prefix = f"{where}." if where else ""
    if default is _MISSING:
        return _FIELDS.get(data, key, kind, prefix=prefix)
    return _FIELDS.get(data, key, kind, prefix=prefix, default=default)


def _enum(data: Mapping[str, Any], key: str, kind: type[Enum], where: str) -> Any:
    """An optional enum field: its value string in the JSON, the member here."""
    value = _get(data, key, str, where, default=None)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise _FIELDS.fail(f"'{where}.{key}' must be one of {choices}, got {value!r}") from None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64", ...
    shape: tuple[Dim, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "TensorSpec":
        return cls(
            name=_get(data, "name", str, where),
            dtype=_get(data, "dtype", str, where),
            shape=tuple(_get(data, "shape", list, where)),
        )


@dataclass(frozen=True)
class SampleSet:
    """The samples a reduced-precision graph was calibrated (or autocast-checked) with."""

    source: str
    samples: int
    validation_samples: int
    sha256: str  # over the samples actually used, in order

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "SampleSet":
        return cls(
            source=_get(data, "source", str, where),
            samples=_get(data, "samples", int, where),
            validation_samples=_get(data, "validation_samples", int, where),
            sha256=_get(data, "sha256", str, where),
        )


@dataclass(frozen=True)
class AccuracyStep:
    """One step of the accuracy-targeted fallback: nodes restored so far, INT8 top-1, its drop."""

    restored: int
    top1: float
    drop_points: float  # top-1 points below the FP32 graphs'


@dataclass(frozen=True)
class AccuracyRecord:
    """What `quantize --labeled-images` kept: the labelled folder, its size, the bound, every step."""

    folder: str
    images: int
    classes: int
    templates: int
    max_drop_points: float
    fp32_top1: float
    steps: tuple[AccuracyStep, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "AccuracyRecord":
        number = (int, float)
        return cls(
            folder=_get(data, "folder", str, where),
            images=_get(data, "images", int, where),
            classes=_get(data, "classes", int, where),
            templates=_get(data, "templates", int, where),
            max_drop_points=float(_get(data, "max_drop_points", number, where)),
            fp32_top1=float(_get(data, "fp32_top1", number, where)),
            steps=tuple(
                AccuracyStep(
                    restored=_get(s, "restored", int, f"{where}.steps"),
                    top1=float(_get(s, "top1", number, f"{where}.steps")),
                    drop_points=float(_get(s, "drop_points", number, f"{where}.steps")),
                )
                for s in _get(data, "steps", list, where)
            ),
        )


@dataclass(frozen=True)
class GraphDetails:
    """How a graph was made; read by build (calibration hash), the CLI and people."""

    method: str
    made_by: MadeBy | None = None  # the command that made it
    target: Target | None = None  # a Q/DQ graph's placement
    calibration_method: CalibrationMethod | None = None
    calibration: SampleSet | None = None  # INT8: calibration set; FP16: autocast's reference samples
    io_dtype: str = "float32"
    unquantized_dtype: str | None = None  # what an INT8 graph keeps its other nodes in
    quantized_nodes: int | None = None
    high_precision_nodes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # reason -> nodes
    fp32_op_types: tuple[str, ...] = ()
    fp32_tail_nodes: tuple[str, ...] = ()
    fp32_nodes: tuple[str, ...] = ()
    data_max: float | None = None
    fallback_target: Mapping[str, float] = field(default_factory=dict)
    fallback_steps: tuple[Mapping[str, float], ...] = ()
    validation_parity: Mapping[str, float] = field(default_factory=dict)
    # INT8 from `quantize --labeled-images`: the labelled folder, the bound, top-1 per fallback step
    accuracy_fallback: AccuracyRecord | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    # Output-preserving changes made to the PyTorch module before tracing (a library bug worked
    # around, branches folded by reparameterization); verify compares with the unchanged model.
    adjustments: tuple[str, ...] = ()

    @property
    def fallback_nodes(self) -> tuple[str, ...]:
        return tuple(self.high_precision_nodes.get("fallback", ()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "GraphDetails":
        data = dict(data)
        if "reference_samples" in data:  # schema 1 spelled FP16's reference samples so
            data.setdefault("calibration", data.pop("reference_samples"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _FIELDS.fail(f"'{where}': unknown key '{unknown[0]}' (written by a newer clipexport?)")
        calibration = data.get("calibration")
        return cls(
            method=_get(data, "method", str, where),
            made_by=_enum(data, "made_by", MadeBy, where),
            target=_enum(data, "target", Target, where),
            calibration_method=_enum(data, "calibration_method", CalibrationMethod, where),
            calibration=SampleSet.from_dict(calibration, f"{where}.calibration") if calibration else None,
            io_dtype=_get(data, "io_dtype", str, where, default="float32"),
            unquantized_dtype=_get(data, "unquantized_dtype", str, where, default=None),
            quantized_nodes=_get(data, "quantized_nodes", int, where, default=None),
            high_precision_nodes={
                k: tuple(v) for k, v in _get(data, "high_precision_nodes", dict, where, default={}).items()
            },
            fp32_op_types=tuple(_get(data, "fp32_op_types", list, where, default=[])),
            fp32_tail_nodes=tuple(_get(data, "fp32_tail_nodes", list, where, default=[])),
            fp32_nodes=tuple(_get(data, "fp32_nodes", list, where, default=[])),
            data_max=_get(data, "data_max", (int, float), where, default=None),
            fallback_target=dict(_get(data, "fallback_target", dict, where, default={})),
            fallback_steps=tuple(_get(data, "fallback_steps", list, where, default=[])),
            validation_parity=dict(_get(data, "validation_parity", dict, where, default={})),
            # written as {} by manifests before the record was typed
            accuracy_fallback=(
                AccuracyRecord.from_dict(record, f"{where}.accuracy_fallback")
                if (record := _get(data, "accuracy_fallback", (dict, type(None)), where, default=None))
                else None
            ),
            versions=dict(_get(data, "versions", dict, where, default={})),
            adjustments=tuple(_get(data, "adjustments", list, where, default=[])),
        )


@dataclass(frozen=True)
class GraphFile:
    """One ONNX graph of a tower at one precision."""

    file: str
    sha256: str
    external_data: str | None = None  # weights file beside graphs over 2 GB
    external_data_sha256: str | None = None
    details: GraphDetails = field(default_factory=lambda: GraphDetails(method="unknown"))

    @classmethod
    def of(cls, folder: Path, name: str, external: bool, details: GraphDetails) -> "GraphFile":
        """The record of a graph just written to folder/name (and folder/name.data when external)."""
        data_name = f"{name}.data" if external else None
        return cls(
            file=name,
            sha256=sha256_file(folder / name),
            external_data=data_name,
            external_data_sha256=sha256_file(folder / data_name) if data_name else None,
            details=details,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "GraphFile":
        return cls(
            file=_get(data, "file", str, where),
            sha256=_get(data, "sha256", str, where),
            external_data=_get(data, "external_data", str, where, default=None),
            external_data_sha256=_get(data, "external_data_sha256", str, where, default=None),
            details=GraphDetails.from_dict(
                _get(data, "details", dict, where, default={"method": "unknown"}), f"{where}.details"
            ),
        )


@dataclass(frozen=True)
class TowerProperties:
    """What the text fast path and the builder need to know about a tower's graph."""

    pooling: str | None = None  # text: argmax / eos / eot / last / first / ...
    causal_mask: bool = False
    variable_length: bool = False  # exported with a dynamic sequence axis
    # The graph derives its attention mask from the pad id (BERT / XLM-R text towers), as the
    # source library does with the tokenizer's mask: trailing padding never reaches the output.
    padding_mask: bool = False

    @property
    def trimmable(self) -> bool:
        """Cutting each batch after its last real token is exact: a variable-length graph that
        masks padding itself, or one under a causal mask pooled at an EOT position (tokens after
        EOT cannot reach the output)."""
        return self.variable_length and (self.padding_mask or (self.causal_mask and self.pooling in TRIMMABLE_POOLING))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "TowerProperties":
        return cls(
            pooling=_get(data, "pooling", str, where, default=None),
            causal_mask=_get(data, "causal_mask", bool, where, default=False),
            variable_length=_get(data, "variable_length", bool, where, default=False),
            padding_mask=_get(data, "padding_mask", bool, where, default=False),
        )


@dataclass(frozen=True)
class TowerArtifact:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    graphs: Mapping[Precision, GraphFile]
    properties: TowerProperties = field(default_factory=TowerProperties)

    def graph(self, precision: Precision | str) -> GraphFile:
        chosen = Precision.parse(precision)
        try:
            return self.graphs[chosen]
        except KeyError:
            have = ", ".join(p.value for p in self.graphs) or "none"
            fix = (
                "re-export the model"
                if chosen.made_by_export
                else f"create it with: clipexport quantize DIR --precision {chosen.value}"
            )
            raise ManifestError(f"no {chosen.value} graph in this artifact (have: {have}); {fix}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "TowerArtifact":
        graphs = {}
        for key, raw in _get(data, "graphs", dict, where).items():
            try:
                precision = Precision(key)
            except ValueError:
                raise _FIELDS.fail(
                    f"'{where}': unknown precision '{key}' in graphs (this clipexport knows "
                    f"{', '.join(p.value for p in Precision)})"
                ) from None
            graphs[precision] = GraphFile.from_dict(raw, f"{where}.graphs.{key}")
        return cls(
            inputs=tuple(TensorSpec.from_dict(x, f"{where}.inputs") for x in _get(data, "inputs", list, where)),
            outputs=tuple(TensorSpec.from_dict(x, f"{where}.outputs") for x in _get(data, "outputs", list, where)),
            opset=_get(data, "opset", int, where),
            graphs=graphs,
            properties=TowerProperties.from_dict(
                _get(data, "properties", dict, where, default={}), f"{where}.properties"
            ),
        )


@dataclass(frozen=True)
class SourceInfo:
    """Where the PyTorch model came from: enough to load it again for verification."""

    kind: SourceKind
    model: str  # open_clip model name, HF hub id, or local HF folder
    pretrained: str | None = None  # open_clip tag, "random", or None for HF / checkpoint
    checkpoint: str | None = None  # absolute path of a local checkpoint file or HF folder
    checkpoint_sha256: str | None = None
    seed: int | None = None  # for random init, so verify rebuilds the same weights
    model_config: Mapping[str, Any] | None = None  # open_clip config, so custom models reload
    tokenizer: str | None = None  # HF: a local tokenizer folder passed with --tokenizer

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "SourceInfo":
        kind = _get(data, "kind", str, where)
        try:
            source_kind = SourceKind(kind)
        except ValueError:
            raise ManifestError(f"{where}.kind is '{kind}', expected one of {[k.value for k in SourceKind]}") from None
        return cls(
            kind=source_kind,
            model=_get(data, "model", str, where),
            pretrained=data.get("pretrained"),
            checkpoint=data.get("checkpoint"),
            checkpoint_sha256=data.get("checkpoint_sha256"),
            seed=data.get("seed"),
            model_config=data.get("model_config"),
            tokenizer=_get(data, "tokenizer", str, where, default=None),
        )


class ResizeMode(str, Enum):
    SHORTEST = "shortest"  # resize the short side to the target, then center-crop (CLIP's default)
    LONGEST = "longest"  # resize the long side to the target, then pad with fill_color
    SQUASH = "squash"  # resize both sides to the target, ignoring aspect ratio


class Convention(str, Enum):
    """Whose implementation the runtime must reproduce bit-for-bit: they round differently."""

    OPEN_CLIP = "open_clip"  # torchvision transforms on a PIL image
    HF = "hf"  # transformers' PIL-backend image processors (CLIPImageProcessor in transformers 4, `backend="pil"` in 5)
    # transformers 5's default (torchvision-backend) processors: the image as a uint8 tensor, resized by
    # torch's antialiased uint8 kernel (fixed-point, not PIL's), floor crop offsets, float32 normalisation.
    HF_TORCHVISION = "hf_torchvision"


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: tuple[int, int]  # (height, width) fed to the vision tower
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # "bicubic", "bilinear", ...
    resize_mode: ResizeMode
    convention: Convention
    resize_size: int | None = None  # HF: shortest edge before the crop; open_clip: min(image_size)
    center_crop: bool = True
    fill_color: int = 0
    rescale_factor: float = 1 / 255

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "PreprocessConfig":
        try:
            return cls(
                image_size=tuple(_get(data, "image_size", list, where)),
                mean=tuple(_get(data, "mean", list, where)),
                std=tuple(_get(data, "std", list, where)),
                interpolation=_get(data, "interpolation", str, where),
                resize_mode=ResizeMode(_get(data, "resize_mode", str, where)),
                convention=Convention(_get(data, "convention", str, where)),
                resize_size=data.get("resize_size"),
                center_crop=bool(data.get("center_crop", True)),
                fill_color=int(data.get("fill_color", 0)),
                rescale_factor=float(data.get("rescale_factor", 1 / 255)),
            )
        except ValueError as exc:
            raise ManifestError(f"{where}: {exc}") from None


class TokenizerKind(str, Enum):
    CLIP_BPE = "clip_bpe"  # CLIP's BPE, reimplemented in the runtime (vocabulary shipped in the package)
    HF_JSON = "hf_json"  # a Hugging Face `tokenizers` tokenizer.json written into the artifact

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TokenizerConfig:
    kind: str  # a TokenizerKind value, or "hf:<class>" (recorded only: the runtime then takes token ids)
    context_length: int
    sot_id: int | None
    eot_id: int
    pad_id: int
    clean: str = "lower"  # text cleaning before tokenizing: "lower", "whitespace", "canonicalize", "none", ...
    vocab_size: int = 49408
    name: str | None = None  # HF tokenizer id/folder it came from
    file: str | None = None  # hf_json: the tokenizer.json in the artifact
    sha256: str | None = None  # hf_json: of that file
    strip_sep_token: bool = False  # open_clip's HFTokenizer option: SEP ids become 0
    sep_id: int | None = None
    padding_side: str = "right"
    truncation_side: str = "right"

    @property
    def in_runtime(self) -> bool:
        """Whether the torch-free runtime tokenizes text for this model."""
        return self.kind in (TokenizerKind.CLIP_BPE.value, TokenizerKind.HF_JSON.value)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "TokenizerConfig":
        return cls(
            kind=_get(data, "kind", str, where),
            context_length=_get(data, "context_length", int, where),
            sot_id=data.get("sot_id"),
            eot_id=_get(data, "eot_id", int, where),
            pad_id=_get(data, "pad_id", int, where),
            clean=data.get("clean", "lower"),
            vocab_size=int(data.get("vocab_size", 49408)),
            name=data.get("name"),
            file=_get(data, "file", str, where, default=None),
            sha256=_get(data, "sha256", str, where, default=None),
            strip_sep_token=_get(data, "strip_sep_token", bool, where, default=False),
            sep_id=_get(data, "sep_id", int, where, default=None),
            padding_side=_get(data, "padding_side", str, where, default="right"),
            truncation_side=_get(data, "truncation_side", str, where, default="right"),
        )


@dataclass(frozen=True)
class Manifest:
    source: SourceInfo
    embed_dim: int
    normalized: bool
    logit_scale: float
    logit_bias: float | None
    towers: Mapping[Tower, TowerArtifact]
    preprocess: PreprocessConfig
    tokenizer: TokenizerConfig
    versions: Mapping[str, str]
    created: str
    schema_version: int = SCHEMA_VERSION

    def tower(self, tower: Tower | str) -> TowerArtifact:
        key = Tower(tower)
        if key not in self.towers:
            raise ManifestError(
                f"this artifact has no {key.value} tower (have: {', '.join(t.value for t in self.towers)})"
            )
        return self.towers[key]

    def with_graph(self, tower: Tower, precision: Precision, graph: GraphFile) -> "Manifest":
        """A copy with one more (or a replaced) graph for `tower` at `precision`."""
        artifact = self.tower(tower)
        graphs = {**artifact.graphs, Precision(precision): graph}
        towers = {**self.towers, tower: replace(artifact, graphs=graphs)}
        return replace(self, towers=towers)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["towers"] = {t.value: asdict(a) for t, a in self.towers.items()}
        data["schema_version"] = SCHEMA_VERSION  # a manifest read as an older schema is written as the current one
        # Key order matters to the humans who read the file: contract first.
        order = [
            "schema_version",
            "created",
            "versions",
            "source",
            "embed_dim",
            "normalized",
            "logit_scale",
            "logit_bias",
            "towers",
            "preprocess",
            "tokenizer",
        ]
        return _jsonable({k: data[k] for k in order})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        if not isinstance(data, Mapping):
            raise ManifestError("manifest.json does not hold a JSON object")
        version = data.get("schema_version")
        if version is None:
            raise ManifestError(
                "manifest.json has no schema_version: it is not a clipexport manifest "
                "(or it was damaged); re-export the model"
            )
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise ManifestError(
                f"manifest schema version {version!r} is not supported by this clipexport "
                f"(reads {list(SUPPORTED_SCHEMA_VERSIONS)}); upgrade clipexport or re-export the model"
            )
        towers_raw = _get(data, "towers", dict, "")
        towers: dict[Tower, TowerArtifact] = {}
        for name, raw in towers_raw.items():
            try:
                tower = Tower(name)
            except ValueError:
                raise ManifestError(f"manifest.towers has unknown tower '{name}' (expected vision, text)") from None
            towers[tower] = TowerArtifact.from_dict(raw, f"towers.{name}")
        bias = data.get("logit_bias")
        return cls(
            schema_version=version,
            created=_get(data, "created", str, ""),
            versions=dict(_get(data, "versions", dict, "")),
            source=SourceInfo.from_dict(_get(data, "source", dict, ""), "source"),
            embed_dim=_get(data, "embed_dim", int, ""),
            normalized=_get(data, "normalized", bool, ""),
            logit_scale=float(_get(data, "logit_scale", (int, float), "")),
            logit_bias=None if bias is None else float(bias),
            towers=towers,
            preprocess=PreprocessConfig.from_dict(_get(data, "preprocess", dict, ""), "preprocess"),
            tokenizer=TokenizerConfig.from_dict(_get(data, "tokenizer", dict, ""), "tokenizer"),
        )


def read_manifest(artifact_dir: str | os.PathLike[str]) -> Manifest:
    path = Path(artifact_dir) / MANIFEST_NAME
    if not Path(artifact_dir).is_dir():
        raise ManifestError(
            f"artifact folder {artifact_dir} does not exist; create it with: clipexport export MODEL --output {artifact_dir}"
        )
    if not path.is_file():
        raise ManifestError(
            f"{path} not found: {artifact_dir} is not a clipexport artifact folder (run clipexport export first)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); re-export the model") from None
    return Manifest.from_dict(data)


def write_manifest(artifact_dir: str | os.PathLike[str], manifest: Manifest) -> Path:
    path = Path(artifact_dir) / MANIFEST_NAME
    write_json_atomic(path, manifest.to_dict())
    return path


def check_graph_files(artifact_dir: str | os.PathLike[str], graph: GraphFile) -> Path:
    """Return the graph's path after checking it (and its external data) against the recorded sha256."""
    root = Path(artifact_dir)
    pairs = [(graph.file, graph.sha256)]
    if graph.external_data:
        pairs.append((graph.external_data, graph.external_data_sha256))
    for name, expected in pairs:
        path = inside(root, name, "graph file")
        if not path.is_file():
            raise ManifestError(f"{path} is listed in the manifest but missing; re-run the step that made it")
        check_recorded_sha256(path, expected or "missing", "re-export or restore the original file")
    return inside(root, graph.file, "graph file")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {(_jsonable(k) if isinstance(k, Enum) else k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
