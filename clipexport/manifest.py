"""The artifact contract: manifest.json describes every graph in an artifact folder completely,
so the runtime, the precision step and the builder need nothing but the folder.

numpy-free and torch-free: the runtime imports this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from clipexport.errors import ManifestError
from clipexport.files import sha256_file, write_json_atomic

MANIFEST_NAME = "manifest.json"
# Bump when a reader of the previous version would misread a new manifest.
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)


class Tower(str, Enum):
    VISION = "vision"
    TEXT = "text"


class SourceKind(str, Enum):
    OPEN_CLIP = "open_clip"
    HF = "hf"


Dim = int | str  # a fixed size, or the name of a symbolic (dynamic) axis


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
class GraphFile:
    """One ONNX graph of a tower at one precision."""

    file: str
    sha256: str
    external_data: str | None = None  # weights file beside graphs over 2 GB
    external_data_sha256: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # method, kept ops, parity, ...

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "GraphFile":
        return cls(
            file=_get(data, "file", str, where),
            sha256=_get(data, "sha256", str, where),
            external_data=data.get("external_data"),
            external_data_sha256=data.get("external_data_sha256"),
            details=dict(data.get("details") or {}),
        )


@dataclass(frozen=True)
class TowerArtifact:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    graphs: Mapping[str, GraphFile]  # precision ("fp32", "fp16", "int8") -> graph
    properties: Mapping[str, Any] = field(default_factory=dict)  # e.g. text pooling, causal mask

    def graph(self, precision: str) -> GraphFile:
        try:
            return self.graphs[precision]
        except KeyError:
            have = ", ".join(sorted(self.graphs)) or "none"
            raise ManifestError(
                f"no {precision} graph in this artifact (have: {have}); "
                f"create it with: clipexport quantize DIR --precision {precision}"
            ) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "TowerArtifact":
        graphs = _get(data, "graphs", dict, where)
        return cls(
            inputs=tuple(TensorSpec.from_dict(x, f"{where}.inputs") for x in _get(data, "inputs", list, where)),
            outputs=tuple(TensorSpec.from_dict(x, f"{where}.outputs") for x in _get(data, "outputs", list, where)),
            opset=_get(data, "opset", int, where),
            graphs={k: GraphFile.from_dict(v, f"{where}.graphs.{k}") for k, v in graphs.items()},
            properties=dict(data.get("properties") or {}),
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
        )


class ResizeMode(str, Enum):
    SHORTEST = "shortest"  # resize the short side to the target, then center-crop (CLIP's default)
    LONGEST = "longest"  # resize the long side to the target, then pad with fill_color
    SQUASH = "squash"  # resize both sides to the target, ignoring aspect ratio


class Convention(str, Enum):
    """Whose implementation the runtime must reproduce bit-for-bit: they round differently."""

    OPEN_CLIP = "open_clip"  # torchvision transforms on a PIL image
    HF = "hf"  # transformers' CLIPImageProcessor / SiglipImageProcessor


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


@dataclass(frozen=True)
class TokenizerConfig:
    kind: str  # "clip_bpe" (the runtime implements it) or "hf:<class>" (recorded, not reimplemented)
    context_length: int
    sot_id: int | None
    eot_id: int
    pad_id: int
    clean: str = "lower"  # open_clip's text cleaning: "lower", "whitespace", "canonicalize"
    vocab_size: int = 49408
    name: str | None = None  # HF tokenizer id/folder when kind is "hf:..."

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
            raise ManifestError(f"this artifact has no {key.value} tower (have: {', '.join(t.value for t in self.towers)})")
        return self.towers[key]

    def with_graph(self, tower: Tower, precision: str, graph: GraphFile) -> "Manifest":
        """A copy with one more (or a replaced) graph for `tower` at `precision`."""
        artifact = self.tower(tower)
        graphs = {**artifact.graphs, precision: graph}
        towers = {**self.towers, tower: replace(artifact, graphs=graphs)}
        return replace(self, towers=towers)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["towers"] = {t.value: asdict(a) for t, a in self.towers.items()}
        # Key order matters to the humans who read the file: contract first.
        order = ["schema_version", "created", "versions", "source", "embed_dim", "normalized",
                 "logit_scale", "logit_bias", "towers", "preprocess", "tokenizer"]
        return _jsonable({k: data[k] for k in order})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        if not isinstance(data, Mapping):
            raise ManifestError("manifest.json does not hold a JSON object")
        version = data.get("schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise ManifestError(
                f"manifest schema version {version!r} is not supported by this clipexport "
                f"(reads {list(SUPPORTED_SCHEMA_VERSIONS)}); upgrade clipexport or re-export the model"
            )
        towers_raw = _get(data, "towers", dict, "manifest")
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
            created=_get(data, "created", str, "manifest"),
            versions=dict(_get(data, "versions", dict, "manifest")),
            source=SourceInfo.from_dict(_get(data, "source", dict, "manifest"), "source"),
            embed_dim=_get(data, "embed_dim", int, "manifest"),
            normalized=_get(data, "normalized", bool, "manifest"),
            logit_scale=float(_get(data, "logit_scale", (int, float), "manifest")),
            logit_bias=None if bias is None else float(bias),
            towers=towers,
            preprocess=PreprocessConfig.from_dict(_get(data, "preprocess", dict, "manifest"), "preprocess"),
            tokenizer=TokenizerConfig.from_dict(_get(data, "tokenizer", dict, "manifest"), "tokenizer"),
        )


def read_manifest(artifact_dir: str | os.PathLike[str]) -> Manifest:
    path = Path(artifact_dir) / MANIFEST_NAME
    if not Path(artifact_dir).is_dir():
        raise ManifestError(f"artifact folder {artifact_dir} does not exist; create it with: clipexport export MODEL --output {artifact_dir}")
    if not path.is_file():
        raise ManifestError(f"{path} not found: {artifact_dir} is not a clipexport artifact folder (run clipexport export first)")
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
        path = root / name
        if not path.is_file():
            raise ManifestError(f"{path} is listed in the manifest but missing; re-run the step that made it")
        actual = sha256_file(path)
        if actual != expected:
            raise ManifestError(
                f"{path} does not match the manifest (sha256 {actual[:12]}… vs recorded {str(expected)[:12]}…): "
                "the file changed after export; re-export or restore the original file"
            )
    return root / graph.file


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ManifestError(f"manifest is missing '{where}.{key}'; re-export the model")
    value = data[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ManifestError(f"manifest '{where}.{key}' should be {expected}, got {type(value).__name__}")
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {(_jsonable(k) if isinstance(k, Enum) else k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
