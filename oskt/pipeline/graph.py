"""``jobs_from_config``: the only place that turns the config tree into jobs (``oskt.jobs``), once, at the edge.

The pipeline's job graph is: one :class:`~oskt.jobs.TeacherJob` per source data set, one
:class:`~oskt.jobs.ChainJob` per (source, chain width), and one :class:`~oskt.jobs.CellJob` per grid cell
(scenario × student × method × seed × few-shot fraction). A cell names the upstream jobs its method reads, and only
those: the widest chain that fits the student for ``oskt`` (SPEC.md §3.3), the teacher for the methods that
distil or select from it.

:func:`config_reads` runs a builder on a recording view of the config and returns the dotted keys it read; the
``params:`` of every ``dvc.yaml`` stage are generated from it (:func:`dvc_params`), so DVC and the jobs read the
same settings and cannot drift.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from oskt.config import BaselinesConfig, Config, InputConfig, Recipe
from oskt.data.refs import DatasetRef, dataset_ref
from oskt.errors import ConfigError
from oskt.jobs import CellJob, ChainJob, FinetuneJob, RunOptions, TeacherJob, cell_label, spec_of
from oskt.models.spec import ModelSpec, parse_spec, select_chain


@dataclass(frozen=True)
class JobGraph:
    """Every job of a configured pipeline.

    Attributes:
        teachers: source data set -> its teacher job.
        chains: (source, width) -> chain job.
        cells: the grid's cells, in grid order.
        skipped: (cell label, why) for the grid's combinations no method can run (e.g. OSKT with a teacher of
            another family).
    """

    teachers: dict[str, TeacherJob]
    chains: dict[tuple[str, int], ChainJob]
    cells: tuple[CellJob, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    def jobs(self) -> list[TeacherJob | ChainJob | CellJob]:
        return [*self.teachers.values(), *self.chains.values(), *self.cells]


# --------------------------------------------------------------------------------------------------- builders


def _phase_lr(own: float | None, *fallbacks: Callable[[], float | None]) -> float:
    if own is not None:
        return own
    for f in fallbacks:
        v = f()
        if v is not None:
            return v
    raise ConfigError("no learning rate set")  # pragma: no cover - train.lr always is


def teacher_job(cfg: Config, source: str) -> TeacherJob:
    """The teacher of ``source`` (``teacher`` section, the shared ``train`` recipe)."""
    t, d = cfg.teacher, cfg.data
    return TeacherJob(
        model=spec_of(t, t.name, (d.height, d.width)),
        data=dataset_ref(source, d),
        input=InputConfig.of(d),
        recipe=Recipe.of(cfg.train, epochs=t.epochs, milestones=t.milestones, lr=_phase_lr(t.lr, lambda: cfg.train.lr)),
        eval=cfg.eval,
        seed=t.seed,
        pretrained=t.pretrained,
    )


def resolve_metric(metric: str, family: str) -> str:
    """``auto`` = the paper's clustering metric per family: Euclidean for CNN, cosine for ViT (SPEC.md §2)."""
    return metric if metric != "auto" else ("euclidean" if family == "resnet" else "cosine")


def resolve_refine_schedule(schedule: str, family: str) -> str:
    """``auto`` = constant refining weight for CNN, linear ramp for ViT (SPEC.md §4.1)."""
    return schedule if schedule != "auto" else ("constant" if family == "resnet" else "linear")


def chain_job(cfg: Config, teacher: TeacherJob | str, width: int, data: DatasetRef | None = None) -> ChainJob:
    """The chain of ``width`` refined from ``teacher`` (``chain`` section) on its training set; refinement learns at
    the teacher's rate unless ``chain.lr`` is set (SPEC.md §4.3).

    Args:
        teacher: the teacher job, or the identity of a teacher checkpoint given by hand
            (``oskt.jobs.checkpoint_identity``; then ``data`` names the refinement set).
        data: the refinement set (default: the teacher job's).
    """
    c = cfg.chain
    if isinstance(teacher, TeacherJob):
        data = data or teacher.data
        family = teacher.model.family
    else:
        family = "resnet" if cfg.teacher.arch == "resnet50" else "vit"
    if data is None:
        raise ConfigError("chain_job: a teacher given by checkpoint needs its training set (data)")
    lr = _phase_lr(c.lr, lambda: cfg.teacher.lr, lambda: cfg.train.lr)
    return ChainJob(
        teacher=teacher,
        data=data,
        input=InputConfig.of(cfg.data),
        eval=cfg.eval,
        width=width,
        metric=resolve_metric(c.metric, family),
        init=c.init,
        refine_weight=c.refine_weight,
        refine_schedule=resolve_refine_schedule(c.refine_schedule, family),
        recipe=Recipe.of(cfg.train, epochs=max(c.epochs, 0), milestones=c.milestones, lr=lr),
        seed=c.seed,
    )


