"""The one typed configuration: frozen dataclasses mirroring the sections of ``params.yaml``.

Precedence (lowest first): dataclass defaults (the authors' CNN recipe, ../shared/SPEC.md §4.3) < the named
profile (``oskt/profiles/<name>.yaml``) < the params file (``params.yaml``) < explicit ``--set a.b=c`` overrides.

Unknown keys, wrong types and impossible values raise :class:`~oskt.errors.ConfigError` naming the key, the value
and what is allowed, before any work starts. Library functions receive one section (or plain arguments), never
the whole tree and never a path to ``params.yaml``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, get_args, get_origin

import yaml

from oskt.errors import ConfigError

PROFILES = ("smoke", "quick", "paper", "smoke_vit", "quick_vit", "paper_vit")
"""Profiles shipped in ``oskt/profiles``; ``smoke`` = CI (minutes), ``quick`` = the embedded default main job
(≤15 min on 2 cores), ``paper`` = the authors' recipes for a GPU cluster; ``*_vit`` = the same for the ViT family."""

ARCHS = ("resnet50", "vit_small", "vit_base")
METHODS = ("oskt", "scratch", "wtsel", "kdpp", "depgraph")
LAYOUTS = ("synthetic", "market1501", "msmt17", "cuhk03", "folder", "csv")


# Keys that change how a run looks, not what it computes: they never invalidate a finished output.
COSMETIC_KEYS = ("data.num_workers", "train.progress", "train.log_every", "eval.batch_size", "eval.query_chunk")


# What a phase's result depends on in the config. A folder's finished run or ``last.pt`` is reused only when it was
# made with the same entries (and the same inputs: data set, teacher, init checkpoint, ...), so changing e.g.
# ``students.lr`` and running again into the same folder trains again instead of returning the old result.
PHASE_PARAMS: dict[str, tuple[str, ...]] = {
    "teacher": ("data", "teacher", "train", "eval"),
    "chain": ("data", "teacher", "chain", "train", "eval"),
    "student": (
        "data",
        "teacher",
        "chain",
        "baselines",
        "train",
        "eval",
        "students.epochs",
        "students.milestones",
        "students.lr",
    ),
}


def fingerprint(flat: dict[str, Any], keys: tuple[str, ...], extra: dict[str, Any] | None = None) -> str:
    """A short stable hash of the flattened config entries under ``keys`` (plus ``extra``).

    Args:
        flat: ``Config.flat()``.
        keys: sections (``data``) or dotted keys (``students.epochs``) to include.
        extra: more values that identify the output (e.g. a grid cell).
    """
    picked = {
        k: v for k, v in flat.items() if any(k == p or k.startswith(p + ".") for p in keys) and k not in COSMETIC_KEYS
    }
    blob = json.dumps({"params": picked, "extra": extra or {}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
    num_workers: int = 4
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

    def __post_init__(self) -> None:
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
    """KD++ (feature norm & direction regularised KD); ../shared/BASELINES.md §1.3."""

    temperature: float = 4.0
    kd_weight: float = 1.0
    nd_weight: float = 1.0
    warmup_epochs: int = 5
    """Epochs over which the KD weight ramps linearly from 0 to ``kd_weight``."""
    epochs: int = 0
    """Cross-scenario: distillation epochs on the *source* set before fine-tuning on the target
    (0 = distil during the target fine-tune itself, on target images, with the source teacher)."""


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


# --------------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe shared by teacher, refinement and student fine-tuning (epochs live per phase)."""

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
    log_every: int = 20
    """Log step metrics every N iterations."""
    max_iters_per_epoch: int = 0
    """Cap on iterations per epoch (0 = one pass over the P×K sampler)."""
    progress: bool = True
    """Progress bars (set false for CI logs)."""

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
class EvalConfig:
    batch_size: int = 256
    query_chunk: int = 1024
    """Queries ranked at a time (bounds memory for MSMT17-sized sets)."""
    max_rank: int = 50
    neck_feat: str = "auto"
    """Retrieval feature: ``after`` BNNeck (CNN recipe), ``before`` (ViT recipe), ``auto`` = per family."""

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "eval.batch_size", self.batch_size, "an integer >= 1")
        _check(self.query_chunk >= 1, "eval.query_chunk", self.query_chunk, "an integer >= 1")
        _check(self.max_rank >= 1, "eval.max_rank", self.max_rank, "an integer >= 1")
        _check(self.neck_feat in ("auto", "after", "before"), "eval.neck_feat", self.neck_feat, "auto|after|before")


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
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    out_dir: str = "outputs"
    """Root of all outputs (teachers, chains, students, report); local folder or ``s3://``."""
    ray_address: str | None = None
    """None = a local Ray; ``auto``, ``host:6379`` or ``ray://host:10001`` for a cluster
    (the ``RAY_ADDRESS`` environment variable wins when set)."""
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    num_threads: int = 0
    """torch threads in the driver (0 = torch's default); Ray tasks use their CPU count."""
    max_retries: int = 2
    """Retries of a grid cell whose worker died."""

    def __post_init__(self) -> None:
        _check(self.cpus_per_task > 0, "compute.cpus_per_task", self.cpus_per_task, "a number > 0")
        _check(self.gpus_per_task >= 0, "compute.gpus_per_task", self.gpus_per_task, "a number >= 0")
        _check(self.max_retries >= 0, "compute.max_retries", self.max_retries, "an integer >= 0")


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

        check_students(self.teacher, self.chain, self.students)

    def phase_lr(self, phase: str) -> float:
        """Base learning rate of a training phase (``teacher``, ``chain`` or ``students``): the phase's own ``lr``
        when set; refinement falls back to the teacher's, everything to ``train.lr``."""
        own = {"teacher": self.teacher.lr, "chain": self.chain.lr, "students": self.students.lr}
        if phase not in own:
            raise ValueError(f"unknown training phase {phase!r}: expected one of {sorted(own)}")
        if own[phase] is not None:
            return own[phase]
        if phase == "chain" and self.teacher.lr is not None:
            return self.teacher.lr
        return self.train.lr

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
