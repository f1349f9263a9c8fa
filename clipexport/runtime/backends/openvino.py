"""OpenVINO backend: the artifact's ONNX graphs compiled by OpenVINO for an Intel CPU, iGPU or NPU
(`device`: CPU by default; GPU, NPU, AUTO where this OpenVINO sees them). The device asked for is
the device that runs, or one line says why not: never a silent fallback.

FP32 graphs compile with `INFERENCE_PRECISION_HINT=f32`: OpenVINO would otherwise run them in
bf16 on CPUs with AMX / AVX-512 BF16 and in f16 on GPUs, which is not what parity certified.
FP16 and INT8 (Q/DQ) graphs keep OpenVINO's defaults for their device. Compiled models are
cached in the artifact's `engines/openvino/` when the folder is writable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from clipexport._deps import require
from clipexport.artifact.layout import ENGINES_DIR
from clipexport.artifact.manifest import Manifest, Tower, TowerArtifact, check_graph_files
from clipexport.artifact.precision import Precision
from clipexport.errors import (
    BackendError,
    ClipExportError,
    DeviceUnavailableError,
    InputError,
    ManifestError,
    first_line,
)
from clipexport.runtime.backends.base import BackendOptions, Runner, TritonServing, missing

PURPOSE = "running ONNX graphs on OpenVINO (pip install 'clipexport[openvino]')"
DEVICE_ENV = "CLIPEXPORT_OPENVINO_DEVICE"  # the device when no option names one (verify, bench, serve)
DEFAULT_DEVICE = "CPU"
CACHE_DIR = "openvino"  # under the artifact's engines/
# Triton's OpenVINO backend loads the same model.onnx (config.pbtxt `backend: "openvino"`).
TRITON = TritonServing(backend="openvino", default_model_filename="model.onnx")
TAKES_DEVICE = True  # --device / ClipRuntime.load(device=...) picks CPU, GPU, NPU or AUTO


def unavailable() -> ClipExportError | None:
    return missing("openvino", purpose=PURPOSE)


def _core() -> Any:
    ov = require("openvino", PURPOSE)
    return ov, ov.Core()


def device_for(options: BackendOptions) -> str:
    return (options.device or os.environ.get(DEVICE_ENV) or DEFAULT_DEVICE).upper()


# OpenVINO's device names (its plugins): a name outside these is a typo (exit 2), one of these
# that this machine lacks is the environment (exit 3).
DEVICE_KINDS = ("CPU", "GPU", "NPU")
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")


def _check_device(core: Any, device: str) -> None:
    """A named device must be present; AUTO / MULTI / HETERO pick among the devices they list
    (`AUTO:GPU,CPU`), each of which must be present too (AUTO alone picks among what is here)."""
    available = list(core.available_devices)
    base, _, listed = device.partition(":")
    names = [d.strip() for d in listed.split(",") if d.strip()] if base in VIRTUAL_DEVICES else [device]
    for name in names:
        kind = name.split(".")[0].split(":")[0]
        if kind not in DEVICE_KINDS:
            raise InputError(
                f"--device {device}: {name} is not an OpenVINO device; pass one of "
                f"{', '.join(DEVICE_KINDS + VIRTUAL_DEVICES)} (this machine has: "
                f"{', '.join(available) or 'none'})"
            )
        if not any(d == name or d.split(".")[0] == kind for d in available):
            raise DeviceUnavailableError(
                f"OpenVINO sees no {name} device here (it has: "
                f"{', '.join(available) or 'none'}); pass one of those with --device "
                f"(or {DEVICE_ENV})"
            )


class OpenVinoBackend(Runner):
    backend = "openvino"

    def __init__(
        self,
        graph: Path,
        tower: TowerArtifact,
        device: str,
        precision: Precision,
        threads: int | None = None,
        cache: Path | None = None,
    ):
        super().__init__(tower)
        ov, core = _core()
        _check_device(core, device)
        config: dict[str, Any] = {}
        if precision.made_by_export:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads and device.startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if cache is not None:
            config["CACHE_DIR"] = str(cache)
        try:
            model = core.read_model(str(graph))
        except Exception as exc:  # a file that matches its sha256 yet does not parse
            raise ManifestError(
                f"OpenVINO cannot read {graph} ({first_line(exc)}); re-run the step that made it"
            ) from None
        try:
            self.compiled = core.compile_model(model, device, config)
        except Exception as exc:
            raise BackendError(f"OpenVINO cannot compile {graph.name} for {device} ({first_line(exc)})") from None
        self.request = self.compiled.create_infer_request()
        self.device = device
        self.version = ov.__version__.split("-")[0]
        try:
            self.device_name = str(core.get_property(device.split(":")[0], "FULL_DEVICE_NAME"))
        except Exception:  # AUTO and friends have no single device name
            self.device_name = device
        self.graph_input_dtype = np.dtype(self.compiled.input(0).get_element_type().to_dtype())

    @property
    def ran_on(self) -> str:
        return f"openvino {self.version} ({self.device}: {self.device_name})"

    def _run_impl(self, batch: np.ndarray) -> np.ndarray:
        if self.graph_input_dtype != batch.dtype:
            batch = batch.astype(self.graph_input_dtype)
        try:
            result = self.request.infer({0: batch})
        except Exception as exc:
            raise BackendError(f"OpenVINO failed on a batch of shape {list(batch.shape)}: {first_line(exc)}") from None
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32)

    @property
    def output_dim(self) -> int | None:
        shape = self.compiled.output(0).get_partial_shape()
        last = shape[shape.rank.get_length() - 1]
        return last.get_length() if last.is_static else None

    def _close_impl(self) -> None:
        self.request = None
        self.compiled = None


def _cache_folder(root: Path) -> Path | None:
    """engines/openvino/ when the artifact can be written to; no cache otherwise (a read-only mount)."""
    folder = root / ENGINES_DIR / CACHE_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def open_tower(
    root: Path, manifest: Manifest, tower: Tower, precision: Precision, options: BackendOptions
) -> OpenVinoBackend:
    graph = check_graph_files(root, manifest.tower(tower).graph(precision))
    return OpenVinoBackend(
        graph, manifest.tower(tower), device_for(options), precision, threads=options.threads, cache=_cache_folder(root)
    )
