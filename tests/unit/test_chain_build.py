"""Chain building (SPEC.md §2), refinement model and loss (§4.1), chain checkpoints."""

from __future__ import annotations

import pytest
import torch

from oskt.chain import RefineModel, WeightChain, build_chain, expand, load_chain, save_chain
from oskt.chain.cluster import random_labels, ward_labels
from oskt.errors import CheckpointError, SpecError
from oskt.models import ModelSpec, build_model

RES_T = ModelSpec(arch="resnet50", in_planes=8, multipliers=(2, 4, 8), img_size=(64, 32))
VIT_T = ModelSpec(arch="vit_small", dim=48, img_size=(32, 16), drop_path=0.0)
CASES = {"resnet": (RES_T, 4), "vit": (VIT_T, 24)}


@pytest.fixture(scope="module")
def built() -> dict[str, tuple[torch.nn.Module, WeightChain]]:
    torch.manual_seed(0)
    out = {}
    for fam, (spec, width) in CASES.items():
        teacher = build_model(spec, 5)
        out[fam] = (teacher, build_chain(teacher, width))
    return out


def test_ward_recovers_duplicated_rows_in_sklearn_numbering() -> None:
    import numpy as np
    from sklearn.cluster import AgglomerativeClustering

    base = np.random.default_rng(0).normal(size=(4, 10))
    rows = base[[2, 0, 1, 2, 3, 0, 1, 3, 3]]
    labels = ward_labels(rows, 4)
    same = [[0, 3], [1, 5], [2, 6], [4, 7, 8]]  # the duplicated rows, found again
    assert all(len(set(labels[g].tolist())) == 1 for g in same) and len(set(labels.tolist())) == 4
    # numbered as scikit-learn returns them (SPEC.md §2.1, issue #19), not by first member
    assert labels.tolist() == AgglomerativeClustering(n_clusters=4).fit_predict(rows).tolist()
    assert ward_labels(rows, 1).tolist() == [0] * 9
    assert ward_labels(rows, 9).tolist() == AgglomerativeClustering(n_clusters=9).fit_predict(rows).tolist()


def test_build_chain_keeps_sklearn_numbering(built) -> None:
    """Every partition's labels are scikit-learn's own output on the coupled rows (ties in expansion follow that
    numbering, SPEC.md §3.1); at least one partition is numbered otherwise than by first member, so the check
    could fail."""
    import numpy as np
    from sklearn.cluster import AgglomerativeClustering

    from oskt.chain.cluster import row_features

    teacher, chain = built["resnet"]
    params = dict(teacher.backbone.named_parameters())
    not_first_member = 0
    for p in chain.plan.parts:
        feats = row_features([(params[r.param], r.repeat) for r in chain.plan.rows if r.out == p.name], "euclidean")
        want = AgglomerativeClustering(n_clusters=chain.num_clusters(p.name)).fit_predict(feats)
        got = chain.label(p.name).numpy()
        assert np.array_equal(got, want), p.name
        _, first = np.unique(got, return_index=True)
        not_first_member += bool((np.diff(first) < 0).any())
    assert not_first_member > 0


def test_random_labels_nonempty_and_seeded() -> None:
    import numpy as np

    a = random_labels(50, 20, np.random.default_rng(3))
    assert set(a.tolist()) == set(range(20))
    assert a.tolist() == random_labels(50, 20, np.random.default_rng(3)).tolist()


@pytest.mark.parametrize("family", list(CASES))
def test_chain_rows_are_cluster_means(built, family: str) -> None:
    teacher, chain = built[family]
    params = dict(teacher.backbone.named_parameters())
    assert chain.chain_spec == teacher.spec.chain_spec(chain.width)
    assert chain.metric == ("euclidean" if family == "resnet" else "cosine")
    for r in chain.plan.rows:
        c, w = chain.gene(r.param), params[r.param]
        m = chain.num_clusters(r.out)
        assert c.shape == (r.repeat * m, *w.shape[1:])  # columns stay at teacher width (SPEC.md §1)
        idx = chain.row_labels(r.out, r.repeat)
        g = int(idx[0])
        torch.testing.assert_close(c[g], w[idx == g].mean(0))
    # stream labels are shared by every coupled layer; qkv clusters never mix heads
    if family == "vit":
        lab = chain.label("blocks.0.attn.qkv")
        hd, mh = VIT_T.dim // 6, chain.width // 6
        for h in range(6):
            assert set(lab[h * hd : (h + 1) * hd].tolist()) == set(range(h * mh, (h + 1) * mh))


def test_random_init_and_metric_options() -> None:
    teacher = build_model(RES_T, 3)
    a = build_chain(teacher, 4, init="random", seed=1)
    b = build_chain(teacher, 4, init="random", seed=1)
    c = build_chain(teacher, 4, metric="cosine")
    assert all(torch.equal(a.label(p.name), b.label(p.name)) for p in a.plan.parts)
    assert c.metric == "cosine" and a.init == "random"
    with pytest.raises(SpecError, match="metric"):
        build_chain(teacher, 4, metric="manhattan")
    with pytest.raises(SpecError, match="does not fit"):
        build_chain(teacher, 16)


