"""Jobs: the units of work — a teacher, a weight chain, a student fine-tune, a grid cell — each a frozen dataclass
holding exactly what that work reads, and the one rule that decides whether a finished result can be reused.

**Identity = content.** :func:`job_key` hashes a job's fields; a nested job (a chain's teacher, a cell's chain)
enters by its own key, and fields marked as run options (``oskt.config.RUN_OPTION``: labels, loader workers,
evaluation batch size) are left out. So a job's key changes exactly when something it reads changes: adding a chain
width changes no teacher and no baseline cell, changing a KD++ setting changes only KD++ cells.

**One reuse rule.** Every job writes ``result.json`` into its folder last (atomically): its key, its identity (the
fields, for telling *what* changed), its files and metrics. :func:`reuse` returns that record when its key equals
the job's and its files exist; nothing else decides "is it done?". :func:`job_status` says done / running /
stale (naming the fields that changed) / missing without running anything (``oskt plan``).

Jobs are built from the config tree in one place, :func:`oskt.pipeline.graph.jobs_from_config`; below it nothing
reads the config tree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from oskt import io
from oskt.config import (
    DepGraphConfig,
    EvalConfig,
    InputConfig,
    KDPPConfig,
    Recipe,
    TeacherConfig,
    WTSelConfig,
    run_option,
)
from oskt.data.refs import DatasetRef
from oskt.models.spec import ModelSpec, parse_spec

JOB_FORMAT = 1
"""Bumped when what a job's fields mean changes (every key changes with it)."""
RESULT_FILE = "result.json"
JOB_FILE = "job.json"

__all__ = [
    "JOB_FILE",
    "RESULT_FILE",
    "CellJob",
    "ChainJob",
    "FinetuneJob",
    "JobRecord",
    "JobStatus",
    "RunOptions",
    "TeacherJob",
    "describe",
    "diff",
    "flatten",
    "job_key",
    "job_status",
    "record_result",
    "read_result",
    "reuse",
    "settings",
    "cell_label",
    "checkpoint_identity",
    "spec_of",
    "start_job",
]


# --------------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class RunOptions:
    """How a job is carried out, never what it computes (not part of any key).

    Attributes:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        progress: progress bars on a terminal.
        log_every: step-metric logging interval (iterations).
        image_cache: where the image decode check remembers good images (``oskt.data.verify_images``); '' = the
            phase's own folder.
    """

    device: str = "auto"
    progress: bool = False
    log_every: int = 20
    image_cache: str = ""


@dataclass(frozen=True)
class TeacherJob:
    """Train a teacher on one data set (SPEC.md §4.2–4.3).

    Attributes:
        model: the teacher's spec (widths, input size).
        data: the training set (its query / gallery evaluate the teacher).
        input: image input settings.
        recipe: optimiser, schedule, losses, epochs.
        eval: evaluation settings.
        seed: run seed.
        pretrained: local weights the backbone starts from (SPEC.md §8), or None.
    """

    kind: ClassVar[str] = "teacher"
    model: ModelSpec
    data: DatasetRef
    input: InputConfig
    recipe: Recipe
    eval: EvalConfig
    seed: int = 0
    pretrained: str | None = None

    @property
    def label(self) -> str:
        return self.data.name

    @property
    def key(self) -> str:
        return job_key(self)


@dataclass(frozen=True)
class ChainJob:
    """Cluster a teacher into a weight chain of ``width`` and refine it jointly with the teacher (SPEC.md §2, §4.1),
    on the teacher's training set.

    Attributes:
        teacher: the job that trains the teacher (enters the key by its own key), or, for a teacher checkpoint
            given by hand, its identity string (:func:`checkpoint_identity`).
        data: the refinement set: the teacher's training set.
        input: image input settings.
        eval: evaluation settings (the refined teacher and the S-Student are evaluated).
        width: chain width (ResNet stem width / ViT dim).
        metric: clustering features, ``euclidean`` or ``cosine`` (resolved from ``auto``).
        init: ``center`` (cluster means) or ``random`` (the ablation).
        refine_weight: weight of the refining loss.
        refine_schedule: ``constant`` or ``linear`` (resolved from ``auto``).
        recipe: the refinement recipe.
        seed: run seed.
    """

    kind: ClassVar[str] = "chain"
    teacher: TeacherJob | str
    data: DatasetRef
    input: InputConfig
    eval: EvalConfig
    width: int
    metric: str
    init: str
    refine_weight: float
    refine_schedule: str
    recipe: Recipe
    seed: int = 0

    @property
    def label(self) -> str:
        return f"{self.data.name}/w{self.width}"

    @property
    def key(self) -> str:
        return job_key(self)


