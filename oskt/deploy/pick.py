"""Pick the widest student that fits a device budget, generate it from the weight chain(s) and save it.

OSKT's point is that one chain serves every device (SPEC.md §3): any width between the chain and the teacher can
be expanded in one shot. ``pick`` searches that width space, not only the named S1…S6:

* **ResNet**: stem width ``in_planes`` on a grid (multiples of ``in_planes_step``, by default the smallest chain's
  stem width, plus the teacher's) and integer multipliers ``1 ≤ m1 ≤ m2 ≤ m3 ≤ max_multiplier`` (non-decreasing
  stage planes), keeping only specs whose every layer lies between the smallest chain's S-Student and the teacher.
* **ViT**: every ``dim`` that is a multiple of the head count between the smallest chain and the teacher.

"Widest" = the most backbone parameters; ties are broken by fewer MACs (the cheaper of two equally large models),
then by the lexicographically larger width profile ``(in_planes, planes…)`` so the choice is deterministic.

Budgets (combinable): backbone parameters and backbone MACs per image (``oskt.eval.complexity`` conventions, at the
counting input size / last stride) are checked in closed form for every candidate; latency is then measured only
for the candidates that pass both, by binary search along the candidate list ordered as above (latency is assumed
monotone in that order, so about ``log2(n) + 1`` models are timed).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from oskt.chain import WeightChain, expand_from_chains, load_chain
from oskt.errors import ConfigError, SpecError
from oskt.eval.complexity import spec_macs, spec_params
from oskt.models.factory import ReIDModel
from oskt.models.io import save_model
from oskt.models.spec import ModelSpec, select_chain

__all__ = [
    "Budget",
    "Candidate",
    "PickResult",
    "check_spec",
    "format_count",
    "parse_count",
    "pick_spec",
    "pick_student",
    "pick_to_file",
    "rank_candidates",
    "width_grid",
]

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_count(text: str | float | int) -> float:
    """Parse ``1.5M``, ``0.3G``, ``2500k`` or ``1500000`` into a number (raises ``ConfigError``)."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?)\s*", str(text))
        if not m:
            raise ConfigError(f"{text!r} is not a count: expected a number with an optional K/M/G suffix, e.g. 1.5M")
        value = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if not value > 0:
        raise ConfigError(f"{text!r}: a budget must be positive")
    return value


def format_count(n: float) -> str:
    """``1480976`` -> ``1.481M``; ``181272576`` -> ``0.181G`` (MACs) — three decimals in M below 1e9, else G."""
    return f"{n / 1e6:.3f}M" if n < 1e8 else f"{n / 1e9:.3f}G"


