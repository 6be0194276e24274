"""Every init method (oskt, scratch, wtsel, kdpp, depgraph, ofa, rsd) gives the spec's exact architecture (SPEC.md
§5.1).

A reduced ResNet teacher (r32-2-4-8, chains 8 / 16, students S1..S4) and a ViT-S teacher (chain 120, students 120 /
168 and a plain-stem 120) keep this fast; the full-size parameter-count equality (teacher T, chains 8 / 16 / 32,
S1..S6) is the ``slow`` test at the end.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from oskt.baselines import INIT_METHODS, InitContext, InitResult, init_student
from oskt.chain import build_chain, expand, load_chain, save_chain
from oskt.config import BaselinesConfig, WTSelConfig
from oskt.errors import ConfigError, OsktError, SpecError
from oskt.models import ModelSpec, build_model, count_params, load_model, parse_spec, save_model
from oskt.train.distill import OFALoss, RSDLoss
from oskt.train.kd import KDPPLoss

METHODS = ("oskt", "scratch", "wtsel", "kdpp", "depgraph", "ofa", "rsd")
AUX = {"kdpp": KDPPLoss, "ofa": OFALoss, "rsd": RSDLoss}
RES_SIZE = (64, 32)
VIT_SIZE = (32, 16)
RES_T = ModelSpec(arch="resnet50", in_planes=32, multipliers=(2, 4, 8), img_size=RES_SIZE)
VIT_T = ModelSpec(arch="vit_small", img_size=VIT_SIZE, drop_path=0.0)
TEACHER_CLASSES = 7
NUM_CLASSES = 5


def _classes(method: str) -> int:
    """OFA distils logits: its student classifies the teacher's identities; the others get a target's."""
    return TEACHER_CLASSES if method == "ofa" else NUM_CLASSES


RES_STUDENTS = {n: parse_spec(n, img_size=RES_SIZE) for n in ("S1", "S2", "S3", "S4")}
RES_CHAIN_OF = {"S1": 8, "S2": 8, "S3": 16, "S4": 16}  # widest chain whose S-Student fits every layer
VIT_STUDENTS = {
    "S1": parse_spec("S1", "vit_small", img_size=VIT_SIZE, drop_path=0.0),
    "S2": parse_spec("S2", "vit_small", img_size=VIT_SIZE, drop_path=0.0),
    "S1plain": parse_spec("S1", "vit_small", img_size=VIT_SIZE, drop_path=0.0, vit_stem="plain"),
}


def _randomise_bn_stats(model: torch.nn.Module) -> None:
    """A 'trained-looking' teacher: BN running statistics away from 0 / 1, so selection / pruning is visible."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _make_family(tmp: Path, spec: ModelSpec, widths: tuple[int, ...]) -> dict:
    torch.manual_seed(0)
    teacher = build_model(spec, TEACHER_CLASSES)
    with torch.no_grad():
        _randomise_bn_stats(teacher)
    teacher_ckpt = save_model(str(tmp / "teacher.pt"), teacher, "teacher")
    # random-assignment chains (a valid chain, no Ward clustering): the layout does not depend on the clusters
    chains = tuple(save_chain(str(tmp / f"chain{w}.pt"), build_chain(teacher, w, init="random")) for w in widths)
    return {"teacher": teacher, "teacher_ckpt": teacher_ckpt, "chains": chains}


def _loader_factory(size: tuple[int, int]):  # noqa: ANN202 - a zero-argument loader factory
    def factory() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(2)
        pids = torch.arange(TEACHER_CLASSES).repeat(2)
        return [
            (torch.randn(7, 3, *size, generator=g), pids[i : i + 7], torch.zeros(7, dtype=torch.long)) for i in (0, 7)
        ]

    return factory