def finetune_job(cfg: Config, dataset: str, *, upstream: str, seed: int = 0, few_shot: float = 1.0) -> FinetuneJob:
    """A student fine-tune on ``dataset`` with the ``students`` recipe (``oskt train student``; a grid cell builds its
    own from its ``CellJob``)."""
    s = cfg.students
    return FinetuneJob(
        upstream=upstream,
        data=dataset_ref(dataset, cfg.data),
        input=InputConfig.of(cfg.data),
        recipe=Recipe.of(cfg.train, epochs=s.epochs, milestones=s.milestones, lr=_phase_lr(s.lr, lambda: cfg.train.lr)),
        eval=cfg.eval,
        seed=seed,
        few_shot=few_shot,
    )


def _settings(baselines: Any, method: str) -> Any:
    names = {f.name for f in dataclasses.fields(BaselinesConfig)}
    return getattr(baselines, method) if method in names else None


class Skip(Exception):
    """A grid combination that cannot run (the message says why): it is listed, not trained."""


def _needs(method: str) -> Any:
    import oskt.baselines  # noqa: F401 - registers the methods
    from oskt.baselines.registry import INIT_NEEDS  # what each method reads, declared where it is registered

    if method not in INIT_NEEDS:
        raise ConfigError(f"students.methods: {method!r} is not a registered init method {sorted(INIT_NEEDS)}")
    return INIT_NEEDS[method]


def cell_job(
    cfg: Config,
    scenario: str,
    student: str,
    method: str,
    seed: int,
    few_shot: float,
    teachers: dict[str, TeacherJob],
    chains: dict[tuple[str, int], ChainJob],
) -> CellJob:
    """One grid cell, with upstream jobs only where ``method`` reads them (``oskt.baselines.INIT_NEEDS``); raises
    :class:`Skip` for a combination the method cannot run."""
    from oskt.baselines.registry import same_arch_reason

    needs = _needs(method)
    source, target = scenario.split("->")
    d, s, t = cfg.data, cfg.students, cfg.teacher
    arch = s.arch or t.arch
    spec = spec_of(t, student, (d.height, d.width)) if arch == t.arch else _spec(cfg, arch, student)
    if arch != t.arch and (reason := same_arch_reason(method)) is not None:
        raise Skip(f"{method} needs a teacher of the student's architecture ({arch}, teacher {t.arch}): {reason}")
    teacher = teachers[source] if needs.teacher else None
    chain = None
    if needs.chain:
        width = select_chain(spec, cfg.chain.widths, teachers[source].model)
        chain = chains[(source, width)]
    settings = _settings(cfg.baselines, method)
    lr = _phase_lr(s.lr, lambda: cfg.train.lr)
    distil = None
    if needs.source_phase and source != target and settings is not None and settings.epochs > 0:
        distil = Recipe.of(cfg.train, epochs=settings.epochs, milestones=(), lr=lr)
    if needs.logits and distil is None and (source != target or few_shot < 1.0):
        raise Skip(
            f"{method} distils logits, but the fine-tune's identities are not the teacher's "
            f"({'another data set' if source != target else 'a few-shot subset'}): set "
            f"baselines.{method}.epochs > 0 to distil on {source} first"
        )
    return CellJob(
        student=spec,
        method=method,
        target=dataset_ref(target, d),
        input=InputConfig.of(d),
        recipe=Recipe.of(cfg.train, epochs=s.epochs, milestones=s.milestones, lr=lr),
        eval=cfg.eval,
        seed=seed,
        few_shot=few_shot,
        settings=settings,
        teacher=teacher,
        chain=chain,
        distil=distil,
        student_name=student,
        scenario=scenario,
    )


