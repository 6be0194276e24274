"""Which teacher tensors a weight chain covers and how they are coupled (SPEC.md §2.2, §2.3, §3.2).

A *partition* is a set of ``N`` teacher channels clustered into ``M`` chain rows (one label vector). A *row layer*
is a weight whose output rows belong to a partition (``repeat`` = 3 for a fused qkv: q, k and v rows share the
labels) and whose input columns belong to another partition (``inp``, summed on expansion) or are not reduced
(``inp=None``: RGB input, the ViT ``dw`` input). A *vector* is a per-channel parameter (BN / LN affine, bias)
averaged over each student channel's group. *Shared* tensors (ViT patch embedding, tokens, positions) stay at
teacher width. Names are relative to ``ReIDModel.backbone``.
"""

from __future__ import annotations

from dataclasses import dataclass

from oskt.models.resnet import BLOCKS
from oskt.models.spec import ModelSpec
from oskt.models.vit import DEPTH


@dataclass(frozen=True)
class Part:
    """A clustered channel set. ``heads > 1``: clustered and allocated per head (ViT qkv, SPEC.md §2.3)."""

    name: str
    kind: str  # resnet: stem | stream | conv1 | conv2 ; vit: stream | qkv | fc1
    stage: int = 0
    heads: int = 1

    def width(self, spec: ModelSpec) -> int:
        """This partition's width in the model ``spec`` names."""
        if spec.family == "resnet":
            if self.kind == "stem":
                return spec.in_planes
            planes = spec.planes[self.stage - 1]
            return 4 * planes if self.kind == "stream" else planes
        return 4 * spec.dim if self.kind == "fc1" else spec.dim


@dataclass(frozen=True)
class RowLayer:
    """A clustered weight: rows in ``out`` (× ``repeat``), columns in ``inp`` (None = kept at full width)."""

    param: str
    out: str
    inp: str | None
    repeat: int = 1


@dataclass(frozen=True)
class Vector:
    """A per-channel vector of partition ``part`` (× ``repeat``).

    ``gene``: the chain holds a full-width trainable copy (ViT LN / bias genes, SPEC.md §2.4) that the S-Student
    uses and the refining loss pulls to the teacher's; otherwise (CNN BN) the S-Student uses the teacher's own
    (tied) values. ``expand_from_teacher``: expansion averages the teacher's refined value instead of the gene (the
    ViT ``attn.proj`` bias quirk, SPEC.md §3.2; CNN BN).
    """

    param: str
    part: str
    repeat: int = 1
    gene: bool = False
    expand_from_teacher: bool = True


@dataclass(frozen=True)
class Plan:
    family: str
    parts: tuple[Part, ...]
    rows: tuple[RowLayer, ...]
    vectors: tuple[Vector, ...]
    shared: tuple[str, ...] = ()
    bn_buffers: tuple[Vector, ...] = ()

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)


def _resnet_plan() -> Plan:
    parts = [Part("stem", "stem")]
    rows = [RowLayer("conv1.weight", "stem", None)]
    vecs = [Vector(f"bn1.{a}", "stem") for a in ("weight", "bias")]
    prev = "stem"
    for s, n in enumerate(BLOCKS, start=1):
        stream = f"layer{s}"
        parts.append(Part(stream, "stream", s))
        for b in range(n):
            blk = f"layer{s}.{b}"
            parts += [Part(f"{blk}.conv1", "conv1", s), Part(f"{blk}.conv2", "conv2", s)]
            # SPEC.md §3.2 wiring: block 0 reads the previous stream, later blocks the current one
            rows += [
                RowLayer(f"{blk}.conv1.weight", f"{blk}.conv1", prev if b == 0 else stream),
                RowLayer(f"{blk}.conv2.weight", f"{blk}.conv2", f"{blk}.conv1"),
                RowLayer(f"{blk}.conv3.weight", stream, f"{blk}.conv2"),
            ]
            for i, part in ((1, f"{blk}.conv1"), (2, f"{blk}.conv2"), (3, stream)):
                vecs += [Vector(f"{blk}.bn{i}.{a}", part) for a in ("weight", "bias")]
            if b == 0:
                rows.append(RowLayer(f"{blk}.downsample.0.weight", stream, prev))
                vecs += [Vector(f"{blk}.downsample.1.{a}", stream) for a in ("weight", "bias")]
        prev = stream
    bn = tuple(
        Vector(v.param.rsplit(".", 1)[0] + f".{b}", v.part)
        for v in vecs
        if v.param.endswith("weight")
        for b in ("running_mean", "running_var")
    )
    return Plan("resnet", tuple(parts), tuple(rows), tuple(vecs), (), bn)


def _vit_plan(heads: int) -> Plan:
    parts = [Part("stream", "stream")]
    rows = [RowLayer("dw.weight", "stream", None)]
    vecs: list[Vector] = []
    for i in range(DEPTH):
        blk = f"blocks.{i}"
        qkv, fc1 = f"{blk}.attn.qkv", f"{blk}.mlp.fc1"
        parts += [Part(qkv, "qkv", heads=heads), Part(fc1, "fc1")]
        rows += [
            RowLayer(f"{qkv}.weight", qkv, "stream", repeat=3),
            RowLayer(f"{blk}.attn.proj.weight", "stream", qkv),  # proj columns follow the v / head groups
            RowLayer(f"{fc1}.weight", fc1, "stream"),
            RowLayer(f"{blk}.mlp.fc2.weight", "stream", fc1),
        ]
        vecs += [
            Vector(f"{blk}.norm1.weight", "stream", gene=True, expand_from_teacher=False),
            Vector(f"{blk}.norm1.bias", "stream", gene=True, expand_from_teacher=False),
            Vector(f"{qkv}.bias", qkv, repeat=3, gene=True, expand_from_teacher=False),
            Vector(f"{blk}.attn.proj.bias", "stream", gene=True, expand_from_teacher=True),  # SPEC.md §3.2 quirk
            Vector(f"{blk}.norm2.weight", "stream", gene=True, expand_from_teacher=False),
            Vector(f"{blk}.norm2.bias", "stream", gene=True, expand_from_teacher=False),
            Vector(f"{fc1}.bias", fc1, gene=True, expand_from_teacher=False),
            Vector(f"{blk}.mlp.fc2.bias", "stream", gene=True, expand_from_teacher=False),
        ]
    vecs += [Vector(f"norm.{a}", "stream", gene=True, expand_from_teacher=False) for a in ("weight", "bias")]
    shared = ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "part_tokens", "token_pos", "pos_embed")
    return Plan("vit", tuple(parts), tuple(rows), tuple(vecs), shared)


def make_plan(spec: ModelSpec) -> Plan:
    """The chain plan of a teacher spec's family."""
    return _resnet_plan() if spec.family == "resnet" else _vit_plan(spec.num_heads)
