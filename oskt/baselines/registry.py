"""The one interface every student-initialisation method implements (docs/contracts.md, Baselines).

``INIT_METHODS.get(name)(ctx, spec, num_classes) -> InitResult``. The methods (OSKT and the four baselines of
../shared/BASELINES.md §1) differ only in where the student's weights come from; the architecture, parameter count
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
from oskt.models.spec import ModelSpec, check_fits_teacher  # noqa: F401  (re-exported for the init methods)
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
    """

    teacher_ckpt: str | None = None
    chain_ckpts: tuple[str, ...] = ()
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    device: str = "cpu"
    source_loader_factory: Callable[[], Iterable] | None = None
    example_input_size: tuple[int, int] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "chain_ckpts", tuple(str(c) for c in self.chain_ckpts))
        if self.example_input_size is not None:
            object.__setattr__(self, "example_input_size", tuple(int(s) for s in self.example_input_size))

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
    ) -> InitContext:
        """Build a context from the resolved config (``baselines`` section, input size ``data.height × width``)."""
        return cls(
            teacher_ckpt=teacher_ckpt,
            chain_ckpts=tuple(chain_ckpts),
            baselines=cfg.baselines,
            device=device,
            source_loader_factory=source_loader_factory,
            example_input_size=(cfg.data.height, cfg.data.width),
            seed=seed,
        )


@dataclass
class InitResult:
    """An initialised student.

    Attributes:
        model: the student, architecture exactly ``build_model(spec, num_classes)``, in training mode on
            ``ctx.device``; its classifier is fresh (BoT init) for ``num_classes``.
        aux: an ``AuxLoss`` to add to the fine-tune loss (``KDPPLoss`` for ``kdpp``), else ``None``.
        info: JSON-serialisable notes: ``method``, ``seconds``, and per method e.g. ``chain_width``,
            ``chain_ckpt``, ``teacher``, ``qkv_aware``, ``centres``.
    """

    model: ReIDModel
    aux: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)


InitFn = Callable[[InitContext, ModelSpec, int], InitResult]
INIT_METHODS: Registry[InitFn] = Registry("init method")


def register_init(name: str) -> Callable[[InitFn], InitFn]:
    """Register an init method under ``name``; the registered callable also checks the layout, moves the student
    to ``ctx.device`` in training mode and records ``method`` and ``seconds`` in ``info``."""

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
