"""Cross-architecture cells: a ViT teacher distilled into a ResNet student and back (docs/methods.md).

The distillation methods (``kdpp``, ``ofa``, ``rsd``) and ``scratch`` take a teacher of another family; ``oskt``,
``wtsel`` and ``depgraph`` refuse it with the reason. A cell trains a few optimiser steps of the student's ReID loss
plus the method's aux on one tiny batch (the student at 64×32, a ViT teacher at its own 32×16: the aux resizes) and
its loss goes down.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oskt.baselines import INIT_METHODS, InitContext, init_student, same_arch_reason
from oskt.chain import build_chain, save_chain
from oskt.config import TrainConfig
from oskt.errors import SpecError
from oskt.models import build_model, parse_spec, save_model
from oskt.train.distill import OFALoss, RSDLoss
from oskt.train.kd import KDPPLoss
from oskt.train.losses import ReIDLoss

CLASSES = 4
RES_SIZE = (64, 32)
VIT_SIZE = (32, 16)
VIT_TEACHER = parse_spec("vit48", "vit_small", img_size=VIT_SIZE, drop_path=0.0)
RES_TEACHER = parse_spec("r8-2-2-2", img_size=RES_SIZE)
RES_STUDENT = parse_spec("r4-2-2-2", img_size=RES_SIZE)
VIT_STUDENT = parse_spec("vit24", "vit_small", img_size=VIT_SIZE, drop_path=0.0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():  # noqa: ANN202 - a generator fixture
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batch(size: tuple[int, int], n_per_id: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    pids = torch.arange(CLASSES).repeat_interleave(n_per_id)
    # identity-dependent images, so the teacher's features and logits carry something to distil
    base = torch.randn(CLASSES, 3, *size, generator=g)
    return base[pids] + 0.3 * torch.randn(len(pids), 3, *size, generator=g), pids


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("xfam")
    out = {}
    for name, spec in (("vit", VIT_TEACHER), ("resnet", RES_TEACHER)):
        torch.manual_seed(1)
        out[name] = save_model(str(tmp / f"{name}.pt"), build_model(spec, CLASSES), "teacher")
    torch.manual_seed(2)
    vit = build_model(VIT_TEACHER, CLASSES)
    out["vit_chain"] = save_chain(str(tmp / "vit_chain.pt"), build_chain(vit, 24, init="random"))
    return out


def _source_loader() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    x, pids = _batch(RES_SIZE)  # KD++'s class centres: the teacher sees these resized to its own size
    return [(x, pids, torch.zeros_like(pids))]


def _ctx(teachers: dict[str, str], family: str, **kw: object) -> InitContext:
    return InitContext(
        teacher_ckpt=teachers[family], seed=3, finetune_epochs=4, source_loader_factory=_source_loader, **kw
    )


def _train(result, spec, steps: int = 8) -> tuple[list[float], list[float]]:  # noqa: ANN001
    """A few Adam steps of ReID loss + aux on one batch; returns the aux and total losses per step."""
    model, aux = result.model, result.aux
    if hasattr(aux, "attach"):
        aux.attach(model)  # what finetune_student does right after loading the student
    aux.prepare([], torch.device("cpu"))
    reid = ReIDLoss(TrainConfig(center_weight=0.0), CLASSES, spec.feat_dim)
    params = [p for p in [*model.parameters(), *aux.parameters()] if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    x, pids = _batch(tuple(spec.img_size))
    aux_hist, total_hist = [], []
    for step in range(steps):
        out = model(x)
        parts = aux(x, pids, out, epoch=3)  # past the KD++ warm-up
        aux_total = sum(parts.values())
        total = reid(out, pids)["total"] + aux_total
        opt.zero_grad()
        total.backward()
        opt.step()
        aux_hist.append(aux_total.item())
        total_hist.append(total.item())
        assert all(torch.isfinite(v) for v in parts.values()), (step, parts)
    return aux_hist, total_hist


@pytest.mark.parametrize(
    ("method", "teacher", "spec", "loss_type"),
    [
        ("ofa", "vit", RES_STUDENT, OFALoss),
        ("rsd", "vit", RES_STUDENT, RSDLoss),
        ("kdpp", "vit", RES_STUDENT, KDPPLoss),
        ("ofa", "resnet", VIT_STUDENT, OFALoss),
        ("rsd", "resnet", VIT_STUDENT, RSDLoss),
    ],
)
def test_cross_family_cell_trains_and_lowers_its_loss(teachers, method, teacher, spec, loss_type) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    result = init_student(method, _ctx(teachers, teacher), spec, CLASSES)
    assert isinstance(result.aux, loss_type) and result.model.spec == spec
    assert result.info["teacher_arch"] != spec.arch
    t_params = [p.detach().clone() for p in result.aux.teacher.parameters()]
    aux_hist, total_hist = _train(result, spec)
    assert aux_hist[-1] < aux_hist[0], aux_hist
    assert total_hist[-1] < total_hist[0], total_hist
    # the teacher is frozen: never trained, never in the aux's state (only the projectors are checkpointed)
    assert all(torch.equal(a, b) for a, b in zip(t_params, result.aux.teacher.parameters(), strict=True))
    assert not any(k.startswith(("teacher", "_teacher")) for k in result.aux.state_dict())


def test_methods_that_copy_teacher_weights_refuse_another_family(teachers) -> None:  # noqa: ANN001
    ctx = _ctx(teachers, "vit", chain_ckpts=(teachers["vit_chain"],), example_input_size=VIT_SIZE)
    for method in ("oskt", "wtsel", "depgraph"):
        reason = same_arch_reason(method)
        assert reason
        with pytest.raises(SpecError, match="different architectures") as e:
            init_student(method, ctx, RES_STUDENT, CLASSES)
        assert reason in str(e.value) and "vit_small" in str(e.value) and "resnet50" in str(e.value)
    for method in ("scratch", "kdpp", "ofa", "rsd"):
        assert same_arch_reason(method) is None
    # another family constrains nothing: a ResNet student of any width
    wide = parse_spec("S6", img_size=RES_SIZE)
    assert init_student("scratch", ctx, wide, CLASSES).model.spec == wide
    assert set(INIT_METHODS.names()) >= {"ofa", "rsd"}


def test_same_family_distillation_still_needs_a_fitting_student(teachers) -> None:  # noqa: ANN001
    wide = parse_spec("r16-2-2-2", img_size=RES_SIZE)  # wider than the r8 teacher
    for method in ("ofa", "rsd", "kdpp", "scratch"):
        with pytest.raises(SpecError, match="does not fit"):
            init_student(method, _ctx(teachers, "resnet"), wide, CLASSES)


def test_ofa_init_rejects_other_identities(teachers) -> None:  # noqa: ANN001
    from oskt.errors import ConfigError

    with pytest.raises(ConfigError, match="teacher's 4 identities, got num_classes=6"):
        init_student("ofa", _ctx(teachers, "vit"), RES_STUDENT, 6)
    # RSD needs no shared identities (embeddings only): a target data set with other ids is fine
    assert init_student("rsd", _ctx(teachers, "vit"), RES_STUDENT, 6).model.num_classes == 6


def test_cli_ofa_with_other_identities_is_one_error_line(teachers, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "student.pt"
    before = sorted(p.name for p in tmp_path.iterdir())
    cmd = [sys.executable, "-m", "oskt", "init-student", "--method", "ofa", "--teacher", teachers["resnet"]]
    cmd += ["--student", "r4-2-2-2", "--num-classes", "9", "-o", str(out), "--profile", "smoke"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("oskt: error:"), proc.stderr
    assert "teacher's 4 identities" in lines[0] and "num_classes=9" in lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_rsd_writes_a_student(teachers, tmp_path: Path) -> None:  # noqa: ANN001
    from oskt.cli import main
    from oskt.models import load_model

    out = tmp_path / "student.pt"
    argv = ["init-student", "--method", "rsd", "--teacher", teachers["resnet"], "--student", "r4-2-2-2"]
    argv += ["--num-classes", "6", "-o", str(out), "--profile", "smoke"]
    assert main(argv) == 0
    model, ckpt = load_model(str(out), kind="student")
    assert model.spec.name == "r4-2-2-2" and ckpt["extra"]["aux"] == "RSDLoss"
    assert ckpt["extra"]["info"]["method"] == "rsd"


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env
