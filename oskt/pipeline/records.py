"""Plain records that cross stage, process, Prefect and Ray boundaries: the output layout, MLflow targets and results.

Nothing here holds a live model or tensor; every record is a frozen dataclass of strings and numbers (or a job,
``oskt.jobs``, which is one too), so it pickles cheaply into a Ray worker and serialises to JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from oskt import io
from oskt.jobs import CellJob, ChainJob, TeacherJob


@dataclass(frozen=True)
class Paths:
    """Where every job writes, under one output root (a local folder or ``s3://`` URL).

    Layout::

        <root>/prepare/manifest.json, <name>.json  what the prepare stage found (all / per data set)
        <root>/teachers/<source>/              teacher.pt, result.json, job.json
        <root>/chains/<source>/w<width>/       chain.pt, teacher_refined.pt, result.json
        <root>/students/<cell>/                one folder per grid cell: result.json, init/, finetune/
        <root>/report/                         report.md, report.csv, cells.csv, curves.csv, plots
    """

    root: str = "outputs"
    reuse_from: tuple[str, ...] = ()
    """Other roots whose finished teachers and chains may be adopted (``compute.reuse_from``)."""

    @classmethod
    def of(cls, compute: Any) -> Paths:
        """The layout of a config's ``compute`` section (its ``out_dir`` and ``reuse_from``)."""
        return cls(compute.out_dir, tuple(compute.reuse_from))

    def prepare_manifest(self) -> str:
        return io.join(self.root, "prepare", "manifest.json")

    def dataset_record(self, name: str) -> str:
        return io.join(self.root, "prepare", f"{name}.json")

    def teacher_dir(self, source: str) -> str:
        return io.join(self.root, "teachers", source)

    def chain_dir(self, source: str, width: int) -> str:
        return io.join(self.root, "chains", source, f"w{width}")

    def students_dir(self) -> str:
        return io.join(self.root, "students")

    def cell_dir(self, label: str) -> str:
        return io.join(self.students_dir(), label)

    def report_dir(self) -> str:
        return io.join(self.root, "report")

    def job_dir(self, job: TeacherJob | ChainJob | CellJob) -> str:
        """The folder of a pipeline job."""
        if isinstance(job, TeacherJob):
            return self.teacher_dir(job.data.name)
        if isinstance(job, ChainJob):
            return self.chain_dir(job.data.name, job.width)
        return self.cell_dir(job.label)


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
    """What the prepare stage produced: the data sets the pipeline uses and their sizes."""

    root: str
    datasets: dict[str, dict[str, Any]]
    manifest: str


@dataclass(frozen=True)
class StageRecord:
    """A trained artefact (teacher or chain): where it is and what it scored."""

    stage: str
    label: str
    out_dir: str
    checkpoint: str
    metrics: dict[str, float]
    seconds: float
    key: str
    files: dict[str, str] = field(default_factory=dict)
    reused: bool = False


@dataclass(frozen=True)
class CellResult:
    """A finished grid cell.

    Attributes:
        label: the cell's folder name (``CellJob.label``).
        tags: method / student / scenario / seed / few-shot.
        out_dir: its folder.
        checkpoint: the fine-tuned student.
        metrics: final metrics (fractions) plus params / MACs.
        seconds: training time.
        key: the cell job's key.
        skipped: True when an earlier run had finished it.
        run_id: its MLflow run ('' without tracking).
        node: the Ray node (or host) it ran on.
    """

    label: str
    tags: dict[str, str]
    out_dir: str
    checkpoint: str
    metrics: dict[str, float]
    seconds: float
    key: str
    skipped: bool = False
    run_id: str = ""
    node: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ReportRecord:
    """Where the report went."""

    out_dir: str
    markdown: str
    csv: str
    plots: tuple[str, ...]
    num_runs: int
    run_id: str = ""