def _spec(cfg: Config, arch: str, name: str) -> ModelSpec:
    """A student of another family than the teacher's: the teacher's structural options where they apply."""
    t, d = cfg.teacher, cfg.data
    return parse_spec(
        name,
        arch,
        last_stride=t.last_stride,
        vit_stem=t.vit_student_stem,
        img_size=(d.height, d.width),
        drop_path=t.drop_path,
    )


def run_options(cfg: Config) -> RunOptions:
    """How this config's jobs are carried out (device, progress output, image-check cache): not part of any job."""
    from oskt import io

    return RunOptions(
        device=cfg.compute.device,
        progress=cfg.train.progress,
        log_every=cfg.train.log_every,
        image_cache=io.join(cfg.compute.out_dir, "image_check.json"),
    )


def datasets_used(cfg: Config) -> list[str]:
    """Source and target data sets of the configured scenarios, sources first, no repeats."""
    names = list(cfg.data.sources) + [sc.split("->")[1] for sc in cfg.students.scenarios]
    return list(dict.fromkeys(names))


def jobs_from_config(cfg: Config) -> JobGraph:
    """The whole job graph of ``cfg`` (see the module docstring)."""
    teachers = {s: teacher_job(cfg, s) for s in cfg.data.sources}
    chains = {(s, w): chain_job(cfg, teachers[s], w) for s in cfg.data.sources for w in cfg.chain.widths}
    st = cfg.students
    cells, skipped = [], []
    for sc, n, m, seed, fs in itertools.product(st.scenarios, st.names, st.methods, st.seeds, st.few_shot):
        try:
            cells.append(cell_job(cfg, sc, n, m, seed, fs, teachers, chains))
        except Skip as e:
            skipped.append((cell_label(sc, n, m, seed, fs), str(e)))
    return JobGraph(teachers, chains, tuple(cells), tuple(skipped))


class _Reads:
    """A read-only view of a config node that records the dotted key of every setting read through it.

    Dataclass sections and mappings come back as views; a plain value is recorded and returned as is (run options,
    ``oskt.config.RUN_OPTION``, are not recorded). A view that ends up stored whole in a job is recorded with every
    setting under it and replaced by the real object (:func:`_unwrap`).
    """

    __slots__ = ("_node", "_prefix", "_sink")

    def __init__(self, node: Any, prefix: str, sink: set[str]) -> None:
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_sink", sink)

    def _key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else str(name)

    def _child(self, value: Any, name: str, run_option: bool) -> Any:
        if (dataclasses.is_dataclass(value) and not isinstance(value, type)) or isinstance(value, dict):
            return _Reads(value, self._key(name), self._sink)
        if callable(value):
            raise TypeError(f"{self._key(name)} is a method: jobs_from_config reads settings, not methods")
        if not run_option:
            self._sink.add(self._key(name))
        return value

    def __getattr__(self, name: str) -> Any:
        node = self._node
        value = getattr(node, name)
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        run_option = name in fields and not fields[name].metadata.get("identity", True)
        return self._child(value, name, run_option)

    def __getitem__(self, key: str) -> Any:
        return self._child(self._node[key], key, False)

    def __contains__(self, key: str) -> bool:
        return key in self._node

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the config is read-only")

    def record_all(self) -> Any:
        """Record every setting under this node; return the real node."""
        for k in _leaf_keys(self._node, self._prefix):
            self._sink.add(k)
        return self._node


def _leaf_keys(node: Any, prefix: str) -> Iterable[str]:
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            if f.metadata.get("identity", True):
                yield from _leaf_keys(getattr(node, f.name), f"{prefix}.{f.name}")
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _leaf_keys(v, f"{prefix}.{k}")
    else:
        yield prefix


