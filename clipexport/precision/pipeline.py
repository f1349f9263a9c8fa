"""`clipexport quantize`: add FP16 or INT8 variants of an artifact's graphs, recorded in its manifest.

Every variant is measured against the FP32 graph on a validation split of the calibration data
before it is written; INT8 keeps its most sensitive nodes in high precision until the fallback
target holds. Files are staged, then moved in, then the manifest is rewritten atomically.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipexport._deps import installed_versions, require
from clipexport.errors import InputError
from clipexport.export.onnx_export import EXTERNAL_DATA_THRESHOLD_BYTES
from clipexport.artifact.layout import SENSITIVITY_REPORT, graph_file
from clipexport.artifact.manifest import (
    GraphDetails,
    GraphFile,
    Manifest,
    Tower,
    TowerArtifact,
    check_graph_files,
    read_manifest,
)
from clipexport.artifact.precision import QUANTIZED, CalibrationMethod, MadeBy, Maker, Precision, Target
from clipexport.artifact.lock import update_manifest
from clipexport.files import make_public, staging_folder, write_json_atomic
from clipexport.precision import autocast
from clipexport.precision import qdq
from clipexport.precision.accuracy import (
    AccuracyTarget,
    LabelledInputs,
    TowerCandidate,
    fallback_for_accuracy,
    labelled_inputs,
)
from clipexport.precision.calibration import CalibrationData, CalibrationSource, load_calibration
from clipexport.precision.calibrated import DEFAULT_METHOD, quantize_qdq, sensitive_defaults
from clipexport.precision.sensitivity import LayerSensitivity, fallback_until, layer_sensitivity, run_model
from clipexport.progress import Progress, silent
from clipexport.parity.gates import FALLBACK_TARGETS
from clipexport.parity.stats import EmbeddingParity, embedding_parity

if TYPE_CHECKING:
    import onnx

STAGING_PREFIX = ".quantize-"
TOOL_DISTRIBUTIONS = ("onnx", "onnxruntime-gpu", "onnxruntime", "nvidia-modelopt")  # recorded per variant


@dataclass(frozen=True)
class QuantizeOptions:
    artifact: Path
    precision: Precision
    towers: tuple[Tower, ...] = (Tower.VISION, Tower.TEXT)
    target: Target | None = None  # Q/DQ placement; None: the precision's first (PrecisionFacts.targets)
    method: CalibrationMethod | None = None  # None: the target's default
    calibration: CalibrationSource = field(default_factory=CalibrationSource)
    sensitivity: bool = False  # write sensitivity.json with every quantized node's error
    fallback: bool = True  # restore sensitive nodes until the fallback target holds
    fp16_io: bool = False  # FP16 graph inputs/outputs (FP16 only); default keeps float32 at the boundary
    made_by: MadeBy = MadeBy.QUANTIZE  # recorded in the manifest: `build` makes FP16 graphs itself when missing
    accuracy: AccuracyTarget | None = None  # INT8: also restore nodes until top-1 on a labelled folder holds

    def __post_init__(self) -> None:  # Python callers may pass names: parsed here, once
        object.__setattr__(self, "precision", Precision.parse(self.precision, allowed=QUANTIZED))
        if self.target is not None:
            object.__setattr__(self, "target", Target(self.target))
        if self.method is not None:
            object.__setattr__(self, "method", CalibrationMethod(self.method))

    @property
    def placement(self) -> Target | None:
        """The Q/DQ placement asked for, or the precision's default one (None: not a Q/DQ precision)."""
        facts = self.precision.facts
        return (self.target or facts.targets[0]) if facts.calibrated else None

    @property
    def ort_optimization(self) -> str | None:
        """How ONNX Runtime must run the graphs it checks (see onnxruntime.graph_optimization)."""
        from clipexport.runtime.backends.onnxruntime import graph_optimization

        return graph_optimization(self.precision, self.placement)


