"""What a profile costs, from a rehearsal's measurements (issue #18): seconds per iteration and peak memory of every
phase kind, MACs per image, and the extrapolated cost of the full profile in CPU core-hours here and GPU-hours on a
named GPU.

Rows are phase kinds: the teacher of each source, the chain of each width (over the sources), the grid cell of
each (student, method) (over the scenarios). Measured (from the rehearsal's folders): seconds per training iteration
at the profile's batch (``history.json``: per-epoch ``seconds`` / ``iters``; a cell's fine-tune and, where it has
one, its source distillation phase), peak RSS and CUDA memory (``result.json``: ``peak_rss_mib``,
``peak_cuda_mib``). Counted (from the *profile's* job graph, so what the full run would do, not what the rehearsal
did): iterations = epochs × (training images × few-shot fraction ÷ batch), the P×K sampler's epoch, with the real
data sets' training images (:data:`FULL_SIZES`, ../shared/BASELINES.md §3.2); evaluations = one at the end plus
one every ``train.eval_every`` epochs, over the real query + gallery; KD++'s class centres = one teacher pass over
the training images of the phase it distils in.

Cost model:

- MACs per training image = 3 × the forward MACs of what is trained (forward + backward ≈ 3 forwards) + the
  forward MACs of a frozen teacher that is distilled from (KD++ / OFA / RSD); a chain trains the teacher and its
  S-Student together. MACs in closed form (``oskt.eval.complexity.spec_macs``, attention included for ViT).
- CPU core-hours here = the phase kind's measured seconds per training MAC (seconds ÷ (iterations × batch × MACs
  per training image), so a rehearsal with a smaller batch scales by images, and a cell kind whose scenarios differ
  — KD++ distilling during the fine-tune in M→M, on the source first across data sets — by MACs) × the full
  profile's training MACs × the phase's threads; a source distillation at its own measured rate; evaluation and
  KD++ centres at the training's rate (an approximation: inference is cheaper per MAC).
- GPU-hours = per iteration a fixed overhead plus training FLOPs (2 × MACs) at a sustained throughput, and
  evaluation FLOPs at the same throughput (:class:`GpuModel`; both numbers are stated in the table).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from oskt import io
from oskt.config import Config
from oskt.errors import ConfigError
from oskt.jobs import CellJob, ChainJob, TeacherJob
from oskt.pipeline.graph import jobs_from_config
from oskt.pipeline.records import Paths

__all__ = ["FULL_SIZES", "CostRow", "CostTable", "DataSize", "GpuModel", "cost_table", "cost_markdown"]


@dataclass(frozen=True)
class DataSize:
    """A real data set's size (images)."""

    train_images: int
    train_ids: int
    query: int
    gallery: int


FULL_SIZES = {
    "market1501": DataSize(12_936, 751, 3_368, 15_913),
    "msmt17": DataSize(30_248, 1_041, 11_659, 82_161),
    "cuhk03": DataSize(7_365, 767, 1_400, 5_332),
}
"""The real sets (BASELINES.md §3.2): Market-1501, MSMT17_V1 (``list_train`` only, as OSKT), CUHK03-NP detected."""


@dataclass(frozen=True)
class GpuModel:
    """The GPU the GPU-hours assume: time of a training iteration = ``step_overhead_ms`` + training FLOPs at
    ``sustained_tflops``; evaluation = its FLOPs at ``sustained_tflops``.

    The default is fitted to the only GPU measurement this project has (``bench/results/train_throughput_h100.json``:
    the bare AMP forward / backward / optimiser loop at batch 64, 256×128 on an H100: S1 (0.072 GMACs) 2,315
    images/s, S5 (1.033 GMACs) 1,718 images/s): the two points give 38 TFLOP/s per extra FLOP and 26.9 ms per step
    of launch-bound overhead (small students are bound by kernel launches, not FLOPs). It is an assumption for the
    larger models (T, S6, ViT), to be replaced by ``bench/gpu_check.sh``'s figures.
    """

    name: str = "NVIDIA H100 80GB (AMP)"
    sustained_tflops: float = 38.4
    step_overhead_ms: float = 26.9
    basis: str = (
        "fit to bench/results/train_throughput_h100.json (bare AMP training loop, batch 64, 256x128: S1 2,315 "
        "img/s, S5 1,718 img/s)"
    )