@pytest.mark.parametrize("family", list(CASES))
def test_refine_model_gradients_and_loss(built, family: str) -> None:
    teacher, chain = built[family]
    rm = RefineModel(teacher, chain, 7)
    rm.train()
    x = torch.randn(4, 3, *teacher.spec.img_size)
    t_out, s_out = rm(x)
    assert t_out.logits.shape == (4, 5) and s_out.logits.shape == (4, 7)
    assert s_out.feat.shape == (4, chain.chain_spec.feat_dim)
    loss = rm.refining_loss()
    # the refining loss is the plain sum of squared row differences (SPEC.md §4.1)
    params = dict(teacher.backbone.named_parameters())
    manual = sum(
        ((params[r.param] - chain.gene(r.param)[chain.row_labels(r.out, r.repeat)]) ** 2).sum() for r in chain.plan.rows
    )
    manual = manual + sum(((params[v.param] - chain.gene(v.param)) ** 2).sum() for v in chain.plan.vectors if v.gene)
    torch.testing.assert_close(loss, manual)
    (t_out.logits.sum() + s_out.logits.sum() + s_out.feat.sum() + t_out.feat.sum() + loss).backward()
    missing = [n for n, p in rm.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in rm.parameters() if p.grad is not None)
    # the S-Student's backbone is not a parameter of its own: it is the chain
    assert not any(n.startswith("student.backbone.") for n, _ in rm.named_parameters())
    if family == "resnet":  # BN gamma of the S-Student is tied to the teacher's (SPEC.md §2.4)
        assert teacher.backbone.layer2[1].bn2.weight.grad is not None
    teacher.zero_grad(set_to_none=True)
    chain.zero_grad(set_to_none=True)


@pytest.mark.parametrize("family", list(CASES))
def test_expansion_at_chain_width_equals_s_student(built, family: str) -> None:
    teacher, chain = built[family]
    rm = RefineModel(teacher, chain, 3)
    with torch.no_grad():
        ref = rm.student_params()
    student = expand(chain, chain.chain_spec, 3)
    sd = student.state_dict()
    # (ViT proj bias: expansion takes the teacher's, the S-Student the gene, SPEC.md §3.2; equal right after init)
    # bitwise: expansion's whole-cluster column sums are the S-Student's (``materialise.column_sums``, issue #19)
    for k, v in ref.items():
        assert torch.equal(sd[k].contiguous().view(torch.int32), v.contiguous().view(torch.int32)), k
    x = torch.randn(2, 3, *teacher.spec.img_size)
    rm.eval()
    student.eval()
    with torch.no_grad():
        _, s_feat = rm(x)
        student.head.load_state_dict(rm.student.head.state_dict())
        torch.testing.assert_close(student(x), s_feat, rtol=1e-5, atol=1e-5)
        # the S-Student view (evaluated after refinement) is that same network, with the chain's spec
        view = rm.s_student()
        assert view.spec == chain.chain_spec
        torch.testing.assert_close(view(x), s_feat)
        other = "before" if view.neck_feat == "after" else "after"
        view.neck_feat = other  # what evaluate() sets: the S-Student's own attribute
        assert rm.student.neck_feat == other
        torch.testing.assert_close(view(x), rm.student_forward(x))


def test_chain_checkpoint_round_trip(tmp_path, built) -> None:
    teacher, chain = built["vit"]
    path = save_chain(str(tmp_path / "chain.pt"), chain, config={"k": 1})
    again = load_chain(path)
    assert again.width == chain.width and again.teacher_spec == chain.teacher_spec
    for k, v in chain.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    x = torch.randn(2, 3, *VIT_T.img_size)
    a, b = expand(chain, VIT_T.chain_spec(36), 4).eval(), expand(again, VIT_T.chain_spec(36), 4).eval()
    b.head.load_state_dict(a.head.state_dict())
    assert torch.equal(a(x), b(x))
    torch.save({"x": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError):
        load_chain(str(tmp_path / "foreign.pt"))


def test_resnet_stage_stream_is_clustered_jointly_on_concatenated_rows(built) -> None:
    """SPEC.md §2.2: per stage, the downsample conv and every block's conv3 write one residual stream, so they share
    one label vector, from Ward on the horizontal concatenation of their rows (downsample first, then conv3 of
    block 0, 1, ...), Euclidean on raw rows for the CNN."""
    import numpy as np

    from oskt.models.resnet import BLOCKS

    teacher, chain = built["resnet"]
    params = dict(teacher.backbone.named_parameters())
    for stage, blocks in enumerate(BLOCKS, 1):
        names = [f"layer{stage}.0.downsample.0.weight"] + [f"layer{stage}.{b}.conv3.weight" for b in range(blocks)]
        assert {r.out for r in chain.plan.rows if r.param in names} == {f"layer{stage}"}
        assert sum(r.param in names for r in chain.plan.rows) == len(names)
        w = [params[n].detach().double() for n in names]
        feats = torch.cat([x.reshape(x.shape[0], -1) for x in w], 1).numpy()
        expected = ward_labels(feats, chain.num_clusters(f"layer{stage}"))
        assert np.array_equal(chain.label(f"layer{stage}").numpy(), expected), stage
