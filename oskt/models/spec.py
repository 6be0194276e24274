"""``ModelSpec``: the only way to name a model (teacher, chain network or student) in this project.

A spec fixes the architecture completely (family, widths and the few structural options), so a checkpoint that
carries ``spec.to_dict()`` can always be rebuilt. Names:

* ResNet (``arch="resnet50"``): ``S1``…``S6`` and ``T`` as in SPEC.md §6.1, or explicit ``r<in_planes>-<m1>-<m2>-<m3>``
  (e.g. ``r16-2-3-4`` = Res-50-S2). Stage planes are ``in_planes × [1, m1, m2, m3]``, block outputs ×4.
* ViT (``arch="vit_small" | "vit_base"``): ``S1``, ``S2`` and ``T`` as in SPEC.md §6.2, or ``vit<dim>`` (e.g.
  ``vit144``). The head count is the teacher's; ``dim`` must be divisible by it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from oskt.errors import ConfigError, SpecError

RESNET_NAMED: dict[str, tuple[int, tuple[int, int, int]]] = {
    "S1": (8, (2, 4, 8)),
    "S2": (16, (2, 3, 4)),
    "S3": (16, (2, 4, 8)),
    "S4": (32, (2, 3, 4)),
    "S5": (32, (2, 4, 8)),
    "S6": (64, (2, 3, 4)),
    "T": (64, (2, 4, 8)),
}
VIT_ARCHS: dict[str, dict[str, Any]] = {
    "vit_small": {"dim": 384, "heads": 6, "named": {"S1": 120, "S2": 168}},
    "vit_base": {"dim": 768, "heads": 12, "named": {"S1": 264, "S2": 336}},
}
ARCHS = ("resnet50", *VIT_ARCHS)


@dataclass(frozen=True)
class ModelSpec:
    """A complete architecture description.

    Attributes:
        arch: family and teacher: ``resnet50``, ``vit_small`` or ``vit_base``.
        in_planes: ResNet stem width.
        multipliers: ResNet stage-plane multipliers of stages 2..4 (stage 1 is ×1).
        dim: ViT embedding width of the blocks (0 = the teacher's).
        last_stride: ResNet stage-4 stride.
        vit_stem: ViT students: ``teacher`` (teacher-width patch embed + ``dw`` D→S projection, the authors' code)
            or ``plain`` (everything at width S, the README table).
        img_size: input (height, width); ViT position embeddings depend on it.
        drop_path: ViT stochastic depth.
    """

    arch: str = "resnet50"
    in_planes: int = 64
    multipliers: tuple[int, int, int] = (2, 4, 8)
    dim: int = 0
    last_stride: int = 1
    vit_stem: str = "teacher"
    img_size: tuple[int, int] = (256, 128)
    drop_path: float = 0.1

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise SpecError(f"arch={self.arch!r} is not allowed: expected one of {ARCHS}")
        object.__setattr__(self, "multipliers", tuple(int(m) for m in self.multipliers))
        object.__setattr__(self, "img_size", tuple(int(s) for s in self.img_size))
        if self.family == "resnet":
            if self.in_planes < 1 or len(self.multipliers) != 3 or min(self.multipliers) < 1:
                raise SpecError(
                    f"ResNet spec in_planes={self.in_planes}, multipliers={self.multipliers}: expected "
                    "a positive stem width and three positive multipliers"
                )
        else:
            if self.dim == 0:
                object.__setattr__(self, "dim", self.teacher_dim)
            if self.dim % self.num_heads:
                raise SpecError(f"ViT dim={self.dim} is not divisible by the {self.num_heads} heads of {self.arch}")
            if self.vit_stem not in ("teacher", "plain"):
                raise SpecError(f"vit_stem={self.vit_stem!r} is not allowed: expected 'teacher' or 'plain'")
        if self.last_stride not in (1, 2):
            raise SpecError(f"last_stride={self.last_stride} is not allowed: expected 1 or 2")

    # ----------------------------------------------------------------------------------------------- structure
    @property
    def family(self) -> str:
        return "resnet" if self.arch == "resnet50" else "vit"

    @property
    def num_heads(self) -> int:
        return VIT_ARCHS[self.arch]["heads"] if self.family == "vit" else 0

    @property
    def teacher_dim(self) -> int:
        return VIT_ARCHS[self.arch]["dim"] if self.family == "vit" else 0

    @property
    def planes(self) -> tuple[int, int, int, int]:
        """ResNet bottleneck planes of the four stages (outputs are 4× these)."""
        w = self.in_planes
        return (w, w * self.multipliers[0], w * self.multipliers[1], w * self.multipliers[2])

    @property
    def feat_dim(self) -> int:
        """Dimension of the pre-BNNeck feature (ResNet: GAP of stage 4; ViT: concat(cls, mean part) = 2·dim)."""
        return 4 * self.planes[3] if self.family == "resnet" else 2 * self.dim

    def layer_widths(self) -> tuple[int, ...]:
        """Comparable width profile: ResNet (stem, planes...), ViT (dim,)."""
        return (self.in_planes, *self.planes) if self.family == "resnet" else (self.dim,)

    def teacher(self) -> ModelSpec:
        """The spec of this family's teacher, with the same structural options."""
        if self.family == "resnet":
            return dataclasses.replace(self, in_planes=64, multipliers=(2, 4, 8))
        return dataclasses.replace(self, dim=self.teacher_dim)

    @property
    def is_teacher(self) -> bool:
        return self.layer_widths() == self.teacher().layer_widths()

    def fits_within(self, other: ModelSpec) -> bool:
        """True when every layer of ``self`` is at most as wide as ``other``'s (same family)."""
        return self.arch == other.arch and all(
            a <= b for a, b in zip(self.layer_widths(), other.layer_widths(), strict=True)
        )

    def chain_spec(self, width: int) -> ModelSpec:
        """Called on a teacher spec: the S-Student of its chain of ``width`` (ResNet: stem width ``width`` with
        the teacher's multipliers, SPEC.md §2.5; ViT: embedding dim ``width``)."""
        if self.family == "resnet":
            return dataclasses.replace(self, in_planes=width)
        return dataclasses.replace(self, dim=width)

    # ----------------------------------------------------------------------------------------------- naming
    @property
    def name(self) -> str:
        """Canonical, folder-safe name: ``S3``/``T`` when it is a named model, else ``r16-2-3-4`` / ``vit144``."""
        if self.family == "resnet":
            for k, (w, m) in RESNET_NAMED.items():
                if (self.in_planes, self.multipliers) == (w, m):
                    return k
            return f"r{self.in_planes}-" + "-".join(str(m) for m in self.multipliers)
        if self.dim == self.teacher_dim:
            return "T"
        for k, d in VIT_ARCHS[self.arch]["named"].items():
            if d == self.dim:
                return k
        return f"vit{self.dim}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["multipliers"] = list(self.multipliers)
        d["img_size"] = list(self.img_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SpecError(f"model spec has unknown keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**d)


_R_RE = re.compile(r"^r(\d+)-(\d+)-(\d+)-(\d+)$")
_V_RE = re.compile(r"^vit(\d+)$")


def parse_spec(name: str, arch: str = "resnet50", **options: Any) -> ModelSpec:
    """Parse a student / teacher name for ``arch``; ``options`` are the structural ModelSpec fields.

    Accepts ``S1``…, ``T``, ``Res-50-S3``, ``ViT-S-S1``, ``r16-2-3-4`` and ``vit144`` (case-insensitive prefix).
    """
    if arch not in ARCHS:
        raise SpecError(f"arch={arch!r} is not allowed: expected one of {ARCHS}")
    raw = str(name).strip()
    key = re.sub(r"^(res-?50-|vit-[sb]-)", "", raw, flags=re.IGNORECASE)
    key = key.upper() if re.fullmatch(r"[sStT]\d?", key) else key.lower()
    if arch == "resnet50":
        if key in RESNET_NAMED:
            w, m = RESNET_NAMED[key]
            return ModelSpec(arch=arch, in_planes=w, multipliers=m, **options)
        m = _R_RE.match(key)
        if m:
            w, *mult = (int(x) for x in m.groups())
            return ModelSpec(arch=arch, in_planes=w, multipliers=tuple(mult), **options)
        raise SpecError(
            f"student {raw!r} is not a ResNet name: expected one of {list(RESNET_NAMED)} or "
            "r<in_planes>-<m1>-<m2>-<m3> such as r16-2-3-4"
        )
    info = VIT_ARCHS[arch]
    if key == "T":
        return ModelSpec(arch=arch, dim=info["dim"], **options)
    if key in info["named"]:
        return ModelSpec(arch=arch, dim=info["named"][key], **options)
    m = _V_RE.match(key)
    if m:
        return ModelSpec(arch=arch, dim=int(m.group(1)), **options)
    raise SpecError(
        f"student {raw!r} is not a {arch} name: expected one of {['T', *info['named']]} or vit<dim> such as vit144"
    )


def select_chain(
    student: ModelSpec, chain_widths: tuple[int, ...] | list[int], teacher: ModelSpec | None = None
) -> int:
    """The widest chain whose S-Student fits within ``student`` in every layer (SPEC.md §3.3).

    Raises SpecError before any work when the student is wider than the teacher or narrower than every chain.
    """
    teacher = teacher or student.teacher()
    if not student.fits_within(teacher):
        raise SpecError(
            f"student {student.name} {student.layer_widths()} is wider than the teacher "
            f"{teacher.name} {teacher.layer_widths()}"
        )
    fitting = [w for w in chain_widths if teacher.chain_spec(w).fits_within(student)]
    if not fitting:
        smallest = min(chain_widths)
        raise SpecError(
            f"student {student.name} {student.layer_widths()} is narrower than every chain "
            f"(smallest chain {smallest}: {teacher.chain_spec(smallest).layer_widths()}); "
            "add a narrower chain width or pick a wider student"
        )
    return max(fitting)


def check_students(
    teacher: str, arch: str, chain_widths: tuple[int, ...] | list[int], students: tuple[str, ...] | list[str]
) -> None:
    """Validate every student name and chain width against the teacher ``teacher`` of ``arch`` (raises ConfigError
    naming ``teacher.name`` / ``chain.widths`` / ``students.names``)."""
    try:
        probe = parse_spec(teacher, arch)
    except SpecError as e:
        raise ConfigError(f"teacher.name={teacher!r}: {e}") from None
    for w in chain_widths:
        try:
            cs = probe.chain_spec(w)
        except SpecError as e:
            raise ConfigError(f"chain.widths={list(chain_widths)}: width {w}: {e}") from None
        if not cs.fits_within(probe) or cs.is_teacher:
            raise ConfigError(
                f"chain.widths={list(chain_widths)}: width {w} is not narrower than the teacher {probe.layer_widths()}"
            )
    for n in students:
        try:
            spec = parse_spec(n, arch)
            if chain_widths:
                select_chain(spec, chain_widths, probe)
            elif not spec.fits_within(probe):
                raise SpecError(f"student {spec.name} {spec.layer_widths()} is wider than {probe.layer_widths()}")
        except SpecError as e:
            raise ConfigError(f"students.names={list(students)}: {e}") from None


def check_fits_teacher(spec: ModelSpec, teacher: ModelSpec, who: str) -> None:
    """SpecError unless ``spec`` is the teacher's arch, no wider in any layer and (ViT) at the teacher's input size
    (position embeddings are taken from the teacher)."""
    if spec.arch != teacher.arch or not spec.fits_within(teacher):
        raise SpecError(
            f"{who}: student {spec.arch} {spec.name} {spec.layer_widths()} does not fit within the "
            f"teacher {teacher.arch} {teacher.name} {teacher.layer_widths()} (same arch, no wider)"
        )
    if spec.family == "vit" and spec.img_size != teacher.img_size:
        raise SpecError(f"{who}: ViT student img_size {spec.img_size} differs from the teacher's {teacher.img_size}")