def _unwrap(obj: Any) -> Any:
    """``obj`` with every view in it recorded whole and replaced by its real node."""
    if isinstance(obj, _Reads):
        return obj.record_all()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _unwrap(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        changed = {k: v for k, v in changes.items() if v is not getattr(obj, k)}
        return dataclasses.replace(obj, **changed) if changed else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_unwrap(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def config_reads(build: Callable[[Config], Any], cfg: Config) -> tuple[Any, set[str]]:
    """Run ``build(cfg)`` on a recording view of ``cfg``; returns (its result with real config objects, the dotted
    config keys it read)."""
    sink: set[str] = set()
    result = _unwrap(build(_Reads(cfg, "", sink)))  # type: ignore[arg-type]
    return result, sink


# --------------------------------------------------------------------------------------------------- dvc.yaml


def _generalise(keys: Iterable[str], names: dict[str, str]) -> set[str]:
    """Replace data set names / widths in keys by their dvc.yaml placeholders (``names``: value -> placeholder)."""
    out = set()
    for k in keys:
        parts = k.split(".")
        out.add(
            ".".join(
                names.get(p, p) if i == 2 and parts[:2] == ["data", "datasets"] else p for i, p in enumerate(parts)
            )
        )
    return out


def stage_reads(cfg: Config) -> dict[str, set[str]]:
    """The config keys each ``dvc.yaml`` stage reads (its own jobs only: upstream outputs are DVC deps), with the
    stage's foreach item as ``${item}`` / ``${item.source}``."""
    graph = jobs_from_config(cfg)
    out: dict[str, set[str]] = {}

    def prepare(c: Config) -> list[Any]:
        return [dataset_ref(n, c.data) for n in datasets_used(c)]

    _, keys = config_reads(prepare, cfg)
    out["prepare"] = _generalise(keys, {})  # every used data set: listed by section below
    out["teacher"] = set()
    out["chain"] = set()
    for s in cfg.data.sources:
        _, keys = config_reads(lambda c, s=s: teacher_job(c, s), cfg)
        out["teacher"] |= _generalise(keys, {s: "${item}"})
        for w in cfg.chain.widths:
            _, keys = config_reads(lambda c, s=s, w=w: chain_job(c, graph.teachers[s], w), cfg)
            out["chain"] |= _generalise(keys, {s: "${item.source}"})

    def cells(c: Config) -> Any:
        st, out = c.students, []
        for sc, n, m, seed, fs in itertools.product(st.scenarios, st.names, st.methods, st.seeds, st.few_shot):
            with contextlib.suppress(Skip):
                out.append(cell_job(c, sc, n, m, seed, fs, graph.teachers, graph.chains))
        return out

    _, keys = config_reads(cells, cfg)
    out["students"] = _generalise(keys, {})
    return out


def _section_leaves(cls: type, prefix: str) -> tuple[set[str], bool]:
    """Leaf keys of a config dataclass, and whether it has a run option anywhere (then DVC must list leaves: a
    whole section would rerun the stage for a run option)."""
    out, has_run_option = set(), False
    for f in dataclasses.fields(cls):
        if not f.metadata.get("identity", True):
            has_run_option = True
            continue
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if dataclasses.is_dataclass(sub):
            leaves, nested = _section_leaves(type(sub), f"{prefix}.{f.name}")
            out |= leaves
            has_run_option |= nested
        else:
            out.add(f"{prefix}.{f.name}")
    return out, has_run_option


def compress(keys: Iterable[str]) -> list[str]:
    """Dotted keys as dvc.yaml lists them: ``data.datasets.<name>.*`` as ``data.datasets`` (outside foreach items),
    and a section whose every setting is read as the section (``teacher``, ``baselines.kdpp``)."""
    keys = {".".join(k.split(".")[: 2 if "${" not in k else 3]) if k.startswith("data.datasets.") else k for k in keys}
    sections: list[tuple[str, type]] = []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
            if dataclasses.is_dataclass(sub):
                p = f"{prefix}.{f.name}" if prefix else f.name
                sections.append((p, type(sub)))
                walk(type(sub), p)

    walk(Config, "")
    for prefix, cls in sorted(sections, key=lambda x: -x[0].count(".")):  # innermost first
        leaves, has_run_option = _section_leaves(cls, prefix)
        if leaves and not has_run_option and leaves <= keys:
            keys = (keys - leaves) | {prefix}
    return sorted(keys)


def dvc_params(configs: Iterable[Config]) -> dict[str, list[str]]:
    """The ``params:`` of every dvc.yaml stage: what the stage's jobs read, over ``configs`` (the shipped profiles),
    in dvc.yaml's form. The report reads what the grid reads plus the tracking and report settings."""
    merged: dict[str, set[str]] = {}
    for cfg in configs:
        for stage, keys in stage_reads(cfg).items():
            merged.setdefault(stage, set()).update(keys)
    out = {stage: compress(keys) for stage, keys in merged.items()}
    out["report"] = compress(merged["students"] | {"tracking", "profile"})
    return out
