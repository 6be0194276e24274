"""The one interface every student-initialisation method implements (docs/contracts.md, Baselines).

``INIT_METHODS.get(name)(ctx, spec, num_classes) -> InitResult``. The methods (OSKT, the four baselines of
../shared/BASELINES.md §1 and the cross-architecture distillation methods OFA-KD and RSD, docs/methods.md) differ
only in where the student's weights come from and which auxiliary loss trains it; the architecture, parameter count
and state-dict layout are always those of ``build_model(spec, num_classes)`` (checked for every method by
:func:`register_init`), so "OSKT vs baselines" is a loop over this registry followed by the same fine-tune recipe
(SPEC.md §5).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from oskt.config import BaselinesConfig
from oskt.errors import CheckpointError, ConfigError, SpecError
from oskt.models.factory import ReIDModel, build_model
from oskt.models.spec import ModelSpec, check_fits_teacher
from oskt.registry import Registry

if TYPE_CHECKING:
    from oskt.config import Config


@dataclass(frozen=True)
class InitContext:
    """Everything a method may need besides the student spec: paths and settings, plus an optional loader factory.

    Attributes:
        teacher_ckpt: the ORIGINAL trained teacher checkpoint (kind ``teacher``; not the refined one), used by
            ``wtsel``, ``kdpp`` and ``depgraph``. ``scratch`` only reads it to check the student fits the teacher.
        chain_ckpts: chain checkpoints for ``oskt``; the widest chain whose S-Student fits the student in every
            layer is used (SPEC.md §3.3, ``oskt.models.spec.select_chain``).
        baselines: the ``baselines`` config section (``kdpp``, ``wtsel``, ``depgraph``).
        device: where teachers run and the student is returned (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        source_loader_factory: KD++ only. A zero-argument callable returning an un-augmented loader that yields
            ``(images, pids, camids)`` over the records KD++ will distil on, with the same pid labels: the SOURCE
            train split (the teacher's identities) when distillation runs on the source set before the target
            fine-tune (BASELINES.md §1.3), or the (single-scenario) train split. Called once, to compute the
            teacher's class-mean embeddings. ``None`` defers the centres to ``KDPPLoss.prepare``, which the
            fine-tune calls with a loader over exactly the records it trains on (always consistent).
        example_input_size: (height, width) of the traced input for DepGraph's ResNet dependency graph; ``None``
            = the teacher spec's ``img_size`` (ViT always traces at the teacher's size: position embeddings).
        seed: when set, the method's random parts (Scratch weights, fresh heads, projector, traced input) draw from
            a private RNG stream seeded with it (``torch.random.fork_rng``); ``None`` uses the global RNG.
        finetune_epochs: epochs of the training run the returned ``aux`` is used in: ``students.epochs`` for a
            target fine-tune, the method's ``baselines.<method>.epochs`` for a source distillation phase. KD++
            clips its warm-up to it (``oskt.train.kd.kd_warmup``); ``None`` leaves ``warmup_epochs`` unclipped.
    """

    teacher_ckpt: str | None = None
    chain_ckpts: tuple[str, ...] = ()
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    device: str = "cpu"
    source_loader_factory: Callable[[], Iterable] | None = None
    example_input_size: tuple[int, int] | None = None
    seed: int | None = None
    finetune_epochs: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "chain_ckpts", tuple(str(c) for c in self.chain_ckpts))
        if self.example_input_size is not None:
            object.__setattr__(self, "example_input_size", tuple(int(s) for s in self.example_input_size))
        if self.finetune_epochs is not None and self.finetune_epochs < 1:
            raise ConfigError(
                f"InitContext.finetune_epochs={self.finetune_epochs!r} is not allowed: expected null or an integer >= 1"
            )

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        *,
        teacher_ckpt: str | None,
        chain_ckpts: Iterable[str] = (),
        device: str = "cpu",
        source_loader_factory: Callable[[], Iterable] | None = None,
        seed: int | None = None,
        finetune_epochs: int | None = None,
    ) -> InitContext:
        """Build a context from the resolved config (``baselines`` section, input size ``data.height × width``);
        ``finetune_epochs`` defaults to ``students.epochs`` (pass the distillation phase's epochs when the aux is
        trained on the source set first)."""
        return cls(
            teacher_ckpt=teacher_ckpt,
            chain_ckpts=tuple(chain_ckpts),
            baselines=cfg.baselines,
            device=device,
            source_loader_factory=source_loader_factory,
            example_input_size=(cfg.data.height, cfg.data.width),
            seed=seed,
            finetune_epochs=cfg.students.epochs if finetune_epochs is None else finetune_epochs,
        )


@dataclass
class InitResult:
    """An initialised student.

    Attributes:
        model: the student, architecture exactly ``build_model(spec, num_classes)``, in training mode on
            ``ctx.device``; its classifier is fresh (BoT init) for ``num_classes``.
        aux: an ``AuxLoss`` to add to the fine-tune loss (``KDPPLoss`` for ``kdpp``, ``OFALoss`` for ``ofa``,
            ``RSDLoss`` for ``rsd``), else ``None``. An aux with ``attach(model)`` (OFA) must be attached to the model
            that is trained before its first step.
        info: JSON-serialisable notes: ``method``, ``seconds``, and per method e.g. ``chain_width``,
            ``chain_ckpt``, ``teacher``, ``qkv_aware``, ``centres``.
    """

    model: ReIDModel
    aux: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)


InitFn = Callable[[InitContext, ModelSpec, int], InitResult]
INIT_METHODS: Registry[InitFn] = Registry("init method")


@dataclass(frozen=True)
class InitNeeds:
    """What a method reads besides the student's spec and the target set; the pipeline's job graph
    (``oskt.pipeline.graph``) gives a grid cell exactly these upstream jobs, so a cell's key changes only with them.

    Attributes:
        chain: the widest weight chain that fits the student (``ctx.chain_ckpts``).
        teacher: the trained (original) teacher (``ctx.teacher_ckpt``).
        source_phase: may distil on the teacher's training set first, for ``baselines.<method>.epochs`` epochs, when
            the scenario crosses data sets.
        logits: distils logits, so across data sets it needs that source phase (the target's identities are not the
            teacher's); without one such a cell is skipped, with this reason.
    """

    chain: bool = False
    teacher: bool = False
    source_phase: bool = False
    logits: bool = False


INIT_NEEDS: dict[str, InitNeeds] = {}


def register_init(name: str, needs: InitNeeds = InitNeeds()) -> Callable[[InitFn], InitFn]:
    """Register an init method under ``name`` with what it reads (``needs``); the registered callable also checks
    the layout, moves the student to ``ctx.device`` in training mode and records ``method`` and ``seconds`` in
    ``info``."""

    def deco(fn: InitFn) -> InitFn:
        @functools.wraps(fn)
        def init(ctx: InitContext, spec: ModelSpec, num_classes: int) -> InitResult:
            if num_classes < 1:
                raise SpecError(f"num_classes={num_classes} is not allowed: expected a positive integer")
            t0 = time.perf_counter()
            if ctx.seed is None:
                result = fn(ctx, spec, num_classes)
            else:  # a private RNG stream: reproducible random parts, the caller's global RNG state untouched
                with torch.random.fork_rng(devices=_cuda_devices(ctx.device)):
                    torch.manual_seed(ctx.seed)
                    result = fn(ctx, spec, num_classes)
            check_layout(result.model, spec, num_classes, name)
            result.model.to(ctx.device).train()
            result.info = {"method": name, **result.info, "seconds": round(time.perf_counter() - t0, 3)}
            return result

        INIT_NEEDS[name] = needs
        return INIT_METHODS.register(name)(init)

    return deco


def _cuda_devices(device: str) -> list[int]:
    d = torch.device(device)
    if d.type != "cuda":
        return []
    return [d.index if d.index is not None else torch.cuda.current_device()]


def init_student(method: str, ctx: InitContext, spec: ModelSpec, num_classes: int) -> InitResult:
    """Run the registered init method ``method`` (unknown names raise, listing the known ones)."""
    return INIT_METHODS.get(method)(ctx, spec, num_classes)


# --------------------------------------------------------------------------------------------------- helpers


def reference_shapes(spec: ModelSpec, num_classes: int) -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes of ``build_model(spec, num_classes)`` (built on the meta device: no init cost)."""
    with torch.device("meta"):
        ref = build_model(spec, num_classes)
    return {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def check_layout(model: ReIDModel, spec: ModelSpec, num_classes: int, method: str) -> None:
    """Raise SpecError unless ``model`` has exactly the spec's architecture (keys, shapes, spec)."""
    if model.spec != spec:
        raise SpecError(f"init method {method!r} returned a {model.spec.name} model for spec {spec.name}")
    want = reference_shapes(spec, num_classes)
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if have != want:
        bad = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise SpecError(
            f"init method {method!r} produced a state dict that differs from {spec.name}'s in "
            f"{len(bad)} entries, e.g. {bad[:5]}"
        )


SAME_ARCH_REASONS: dict[str, str] = {
    "oskt": "the student is expanded from weight chains clustered from the teacher's own layers (SPEC.md §3)",
    "wtsel": "the student's tensors are selected from the teacher's tensors of the same name (BASELINES.md §1.2)",
    "depgraph": "the student is the teacher structurally pruned (BASELINES.md §1.4)",
}
"""Methods that build the student from the teacher's weights, so the teacher must be of the student's architecture;
the reason is the one a grid gives for skipping a cross-architecture cell. Every other method (``scratch`` and the
distillation methods ``kdpp``, ``ofa``, ``rsd``) accepts a teacher of any architecture."""


def same_arch_reason(method: str) -> str | None:
    """Why ``method`` needs a teacher of the student's architecture, or ``None`` when any teacher will do."""
    return SAME_ARCH_REASONS.get(method)


def check_student_teacher(spec: ModelSpec, teacher: ModelSpec, method: str) -> None:
    """SpecError unless ``method`` can build ``spec`` with ``teacher``.

    Same architecture: the student must fit within the teacher (``check_fits_teacher``: no layer wider, a ViT at
    the teacher's input size), for every method, so all methods accept the same students. Another architecture
    (e.g. a ViT teacher for a ResNet student): allowed for the methods that only distil (``scratch`` reads the
    teacher only for this check), an error naming the reason for ``oskt``, ``wtsel`` and ``depgraph``.
    """
    if spec.arch == teacher.arch:
        check_fits_teacher(spec, teacher, method)
        return
    reason = same_arch_reason(method)
    if reason is not None:
        raise SpecError(
            f"{method}: student {spec.arch} {spec.name} and teacher {teacher.arch} {teacher.name} are of different "
            f"architectures, but {method} needs a teacher of the student's own architecture: {reason}"
        )


def load_teacher(ctx: InitContext, method: str) -> ReIDModel:
    """Load ``ctx.teacher_ckpt`` onto ``ctx.device``; ConfigError when the method needs one and none was given.

    Same result as ``oskt.models.load_model`` (rebuilt from the checkpoint's spec, strict load), but the model is
    built on the meta device first: a ViT-B teacher's random init would cost more than the whole init method.
    """
    from oskt.checkpoint import load_checkpoint

    if not ctx.teacher_ckpt:
        raise ConfigError(f"init method {method!r} needs the trained teacher: InitContext.teacher_ckpt is not set")
    ckpt = load_checkpoint(ctx.teacher_ckpt)
    state = ckpt["state_dict"]
    try:
        spec = ModelSpec.from_dict(dict(ckpt["spec"]))
        num_classes = int(state["head.classifier.weight"].shape[0])
        with torch.device("meta"):
            teacher = build_model(spec, num_classes)
        teacher.load_state_dict(state, strict=True, assign=True)
    except (KeyError, TypeError, RuntimeError, SpecError) as e:
        raise CheckpointError(f"teacher checkpoint {ctx.teacher_ckpt!r} cannot be rebuilt: {e}") from None
    teacher.neck_feat = (ckpt.get("extra") or {}).get("neck_feat", teacher.neck_feat)
    return teacher.to(ctx.device)