@dataclass(frozen=True)
class FinetuneJob:
    """Fine-tune an initialised student (SPEC.md §5), one training phase.

    Attributes:
        upstream: what made the initial checkpoint: the key of the job that wrote it (a grid cell's, plus the
            phase), or a hash of the file's bytes for a checkpoint given by hand.
        data: the fine-tune set (its query / gallery evaluate the student).
        input: image input settings.
        recipe: the fine-tune recipe.
        eval: evaluation settings.
        seed: run seed (data order, augmentation, few-shot subset).
        few_shot: fraction of the training identities used (1.0 = all).
    """

    kind: ClassVar[str] = "student"
    upstream: str
    data: DatasetRef
    input: InputConfig
    recipe: Recipe
    eval: EvalConfig
    seed: int = 0
    few_shot: float = 1.0

    @property
    def key(self) -> str:
        return job_key(self)


@dataclass(frozen=True)
class CellJob:
    """One cell of the student grid: initialise a student with a method, (distil,) fine-tune it on the target.

    Upstream jobs appear only where the method reads them: ``chain`` for ``oskt`` (the widest chain that fits the
    student, SPEC.md §3.3), ``teacher`` for the methods that read the trained teacher (WTSel, KD++, DepGraph, ...).

    Attributes:
        student: the student's spec.
        method: the init / training method (``oskt.baselines.INIT_METHODS``).
        target: the fine-tune set.
        input: image input settings.
        recipe: the fine-tune recipe (the same for every method).
        eval: evaluation settings.
        seed: cell seed.
        few_shot: fraction of the target's training identities.
        settings: the method's own config section (``baselines.<method>``), None when it has none.
        teacher: the teacher job, when the method reads the teacher.
        chain: the chain job, for ``oskt``.
        distil: KD++ across data sets: the recipe of its distillation phase on the teacher's set, else None.
        student_name: the configured student name (a label).
        scenario: ``source->target`` (a label).
    """

    kind: ClassVar[str] = "cell"
    student: ModelSpec
    method: str
    target: DatasetRef
    input: InputConfig
    recipe: Recipe
    eval: EvalConfig
    seed: int = 0
    few_shot: float = 1.0
    settings: KDPPConfig | WTSelConfig | DepGraphConfig | Any = None
    teacher: TeacherJob | None = None
    chain: ChainJob | None = None
    distil: Recipe | None = None
    student_name: str = run_option("")
    scenario: str = run_option("")

    @property
    def source(self) -> str:
        return self.scenario.split("->")[0]

    @property
    def label(self) -> str:
        """Folder-safe, unique per cell: ``synth_a--synth_b__S1__oskt__seed0__fs1``."""
        return cell_label(self.scenario, self.student_name, self.method, self.seed, self.few_shot)

    @property
    def distil_kind(self) -> str:
        """``source``: the method distils on the teacher's set first (``distil``), else ``target`` / ``none``."""
        return "source" if self.distil is not None else ("target" if self.teacher is not None else "none")

    def tags(self) -> dict[str, str]:
        """MLflow tags (and report columns) of the cell."""
        return {
            "method": self.method,
            "student": self.student_name,
            "scenario": self.scenario,
            "seed": str(self.seed),
            "few_shot": f"{self.few_shot:g}",
        }

    @property
    def key(self) -> str:
        return job_key(self)


def cell_label(scenario: str, student: str, method: str, seed: int, few_shot: float) -> str:
    """A grid cell's folder name (also for combinations that are skipped): ``source--target__S1__oskt__seed0__fs1``."""
    src, _, tgt = scenario.partition("->")
    return f"{src}--{tgt}__{student}__{method}__seed{seed}__fs{few_shot:g}"


