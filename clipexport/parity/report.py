"""The parity report: per tower x precision x backend statistics, gates, and a printable table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipexport.artifact.layout import PARITY_REPORT
from clipexport.files import write_json_atomic
from clipexport.parity.gates import DropGated, Gate
from clipexport.parity.retrieval import RetrievalReport
from clipexport.parity.stats import EmbeddingParity

REPORT_NAME = PARITY_REPORT
# 2: every result records what actually ran it (`ran_on`). 3: `accuracy` (--labeled-images).
# 4: `retrieval` (--retrieval: the index precision x query precision drift matrix).
REPORT_SCHEMA_VERSION = 4


@dataclass(frozen=True)
class TowerResult:
    tower: str
    precision: str
    backend: str
    parity: EmbeddingParity
    gate: Gate
    ran_on: str = ""  # what actually executed it: the backend with its providers / engine

    @property
    def failures(self) -> list[str]:
        p = self.parity
        if p.count < 1:  # a gate over no embeddings would pass on nothing
            return ["no inputs were measured"]
        return self.gate.failures(p.min_cosine, p.mean_cosine, p.max_abs_diff)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "tower": self.tower,
            "precision": self.precision,
            "backend": self.backend,
            "ran_on": self.ran_on,
            **self.parity.to_dict(),
            "gate": vars(self.gate),
            "passed": self.passed,
            "failures": self.failures,
        }


@dataclass(frozen=True)
class ZeroShotResult:
    precision: str
    backend: str
    agreement: float  # fraction of images whose top-1 caption matches PyTorch FP32
    images: int
    texts: int


@dataclass(frozen=True)
class AccuracyResult(DropGated):
    """Zero-shot accuracy on a labelled image folder, for PyTorch FP32 (backend "pytorch") or a variant."""

    precision: str
    backend: str
    top1: float
    top5: float
    drop_points: float  # PyTorch FP32 top-1 minus this top-1, in percentage points (0 for the reference)
    agreement: float  # fraction of images whose top-1 class equals PyTorch FP32's
    per_class_agreement: dict[str, float]
    max_drop_points: float | None = None  # the --max-accuracy-drop gate, when set
    measured: int = 0  # labelled images scored


@dataclass(frozen=True)
class ParityReport:
    artifact: str
    created: str
    inputs: dict[str, Any]
    results: list[TowerResult] = field(default_factory=list)
    zero_shot: list[ZeroShotResult] = field(default_factory=list)
    accuracy: list[AccuracyResult] = field(default_factory=list)
    accuracy_inputs: dict[str, Any] = field(default_factory=dict)
    retrieval: RetrievalReport | None = None

    @property
    def passed(self) -> bool:
        return (
            all(r.passed for r in self.results)
            and all(a.passed for a in self.accuracy)
            and (self.retrieval is None or self.retrieval.passed)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "created": self.created,
            "artifact": self.artifact,
            "reference": "PyTorch FP32 (CPU)",
            "inputs": self.inputs,
            "passed": self.passed,
            "results": [r.to_dict() for r in self.results],
            "zero_shot": [vars(z) for z in self.zero_shot],
            "accuracy": {"inputs": self.accuracy_inputs, "results": [a.to_dict() for a in self.accuracy]},
            "retrieval": self.retrieval.to_dict() if self.retrieval is not None else None,
        }

    def to_json(self) -> dict[str, Any]:
        """What `verify --json` prints: the report, as parity.json holds it."""
        return self.to_dict()

    def summary(self) -> list[str]:
        """What `verify` prints: the table, and where the report went (the CLI adds exit 1 below a gate)."""
        return [self.table(), f"wrote {Path(self.artifact) / REPORT_NAME}"]

    def write(self, artifact_dir: str | Path) -> Path:
        path = Path(artifact_dir) / REPORT_NAME
        write_json_atomic(path, self.to_dict())
        return path

    def table(self) -> str:
        header = f"{'tower':<7} {'precision':<9} {'backend':<12} {'n':>4} {'min cos':>10} {'mean cos':>10} {'max abs':>9}  gate"
        lines = [header, "-" * len(header)]
        for r in self.results:
            p = r.parity
            verdict = "pass" if r.passed else "FAIL: " + "; ".join(r.failures)
            lines.append(
                f"{r.tower:<7} {r.precision:<9} {r.backend:<12} {p.count:>4} {p.min_cosine:>10.8f} "
                f"{p.mean_cosine:>10.8f} {p.max_abs_diff:>9.2e}  {verdict}"
            )
        for ran_on in dict.fromkeys(r.ran_on for r in self.results if r.ran_on):
            lines.append(f"ran on: {ran_on}")
        for z in self.zero_shot:
            lines.append(
                f"zero-shot top-1 agreement with PyTorch ({z.precision}, {z.backend}): "
                f"{100 * z.agreement:.1f}% ({z.images} images x {z.texts} texts)"
            )
        if self.accuracy:
            a = self.accuracy_inputs
            lines.append(
                f"zero-shot accuracy on {a.get('folder')} ({a.get('images')} images, {a.get('classes')} classes, "
                f"{a.get('templates')} templates per class):"
            )
            for r in self.accuracy:
                worst = min(r.per_class_agreement.items(), key=lambda kv: kv[1]) if r.per_class_agreement else None
                extra = (
                    ""
                    if r.backend == "pytorch"
                    else (
                        f"  drop {r.drop_points:+.2f} pt, agrees with PyTorch on {100 * r.agreement:.1f}%"
                        + (f" (lowest class: {worst[0]} {100 * worst[1]:.0f}%)" if worst else "")
                    )
                )
                gate = r.verdict
                lines.append(
                    f"  {r.precision:<5} {r.backend:<12} top-1 {100 * r.top1:6.2f}%  top-5 {100 * r.top5:6.2f}%{extra}{gate}"
                )
        if self.retrieval is not None:
            lines.append(self.retrieval.table())
        return "\n".join(lines)