@dataclass(frozen=True)
class TowerOutcome:
    tower: Tower
    graph: GraphFile
    parity: EmbeddingParity
    sensitivity: list[LayerSensitivity] = field(default_factory=list)


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize` made: the updated manifest and each tower's outcome; `summary()` is what the
    CLI prints."""

    artifact: Path
    precision: Precision
    manifest: Manifest
    outcomes: list[TowerOutcome]

    def summary(self) -> list[str]:
        lines = []
        for outcome in self.outcomes:
            p = outcome.parity
            lines.append(
                f"{outcome.tower.value}: {outcome.graph.file} (validation vs FP32: min cos {p.min_cosine:.5f}, "
                f"mean {p.mean_cosine:.5f})"
            )
            details = outcome.graph.details
            restored = set(details.fallback_nodes) | set(details.high_precision_nodes.get("accuracy_fallback", ()))
            if outcome.sensitivity:
                lines.append(
                    f"  most sensitive of {len(outcome.sensitivity)} quantized nodes (relative output error; "
                    f"* = kept in high precision by the fallback, {len(restored)} in all):"
                )
            for layer in outcome.sensitivity[:SENSITIVITY_SHOWN]:
                mark = "*" if layer.node in restored else " "
                lines.append(f"  {mark} {layer.error:9.5f}  {layer.op_type:<10} {layer.node}")
        record = self.outcomes[0].graph.details.accuracy_fallback if self.outcomes else None
        if record is not None:
            last = record.steps[-1]
            lines.append(
                f"labelled accuracy ({record.images} images, {record.classes} classes): INT8 top-1 "
                f"{100 * last.top1:.2f}% vs FP32 {100 * record.fp32_top1:.2f}% (drop {last.drop_points:.2f} pt, "
                f"bound {record.max_drop_points}); {last.restored} more node(s) kept in high precision"
            )
        lines.append(f"check it against PyTorch: clipexport verify {self.artifact} --precision {self.precision.value}")
        return lines


SENSITIVITY_SHOWN = 10  # the worst nodes `quantize --sensitivity` prints (sensitivity.json holds them all)


def quantize_artifact(options: QuantizeOptions, progress: Progress = silent) -> QuantizeResult:
    onnx = require("onnx", "making reduced-precision graphs")
    root = Path(options.artifact).expanduser()
    manifest = read_manifest(root)
    precision = options.precision
    if not options.towers:
        raise InputError("--towers is empty; pass vision, text or vision,text")
    facts = precision.facts
    if options.fp16_io and not facts.autocast:
        raise InputError(
            f"--io-dtype float16 applies to autocast precisions ({_names(lambda f: f.autocast)}); "
            f"{precision.value} graphs keep float32 I/O"
        )
    if options.accuracy is not None and not facts.calibrated:
        raise InputError(
            f"--labeled-images (the accuracy-targeted fallback) applies to {_names(lambda f: f.calibrated)}"
        )
    if options.target is not None and options.target not in facts.targets:
        raise InputError(
            f"--target {options.target.value} does not apply to {precision.value} (its targets: "
            f"{', '.join(t.value for t in facts.targets) or 'none'})"
        )
    method = _method(precision, options)
    # Read first: an unreadable labelled image must stop the run before the slow part.
    labelled = labelled_inputs(manifest, root, options.accuracy.labelled) if options.accuracy is not None else None
    with staging_folder(
        root,
        STAGING_PREFIX,
        "quantize",
        "quantize adds graphs to the artifact folder, so it must be writable",
        progress,
    ) as staging:
        outcomes: list[TowerOutcome] = []
        converted: dict[Tower, Converted] = {}
        jobs: dict[Tower, _Job] = {}
        for tower in options.towers:
            artifact = manifest.tower(tower)
            fp32_path = _working_copy(root, artifact.graph(Precision.FP32), staging / ".work")
            calibration = _calibration(manifest, tower, options)
            progress(f"{tower.value}: running the FP32 graph on {len(calibration.validation)} validation samples")
            expected = run_model(fp32_path, artifact, calibration.validation)
            job = _Job(onnx, fp32_path, artifact, tower, calibration, options, method, expected, progress)
            jobs[tower] = job
            converted[tower] = CONVERTERS[facts.maker](job)
        if labelled is not None:
            converted = _accuracy_fallback(converted, jobs, manifest, root, labelled, options, progress)
        for tower, result in converted.items():
            details = replace(result.details, validation_parity=result.parity.to_dict(), made_by=options.made_by)
            graph = _save(onnx, result.model, staging, graph_file(tower.value, precision), details)
            outcomes.append(TowerOutcome(tower, graph, result.parity, result.sensitivity))

        def add_graphs(current: Manifest) -> Manifest:
            for outcome in outcomes:
                current = current.with_graph(outcome.tower, precision, outcome.graph)
            return current

        # Under the artifact's lock: move the graphs in, then re-read the manifest (another run may
        # have added its own variant meanwhile) and add ours to it.
        manifest = update_manifest(root, add_graphs, publish=lambda: _publish(staging, root))
        if options.sensitivity:
            write_json_atomic(
                root / SENSITIVITY_REPORT, {o.tower.value: [s.to_dict() for s in o.sensitivity] for o in outcomes}
            )
    return QuantizeResult(Path(options.artifact), precision, manifest, outcomes)


def _accuracy_fallback(
    converted: dict[Tower, "Converted"],
    jobs: dict[Tower, "_Job"],
    manifest: Manifest,
    root: Path,
    data: LabelledInputs,
    options: QuantizeOptions,
    progress: Progress,
) -> dict[Tower, "Converted"]:
    """Restore more nodes, in either tower, until INT8's top-1 on the labelled folder is within the bound."""
    assert options.accuracy is not None
    progress(
        f"labelled accuracy: {len(options.accuracy.labelled.paths)} images, "
        f"{len(options.accuracy.labelled.classes)} classes, bound {options.accuracy.max_drop_points} pt"
    )
    # The artifact's own FP32 graphs, read in place (checked against their sha256): the working
    # copies may have been rewritten by ModelOpt, and onnxruntime only reads.
    fp32 = {tower: check_graph_files(root, manifest.tower(tower).graph(Precision.FP32)) for tower in Tower}
    result = fallback_for_accuracy(
        [c.candidate for c in converted.values() if c.candidate is not None],
        fp32,
        manifest,
        data,
        options.accuracy,
        progress,
        options.ort_optimization,
    )
    out = {}
    for tower, before in converted.items():
        model, extra = result.models[tower], result.restored[tower]
        details, parity = before.details, before.parity
        if extra:  # re-measured on the validation split: the cosine record must describe this graph
            job = jobs[tower]
            parity = embedding_parity(
                job.expected, run_model(model, job.artifact, job.calibration.validation, options.ort_optimization)
            )
        nodes = dict(details.high_precision_nodes)
        nodes["accuracy_fallback"] = extra
        details = replace(
            details,
            high_precision_nodes=nodes,
            quantized_nodes=len(qdq.quantized_nodes(model)),
            accuracy_fallback=result.record,
        )
        out[tower] = replace(before, model=model, details=details, parity=parity)
    return out


def _calibration(manifest: Manifest, tower: Tower, options: QuantizeOptions) -> CalibrationData:
    source = options.calibration
    if options.precision.facts.autocast:
        # FP16 needs no ranges, only real samples for autocast's overflow check.
        source = replace(source, size=min(source.size, autocast.REFERENCE_SAMPLES))
    return load_calibration(manifest, tower, source, Path(options.artifact).expanduser())


@dataclass(frozen=True)
class Converted:
    model: "onnx.ModelProto"
    details: GraphDetails
    sensitivity: list[LayerSensitivity]
    parity: EmbeddingParity  # on the validation split, vs the FP32 graph
    candidate: TowerCandidate | None = None  # INT8: what the accuracy-targeted fallback may restore further


@dataclass(frozen=True)
class _Job:
    """Everything a converter may need for one tower."""

    onnx: Any
    fp32_path: Path
    artifact: TowerArtifact
    tower: Tower
    calibration: CalibrationData
    options: QuantizeOptions
    method: CalibrationMethod
    expected: Any  # the FP32 graph's embeddings of the validation split
    progress: Progress


def _autocast(job: _Job) -> Converted:
    kind = job.options.precision.facts.autocast_type
    job.progress(f"{job.tower.value}: converting to mixed {kind.upper()} (ModelOpt autocast)")
    fp32_path, artifact, calibration, fp16_io, expected = (
        job.fp32_path,
        job.artifact,
        job.calibration,
        job.options.fp16_io,
        job.expected,
    )
    model, tail = autocast.convert_autocast(
        fp32_path, calibration.input_name, calibration.calibration, kind, keep_io_types=not fp16_io
    )
    details = GraphDetails(
        method=f"modelopt.onnx.autocast.convert_to_mixed_precision ({kind})",
        made_by=MadeBy.QUANTIZE,
        io_dtype=job.options.precision.facts.torch_dtype if fp16_io else "float32",
        fp32_op_types=tuple(autocast.FP32_OP_TYPES),
        fp32_tail_nodes=tuple(tail),
        fp32_nodes=tuple(autocast.fp32_nodes(model)),
        data_max=autocast.DATA_MAX,
        calibration=calibration.describe(),
        versions=installed_versions(TOOL_DISTRIBUTIONS),
    )
    return Converted(model, details, [], embedding_parity(expected, run_model(model, artifact, calibration.validation)))


def _calibrated_qdq(job: _Job) -> Converted:
    """INT8 or FP8 Q/DQ from calibration data, then the sensitivity fallback."""
    onnx, fp32_path, artifact, tower, calibration, options, method, expected, progress = (
        job.onnx,
        job.fp32_path,
        job.artifact,
        job.tower,
        job.calibration,
        job.options,
        job.method,
        job.expected,
        job.progress,
    )
    precision = options.precision
    placement = options.placement
    assert placement is not None
    name = precision.value.upper()
    progress(
        f"{tower.value}: calibrating {name} for {placement.value} ({method.value}, "
        f"{len(calibration.calibration)} samples)"
    )
    original = onnx.load(str(fp32_path))
    defaults = sensitive_defaults(original, tower)
    quantized = quantize_qdq(fp32_path, calibration, precision, placement, method, defaults)
    optimization = options.ort_optimization
    parity = embedding_parity(expected, run_model(quantized, artifact, calibration.validation, optimization))
    target = FALLBACK_TARGETS[precision]
    failing = bool(target.failures(parity.min_cosine, parity.mean_cosine, parity.max_abs_diff))
    if failing:  # otherwise this is the final result, which the caller reports
        progress(
            f"{tower.value}: {name} with {len(qdq.quantized_nodes(quantized))} quantized nodes: "
            f"min cos {parity.min_cosine:.5f}, mean {parity.mean_cosine:.5f} (below the fallback target)"
        )
    sensitivity: list[LayerSensitivity] = []
    if options.sensitivity or options.accuracy is not None or (failing and options.fallback):
        sensitivity = layer_sensitivity(quantized, original, calibration.validation, calibration.input_name, progress)
    restored: tuple[str, ...] = ()
    steps: tuple = ((0, parity.min_cosine, parity.mean_cosine),)
    model = quantized
    if failing and options.fallback:
        result = fallback_until(
            quantized,
            original,
            artifact,
            calibration.validation,
            expected,
            [s.node for s in sensitivity],
            target,
            progress,
            optimization,
        )
        model, restored, steps, parity = result.model, result.restored, steps + result.steps, result.parity
    kept_ops = precision.facts.high_precision_ops
    unquantized = f"; {', '.join(kept_ops)} unquantized" if kept_ops else ""
    details = GraphDetails(
        method=(
            f"modelopt.onnx.quantization {precision.facts.modelopt_mode} (TensorRT Q/DQ placement{unquantized})"
            if placement is Target.TENSORRT
            else "onnxruntime.quantization quantize_static QDQ (MatMul/Gemm, per-channel S8S8)"
        ),
        made_by=MadeBy.QUANTIZE,
        target=placement,
        calibration_method=method,
        calibration=calibration.describe(),
        unquantized_dtype="float16" if placement is Target.TENSORRT else "float32",
        quantized_nodes=len(qdq.quantized_nodes(model)),
        high_precision_nodes={"sensitive_by_default": tuple(defaults), "fallback": tuple(restored)},
        fallback_target={"min_cosine": target.min_cosine, "mean_cosine": target.mean_cosine},
        fallback_steps=tuple({"restored": c, "min_cosine": lo, "mean_cosine": mean} for c, lo, mean in steps),
        versions=installed_versions(TOOL_DISTRIBUTIONS),
    )
    remaining = tuple(s for s in sensitivity if s.node not in restored)  # layer_sensitivity ranks worst first
    candidate = TowerCandidate(
        tower, model, lambda extra: qdq.restore_high_precision(quantized, original, restored + extra), remaining
    )
    return Converted(model, details, sensitivity, parity, candidate)


# Which converter makes the precisions of each maker (PrecisionFacts.maker): a new precision made
# the way an existing one is (FP8 as INT8: calibrated Q/DQ) needs no line here.
CONVERTERS = {Maker.AUTOCAST: _autocast, Maker.CALIBRATED_QDQ: _calibrated_qdq}


def _names(test: Any) -> str:
    return ", ".join(p.value for p in QUANTIZED if test(p.facts))


def _method(precision: Precision, options: QuantizeOptions) -> CalibrationMethod:
    """--method, or the placement's default when the precision's quantizer offers it."""
    allowed = precision.facts.methods
    placement = options.placement
    if options.method is not None:
        if allowed and options.method not in allowed:
            raise InputError(
                f"--method {options.method.value} does not apply to {precision.value} "
                f"(it calibrates with {', '.join(m.value for m in allowed)})"
            )
        return options.method
    default = DEFAULT_METHOD[placement] if placement is not None else CalibrationMethod.MAX
    return default if not allowed or default in allowed else allowed[0]


def _save(onnx: Any, model: "onnx.ModelProto", staging: Path, name: str, details: GraphDetails) -> GraphFile:
    path = staging / name
    external = model.ByteSize() > EXTERNAL_DATA_THRESHOLD_BYTES
    onnx.save_model(model, str(path), save_as_external_data=external, location=f"{name}.data" if external else None)
    onnx.checker.check_model(str(path))
    return GraphFile.of(staging, name, external, details)


def _working_copy(root: Path, graph: GraphFile, work: Path) -> Path:
    """The converters get a copy: ModelOpt rewrites the graph file it is given (seen with 0.47)."""
    source = check_graph_files(root, graph)
    work.mkdir(exist_ok=True)
    for name in filter(None, (graph.file, graph.external_data)):
        shutil.copyfile(root / name, work / name)
    return work / source.name


def _publish(staging: Path, root: Path) -> None:
    # Graphs first, manifest last: until the manifest names them, new files are just unreferenced.
    for item in sorted(p for p in staging.iterdir() if p.is_file()):
        make_public(item)
        item.replace(root / item.name)