def checkpoint_identity(path: str) -> str:
    """What identifies a checkpoint given by hand (``oskt train chain --teacher T.pt``): the key of the job that
    wrote it when it records one, else a hash of its bytes."""
    from oskt.checkpoint import load_checkpoint

    extra = load_checkpoint(path).get("extra") or {}
    if extra.get("job_key"):
        return f"job:{extra['job_key']}"
    return "sha256:" + hashlib.sha256(io.read_bytes(path)).hexdigest()[:16]


def spec_of(teacher: TeacherConfig, name: str, img_size: tuple[int, int]) -> ModelSpec:
    """The ``ModelSpec`` of model ``name`` (``T``, ``S1``, ``r16-2-3-4``, ``vit144``, ...) in the teacher's family, with
    the teacher's structural options and the input size."""
    return parse_spec(
        name,
        teacher.arch,
        last_stride=teacher.last_stride,
        vit_stem=teacher.vit_student_stem,
        img_size=tuple(img_size),
        drop_path=teacher.drop_path,
    )


# --------------------------------------------------------------------------------------------------- identity

Job = TeacherJob | ChainJob | FinetuneJob | CellJob


def _is_job(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type) and hasattr(type(obj), "kind")


_NO_DEFAULT = object()


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _NO_DEFAULT


