"""Build recipes: TOML files in recipes/ validated into frozen dataclasses.

A recipe says how to compile an artifact's graphs for one kind of device: which precision, the
batch (and sequence) ranges of each tower's optimization profile, the workspace limit, and
whether the engine may move to newer TensorRT versions or other GPU generations.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from clipexport.artifact.fields import FieldReader
from clipexport.artifact.manifest import Tower
from clipexport.artifact.precision import Precision
from clipexport.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# The shipped recipes are package data (they install with the wheel); CLIPEXPORT_RECIPES_DIR
# points at a folder of your own instead.
RECIPES_DIR = Path(os.environ.get("CLIPEXPORT_RECIPES_DIR") or Path(__file__).resolve().parents[1] / "data" / "recipes")
# TensorRT's builder optimization levels; 3 is TensorRT's default.
OPTIMIZATION_LEVELS = range(0, 6)
DEFAULT_OPTIMIZATION_LEVEL = 3


class DeviceClass(str, Enum):
    SERVER = "server"  # discrete / datacenter GPU, pip's tensorrt
    JETSON = "jetson"  # Jetson (L4T), JetPack's TensorRT, built on the device itself


@dataclass(frozen=True)
class Range:
    """min <= opt <= max for one dynamic axis of an optimization profile."""

    min: int
    opt: int
    max: int

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.min, self.opt, self.max)


@dataclass(frozen=True)
class TowerProfile:
    batch: Range
    sequence: Range | None = None  # only for text graphs exported with a dynamic sequence axis


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    device_class: DeviceClass
    device: str
    precision: Precision
    profiles: Mapping[Tower, TowerProfile]
    model: str | None = None  # the export this recipe was sized for (informational)
    workspace_mib: int = 4096
    optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL
    version_compatible: bool = False  # engine runs on later TensorRT releases of the same major
    hardware_compatible: bool = False  # engine runs on any Ampere-or-newer discrete GPU
    source: str = "built-in default"
    notes: tuple[str, ...] = field(default_factory=tuple)


# Used when no --recipe is given: a moderate server profile.
DEFAULT = Recipe(
    name="default",
    description="Server GPU, batch 1-128, FP16 unless --precision says otherwise",
    device_class=DeviceClass.SERVER,
    device="any CUDA GPU",
    precision=Precision.FP16,
    profiles={Tower.VISION: TowerProfile(Range(1, 32, 128)), Tower.TEXT: TowerProfile(Range(1, 32, 128))},
)

_TOP_KEYS = {"recipe", "build", "profiles"}
_RECIPE_KEYS = {"name", "description", "model", "device_class", "device", "notes"}
_BUILD_KEYS = {"precision", "workspace_mib", "optimization_level", "version_compatible", "hardware_compatible"}
_PROFILE_KEYS = {"batch", "sequence"}


def list_recipes(folder: Path = RECIPES_DIR) -> list[Path]:
    return sorted(folder.glob("*.toml")) if folder.is_dir() else []


def resolve_recipe(name_or_path: str | Path | None, folder: Path = RECIPES_DIR) -> Recipe:
    """A recipe by file path, or by name from recipes/ ("vit-b-32-server"); None -> DEFAULT."""
    if name_or_path is None:
        return DEFAULT
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        candidate = folder / f"{name_or_path}.toml"
        if not candidate.is_file():
            known = ", ".join(p.stem for p in list_recipes(folder)) or "none"
            raise InputError(f"recipe '{name_or_path}' not found (not a file, and not one of: {known})")
        path = candidate
    return load_recipe(path)


def load_recipe(path: Path) -> Recipe:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read recipe {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"recipe {path} is not valid TOML: {exc}") from None
    return parse_recipe(data, str(path))


def parse_recipe(data: Mapping[str, Any], where: str) -> Recipe:
    fields = FieldReader(where, InputError)
    _known(fields, data, _TOP_KEYS, "")
    meta = _table(fields, data, "recipe")
    build = _table(fields, data, "build")
    _known(fields, meta, _RECIPE_KEYS, "recipe.")
    _known(fields, build, _BUILD_KEYS, "build.")
    profiles_raw = _table(fields, data, "profiles")
    _known(fields, profiles_raw, {t.value for t in Tower}, "profiles.")
    if not profiles_raw:
        raise fields.fail("[profiles] needs at least one of [profiles.vision], [profiles.text]")
    profiles = {}
    for name, raw in profiles_raw.items():
        key = f"profiles.{name}"
        if not isinstance(raw, Mapping):
            raise fields.fail(f"'{key}' must be a table")
        _known(fields, raw, _PROFILE_KEYS, f"{key}.")
        if "batch" not in raw:
            raise fields.fail(f"'{key}.batch' is required, e.g. batch = [1, 32, 128] (min, opt, max)")
        sequence = _range(fields, raw["sequence"], f"{key}.sequence") if "sequence" in raw else None
        if sequence is not None and name != Tower.TEXT.value:
            raise fields.fail(f"'{key}.sequence' only applies to the text tower")
        profiles[Tower(name)] = TowerProfile(_range(fields, raw["batch"], f"{key}.batch"), sequence)
    recipe = Recipe(
        name=fields.get(meta, "name", str, "recipe."),
        description=fields.get(meta, "description", str, "recipe.", default=""),
        model=fields.get(meta, "model", str, "recipe.", default=None),
        device_class=DeviceClass(fields.choice(meta, "device_class", [c.value for c in DeviceClass], "recipe.")),
        device=fields.get(meta, "device", str, "recipe."),
        notes=tuple(fields.get(meta, "notes", list, "recipe.", default=[])),
        precision=Precision(fields.choice(build, "precision", [p.value for p in Precision], "build.")),
        workspace_mib=fields.get(build, "workspace_mib", int, "build.", default=4096),
        optimization_level=fields.get(build, "optimization_level", int, "build.", default=DEFAULT_OPTIMIZATION_LEVEL),
        version_compatible=fields.get(build, "version_compatible", bool, "build.", default=False),
        hardware_compatible=fields.get(build, "hardware_compatible", bool, "build.", default=False),
        profiles=profiles,
        source=where,
    )
    if recipe.workspace_mib < 1:
        raise fields.fail(f"'build.workspace_mib' must be a positive number of MiB (got {recipe.workspace_mib})")
    if recipe.optimization_level not in OPTIMIZATION_LEVELS:
        raise fields.fail(f"'build.optimization_level' must be 0-5 (got {recipe.optimization_level})")
    if recipe.hardware_compatible and recipe.device_class is DeviceClass.JETSON:
        # TensorRT supports hardware compatibility on discrete Ampere+ GPUs only, not on Jetson.
        raise fields.fail("'build.hardware_compatible' is not supported on Jetson; set it to false")
    return recipe


def _range(fields: FieldReader, value: Any, key: str) -> Range:
    if not (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise fields.fail(f"'{key}' must be three integers [min, opt, max], got {value!r}")
    low, opt, high = value
    if not 1 <= low <= opt <= high:
        raise fields.fail(f"'{key}' must satisfy 1 <= min <= opt <= max, got {value}")
    return Range(low, opt, high)


def _table(fields: FieldReader, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    if key not in data:
        raise fields.fail(f"missing table [{key}]")
    if not isinstance(data[key], Mapping):
        raise fields.fail(f"'{key}' must be a table")
    return data[key]


def _known(fields: FieldReader, data: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise fields.fail(f"unknown key '{prefix}{unknown[0]}' (allowed here: {', '.join(sorted(allowed))})")