@dataclass(frozen=True)
class Budget:
    """A device budget; ``None`` = unconstrained.

    Attributes:
        max_params: backbone parameters.
        max_macs: backbone MACs per image at the counting input size / last stride.
        max_latency_ms: batch-1 latency on ``device`` at the counting input size.
        device: where latency is measured (``cpu``, ``cuda``...).
    """

    max_params: float | None = None
    max_macs: float | None = None
    max_latency_ms: float | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("max_params", "max_macs", "max_latency_ms"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name}={v}: a budget must be positive")
        if self.max_params is None and self.max_macs is None and self.max_latency_ms is None:
            raise ConfigError("no budget given: pass at least one of max_params / max_macs / max_latency_ms")

    def describe(self) -> str:
        parts = []
        if self.max_params is not None:
            parts.append(f"params <= {format_count(self.max_params)}")
        if self.max_macs is not None:
            parts.append(f"MACs <= {format_count(self.max_macs)}")
        if self.max_latency_ms is not None:
            parts.append(f"latency <= {self.max_latency_ms:g} ms on {self.device}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Candidate:
    """A width-grid point with its (closed-form) cost; ``latency_ms`` is set once it has been measured."""

    spec: ModelSpec
    params: int
    macs: int
    latency_ms: float | None = None

    @property
    def order(self) -> tuple[int, int, tuple[int, ...]]:
        """Sort key, ascending = narrower: params, then fewer MACs ranks wider, then the width profile."""
        return (self.params, -self.macs, self.spec.layer_widths())


@dataclass(frozen=True)
class PickResult:
    """The chosen student and how it was found.

    Attributes:
        candidate: the chosen spec and its cost.
        chain_width: the chain it is expanded from (the widest chain that fits within it, SPEC.md §3.3).
        num_candidates: grid size.
        num_within: candidates passing the params / MACs budgets.
        num_timed: models whose latency was measured.
        input_size: counting / timing input size.
        last_stride: ResNet last stride used for the MAC count.
        source: ``chain`` (expanded from a chain) or ``mlflow`` (a fine-tuned student; ``chain_width`` is 0).
        run_id: the MLflow run of a fine-tuned student.
        mAP: its recorded mAP.
    """

    candidate: Candidate
    chain_width: int
    num_candidates: int
    num_within: int
    num_timed: int
    input_size: tuple[int, int]
    last_stride: int
    source: str = "chain"
    run_id: str = ""
    mAP: float | None = None

    def to_dict(self) -> dict[str, Any]:
        c = self.candidate
        return {
            "spec": c.spec.name,
            "layer_widths": list(c.spec.layer_widths()),
            "params": c.params,
            "macs": c.macs,
            "latency_ms": c.latency_ms,
            "chain_width": self.chain_width,
            "num_candidates": self.num_candidates,
            "num_within": self.num_within,
            "num_timed": self.num_timed,
            "input_size": list(self.input_size),
            "last_stride": self.last_stride,
            "source": self.source,
            "run_id": self.run_id,
            "mAP": self.mAP,
        }


# ----------------------------------------------------------------------------------------------- the grid
def width_grid(
    teacher: ModelSpec,
    chain_widths: Sequence[int],
    *,
    in_planes_step: int | None = None,
    max_multiplier: int = 16,
) -> list[ModelSpec]:
    """Every student spec between the narrowest chain's S-Student and ``teacher`` (structural options kept).

    Args:
        teacher: the chains' teacher spec (a reduced teacher is allowed).
        chain_widths: available chain widths (only the narrowest bounds the grid from below).
        in_planes_step: ResNet stem-width step (``None`` = the narrowest chain width); the teacher's is always in.
        max_multiplier: largest ResNet stage multiplier.
    """
    if not chain_widths:
        raise SpecError("no chain width given")
    lo = teacher.chain_spec(min(chain_widths))
    hi_w, lo_w = teacher.layer_widths(), lo.layer_widths()
    if teacher.family == "vit":
        h = teacher.num_heads
        first = -(-lo.dim // h) * h
        return [dataclasses.replace(teacher, dim=d) for d in range(first, teacher.dim + 1, h)]
    step = int(in_planes_step or lo.in_planes)
    if step < 1:
        raise SpecError(f"in_planes_step={in_planes_step}: expected a positive integer")
    stems = sorted({*range(lo.in_planes, teacher.in_planes + 1, step), teacher.in_planes})
    specs = []
    for w in stems:
        ranges = []
        for i in range(3):  # planes of stages 2..4 = w * m_i, bounded by the chain and the teacher
            a = max(1, math.ceil(lo_w[2 + i] / w))
            b = min(max_multiplier, hi_w[2 + i] // w)
            ranges.append(range(a, b + 1))
        for m1 in ranges[0]:
            for m2 in ranges[1]:
                if m2 < m1:
                    continue
                for m3 in ranges[2]:
                    if m3 >= m2:
                        specs.append(dataclasses.replace(teacher, in_planes=w, multipliers=(m1, m2, m3)))
    return [s for s in specs if lo.fits_within(s) and s.fits_within(teacher)]


def rank_candidates(
    specs: Sequence[ModelSpec], input_size: Sequence[int] | None = None, last_stride: int | None = None
) -> list[Candidate]:
    """Closed-form params / MACs of every spec, sorted narrowest first (see :attr:`Candidate.order`)."""
    cands = [Candidate(s, spec_params(s), spec_macs(s, input_size, last_stride)) for s in specs]
    return sorted(cands, key=lambda c: c.order)


LatencyFn = Callable[[ModelSpec], float]


def pick_spec(
    teacher: ModelSpec,
    chain_widths: Sequence[int],
    budget: Budget,
    *,
    input_size: Sequence[int] | None = None,
    last_stride: int | None = None,
    in_planes_step: int | None = None,
    max_multiplier: int = 16,
    latency_fn: LatencyFn | None = None,
) -> PickResult:
    """Choose the widest grid student that fits ``budget`` (no weights involved).

    Args:
        teacher: the chains' teacher spec.
        chain_widths: available chain widths.
        budget: the limits.
        input_size: counting / timing ``(H, W)`` (``None`` = the teacher's ``img_size``).
        last_stride: ResNet last stride for the MAC count (``None`` = the teacher's; the README counts with 2).
        in_planes_step: see :func:`width_grid`.
        max_multiplier: see :func:`width_grid`.
        latency_fn: ``spec -> ms`` (default: build the model and time batch 1 on ``budget.device``).

    Raises:
        SpecError: when nothing fits; the message names the smallest achievable figures.
    """
    size = tuple(int(s) for s in (input_size or teacher.img_size))
    ls = int(last_stride or teacher.last_stride)
    cands = rank_candidates(
        width_grid(teacher, chain_widths, in_planes_step=in_planes_step, max_multiplier=max_multiplier),
        size,
        last_stride,
    )
    if not cands:
        raise SpecError(f"the width grid between chain {min(chain_widths)} and teacher {teacher.name} is empty")
    where = f"at {size[0]}x{size[1]}" + (f", last stride {ls}" if teacher.family == "resnet" else "")
    smallest = min(cands, key=lambda c: (c.params, c.macs))
    within = [
        c
        for c in cands
        if (budget.max_params is None or c.params <= budget.max_params)
        and (budget.max_macs is None or c.macs <= budget.max_macs)
    ]
    if not within:
        raise SpecError(
            f"no student fits the budget ({budget.describe()}): the smallest achievable is "
            f"{format_count(smallest.params)} params and {format_count(smallest.macs)} MACs {where} "
            f"({smallest.spec.name} {list(smallest.spec.layer_widths())}, the S-Student of chain "
            f"{min(chain_widths)})"
        )
    timed = 0
    if budget.max_latency_ms is not None:
        latency_fn = latency_fn or _default_latency(size, budget.device)
        cache: dict[int, float] = {}

        def lat(i: int) -> float:
            if i not in cache:
                cache[i] = float(latency_fn(within[i].spec))
            return cache[i]

        limit = budget.max_latency_ms
        if lat(0) > limit:
            raise SpecError(
                f"no student fits the budget ({budget.describe()}): the smallest candidate "
                f"{within[0].spec.name} {list(within[0].spec.layer_widths())} ({format_count(within[0].params)} "
                f"params) takes {lat(0):.3f} ms {where} on {budget.device}"
            )
        lo, hi = 0, len(within) - 1  # invariant: lat(lo) <= limit; answer in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if lat(mid) <= limit:
                lo = mid
            else:
                hi = mid - 1
        best = dataclasses.replace(within[lo], latency_ms=cache[lo])
        timed = len(cache)
    else:
        best = within[-1]
    chain = select_chain(best.spec, list(chain_widths), teacher)
    return PickResult(best, chain, len(cands), len(within), timed, (size[0], size[1]), ls)


def pick_student(
    chains: Sequence[WeightChain], budget: Budget, *, num_classes: int = 1, **options: Any
) -> tuple[ReIDModel, PickResult]:
    """Pick the widest fitting spec for ``chains`` (``WeightChain`` s of one teacher) and expand it.

    Args:
        chains: loaded weight chains.
        budget: the limits.
        num_classes: classifier outputs of the generated student (its head is fresh either way; fine-tuning
            resets it for the target identities).
        **options: :func:`pick_spec` keyword options.

    Returns:
        ``(model, result)``: the expanded ``ReIDModel`` and the :class:`PickResult`.
    """
    if not chains:
        raise SpecError("no chain given: pass at least one chain checkpoint")
    teacher = chains[0].teacher_spec
    result = pick_spec(teacher, [c.width for c in chains], budget, **options)
    model = expand_from_chains(list(chains), result.candidate.spec, num_classes)
    return model, result


def _default_latency(size: tuple[int, int], device: str) -> LatencyFn:
    from oskt.deploy.latency import measure_spec_latency

    def latency_fn(spec: ModelSpec) -> float:
        return measure_spec_latency(spec, size, device, batch=1)

    return latency_fn


def check_spec(
    spec: ModelSpec,
    budget: Budget,
    *,
    input_size: Sequence[int] | None = None,
    last_stride: int | None = None,
    latency_fn: LatencyFn | None = None,
) -> Candidate | None:
    """The spec's :class:`Candidate` when it fits every budget, else ``None`` (latency measured only if needed)."""
    size = (spec.img_size[0], spec.img_size[1]) if spec.family == "vit" or input_size is None else input_size
    size = (int(size[0]), int(size[1]))
    cand = Candidate(spec, spec_params(spec), spec_macs(spec, size, last_stride))
    if (budget.max_params is not None and cand.params > budget.max_params) or (
        budget.max_macs is not None and cand.macs > budget.max_macs
    ):
        return None
    if budget.max_latency_ms is None:
        return cand
    ms = float((latency_fn or _default_latency(size, budget.device))(spec))
    return dataclasses.replace(cand, latency_ms=ms) if ms <= budget.max_latency_ms else None


def _pick_from_mlflow(
    out: str,
    budget: Budget,
    arch: str | None,
    uri: str | None,
    experiment: str | None,
    options: dict[str, Any],
) -> PickResult | None:
    """Write the best-mAP fine-tuned student from MLflow that fits ``budget``; ``None`` when none does."""
    import tempfile

    from oskt.deploy.mlflow_source import iter_trained_students, list_trained_runs

    runs = list_trained_runs(uri, experiment)
    tried = 0
    with tempfile.TemporaryDirectory(prefix="oskt-pick-") as tmp:
        for run, model, art in iter_trained_students(runs, uri, tmp):
            if arch is not None and model.spec.arch != arch:
                continue
            tried += 1
            cand = check_spec(
                model.spec,
                budget,
                input_size=options.get("input_size"),
                last_stride=options.get("last_stride"),
                latency_fn=options.get("latency_fn"),
            )
            if cand is None:
                continue
            size = tuple(options.get("input_size") or model.spec.img_size)
            res = PickResult(
                cand,
                0,
                len(runs),
                tried,
                int(cand.latency_ms is not None),
                (int(size[0]), int(size[1])),
                int(options.get("last_stride") or model.spec.last_stride),
                source="mlflow",
                run_id=run.run_id,
                mAP=run.mAP,
            )
            extra = {"pick": res.to_dict(), "budget": dataclasses.asdict(budget), "mlflow_artifact": art}
            save_model(out, model, kind="student", extra=extra)
            return res
    return None


def pick_to_file(
    chain_paths: Sequence[str],
    out: str,
    budget: Budget,
    *,
    num_classes: int = 1,
    from_mlflow: bool = False,
    mlflow_uri: str | None = None,
    mlflow_experiment: str | None = None,
    **options: Any,
) -> PickResult:
    """Pick a student for ``budget`` and save it (kind ``student``) at ``out``.

    With ``from_mlflow``, fine-tuned students recorded in MLflow (tag ``method=oskt``, metric ``mAP``, a student
    checkpoint artifact) come first: the best-mAP one that fits is written as is (it is trained, an expansion is
    not). Otherwise — or when none fits — the chains (local or s3) are loaded and the widest fitting grid student is
    expanded from them.

    Args:
        chain_paths: chain checkpoints (may be empty only with ``from_mlflow``).
        out: checkpoint to write.
        budget: the limits.
        num_classes: classifier outputs of an expanded student.
        from_mlflow: also consider fine-tuned students from MLflow (``mlflow`` imported lazily).
        mlflow_uri: tracking URI (``None`` = MLflow's default).
        mlflow_experiment: restrict to one experiment (``None`` = all).
        **options: :func:`pick_spec` keyword options.
    """
    if not chain_paths and not from_mlflow:
        raise SpecError("no chain given: pass at least one --chain PATH (or --from-mlflow)")
    chains = [load_chain(p) for p in chain_paths]
    if from_mlflow:
        arch = chains[0].teacher_spec.arch if chains else None
        res = _pick_from_mlflow(out, budget, arch, mlflow_uri, mlflow_experiment, options)
        if res is not None:
            return res
        if not chains:
            raise SpecError(
                f"no fine-tuned student in MLflow fits the budget ({budget.describe()}) and no chain "
                "was given to expand one"
            )
    model, result = pick_student(chains, budget, num_classes=num_classes, **options)
    extra = {"pick": result.to_dict(), "budget": dataclasses.asdict(budget), "chains": [str(p) for p in chain_paths]}
    save_model(out, model, kind="student", extra=extra)
    return result