def _equal(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable values are different
        return False


def _fields(obj: Any, defaults: bool = False) -> dict[str, Any]:
    """The fields that identify ``obj``: not run options, and (unless ``defaults``) not at their declared default (so
    a setting added to the code later, at a default that keeps today's behaviour, changes no existing key)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("identity", True) and (defaults or not _equal(value, _default(f))):
            out[f.name] = value
    return out


def _identity(obj: Any, defaults: bool = False) -> Any:
    if _is_job(obj):
        return {"job": obj.kind, "key": job_key(obj)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _identity(v, defaults) for k, v in _fields(obj, defaults).items()}
    if isinstance(obj, dict):
        return {str(k): _identity(v, defaults) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_identity(v, defaults) for v in obj]
    return obj


def describe(job: Job) -> dict[str, Any]:
    """The job's identity: its kind and fields (run options and fields at their declared default left out; nested
    jobs as ``{"job", "key"}``: a nested job's own fields are never expanded, its key stands for them)."""
    return {"kind": job.kind, "format": JOB_FORMAT, **{k: _identity(v) for k, v in _fields(job).items()}}


def settings(job: Job) -> dict[str, Any]:
    """Everything the job runs with, as :func:`describe` but with the fields at their declared default too: what a
    run's MLflow page shows (the whole recipe, e.g. ``recipe.epochs`` also when it is the default). Run options stay
    out (they change no result, and a tracking URI may carry credentials); nested jobs are ``{"job", "key"}``."""
    return {"kind": job.kind, "format": JOB_FORMAT, **{k: _identity(v, True) for k, v in _fields(job, True).items()}}


def job_key(job: Job) -> str:
    """A short stable hash of the job's identity (16 hex digits)."""
    blob = json.dumps(describe(job), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class JobRecord:
    """A finished job's ``result.json``.

    Attributes:
        key: the job's key when it finished.
        kind: ``teacher``, ``chain``, ``student`` or ``cell``.
        files: named output files (``checkpoint``, ...), full paths.
        metrics: final metrics (evaluation metrics as fractions, ``seconds``, ``epochs``, ...).
        seconds: wall-clock time of the work (over all resumed segments).
        job: the job's identity (``describe``), for telling later what changed.
        extra: anything else the job records (the cell's MLflow run id, ...).
    """

    key: str
    kind: str
    files: dict[str, str]
    metrics: dict[str, float]
    seconds: float
    job: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoint(self) -> str:
        return self.files.get("checkpoint", "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _record(data: dict[str, Any]) -> JobRecord | None:
    try:
        return JobRecord(
            key=str(data["key"]),
            kind=str(data["kind"]),
            files={str(k): str(v) for k, v in data.get("files", {}).items()},
            metrics={str(k): float(v) for k, v in data.get("metrics", {}).items()},
            seconds=float(data.get("seconds", 0.0)),
            job=dict(data.get("job", {})),
            extra=dict(data.get("extra", {})),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def read_result(out_dir: str) -> JobRecord | None:
    """The finished job record in ``out_dir`` whatever its key: its ``result.json`` when it parses and every recorded
    file exists; None otherwise (missing, unreadable, or a lost file)."""
    rec = _record(io.read_json_object(io.join(out_dir, RESULT_FILE)) or {})
    if rec is None or not all(io.exists(p) for p in rec.files.values()):
        return None
    return rec


def reuse(out_dir: str, job: Job) -> JobRecord | None:
    """The finished result of ``job`` in ``out_dir``: its ``result.json`` (:func:`read_result`) when the recorded key
    equals the job's; None otherwise (missing, another job's result, or a lost file)."""
    rec = read_result(out_dir)
    return rec if rec is not None and rec.key == job_key(job) else None


def start_job(out_dir: str, job: Job, extra: dict[str, Any] | None = None) -> None:
    """Record in ``out_dir/job.json`` that ``job`` started there (its key and identity): ``job_status`` reads it
    to tell a job that runs or was killed (and resumes) from a stale one."""
    io.makedirs(out_dir)
    io.write_json_atomic(
        io.join(out_dir, JOB_FILE), {"key": job_key(job), "kind": job.kind, "job": describe(job), **(extra or {})}
    )


def record_result(
    out_dir: str,
    job: Job,
    *,
    files: dict[str, str],
    metrics: dict[str, float],
    seconds: float,
    extra: dict[str, Any] | None = None,
) -> JobRecord:
    """Write ``out_dir/result.json`` (atomically; the last write of a job: it marks the job finished)."""
    rec = JobRecord(
        key=job_key(job),
        kind=job.kind,
        files=dict(files),
        metrics={k: float(v) for k, v in metrics.items()},
        seconds=float(seconds),
        job=describe(job),
        extra=dict(extra or {}),
    )
    io.write_json_atomic(io.join(out_dir, RESULT_FILE), rec.to_dict())
    return rec


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands in its folder.

    Attributes:
        state: ``done`` (reusable), ``running`` (started with this key, not finished: a rerun resumes it),
            ``stale`` (the folder holds another key's work), ``missing`` (nothing there).
        changed: for ``stale``, the identity fields that differ, e.g. ``recipe.lr: 0.003 -> 0.001``.
    """

    state: str
    changed: tuple[str, ...] = ()


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A ``describe`` dict as ``{"recipe.lr": 0.003, ...}`` (a nested job as ``"<kind> <key>"``)."""
    if isinstance(d, dict) and set(d) != {"job", "key"}:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, dict):  # a nested job: its key
        return {prefix: f"{d['job']} {d['key']}"}
    return {prefix: d}


def _default_at(obj: Any, path: str) -> Any:
    """The declared default of the field at dotted ``path`` under ``obj`` (what an identity that omits it means)."""
    *parents, leaf = path.split(".")
    node = obj
    for p in parents:
        node = getattr(node, p, None)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        f = {f.name: f for f in dataclasses.fields(node)}.get(leaf)
        if f is not None and (d := _default(f)) is not _NO_DEFAULT:
            return d
    return "(default)"


def diff(old: dict[str, Any], new: dict[str, Any], job: Any = None) -> tuple[str, ...]:
    """``field: old -> new`` for every identity field that differs (``describe`` dicts); a field left out of one
    side is at its default, shown as the default of ``job``'s field when ``job`` is given."""
    a, b = flatten(old), flatten(new)
    out = []
    for k in sorted(set(a) | set(b)):
        dflt = _default_at(job, k) if job is not None else "(default)"
        if a.get(k, dflt) != b.get(k, dflt):
            out.append(f"{k}: {a.get(k, dflt)} -> {b.get(k, dflt)}")
    return tuple(out)


def job_status(out_dir: str, job: Job) -> JobStatus:
    """The job's state in ``out_dir`` (see :class:`JobStatus`); reads two small JSON files, runs nothing."""
    if reuse(out_dir, job) is not None:
        return JobStatus("done")
    key, new = job_key(job), describe(job)
    finished = io.read_json_object(io.join(out_dir, RESULT_FILE))
    if finished is not None and finished.get("key") == key:  # finished, but a recorded file is gone
        return JobStatus("stale", ("output files missing",))
    started = io.read_json_object(io.join(out_dir, JOB_FILE))
    if started is not None and started.get("key") == key:
        return JobStatus("running")
    old = finished or started
    if old is None:
        return JobStatus("missing")
    return JobStatus("stale", diff(dict(old.get("job", {})), new, job))
