"""The one typed configuration: frozen dataclasses mirroring the sections of ``params.yaml``.

Precedence (lowest first): dataclass defaults (the authors' CNN recipe, ../shared/SPEC.md §4.3) < the named
profile (``oskt/profiles/<name>.yaml``) < the params file (``params.yaml``) < explicit ``--set a.b=c`` overrides.

Unknown keys, wrong types and impossible values raise :class:`~oskt.errors.ConfigError` naming the key, the value
and what is allowed, before any work starts. Library functions receive one section (or plain arguments), never
the whole tree and never a path to ``params.yaml``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, get_args, get_origin

import yaml

from oskt.errors import ConfigError

PROFILES = ("smoke", "quick", "quick_long", "paper", "smoke_vit", "quick_vit", "paper_vit")
"""Profiles shipped in ``oskt/profiles``; ``smoke`` = CI (minutes), ``quick`` = the embedded default main job
(≤15 min on 2 cores), ``quick_long`` = ``quick`` with a longer fine-tune (issue #19), ``paper`` = the authors'
recipes for a GPU cluster; ``*_vit`` = the same for the ViT family."""

ARCHS = ("resnet50", "vit_small", "vit_base")
METHODS = ("oskt", "scratch", "wtsel", "kdpp", "depgraph", "ofa", "rsd")
ENGINES = ("prefect", "ray", "serial")
LAYOUTS = ("synthetic", "market1501", "msmt17", "cuhk03", "folder", "csv")


RUN_OPTION = {"identity": False}
"""Field metadata of settings that change how a run is carried out or shown, never what it computes (loader
workers, progress output, evaluation batch size): a job's key (``oskt.jobs.job_key``) leaves them out, so changing
one reruns nothing."""


def run_option(default: Any) -> Any:
    """A dataclass field that is a run option (see ``RUN_OPTION``)."""
    return field(default=default, metadata=RUN_OPTION)


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


# --------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DatasetEntry:
    """One named data set: its layout and where it lives."""

    layout: str = "market1501"
    """One of ``synthetic``, ``market1501``, ``msmt17``, ``cuhk03``, ``folder``, ``csv``."""
    path: str = ""
    """Folder (or CSV file) relative to ``data.root``, or an absolute path / ``s3://`` URL."""
    domain: str = "a"
    """Synthetic only: which embedded domain (``a`` or ``b``, different camera / appearance statistics)."""
    cuhk03_split: str = "detected"
    """CUHK03-NP only: ``detected`` (the paper's) or ``labeled``."""
    merge_val: bool = False
    """MSMT17 only: add ``list_val.txt`` to the training split (the paper does not)."""

    def __post_init__(self) -> None:
        _check(self.layout in LAYOUTS, "layout", self.layout, f"one of {LAYOUTS}")
        _check(self.domain in ("a", "b"), "domain", self.domain, "'a' or 'b'")
        _check(self.cuhk03_split in ("detected", "labeled"), "cuhk03_split", self.cuhk03_split, "detected|labeled")


def _default_datasets() -> dict[str, DatasetEntry]:
    return {
        "synth_a": DatasetEntry(layout="synthetic", path="synth_a", domain="a"),
        "synth_b": DatasetEntry(layout="synthetic", path="synth_b", domain="b"),
        "market1501": DatasetEntry(layout="market1501", path="Market-1501-v15.09.15"),
        "msmt17": DatasetEntry(layout="msmt17", path="MSMT17_V1"),
        "cuhk03": DatasetEntry(layout="cuhk03", path="CUHK03-NP", cuhk03_split="detected"),
    }


@dataclass(frozen=True)
class SynthConfig:
    """The embedded synthetic ReID data set (generated, deterministic, nothing to download)."""

    train_ids: int = 150
    """Identities in the training split."""
    test_ids: int = 150
    """Identities in query + gallery (disjoint from the training ones)."""
    images_per_id: int = 16
    """Images per identity, spread over the cameras."""
    height: int = 128
    """Stored image height in pixels (256 for the full size)."""
    width: int = 64
    """Stored image width in pixels (128 for the full size)."""
    seed: int = 0
    """Generator seed: same seed, same bytes."""

    def __post_init__(self) -> None:
        _check(self.train_ids >= 4, "data.synthetic.train_ids", self.train_ids, "an integer >= 4")
        _check(self.test_ids >= 2, "data.synthetic.test_ids", self.test_ids, "an integer >= 2")
        _check(self.images_per_id >= 4, "data.synthetic.images_per_id", self.images_per_id, "an integer >= 4")
        _check(
            self.height >= 32 and self.height % 8 == 0, "data.synthetic.height", self.height, "a multiple of 8 >= 32"
        )
        _check(self.width >= 16 and self.width % 8 == 0, "data.synthetic.width", self.width, "a multiple of 8 >= 16")


@dataclass(frozen=True)
class InputConfig:
    """How images become model inputs (the part of ``data`` every training and evaluation phase reads); built from
    the ``data`` section by ``DataConfig.input``."""

    height: int = 256
    """Model input height in pixels."""
    width: int = 128
    """Model input width in pixels."""
    normalize: str = "auto"
    """``imagenet`` mean/std, ``half`` (mean = std = 0.5) or ``auto`` (per family)."""
    cache: str = "auto"
    """Training images: ``memory`` (decode once, augment on the device), ``none`` (PIL every epoch), ``auto``."""
    bad_images: str = "fail"
    """Unreadable images: ``fail`` or ``skip``."""
    num_workers: int = run_option(0)
    """DataLoader worker processes (a run option: same result with any count)."""

    @classmethod
    def of(cls, data: DataConfig) -> InputConfig:
        """The input settings of a ``data`` section (the fields of the same names)."""
        return cls(**{f.name: getattr(data, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class DataConfig:
    root: str = "data"
    """Where the data sets live: a local folder or an ``s3://`` URL (credentials from the environment)."""
    datasets: dict[str, DatasetEntry] = field(default_factory=_default_datasets)
    """Named data sets; scenarios refer to these names."""
    sources: tuple[str, ...] = ("market1501",)
    """Data sets teachers (and their chains) are trained on."""
    height: int = 256
    """Model input height in pixels."""
    width: int = 128
    """Model input width in pixels."""
    synthetic: SynthConfig = field(default_factory=SynthConfig)
    normalize: str = "auto"
    """Input normalisation: ``imagenet`` mean/std (CNN recipe), ``half`` (mean = std = 0.5, ViT recipe),
    ``auto`` = per family."""
    num_workers: int = run_option(4)
    """DataLoader worker processes (0 = load in the main process)."""
    bad_images: str = "fail"
    """Policy for unreadable images: ``fail`` (error naming the file) or ``skip`` (drop and count)."""
    val_ids: int = 0
    """Validation protocol: hold out this many *training* identities of every data set (a fixed seeded choice,
    ``oskt.data.holdout_split``) as its query / gallery, train on the rest, and never read the test split; use it
    to choose a recipe (``--set data.val_ids=30``) into its own ``compute.out_dir``. 0 = the standard protocol."""
    cache: str = "auto"
    """Training images: ``memory`` = decode every image once (resized to ``height`` x ``width``) into one uint8
    tensor in RAM and augment batches on the training device (no loader workers); ``none`` = decode and augment
    with PIL in ``num_workers`` processes every epoch; ``auto`` = ``memory`` when the cache (images x 3 x height x
    width bytes) is at most 4 GiB, else ``none``. Cost at 256x128 (96 KiB an image): Market-1501 train ~1.3 GB,
    MSMT17 train ~3.2 GB, held while the phase trains (one cache per training phase)."""
    allow_outside_root: bool = False
    """Let a data set name files outside its own folder: CSV rows with absolute or ``../`` paths, MSMT17 list lines
    leading out of ``train/`` / ``test/``, ``data.datasets.<name>.path`` leading out of ``data.root`` with ``..``.
    Off (default): such a row or path is an error naming it, so a list file never makes oskt read files elsewhere."""

    def __post_init__(self) -> None:
        # names become folder names, output paths and ``${item}`` in dvc.yaml shell commands (issue #17)
        name_chars = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
        for name, entry in self.datasets.items():
            if not (name and set(name) <= name_chars and name[0] not in ".-" and ".." not in name):
                raise ConfigError(
                    f"data.datasets key {name!r} is not allowed: expected a name of letters, digits, '_', '.' and "
                    "'-' that starts with a letter, digit or '_' and has no '..' (names become folder names)"
                )
            depth = 0  # a relative path must not climb out of data.root
            for part in entry.path.replace("\\", "/").split("/"):
                depth += -1 if part == ".." else (0 if part in ("", ".") else 1)
                if depth < 0 and not (self.allow_outside_root or entry.path.startswith("/") or "://" in entry.path):
                    raise ConfigError(
                        f"data.datasets.{name}.path={entry.path!r} is not allowed: expected a path inside data.root "
                        "(no '..' leading out of it), an absolute path or a URL; data.allow_outside_root: true "
                        "allows it"
                    )
        _check(len(self.sources) >= 1, "data.sources", self.sources, "at least one data set name")
        for s in self.sources:
            _check(s in self.datasets, "data.sources", s, f"a name from data.datasets {sorted(self.datasets)}")
        _check(self.height >= 32 and self.height % 16 == 0, "data.height", self.height, "a multiple of 16 >= 32")
        _check(self.width >= 16 and self.width % 16 == 0, "data.width", self.width, "a multiple of 16 >= 16")
        _check(self.normalize in ("auto", "imagenet", "half"), "data.normalize", self.normalize, "auto|imagenet|half")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "an integer >= 0")
        _check(self.bad_images in ("fail", "skip"), "data.bad_images", self.bad_images, "'fail' or 'skip'")
        _check(self.cache in ("auto", "memory", "none"), "data.cache", self.cache, "auto|memory|none")
        _check(self.val_ids >= 0, "data.val_ids", self.val_ids, "an integer >= 0 (0 = no validation split)")

    @property
    def input(self) -> InputConfig:
        """The input settings of this section (what loaders and evaluation read)."""
        return InputConfig.of(self)


# --------------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class TeacherConfig:
    arch: str = "resnet50"
    """``resnet50`` (the OSKT ResNet-50 series), ``vit_small`` or ``vit_base``."""
    name: str = "T"
    """Teacher widths: ``T`` = the full ResNet-50 / ViT; a narrower name (e.g. ``r32-2-4-8``) makes a reduced
    teacher for CPU profiles. Students and chains must fit within it."""
    pretrained: str | None = None
    """Local file with torchvision / timm weights for the teacher backbone (never fetched from a hub)."""
    last_stride: int = 1
    """ResNet stage-4 stride (BoT uses 1)."""
    vit_student_stem: str = "teacher"
    """ViT students: ``teacher`` = the authors' code (teacher-width patch embed + ``dw`` projection),
    ``plain`` = a plain width-S ViT (the README parameter table)."""
    drop_path: float = 0.1
    """ViT stochastic depth rate."""
    epochs: int = 200
    milestones: tuple[int, ...] = (40, 70, 130)
    """Epochs at which the learning rate is multiplied by ``train.gamma`` (multistep schedule only)."""
    lr: float | None = None
    """The teacher's base learning rate; ``null`` = ``train.lr`` (the authors' recipe: one rate for every phase).
    Profiles that train a small teacher from scratch on CPU set a higher one."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.lr is None or self.lr > 0, "teacher.lr", self.lr, "null or a float > 0")
        _check(self.arch in ARCHS, "teacher.arch", self.arch, f"one of {ARCHS}")
        _check(self.last_stride in (1, 2), "teacher.last_stride", self.last_stride, "1 or 2")
        _check(
            self.vit_student_stem in ("teacher", "plain"),
            "teacher.vit_student_stem",
            self.vit_student_stem,
            "'teacher' or 'plain'",
        )
        _check(0.0 <= self.drop_path < 1.0, "teacher.drop_path", self.drop_path, "a float in [0, 1)")
        _check(self.epochs >= 1, "teacher.epochs", self.epochs, "an integer >= 1")
        _check(
            list(self.milestones) == sorted(self.milestones), "teacher.milestones", self.milestones, "increasing epochs"
        )

    @property
    def family(self) -> str:
        return "resnet" if self.arch == "resnet50" else "vit"


@dataclass(frozen=True)
class ChainConfig:
    widths: tuple[int, ...] = (8, 16, 32)
    """Chain widths: ResNet stem width ``in_planes`` (multipliers stay the teacher's), ViT embedding dims."""
    metric: str = "auto"
    """Clustering features: ``euclidean`` (raw rows), ``cosine`` (L2-normalised rows), ``auto`` = the paper's
    choice per family (Euclidean for CNN, cosine for ViT)."""
    init: str = "center"
    """Chain initialisation: ``center`` (cluster means, the paper) or ``random`` (random assignment ablation)."""
    epochs: int = 100
    """Refinement epochs (teacher + S-Student trained jointly)."""
    milestones: tuple[int, ...] = (50, 70)
    lr: float | None = None
    """Refinement base learning rate; ``null`` = the teacher's (``teacher.lr``, else ``train.lr``): refinement goes
    on training the teacher, and the authors use one rate for both phases (SPEC.md §4.3)."""
    refine_weight: float = 1.0
    """Weight of the refining loss (sum of squared row differences)."""
    refine_schedule: str = "auto"
    """``constant`` (CNN in the paper), ``linear`` ramp 0→weight over training (ViT), ``auto`` = per family."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check(
            len(self.widths) >= 1 and all(w > 0 for w in self.widths),
            "chain.widths",
            self.widths,
            "one or more positive integers",
        )
        _check(list(self.widths) == sorted(set(self.widths)), "chain.widths", self.widths, "increasing, no repeats")
        _check(self.metric in ("auto", "euclidean", "cosine"), "chain.metric", self.metric, "auto|euclidean|cosine")
        _check(self.init in ("center", "random"), "chain.init", self.init, "'center' or 'random'")
        _check(self.epochs >= 0, "chain.epochs", self.epochs, "an integer >= 0 (0 = no refinement)")
        _check(self.lr is None or self.lr > 0, "chain.lr", self.lr, "null or a float > 0")
        _check(self.refine_weight >= 0, "chain.refine_weight", self.refine_weight, "a float >= 0")
        _check(
            self.refine_schedule in ("auto", "constant", "linear"),
            "chain.refine_schedule",
            self.refine_schedule,
            "auto|constant|linear",
        )


@dataclass(frozen=True)
class StudentsConfig:
    names: tuple[str, ...] = ("S1", "S2", "S3", "S4", "S5", "S6")
    """Students to build: ``S1``…``S6`` (ResNet) / ``S1``, ``S2`` (ViT), or explicit widths such as
    ``r16-2-3-4`` (ResNet in_planes 16, multipliers 2,3,4) or ``vit144`` (ViT dim 144)."""
    methods: tuple[str, ...] = METHODS
    """Student initialisation methods compared in the grid."""
    arch: str | None = None
    """The students' architecture (``resnet50``, ``vit_small``, ``vit_base``); null = the teacher's. Another family
    than the teacher's (a ResNet student of a ViT teacher, or back) is distilled by the methods that allow it
    (``scratch``, ``kdpp``, ``ofa``, ``rsd``); ``oskt`` / ``wtsel`` / ``depgraph`` cells need the teacher's own
    architecture and are skipped, with the reason (``oskt plan``, the report)."""
    scenarios: tuple[str, ...] = ("market1501->market1501",)
    """``source->target`` pairs: the teacher / chain is trained on source, the student fine-tuned on target."""
    seeds: tuple[int, ...] = (0,)
    few_shot: tuple[float, ...] = (1.0,)
    """Fractions of target training identities used for fine-tuning (1.0 = all)."""
    epochs: int = 100
    milestones: tuple[int, ...] = (40, 70, 90)
    lr: float | None = None
    """Fine-tuning base learning rate, the same for every method; ``null`` = ``train.lr``."""

    def __post_init__(self) -> None:
        _check(self.lr is None or self.lr > 0, "students.lr", self.lr, "null or a float > 0")
        _check(len(self.names) >= 1, "students.names", self.names, "at least one student")
        for m in self.methods:
            _check(m in METHODS, "students.methods", m, f"one of {METHODS}")
        _check(self.arch is None or self.arch in ARCHS, "students.arch", self.arch, f"null or one of {ARCHS}")
        for s in self.scenarios:
            _check(
                isinstance(s, str) and s.count("->") == 1 and all(s.split("->")),
                "students.scenarios",
                s,
                "'source->target' with data set names",
            )
        for f in self.few_shot:
            _check(0.0 < f <= 1.0, "students.few_shot", f, "fractions in (0, 1]")
        _check(self.epochs >= 1, "students.epochs", self.epochs, "an integer >= 1")

    def pairs(self) -> list[tuple[str, str]]:
        return [tuple(s.split("->")) for s in self.scenarios]  # type: ignore[misc]


@dataclass(frozen=True)
class KDPPConfig:
    """KD++ (feature norm & direction regularised KD); ../shared/BASELINES.md §1.3, docs/methods.md §1.

    The ReID losses are the paper's ``cls`` part (weight 1); ``kd_weight`` / ``nd_weight`` / ``temperature`` are the
    authors' argparse defaults (b = c = 1) with their CIFAR temperature (ReID has CIFAR-like few-hundred classes)."""

    temperature: float = 4.0
    kd_weight: float = 1.0
    nd_weight: float = 1.0
    warmup_epochs: int = 5
    """Epochs over which the KD weight ramps linearly from 0 to ``kd_weight`` (the authors' ImageNet 5 of 100)."""
    warmup_fraction: float = 0.1
    """The ramp is clipped to this fraction of the run's epochs and to ``epochs − 1``, so the KD weight reaches
    ``kd_weight`` inside every run (authors: 5/100 ImageNet, 20/240 CIFAR); 4 epochs ramp 0, 1, 1, 1."""
    epochs: int = 0
    """Cross-scenario: distillation epochs on the *source* set before fine-tuning on the target
    (0 = distil during the target fine-tune itself, on target images, with the source teacher)."""

    def __post_init__(self) -> None:
        _check(self.temperature > 0, "baselines.kdpp.temperature", self.temperature, "a number > 0")
        _check(self.kd_weight >= 0, "baselines.kdpp.kd_weight", self.kd_weight, "a number >= 0")
        _check(self.nd_weight >= 0, "baselines.kdpp.nd_weight", self.nd_weight, "a number >= 0")
        _check(self.warmup_epochs >= 0, "baselines.kdpp.warmup_epochs", self.warmup_epochs, "an integer >= 0")
        _check(
            0.0 <= self.warmup_fraction <= 1.0,
            "baselines.kdpp.warmup_fraction",
            self.warmup_fraction,
            "a fraction in [0, 1]",
        )
        _check(self.epochs >= 0, "baselines.kdpp.epochs", self.epochs, "an integer >= 0")


@dataclass(frozen=True)
class OFAConfig:
    """OFA-KD (Hao et al., NeurIPS 2023; docs/methods.md §2): stage branches into the logit space and the
    target-enhanced loss ``−Σ_c [(p_t + m)^ε − m]_c log p_s,c``. Defaults: the official ``train.py`` (weights 1,
    T = 1, stages 1–4) and its README's ε for a ViT→CNN pair on ImageNet (1.5; ReID has ImageNet-like ~1000 ids)."""

    eps: float = 1.5
    """The modulating exponent ε ≥ 1 (1 = plain KD without target enhancement; the authors use 1.0–1.5)."""
    temperature: float = 1.0
    """Softmax temperature of teacher and student (official default 1)."""
    ofa_weight: float = 1.0
    """Weight of the sum of the stage-branch losses."""
    kd_weight: float = 1.0
    """Weight of the OFA loss on the student's own logits."""
    stages: tuple[int, ...] = (1, 2, 3, 4)
    """Student stages with a branch: ResNet ``layer1..4``; ViT blocks ``vit_blocks[stage - 1]``."""
    vit_blocks: tuple[int, ...] = (1, 3, 9, 11)
    """ViT student: the (0-based) blocks standing for stages 1–4, as the official ``stage_info`` of ViT-S / ViT-B /
    DeiT-T (the ends of a Swin-like 2-2-6-2 split), not evenly spaced."""
    epochs: int = 0
    """Cross-scenario: distillation epochs on the *source* set (the teacher's identities) before the target
    fine-tune. OFA distils logits, so a cross-scenario cell needs ``epochs > 0`` (0: single scenario only)."""

    def __post_init__(self) -> None:
        _check(self.eps >= 1.0, "baselines.ofa.eps", self.eps, "a number >= 1")
        _check(self.temperature > 0, "baselines.ofa.temperature", self.temperature, "a number > 0")
        _check(self.ofa_weight >= 0, "baselines.ofa.ofa_weight", self.ofa_weight, "a number >= 0")
        _check(self.kd_weight >= 0, "baselines.ofa.kd_weight", self.kd_weight, "a number >= 0")
        _check(
            len(self.stages) >= 1
            and len(set(self.stages)) == len(self.stages)
            and all(1 <= s <= 4 for s in self.stages),
            "baselines.ofa.stages",
            list(self.stages),
            "distinct stages in 1..4",
        )
        _check(
            len(self.vit_blocks) == 4 and all(0 <= b < 12 for b in self.vit_blocks),
            "baselines.ofa.vit_blocks",
            list(self.vit_blocks),
            "four 0-based block indices in 0..11 (one per stage)",
        )
        _check(self.epochs >= 0, "baselines.ofa.epochs", self.epochs, "an integer >= 0")


@dataclass(frozen=True)
class RSDConfig:
    """RSD (Zhang et al., ICCV 2025; docs/methods.md §3): decoupling MLP on the student's pooled feature, loss
    ``Σ (C − I)²`` of the batch cross-correlation with off-diagonal terms weighted by κ. Defaults: the official
    ``train.py`` (weight 0.1, κ 0.01, γ 2, the final feature)."""

    weight: float = 0.1
    """Weight of the RSD loss."""
    kappa: float = 0.01
    """Weight κ of the off-diagonal (decorrelation) terms."""
    kappa_rank_scaling: bool = True
    """Scale κ by ``min(1, ρ_ref / ρ)``, ``ρ = (D − 1) / (B − 1)``: a P×K batch of 64 against a 2048-wide teacher
    gives a rank-63 correlation whose off-diagonal noise floor would outweigh the authors' (ρ_ref ≈ 6); ``false`` =
    the paper's κ as is."""
    hidden_factor: int = 2
    """γ: hidden width of the decoupling MLP in multiples of the student's feature width."""
    epochs: int = 0
    """Cross-scenario: distillation epochs on the *source* set before the target fine-tune (0 = distil during the
    target fine-tune, on target images: RSD needs no shared identities)."""

    def __post_init__(self) -> None:
        _check(self.weight >= 0, "baselines.rsd.weight", self.weight, "a number >= 0")
        _check(self.kappa >= 0, "baselines.rsd.kappa", self.kappa, "a number >= 0")
        _check(self.hidden_factor >= 1, "baselines.rsd.hidden_factor", self.hidden_factor, "an integer >= 1")
        _check(self.epochs >= 0, "baselines.rsd.epochs", self.epochs, "an integer >= 0")


@dataclass(frozen=True)
class WTSelConfig:
    qkv_aware: bool = False
    """Select q, k, v separately (fixes the official rule's misalignment on fused qkv)."""


@dataclass(frozen=True)
class DepGraphConfig:
    importance_p: int = 2
    """Norm of torch-pruning's GroupMagnitudeImportance."""


@dataclass(frozen=True)
class BaselinesConfig:
    kdpp: KDPPConfig = field(default_factory=KDPPConfig)
    wtsel: WTSelConfig = field(default_factory=WTSelConfig)
    depgraph: DepGraphConfig = field(default_factory=DepGraphConfig)
    ofa: OFAConfig = field(default_factory=OFAConfig)
    rsd: RSDConfig = field(default_factory=RSDConfig)


# --------------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainSettings:
    """The training settings that change what is learnt: the shared part of the ``train`` section
    (:class:`TrainConfig`) and of every phase's :class:`Recipe`."""

    optimizer: str = "adam"
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    bias_lr_factor: float = 1.0
    momentum: float = 0.9
    scheduler: str = "warmup_multistep"
    """``warmup_multistep`` (BoT: linear warmup then ×gamma at milestones) or ``cosine`` (timm, with warmup)."""
    warmup_epochs: int = 10
    warmup_factor: float = 0.01
    gamma: float = 0.1
    min_lr_factor: float = 0.002
    """Cosine only: final lr = lr × this."""
    ids_per_batch: int = 16
    """P of the P×K identity-balanced batch."""
    images_per_id: int = 4
    """K of the P×K identity-balanced batch."""
    label_smoothing: float = 0.1
    triplet: str = "hard"
    """``hard`` (batch-hard with margin) or ``soft`` (soft-margin, ViT recipe)."""
    triplet_margin: float = 0.3
    hard_factor: float = 0.2
    center_weight: float = 5e-4
    """0 disables the center loss."""
    center_lr: float = 0.5
    amp: bool = True
    """Mixed precision on CUDA (ignored on CPU)."""
    grad_clip: float = 0.0
    """Max gradient norm (0 = no clipping)."""
    eval_every: int = 0
    """Evaluate every N epochs (0 = only at the end)."""
    max_iters_per_epoch: int = 0
    """Cap on iterations per epoch (0 = one pass over the P×K sampler)."""

    def __post_init__(self) -> None:
        _check(self.optimizer in ("adam", "sgd"), "train.optimizer", self.optimizer, "'adam' or 'sgd'")
        _check(self.lr > 0, "train.lr", self.lr, "a float > 0")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "a float >= 0")
        _check(
            self.scheduler in ("warmup_multistep", "cosine"),
            "train.scheduler",
            self.scheduler,
            "'warmup_multistep' or 'cosine'",
        )
        _check(self.warmup_epochs >= 0, "train.warmup_epochs", self.warmup_epochs, "an integer >= 0")
        _check(self.ids_per_batch >= 2, "train.ids_per_batch", self.ids_per_batch, "an integer >= 2")
        _check(self.images_per_id >= 2, "train.images_per_id", self.images_per_id, "an integer >= 2")
        _check(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", self.label_smoothing, "a float in [0, 1)")
        _check(self.triplet in ("hard", "soft"), "train.triplet", self.triplet, "'hard' or 'soft'")
        _check(self.center_weight >= 0, "train.center_weight", self.center_weight, "a float >= 0")
        _check(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "a float >= 0")

    @property
    def batch_size(self) -> int:
        return self.ids_per_batch * self.images_per_id


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    """The training recipe shared by teacher, refinement and student fine-tuning (epochs live per phase)."""

    log_every: int = run_option(20)
    """Log step metrics every N iterations."""
    progress: bool = run_option(True)
    """Progress bars (set false for CI logs)."""


@dataclass(frozen=True)
class Recipe(TrainSettings):
    """One training phase's recipe: the shared ``train`` settings (:class:`TrainSettings`) with the phase's own
    epochs, milestones and base learning rate (``lr``). Built by :meth:`of`; what a teacher, chain or student job
    holds and what the optimiser, schedule, losses and loaders read."""

    epochs: int = 1
    milestones: tuple[int, ...] = ()

    @classmethod
    def of(cls, train: TrainSettings, *, epochs: int, milestones: tuple[int, ...], lr: float) -> Recipe:
        """The recipe of a phase: ``train``'s settings with the phase's epochs / milestones / base rate."""
        shared = {f.name: getattr(train, f.name) for f in dataclasses.fields(TrainSettings)}
        return cls(**{**shared, "epochs": int(epochs), "milestones": tuple(milestones), "lr": float(lr)})


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = run_option(256)
    query_chunk: int = run_option(1024)
    """Queries ranked at a time (bounds memory for MSMT17-sized sets)."""
    max_rank: int = 50
    """Length of the reported CMC curve. Rank-1/5/10 are computed from the per-query ranks whatever it is (a
    ``max_rank`` below 10 no longer caps rank-10 at CMC@max_rank)."""
    neck_feat: str = "auto"
    """Retrieval feature: ``after`` BNNeck (CNN recipe), ``before`` (ViT recipe), ``auto`` = per family."""
    metric: str = "cosine"
    """``cosine`` on L2-normalised features (fast-reid, OSKT) or ``euclidean``: squared distance on the raw
    features (torchreid's default ``dist_metric``)."""
    flip: bool = False
    """Flip test-time augmentation: the feature is the mean of the image's and its mirror image's (fast-reid
    ``TEST.FLIP``)."""
    aqe: bool = False
    """alpha-weighted average query expansion of query and gallery features (fast-reid ``TEST.AQE``)."""
    aqe_k: int = 5
    """AQE: neighbours averaged, the image itself included."""
    aqe_alpha: float = 3.0
    """AQE: exponent of the cosine-similarity weights."""
    rerank: bool = False
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017; torchreid ``rerank``, fast-reid ``TEST.RERANK``)."""
    rerank_k1: int = 20
    """Re-ranking: size of the k-reciprocal neighbourhood."""
    rerank_k2: int = 6
    """Re-ranking: neighbours of the local query expansion (1 = none)."""
    rerank_lambda: float = 0.3
    """Re-ranking: weight of the original distance in the final one (0..1)."""
    cuhk03_metric: bool = False
    """CUHK03 "classic" single-gallery-shot CMC (torchreid ``use_metric_cuhk03``): one gallery image per identity
    drawn at random, ``cuhk03_repeats`` times; mAP / mINP stay the standard ones. Only for the old 20-split
    protocol; CUHK03-NP uses the Market rule (BASELINES.md §3.1)."""
    cuhk03_repeats: int = 10
    """Random draws of the single-gallery-shot CMC (torchreid: 10; seeded, so results repeat)."""

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "eval.batch_size", self.batch_size, "an integer >= 1")
        _check(self.query_chunk >= 1, "eval.query_chunk", self.query_chunk, "an integer >= 1")
        _check(self.max_rank >= 1, "eval.max_rank", self.max_rank, "an integer >= 1")
        _check(self.neck_feat in ("auto", "after", "before"), "eval.neck_feat", self.neck_feat, "auto|after|before")
        _check(self.metric in ("cosine", "euclidean"), "eval.metric", self.metric, "cosine|euclidean")
        _check(self.aqe_k >= 1, "eval.aqe_k", self.aqe_k, "an integer >= 1")
        _check(self.aqe_alpha >= 0, "eval.aqe_alpha", self.aqe_alpha, "a number >= 0")
        _check(self.rerank_k1 >= 1, "eval.rerank_k1", self.rerank_k1, "an integer >= 1")
        _check(self.rerank_k2 >= 1, "eval.rerank_k2", self.rerank_k2, "an integer >= 1")
        _check(0.0 <= self.rerank_lambda <= 1.0, "eval.rerank_lambda", self.rerank_lambda, "a number in [0, 1]")
        _check(self.cuhk03_repeats >= 1, "eval.cuhk03_repeats", self.cuhk03_repeats, "an integer >= 1")


# --------------------------------------------------------------------------------------------------- infra


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    uri: str = "sqlite:///mlruns.db"
    """MLflow tracking URI (SQLite file by default, ``http://host:5000`` for a server);
    the ``MLFLOW_TRACKING_URI`` environment variable wins when set."""
    experiment: str = "oskt"
    artifact_location: str | None = None
    """Where new experiments store artifacts (a folder or ``s3://``); None = MLflow's default."""
    log_checkpoints: bool = True


@dataclass(frozen=True)
class ComputeConfig:
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; anything else is a ConfigError
    when the config loads (not after the data)."""
    out_dir: str = "outputs"
    """Root of all outputs (teachers, chains, students, report); local folder or ``s3://``."""
    ray_address: str | None = None
    """None = a local Ray; ``auto``, ``host:6379`` or ``ray://host:10001`` for a cluster
    (the ``RAY_ADDRESS`` environment variable wins when set)."""
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    num_threads: int = 0
    """torch intra-op threads of every command and stage process; 0 = the CPUs this process may use (affinity,
    cgroup quota) minus those other processes keep busy when it starts, or all of them when ``OMP_WAIT_POLICY=PASSIVE``
    was exported (``oskt.runtime.configure_process``: torch's default of one spinning OpenMP thread per core made the
    quick teacher 5-20x slower on a busy host, BENCHMARKS.md ``contention``). Ray cells use their CPU count."""
    deterministic: bool = False
    """Reproducible mode (issue #19: one seed's figures move with the host's CPU kernels, AVX2 vs AVX-512).
    ``oskt.runtime.configure_process`` then sets ``torch.use_deterministic_algorithms(True, warn_only=True)``, cuDNN
    deterministic without benchmarking, and pins the math libraries' code paths to AVX2 through the environment
    (``MKL_CBWR=AVX2,STRICT``, ``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``,
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8``; values already in the environment win). Those libraries read the variables
    at their first kernel call, not when torch is imported, so the CLI / stage entry sets them right after loading
    the config, before any tensor work, and no re-exec is needed; a process that already ran kernels gets a
    ConfigError. The thread count is then never load- or host-dependent (the sum order changes with it): 1 unless
    ``num_threads`` is set; set the same value on every host. Cost: 0.60 of the normal images/s on an AVX-512 host
    (BENCHMARKS.md ``deterministic``)."""
    max_retries: int = 2
    """Retries of a grid cell whose worker died."""
    engine: str = "prefect"
    """How the student grid runs: ``prefect`` (a Prefect flow mapping the cells onto Ray), ``ray`` (plain Ray
    tasks) or ``serial`` (one after another in the stage process)."""
    ray_num_cpus: int = 0
    """CPUs of a local Ray (0 = every CPU this process may use); ignored with a cluster address."""
    reuse_from: tuple[str, ...] = ()
    """Other output roots (folders or ``s3://``) whose finished teacher and chain jobs this run uses when its own
    ``out_dir`` has none and the job key is the same: a run into another folder starts from their work instead of
    retraining it (``quick_long`` into ``outputs/long`` from ``quick``'s teacher and chains; every ablation from the
    main run's). Only the finished job's ``result.json`` is copied here; it names the files where they are, and
    nothing in those roots is written. Cells are never taken from them (a grid's cells are its own)."""

    def __post_init__(self) -> None:
        index = self.device[len("cuda:") :] if self.device.startswith("cuda:") else ""
        _check(
            self.device in ("auto", "cpu", "cuda", "mps") or (index.isascii() and index.isdigit()),
            "compute.device",
            self.device,
            "'auto', 'cpu', 'cuda', 'cuda:N' (N = 0, 1, ...) or 'mps'",
        )
        _check(self.num_threads >= 0, "compute.num_threads", self.num_threads, "an integer >= 0 (0 = automatic)")
        _check(self.cpus_per_task > 0, "compute.cpus_per_task", self.cpus_per_task, "a number > 0")
        _check(self.gpus_per_task >= 0, "compute.gpus_per_task", self.gpus_per_task, "a number >= 0")
        _check(self.max_retries >= 0, "compute.max_retries", self.max_retries, "an integer >= 0")
        _check(self.engine in ENGINES, "compute.engine", self.engine, f"one of {ENGINES}")
        _check(self.ray_num_cpus >= 0, "compute.ray_num_cpus", self.ray_num_cpus, "an integer >= 0 (0 = all)")
        for root in self.reuse_from:
            _check(
                isinstance(root, str) and bool(root.strip()) and root.rstrip("/") != self.out_dir.rstrip("/"),
                "compute.reuse_from",
                root,
                "a list of other output roots (folders or s3:// URLs), none of them compute.out_dir",
            )


@dataclass(frozen=True)
class Config:
    profile: str = "paper"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)
    students: StudentsConfig = field(default_factory=StudentsConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def __post_init__(self) -> None:
        _check(self.profile in PROFILES, "profile", self.profile, f"one of {PROFILES}")
        names = set(self.data.datasets)
        for src, tgt in self.students.pairs():
            _check(
                src in self.data.sources,
                "students.scenarios",
                f"{src}->{tgt}",
                f"a source listed in data.sources {list(self.data.sources)}",
            )
            _check(tgt in names, "students.scenarios", f"{src}->{tgt}", f"a target in data.datasets {sorted(names)}")
        self._check_widths()

    def _check_widths(self) -> None:
        """Every student must be expandable from some chain and no wider than the teacher (SPEC §3.3)."""
        from oskt.models.spec import check_students  # late import: spec parsing lives with the models

        arch = self.students.arch or self.teacher.arch
        if arch == self.teacher.arch:
            check_students(self.teacher.name, self.teacher.arch, self.chain.widths, self.students.names)
        else:  # distilled from a teacher of another family: each student within its own family's teacher
            check_students("T", arch, (), self.students.names)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def flat(self) -> dict[str, Any]:
        """``{"train.lr": 0.00035, ...}``: the resolved config flattened (for MLflow params)."""
        out: dict[str, Any] = {}

        def walk(prefix: str, obj: Any) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = obj

        walk("", self.to_dict())
        return out


# --------------------------------------------------------------------------------------------------- loading


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [_to_plain(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of names to {_type_name(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {[f.name for f in dataclasses.fields(tp)]}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Turn a YAML value into ``tp`` or raise a ConfigError naming ``key``."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(tp)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(tp)}")
        return tuple(_coerce(get_args(tp)[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(tp)}")
        return {str(k): _coerce(get_args(tp)[1], v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3.5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"unsupported config field type {tp} at {key}")
    raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(tp)}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}={data!r} has the wrong type: expected {_type_name(cls)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(
                f"unknown key {where!r}; valid keys{' of ' + prefix if prefix else ''}: {', '.join(names)}"
            )
    kwargs = {k: _coerce(hints[k], v, f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        # section validators name their own keys; bare field names get the section prefix
        if prefix and not msg.startswith(prefix) and "." not in msg.split("=", 1)[0]:
            msg = f"{prefix}.{msg}"
        raise ConfigError(msg) from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge mappings; lists and scalars in ``over`` replace. ``datasets`` entries merge per name."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"override key {dotted!r} is not a dotted key like train.lr")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def _apply(tree: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    for text in overrides:
        key, value = parse_override(text)
        _set(tree, key, value)
    return tree


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-3"`` -> ``("train.lr", 0.001)``; the value is parsed as YAML (lists: ``[0,1,2]``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.lr=3.5e-4")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from None
    return key.strip(), value


def read_profile(name: str) -> dict[str, Any]:
    """The raw mapping of a shipped profile."""
    if name not in PROFILES:
        raise ConfigError(f"profile={name!r} is not allowed: expected one of {PROFILES}")
    text = resources.files("oskt.profiles").joinpath(f"{name}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    data["profile"] = name
    return data


def read_params(path: str) -> dict[str, Any]:
    """Read a params file (local or URL), with errors naming the file."""
    from oskt import io

    try:
        text = io.read_bytes(path).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"params file {path!r} does not exist") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"params file {path!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(
    params: str | None = None,
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Config:
    """Resolve the configuration: defaults < profile < params file < overrides.

    Args:
        params: a ``params.yaml`` path (local or URL); its ``profile`` key picks the profile unless ``profile``
            is given.
        profile: profile name; None = the params file's, else ``quick``.
        overrides: ``key=value`` strings (``--set``), applied last.
    """
    file_data = read_params(params) if params else {}
    name = profile or file_data.get("profile") or "quick"
    tree = _merge(read_profile(name), {k: v for k, v in file_data.items() if k != "profile"})
    tree["profile"] = name
    return _build(Config, _apply(tree, overrides), "")


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what ``oskt config show`` prints and every output folder holds)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def write_resolved(cfg: Config, folder: str, name: str = "config.yaml") -> str:
    """Write the resolved config next to an output (atomically); returns the file path."""
    from oskt import io

    path = io.join(folder, name)
    io.write_text_atomic(path, dump_config(cfg))
    return path


def with_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """``cfg`` with ``key=value`` overrides applied (checked like ``--set``)."""
    return _build(Config, _apply(cfg.to_dict(), overrides), "")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from its ``to_dict()`` form (e.g. from a checkpoint)."""
    return _build(Config, data, "")