@dataclass(frozen=True)
class CostRow:
    """One phase kind (see the module docstring). ``nan`` where the rehearsal did not measure the kind.

    Attributes:
        kind: ``teacher``, ``chain`` or ``cell``.
        name: the source (teacher), ``w<width>`` (chain) or ``<student> <method>`` (cell).
        model: the trained model's spec name (a chain: the teacher + its S-Student).
        runs: how many such phases the full profile runs.
        batch: images per iteration in the full profile.
        measured_batch: images per iteration in the rehearsal (0 when not measured).
        threads: torch threads the measurement ran with.
        measured_iters: iterations measured (over all rehearsal phases of the kind).
        seconds_per_iter: measured seconds per training iteration (cells: the target fine-tune).
        distil_seconds_per_iter: a cell's source distillation phase (nan when it has none).
        peak_rss_mib: largest resident set size measured.
        peak_cuda_mib: largest CUDA allocation measured (nan on CPU).
        macs_per_image: forward MACs of the trained model (what inference costs).
        train_macs_per_image: MACs of one training image (see the module docstring).
        full_iters: training iterations of all ``runs`` in the full profile.
        full_eval_images: images evaluated (and KD++ centre images) in the full profile.
        cpu_core_hours: the full profile's phases of this kind on this machine's CPU, in core-hours.
        gpu_hours: the same on the GPU of :class:`GpuModel`.
    """

    kind: str
    name: str
    model: str
    runs: int
    batch: int
    measured_batch: int
    threads: int
    measured_iters: int
    seconds_per_iter: float
    distil_seconds_per_iter: float
    peak_rss_mib: float
    peak_cuda_mib: float
    macs_per_image: float
    train_macs_per_image: float
    full_iters: int
    full_eval_images: int
    cpu_core_hours: float
    gpu_hours: float


@dataclass(frozen=True)
class CostTable:
    """Every phase kind of a profile, and the totals."""

    profile: str
    device: str
    iters_per_phase: int
    gpu: GpuModel
    rows: tuple[CostRow, ...]
    notes: tuple[str, ...] = ()
    context: dict[str, Any] = field(default_factory=dict)

    def total(self, attr: str) -> float:
        """Sum of a column (nan rows left out)."""
        return float(sum(v for r in self.rows if not math.isnan(v := float(getattr(r, attr)))))

    @property
    def cpu_core_hours(self) -> float:
        return self.total("cpu_core_hours")

    @property
    def gpu_hours(self) -> float:
        return self.total("gpu_hours")

    @property
    def complete(self) -> bool:
        """Every phase kind of the full profile was measured."""
        return all(not math.isnan(r.seconds_per_iter) for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "device": self.device,
            "iters_per_phase": self.iters_per_phase,
            "gpu": dataclasses.asdict(self.gpu),
            "cpu_core_hours": round(self.cpu_core_hours, 1),
            "gpu_hours": round(self.gpu_hours, 1),
            "complete": self.complete,
            "rows": [{k: _round(v) for k, v in dataclasses.asdict(r).items()} for r in self.rows],
            "notes": list(self.notes),
            "context": dict(self.context),
        }


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 4)
    return v


# --------------------------------------------------------------------------------------------------- counting


def _size(name: str) -> DataSize:
    size = FULL_SIZES.get(name)
    if size is None:
        raise ConfigError(
            f"cost table: data set {name!r} has no known full size (known: {sorted(FULL_SIZES)}); the cost of the "
            "full profile is extrapolated for the real data sets only"
        )
    return size