@pytest.fixture(scope="module", autouse=True)
def _one_thread():  # noqa: ANN202 - a generator fixture
    """One intra-op thread: the tensors are tiny and the 2 shared cores are busy (oversubscription spins)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("baselines")
    (tmp / "res").mkdir()
    (tmp / "vit").mkdir()
    out = {"resnet": _make_family(tmp / "res", RES_T, (8, 16)), "vit": _make_family(tmp / "vit", VIT_T, (120,))}
    for fam, size in (("resnet", RES_SIZE), ("vit", VIT_SIZE)):
        f = out[fam]
        f["ctx"] = InitContext(
            teacher_ckpt=f["teacher_ckpt"],
            chain_ckpts=f["chains"],
            source_loader_factory=_loader_factory(size),
            example_input_size=size,
        )
    return out


@pytest.fixture(scope="module")
def init_cached(families):  # noqa: ANN201 - (method, family, student name) -> InitResult, each computed once
    cache: dict[tuple[str, str, str], InitResult] = {}
    students = {"resnet": RES_STUDENTS, "vit": VIT_STUDENTS}

    def get(method: str, family: str, name: str) -> InitResult:
        key = (method, family, name)
        if key not in cache:
            cache[key] = INIT_METHODS.get(method)(families[family]["ctx"], students[family][name], _classes(method))
        return cache[key]

    return get


def _check_student(result: InitResult, spec: ModelSpec, size: tuple[int, int]) -> None:
    num_classes = _classes(result.info["method"])
    with torch.device("meta"):
        ref = build_model(spec, num_classes)
    model = result.model
    assert isinstance(result, InitResult) and model.spec == spec
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert have == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert count_params(model) == count_params(ref)
    # same trainable set (the BNNeck bias stays frozen, BoT)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {
        n: p.requires_grad for n, p in ref.named_parameters()
    }
    assert model.training and model.num_classes == num_classes
    x = torch.randn(4, 3, *size)
    model = copy.deepcopy(model)  # a training-mode forward updates BN running statistics of the cached result
    with torch.no_grad():
        logits, feat = model(x)
        assert logits.shape == (4, num_classes) and feat.shape == (4, spec.feat_dim)
        assert torch.isfinite(logits).all() and torch.isfinite(feat).all()
        model.eval()
        assert torch.isfinite(model(x)).all()
        model.train()
    assert result.info["method"] in METHODS and result.info["seconds"] >= 0


def test_registry_holds_the_seven_methods() -> None:
    from oskt.config import METHODS as CONFIG_METHODS

    assert INIT_METHODS.names() == sorted(METHODS) == sorted(CONFIG_METHODS)
    with pytest.raises(OsktError, match="known: depgraph, kdpp, ofa, oskt, rsd, scratch, wtsel"):
        INIT_METHODS.get("lottery")


@pytest.mark.parametrize("method", METHODS)
def test_resnet_students_have_the_spec_architecture(init_cached, method: str) -> None:
    for name, spec in RES_STUDENTS.items():
        result = init_cached(method, "resnet", name)
        _check_student(result, spec, RES_SIZE)
        assert (result.aux is not None) == (method in AUX)
        if method in AUX:
            assert isinstance(result.aux, AUX[method])
        if method == "oskt":
            assert result.info["chain_width"] == RES_CHAIN_OF[name]


@pytest.mark.parametrize("method", METHODS)
def test_vit_students_have_the_spec_architecture(init_cached, method: str) -> None:
    for name, spec in VIT_STUDENTS.items():
        result = init_cached(method, "vit", name)
        _check_student(result, spec, VIT_SIZE)
        if method == "oskt":
            assert result.info["chain_width"] == 120


@pytest.mark.parametrize("method", METHODS)
def test_student_wider_than_the_teacher_is_a_spec_error(families, method: str) -> None:
    wide = parse_spec("S6", img_size=RES_SIZE)  # stem 64 > the reduced teacher's 32
    with pytest.raises(SpecError, match="wider|fit"):
        INIT_METHODS.get(method)(families["resnet"]["ctx"], wide, _classes(method))


def test_student_narrower_than_every_chain_is_a_spec_error(families) -> None:
    narrow = parse_spec("r4-2-4-8", img_size=RES_SIZE)
    with pytest.raises(SpecError, match="narrower than every chain"):
        init_student("oskt", families["resnet"]["ctx"], narrow, NUM_CLASSES)
    vit_narrow = parse_spec("vit96", "vit_small", img_size=VIT_SIZE, drop_path=0.0)
    with pytest.raises(SpecError, match="narrower than every chain"):
        init_student("oskt", families["vit"]["ctx"], vit_narrow, NUM_CLASSES)


@pytest.mark.parametrize("method", ["wtsel", "kdpp", "depgraph", "oskt", "ofa", "rsd"])
def test_missing_inputs_are_config_errors(method: str) -> None:
    with pytest.raises(ConfigError, match="teacher_ckpt|chain_ckpts"):
        init_student(method, InitContext(), RES_STUDENTS["S1"], NUM_CLASSES)


def test_scratch_is_build_model_and_seeded_privately(families) -> None:
    spec = RES_STUDENTS["S2"]
    torch.manual_seed(3)
    got = init_student("scratch", families["resnet"]["ctx"], spec, NUM_CLASSES).model.state_dict()
    torch.manual_seed(3)
    want = build_model(spec, NUM_CLASSES).state_dict()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v)
    seeded = dataclasses.replace(families["resnet"]["ctx"], seed=11)
    state = torch.random.get_rng_state()
    a = init_student("scratch", seeded, spec, NUM_CLASSES).model.state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG stream is untouched
    b = init_student("scratch", seeded, spec, NUM_CLASSES).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_oskt_is_the_expanded_chain(families, init_cached) -> None:
    f = families["resnet"]
    spec = RES_STUDENTS["S4"]
    got = init_cached("oskt", "resnet", "S4").model.backbone.state_dict()
    want = expand(load_chain(f["chains"][1]), spec, NUM_CLASSES).backbone.state_dict()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v)


def test_wtsel_selects_teacher_weights_and_bn_stats(families, init_cached) -> None:
    t = families["resnet"]["teacher"].state_dict()
    result = init_cached("wtsel", "resnet", "S1")  # 32 -> 8: stride 4 everywhere
    s = result.model.state_dict()
    torch.testing.assert_close(s["backbone.conv1.weight"], t["backbone.conv1.weight"][::4])
    torch.testing.assert_close(s["backbone.layer2.1.conv1.weight"], t["backbone.layer2.1.conv1.weight"][::4, ::4])
    torch.testing.assert_close(s["backbone.layer4.0.bn3.running_var"], t["backbone.layer4.0.bn3.running_var"][::4])
    torch.testing.assert_close(s["head.bnneck.0.running_mean"], t["head.bnneck.0.running_mean"][::4])
    assert s["head.classifier.weight"].std() < 0.01  # fresh BoT classifier N(0, 0.001)


def test_wtsel_qkv_option_changes_only_qkv(families, init_cached) -> None:
    f = families["vit"]
    spec = VIT_STUDENTS["S1"]
    official = init_cached("wtsel", "vit", "S1")
    aware_ctx = dataclasses.replace(f["ctx"], baselines=BaselinesConfig(wtsel=WTSelConfig(qkv_aware=True)))
    aware = init_student("wtsel", aware_ctx, spec, NUM_CLASSES)
    assert not official.info["qkv_aware"] and aware.info["qkv_aware"]
    a, b = official.model.state_dict(), aware.model.state_dict()
    t = f["teacher"].state_dict()
    for k in a:
        if k.startswith("head.classifier"):
            continue
        if k.endswith(".attn.qkv.weight"):
            assert not torch.equal(a[k], b[k])  # 384 -> 120 is not an integer ratio
        else:
            torch.testing.assert_close(a[k], b[k])
    rows = torch.round(torch.linspace(0, 383, 120)).long()
    k_rows = t["backbone.blocks.0.attn.qkv.weight"][384:768][rows][:, rows]
    torch.testing.assert_close(b["backbone.blocks.0.attn.qkv.weight"][120:240], k_rows)


def test_depgraph_keeps_pruned_bn_stats_and_fresh_head(init_cached) -> None:
    result = init_cached("depgraph", "resnet", "S3")
    s = result.model.state_dict()
    assert not torch.equal(s["backbone.bn1.running_var"], torch.ones_like(s["backbone.bn1.running_var"]))
    assert torch.equal(s["head.bnneck.0.running_var"], torch.ones_like(s["head.bnneck.0.running_var"]))


def test_kdpp_builds_the_kdpp_loss_with_source_centres(families) -> None:
    f = families["resnet"]
    spec = RES_STUDENTS["S1"]
    result = init_student("kdpp", f["ctx"], spec, TEACHER_CLASSES)
    aux = result.aux
    assert isinstance(aux, KDPPLoss) and result.info["centres"] == "source_loader"
    assert aux.centres.shape == (TEACHER_CLASSES, RES_T.feat_dim)
    assert not aux.teacher.training and not any(p.requires_grad for p in aux.teacher.parameters())
    x, pids, _ = _loader_factory(RES_SIZE)()[0]
    out = result.model(x)
    parts = aux(x, pids, out, epoch=10)
    assert set(parts) == {"kd", "nd"} and all(torch.isfinite(v) for v in parts.values())
    sum(parts.values()).backward()
    assert any(p.grad is not None for p in result.model.parameters())
    deferred = init_student("kdpp", dataclasses.replace(f["ctx"], source_loader_factory=None), spec, NUM_CLASSES)
    assert deferred.info["centres"] == "deferred" and deferred.aux.centres.numel() == 0


def test_cli_init_student_writes_a_student_checkpoint(families, tmp_path: Path) -> None:
    from oskt.cli import main

    f = families["resnet"]
    out = tmp_path / "student.pt"
    argv = [
        "init-student",
        "--method",
        "oskt",
        "--teacher",
        f["teacher_ckpt"],
        "--student",
        "S3",
        "--num-classes",
        str(NUM_CLASSES),
        "-o",
        str(out),
        "--profile",
        "smoke",
    ]
    for c in f["chains"]:
        argv += ["--chain", c]
    assert main(argv) == 0
    model, ckpt = load_model(str(out), kind="student")
    assert model.spec == RES_STUDENTS["S3"] and model.num_classes == NUM_CLASSES
    assert ckpt["extra"]["method"] == "oskt" and ckpt["extra"]["info"]["chain_width"] == 16
    assert main([*argv[:6], "S6", *argv[7:]]) == 2  # wider than the teacher: one-line error, exit 2


@pytest.mark.slow
def test_full_size_resnet_param_counts_are_equal_for_every_method(tmp_path: Path) -> None:
    teacher_spec = ModelSpec(arch="resnet50", img_size=RES_SIZE)
    f = _make_family(tmp_path, teacher_spec, (8, 16, 32))
    ctx = InitContext(teacher_ckpt=f["teacher_ckpt"], chain_ckpts=f["chains"], example_input_size=RES_SIZE)
    # one expanded student and one at a chain's width (S1-S6 at full size: the paper rehearsal, make rehearse)
    for name in ("S2", "S5"):
        spec = parse_spec(name, img_size=RES_SIZE)
        want = count_params(build_model(spec, NUM_CLASSES))
        for method in METHODS:
            if method == "ofa":  # the teacher's classes: another head size, same backbone
                continue
            result = init_student(method, ctx, spec, NUM_CLASSES)
            assert count_params(result.model) == want, (name, method)


def test_context_from_config() -> None:
    from oskt.config import load_config

    cfg = load_config(profile="smoke")
    ctx = InitContext.from_config(cfg, teacher_ckpt="t.pt", chain_ckpts=["c8.pt", "c16.pt"], seed=4)
    assert ctx.baselines == cfg.baselines and ctx.chain_ckpts == ("c8.pt", "c16.pt")
    assert ctx.example_input_size == (cfg.data.height, cfg.data.width) and ctx.seed == 4
    assert ctx.finetune_epochs == cfg.students.epochs  # KD++ clips its warm-up to the fine-tune
    distil = InitContext.from_config(cfg, teacher_ckpt="t.pt", finetune_epochs=7)
    assert distil.finetune_epochs == 7
    with pytest.raises(ConfigError, match="finetune_epochs=0"):
        InitContext(finetune_epochs=0)
