"""Plain records that cross stage, process, Prefect and Ray boundaries: paths, grid cells and stage results.

Nothing here holds a live model or tensor; every record is a frozen dataclass of strings and numbers, so it pickles
cheaply into a Ray worker and serialises to JSON next to the outputs it describes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from oskt import io
from oskt.config import COSMETIC_KEYS, PHASE_PARAMS, fingerprint  # noqa: F401 - re-exported for the stages

# What each stage reads from the config (the report recomputes cell fingerprints, so it reads what cells depend on). dvc.yaml lists the same keys (a test keeps them equal), so a change
# reruns only the stages that read it; the same lists fingerprint outputs for the Prefect path.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "prepare": ("data", "students.scenarios"),
    "teacher": ("data", "teacher", "train", "eval"),
    "chain": ("data", "teacher", "chain", "train", "eval"),
    "students": ("data", "teacher", "chain", "students", "baselines", "train", "eval"),
    "report": ("data", "teacher", "chain", "students", "baselines", "train", "eval", "tracking"),
}

# The part of the config a single grid cell's result depends on (the grid's own lists are not: adding a seed must
# not rerun the cells that exist).
CELL_PARAMS = PHASE_PARAMS["student"]


@dataclass(frozen=True)
class Paths:
    """Where every stage reads and writes, under one output root (a local folder or ``s3://`` URL).

    Layout::

        <root>/prepare/manifest.json
        <root>/teachers/<source>/              teacher checkpoint + result.json
        <root>/chains/<source>/w<width>/       chain.pt, teacher_refined.pt + result.json
        <root>/students/<cell>/                one folder per grid cell: student.pt, metrics.json, cell.json
        <root>/report/                         report.md, report.csv, acc_vs_params.png, acc_vs_macs.png
    """

    root: str = "outputs"

    def prepare_manifest(self) -> str:
        return io.join(self.root, "prepare", "manifest.json")

    def teacher_dir(self, source: str) -> str:
        return io.join(self.root, "teachers", source)

    def chain_dir(self, source: str, width: int) -> str:
        return io.join(self.root, "chains", source, f"w{width}")

    def students_dir(self) -> str:
        return io.join(self.root, "students")

    def cell_dir(self, cell: GridCell) -> str:
        return io.join(self.students_dir(), cell.name)

    def report_dir(self) -> str:
        return io.join(self.root, "report")


@dataclass(frozen=True)
class GridCell:
    """One student fine-tune of the grid: widths × scenarios × methods × seeds × few-shot fractions."""

    method: str
    student: str
    scenario: str
    seed: int = 0
    few_shot: float = 1.0

    @property
    def source(self) -> str:
        return self.scenario.split("->")[0]

    @property
    def target(self) -> str:
        return self.scenario.split("->")[1]

    @property
    def name(self) -> str:
        """Folder-safe, unique per cell: ``synth_a--synth_b__S1__oskt__seed0__fs1``."""
        return f"{self.source}--{self.target}__{self.student}__{self.method}__seed{self.seed}__fs{self.few_shot:g}"

    def tags(self) -> dict[str, str]:
        return {
            "method": self.method,
            "student": self.student,
            "scenario": self.scenario,
            "seed": str(self.seed),
            "few_shot": f"{self.few_shot:g}",
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrackingTarget:
    """Enough to attach an MLflow run from any process: plain strings only (crosses Ray / Prefect boundaries).

    Attributes:
        uri: resolved tracking URI ('' = tracking disabled).
        experiment: experiment name.
        parent_run_id: run id children attach to ('' = none).
        artifact_location: where a new experiment stores artifacts ('' = MLflow's default).
        log_checkpoints: upload checkpoints as artifacts.
        tags: tags every run gets (git commit, data version, profile).
    """

    uri: str = ""
    experiment: str = "oskt"
    parent_run_id: str = ""
    artifact_location: str = ""
    log_checkpoints: bool = True
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.uri)

    def child(self, parent_run_id: str) -> TrackingTarget:
        return dataclasses.replace(self, parent_run_id=parent_run_id)


@dataclass(frozen=True)
class DataRecord:
    """What ``prepare_data`` produced: the data sets the pipeline uses and their sizes."""

    root: str
    datasets: dict[str, dict[str, Any]]
    manifest: str


@dataclass(frozen=True)
class StageRecord:
    """A trained artefact (teacher or chain): where it is and what it scored."""

    stage: str
    key: str
    out_dir: str
    checkpoint: str
    metrics: dict[str, float]
    seconds: float
    fingerprint: str
    extra: dict[str, str] = field(default_factory=dict)
    reused: bool = False


@dataclass(frozen=True)
class CellResult:
    """A finished grid cell."""

    cell: GridCell
    out_dir: str
    checkpoint: str
    metrics: dict[str, float]
    seconds: float
    fingerprint: str
    skipped: bool = False
    run_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cell"] = self.cell.to_dict()
        return d


@dataclass(frozen=True)
class ReportRecord:
    """Where the report went."""

    out_dir: str
    markdown: str
    csv: str
    plots: tuple[str, ...]
    num_runs: int
    run_id: str = ""