def _iters(name: str, batch: int, epochs: int, few_shot: float = 1.0) -> int:
    """Training iterations: ``epochs`` P×K epochs of (training images × few-shot) ÷ batch iterations."""
    return epochs * max(1, int(_size(name).train_images * few_shot) // batch)


def _evals(epochs: int, every: int) -> int:
    """Evaluations of a phase: one every ``every`` epochs before the last (``oskt.train.phase``), one at the end."""
    periodic = sum(1 for e in range(1, epochs) if every > 0 and e % every == 0)
    return periodic + 1


def _eval_images(name: str) -> int:
    s = _size(name)
    return s.query + s.gallery


def _macs(spec: Any) -> float:
    from oskt.eval.complexity import spec_macs

    return float(spec_macs(spec, attention=True))


def _distils(method: str) -> bool:
    """The method trains against a frozen teacher (an aux loss with the teacher's forward every step)."""
    from oskt.baselines.registry import INIT_NEEDS

    return bool(INIT_NEEDS[method].source_phase)


def _train_macs(job: TeacherJob | ChainJob | CellJob) -> tuple[float, float]:
    """MACs of one training image: (the job's only or fine-tune phase, its source distillation phase or 0)."""
    if isinstance(job, TeacherJob):
        return 3 * _macs(job.model), 0.0
    if isinstance(job, ChainJob):
        teacher = job.teacher.model  # type: ignore[union-attr]
        return 3 * (_macs(teacher) + _macs(teacher.chain_spec(job.width))), 0.0
    s = _macs(job.student)
    t = _macs(job.teacher.model) if job.teacher is not None and _distils(job.method) else 0.0
    if job.distil is not None:  # the aux loss trains in the source phase; the fine-tune is plain
        return 3 * s, 3 * s + t
    return 3 * s + t, 0.0


@dataclass
class _Full:
    """The full profile's work of one phase kind, summed over its runs: iterations, training MACs (iterations ×
    batch × MACs per image), evaluation MACs."""

    runs: int = 0
    batch: int = 0
    iters: int = 0
    distil_iters: int = 0
    train_mac_images: float = 0.0
    distil_mac_images: float = 0.0
    fwd_macs: float = 0.0
    eval_macs: float = 0.0  # evaluation + KD++ centres, summed
    eval_images: int = 0
    model: str = ""

    @property
    def train_macs(self) -> float:
        """Mean training MACs per image of the phase kind's fine-tune / only phase."""
        return self.train_mac_images / (self.iters * self.batch) if self.iters and self.batch else 0.0


def _add_teacher(job: TeacherJob, acc: _Full) -> None:
    t, r = _macs(job.model), job.recipe
    iters = _iters(job.data.name, r.batch_size, r.epochs)
    n_eval = _evals(r.epochs, r.eval_every) * _eval_images(job.data.name)
    acc.iters += iters
    acc.train_mac_images += iters * r.batch_size * _train_macs(job)[0]
    acc.eval_macs += n_eval * t
    acc.eval_images += n_eval
    acc.fwd_macs, acc.batch, acc.model = t, r.batch_size, job.model.name
    acc.runs += 1


def _add_chain(job: ChainJob, acc: _Full) -> None:
    teacher = job.teacher.model  # type: ignore[union-attr]
    t, c, r = _macs(teacher), _macs(teacher.chain_spec(job.width)), job.recipe
    iters = _iters(job.data.name, r.batch_size, r.epochs)
    images = _eval_images(job.data.name)
    n_t = _evals(r.epochs, r.eval_every) * images  # the refined teacher; the S-Student once at the end
    acc.iters += iters
    acc.train_mac_images += iters * r.batch_size * _train_macs(job)[0]
    acc.eval_macs += n_t * t + images * c
    acc.eval_images += n_t + images
    acc.fwd_macs, acc.batch = t + c, r.batch_size
    acc.model = f"{teacher.name}+{teacher.chain_spec(job.width).name}"
    acc.runs += 1


def _add_cell(job: CellJob, acc: _Full) -> None:
    s = _macs(job.student)
    t = _macs(job.teacher.model) if job.teacher is not None else 0.0
    r = job.recipe
    ft_macs, distil_macs = _train_macs(job)
    iters = _iters(job.target.name, r.batch_size, r.epochs, job.few_shot)
    acc.iters += iters
    acc.train_mac_images += iters * r.batch_size * ft_macs
    n_eval = _evals(r.epochs, r.eval_every) * _eval_images(job.target.name)
    eval_macs = n_eval * s
    if job.distil is not None:
        d = _iters(job.source, job.distil.batch_size, job.distil.epochs)
        acc.distil_iters += d
        acc.distil_mac_images += d * job.distil.batch_size * distil_macs
        n_d = _evals(job.distil.epochs, job.distil.eval_every) * _eval_images(job.source)
        eval_macs += n_d * s
        n_eval += n_d
    if job.method == "kdpp":  # class centres: one teacher pass over the training images it distils on
        name, fs = (job.source, 1.0) if job.distil is not None else (job.target.name, job.few_shot)
        images = int(_size(name).train_images * fs)
        eval_macs += images * t
        n_eval += images
    acc.eval_macs += eval_macs
    acc.eval_images += n_eval
    acc.fwd_macs, acc.batch, acc.model = s, r.batch_size, job.student.name
    acc.runs += 1


def _group(job: TeacherJob | ChainJob | CellJob) -> tuple[str, str]:
    if isinstance(job, TeacherJob):
        return "teacher", job.data.name
    if isinstance(job, ChainJob):
        return "chain", f"w{job.width}"
    return "cell", f"{job.student_name} {job.method}"


def _full_work(cfg: Config) -> dict[tuple[str, str], _Full]:
    graph = jobs_from_config(cfg)
    out: dict[tuple[str, str], _Full] = defaultdict(_Full)
    for job in graph.teachers.values():
        _add_teacher(job, out[_group(job)])
    for job in graph.chains.values():
        _add_chain(job, out[_group(job)])
    for job in graph.cells:
        _add_cell(job, out[_group(job)])
    return dict(out)


# --------------------------------------------------------------------------------------------------- measuring


@dataclass
class _Measured:
    seconds: float = 0.0
    iters: int = 0
    mac_images: float = 0.0  # iterations × batch × training MACs per image, what ``seconds`` paid for
    distil_seconds: float = 0.0
    distil_iters: int = 0
    distil_mac_images: float = 0.0
    rss: float = float("nan")
    cuda: float = float("nan")
    threads: int = 0
    batch: int = 0

    def peak(self, metrics: dict[str, float]) -> None:
        for attr, key in (("rss", "peak_rss_mib"), ("cuda", "peak_cuda_mib")):
            if key in metrics:
                old = getattr(self, attr)
                setattr(self, attr, metrics[key] if math.isnan(old) else max(old, metrics[key]))


def _history(folder: str) -> tuple[float, int]:
    """Training seconds and iterations over a phase's epochs (``history.json``)."""
    path = io.join(folder, "history.json")
    if not io.exists(path):
        return 0.0, 0
    hist = io.read_json(path)
    return (
        float(sum(float(e.get("seconds", 0.0)) for e in hist)),
        int(sum(int(e.get("iters", 0)) for e in hist)),
    )


def _metrics(folder: str) -> dict[str, float]:
    path = io.join(folder, "result.json")
    return dict(io.read_json(path).get("metrics", {})) if io.exists(path) else {}


def _measure(cfg: Config) -> dict[tuple[str, str], _Measured]:
    """What the rehearsal's finished phases measured, per phase kind."""
    graph = jobs_from_config(cfg)
    paths = Paths(cfg.compute.out_dir)
    stage_threads = cfg.compute.num_threads or 0
    cell_threads = max(1, int(cfg.compute.cpus_per_task))
    out: dict[tuple[str, str], _Measured] = defaultdict(_Measured)
    for job in graph.jobs():
        folder = paths.job_dir(job)
        m = out[_group(job)]
        m.batch = job.recipe.batch_size
        m.threads = stage_threads if not isinstance(job, CellJob) else cell_threads
        ft_macs, distil_macs = _train_macs(job)
        ph = folder if not isinstance(job, CellJob) else io.join(folder, "finetune")
        sec, n = _history(ph)
        m.seconds, m.iters, m.mac_images = m.seconds + sec, m.iters + n, m.mac_images + n * m.batch * ft_macs
        m.peak(_metrics(ph))
        if isinstance(job, CellJob) and job.distil is not None:
            ph = io.join(folder, "distil")
            sec, n = _history(ph)
            m.distil_seconds, m.distil_iters = m.distil_seconds + sec, m.distil_iters + n
            m.distil_mac_images += n * job.distil.batch_size * distil_macs
            m.peak(_metrics(ph))
    return dict(out)


# --------------------------------------------------------------------------------------------------- the table


def _ratio(a: float, b: int) -> float:
    return a / b if b else float("nan")


def cost_table(
    rehearsal: Config,
    profile: Config,
    *,
    gpu: GpuModel = GpuModel(),
    notes: Iterable[str] = (),
    context: dict[str, Any] | None = None,
) -> CostTable:
    """The cost table of ``profile`` (the full config) from the finished rehearsal ``rehearsal`` (its config; paths
    relative to the working directory as it names them).

    Raises:
        ConfigError: the profile uses a data set without a known full size (:data:`FULL_SIZES`).
    """
    full, measured = _full_work(profile), _measure(rehearsal)
    rows = []
    for key in sorted(full, key=lambda k: (("teacher", "chain", "cell").index(k[0]), _order(profile, k))):
        f, m = full[key], measured.get(key, _Measured())
        spi = _ratio(m.seconds, m.iters)
        dspi = _ratio(m.distil_seconds, m.distil_iters)
        threads = m.threads or 1
        # CPU: the measured seconds per training MAC (per image: a smaller measured batch scales to the full one),
        # over the full profile's training MACs; the source distillation at its own rate (else the fine-tune's);
        # evaluation at the training's rate (an approximation: inference is cheaper per MAC)
        per_mac = m.seconds / m.mac_images if m.mac_images else float("nan")
        d_per_mac = m.distil_seconds / m.distil_mac_images if m.distil_mac_images else per_mac
        cpu_s = (f.train_mac_images + f.eval_macs) * per_mac + (
            f.distil_mac_images * d_per_mac if f.distil_iters else 0.0
        )
        # GPU: launch-bound overhead per step + training FLOPs, evaluation FLOPs, at the assumed throughput
        flops = 2 * (f.train_mac_images + f.distil_mac_images + f.eval_macs)
        gpu_s = (f.iters + f.distil_iters) * gpu.step_overhead_ms / 1e3 + flops / (gpu.sustained_tflops * 1e12)
        rows.append(
            CostRow(
                kind=key[0],
                name=key[1],
                model=f.model,
                runs=f.runs,
                batch=f.batch,
                measured_batch=m.batch,
                threads=threads,
                measured_iters=m.iters + m.distil_iters,
                seconds_per_iter=spi,
                distil_seconds_per_iter=dspi,
                peak_rss_mib=m.rss,
                peak_cuda_mib=m.cuda,
                macs_per_image=f.fwd_macs,
                train_macs_per_image=f.train_macs,
                full_iters=f.iters + f.distil_iters,
                full_eval_images=f.eval_images,
                cpu_core_hours=cpu_s * threads / 3600.0,
                gpu_hours=gpu_s / 3600.0,
            )
        )
    return CostTable(
        profile=profile.profile,
        device=rehearsal.compute.device,
        iters_per_phase=rehearsal.train.max_iters_per_epoch,
        gpu=gpu,
        rows=tuple(rows),
        notes=tuple(notes),
        context=dict(context or {}),
    )


def _order(cfg: Config, key: tuple[str, str]) -> tuple[int, int]:
    kind, name = key
    if kind == "teacher":
        return (list(cfg.data.sources).index(name), 0)
    if kind == "chain":
        return (int(name[1:]), 0)
    student, method = name.split(" ")
    st, ms = list(cfg.students.names), list(cfg.students.methods)
    return (st.index(student) if student in st else 99, ms.index(method) if method in ms else 99)


# --------------------------------------------------------------------------------------------------- markdown


def _g(v: float, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if unit == "G":
        return f"{v / 1e9:.2f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"


def table_markdown(table: CostTable) -> str:
    """One profile's cost table as Markdown."""
    g = table.gpu
    lines = [
        f"### `{table.profile}`",
        "",
        f"Measured by the rehearsal on `{table.device}` ({table.iters_per_phase} iterations per phase). CPU core-hours "
        "= the measured seconds per training MAC × the full profile's MACs × threads. GPU-hours assume "
        f"**{g.name}: {g.sustained_tflops:g} TFLOP/s sustained + {g.step_overhead_ms:g} ms per iteration** ({g.basis}).",
        "",
        "| Phase | Model | Runs | Batch (measured / full) | Threads | s/iter (measured) | Distil s/iter | Peak RSS MiB | "
        "Peak CUDA MiB | GMACs/img | Train GMACs/img | Iterations (full) | Eval imgs (full) | CPU core-h | GPU-h |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.rows:
        lines.append(
            f"| {r.kind} {r.name} | {r.model} | {r.runs} | {r.measured_batch or '—'} / {r.batch} | {r.threads} | "
            f"{_g(r.seconds_per_iter)} | "
            f"{_g(r.distil_seconds_per_iter)} | {_g(r.peak_rss_mib)} | {_g(r.peak_cuda_mib)} | "
            f"{_g(r.macs_per_image, 'G')} | {_g(r.train_macs_per_image, 'G')} | {r.full_iters:,} | "
            f"{r.full_eval_images:,} | {_g(r.cpu_core_hours)} | {_g(r.gpu_hours)} |"
        )
    by_kind: dict[str, list[CostRow]] = defaultdict(list)
    for r in table.rows:
        by_kind[r.kind].append(r)
    for kind, rs in by_kind.items():
        lines.append(
            f"| **all {kind}s** | | {sum(r.runs for r in rs)} | | | | | | | | | {sum(r.full_iters for r in rs):,} | "
            f"{sum(r.full_eval_images for r in rs):,} | "
            f"**{_g(sum(r.cpu_core_hours for r in rs if not math.isnan(r.cpu_core_hours)))}** | "
            f"**{_g(sum(r.gpu_hours for r in rs))}** |"
        )
    lines.append(
        f"| **total** | | {sum(r.runs for r in table.rows)} | | | | | | | | | "
        f"{sum(r.full_iters for r in table.rows):,} | {sum(r.full_eval_images for r in table.rows):,} | "
        f"**{_g(table.cpu_core_hours)}** | **{_g(table.gpu_hours)}** |"
    )
    lines.append("")
    if not table.complete:
        lines += ["Rows without a measured s/iter were not part of this rehearsal: their CPU cost is not counted.", ""]
    lines += [f"- {n}" for n in table.notes]
    return "\n".join(lines) + ("\n" if table.notes else "")


def cost_markdown(tables: Iterable[CostTable | dict[str, Any]], header: str = "") -> str:
    """``docs/cost.md``: the header, then one table per profile (a :class:`CostTable` or its ``to_dict``)."""
    parts = [header.rstrip() + "\n"] if header else []
    for t in tables:
        parts.append(table_markdown(t if isinstance(t, CostTable) else table_from_dict(t)))
    return "\n".join(parts)


def table_from_dict(d: dict[str, Any]) -> CostTable:
    """A :class:`CostTable` back from :meth:`CostTable.to_dict` (``None`` = nan)."""

    def val(v: Any) -> Any:
        return float("nan") if v is None else v

    rows = tuple(CostRow(**{k: val(v) for k, v in r.items()}) for r in d["rows"])
    return CostTable(
        profile=d["profile"],
        device=d["device"],
        iters_per_phase=int(d["iters_per_phase"]),
        gpu=GpuModel(**d["gpu"]),
        rows=rows,
        notes=tuple(d.get("notes", ())),
        context=dict(d.get("context", {})),
    )
