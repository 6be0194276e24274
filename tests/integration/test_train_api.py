"""The three training entry points on a tiny synthetic set (32×16 inputs, teacher r8-2-4-8, chain 4)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from oskt import io
from oskt.checkpoint import load_checkpoint
from oskt.config import Config, load_config
from oskt.jobs import RunOptions
from oskt.pipeline.graph import chain_job, finetune_job, teacher_job
from oskt.tracking import MemoryTracker

pytestmark = pytest.mark.slow


def tiny_config(root: str, *extra: str) -> Config:
    """The smoke profile, shrunk: r8-2-4-8 teacher, chain 4; batches of all 12 ids × 4 (2 per epoch), so that a few
    steps visibly lower the loss."""
    return load_config(
        profile="smoke",
        overrides=[
            f"data.root={root}",
            "data.sources=[synth_a]",
            "teacher.name=r8-2-4-8",
            "chain.widths=[4]",
            "students.names=[r4-2-4-8]",
            "students.scenarios=[synth_a->synth_a]",
            "teacher.epochs=4",
            "chain.epochs=3",
            "students.epochs=3",
            "train.max_iters_per_epoch=2",
            "train.ids_per_batch=12",
            "train.images_per_id=4",
            "train.lr=2e-3",
            "train.progress=false",
            "compute.device=cpu",
            "eval.batch_size=64",
            *extra,
        ],
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread():  # noqa: ANN202 - tiny models on a shared 2-core machine: intra-op threads only oversubscribe
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    from oskt.data import make_synthetic

    base = tmp_path_factory.mktemp("train_data")
    cfg = tiny_config(str(base))
    make_synthetic(io.join(str(base), cfg.data.datasets["synth_a"].path), cfg.data.synthetic, "a")
    return str(base)


CPU = RunOptions(device="cpu")


def tjob(cfg: Config):  # noqa: ANN201
    return teacher_job(cfg, "synth_a")


def cjob(cfg: Config, teacher_ckpt: str, width: int = 4):  # noqa: ANN201
    """The chain job of a teacher checkpoint given by hand (as ``oskt train chain``)."""
    from oskt.data.refs import dataset_ref
    from oskt.jobs import checkpoint_identity

    return chain_job(cfg, checkpoint_identity(teacher_ckpt), width, dataset_ref("synth_a", cfg.data))


def fjob(cfg: Config, init: str, seed: int = 0, few_shot: float = 1.0):  # noqa: ANN201
    from oskt.jobs import checkpoint_identity

    return finetune_job(cfg, "synth_a", upstream=checkpoint_identity(init), seed=seed, few_shot=few_shot)


@pytest.fixture(scope="module")
def teacher_run(root: str, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from oskt.train import train_teacher

    out = str(tmp_path_factory.mktemp("teacher"))
    tracker = MemoryTracker()
    return train_teacher(tjob(tiny_config(root)), out, run=CPU, tracker=tracker), out, tracker


def _went_down(history: list[dict[str, float]]) -> None:
    assert len(history) >= 2
    assert history[-1]["loss"] < history[0]["loss"], [h["loss"] for h in history]


def _fixed_batch_loss(cfg: Config, ckpt: str) -> float:
    """ID + triplet loss of a checkpoint on a fixed, un-augmented batch of training images (robust to the noise of
    a few P×K mini-batches)."""
    from oskt.data import build_test_loader, load_dataset
    from oskt.models import load_model
    from oskt.train.losses import cross_entropy_ls, triplet_loss

    ds = load_dataset("synth_a", cfg.data)
    images, pids, _ = next(iter(build_test_loader(ds.train, cfg.data.input, 48, "resnet")))
    model, _ = load_model(ckpt)
    model.train()
    with torch.no_grad():
        logits, feat = model(images)
        return float(cross_entropy_ls(logits, pids, 0.1) + triplet_loss(feat, pids, 0.3, 0.2))


def test_train_teacher_writes_its_folder_and_learns(root: str, teacher_run) -> None:  # noqa: ANN001
    result, out, tracker = teacher_run
    _went_down(result.history)
    assert result.checkpoint == os.path.join(out, "teacher.pt")
    assert load_checkpoint(result.checkpoint, kind="teacher")["spec"]["in_planes"] == 8
    for name in ("job.json", "result.json", "history.json"):
        assert os.path.exists(os.path.join(out, name)), name
    assert not os.path.exists(os.path.join(out, "last.pt"))
    rec = io.read_json(os.path.join(out, "result.json"))
    m = rec["metrics"]
    assert 0.0 <= m["mAP"] <= 1.0 and 0.0 <= m["rank1"] <= 1.0 and m["epochs"] == 4 and m["seconds"] > 0
    assert rec["key"] == tjob(tiny_config(root)).key and rec["kind"] == "teacher"
    assert rec["files"] == {"checkpoint": result.checkpoint} and rec["job"]["recipe"]["lr"] == 2e-3
    # tracker: the job's fields once, one batched log_metrics per epoch (+ the final one); nothing uploaded
    assert tracker.params["recipe.lr"] == 2e-3 and tracker.params["model.in_planes"] == 8
    epochs = [s for s, m in tracker.metrics if "teacher/loss" in m]
    assert epochs == [1, 2, 3, 4]
    assert {"teacher/lr", "teacher/images_per_s", "teacher/loss_tri"} <= set(tracker.metrics[0][1])
    assert tracker.artifacts == []  # the caller (a pipeline stage) uploads what it wants


def test_finished_run_returns_at_once(root: str, teacher_run) -> None:  # noqa: ANN001
    from oskt.train import train_teacher

    result, out, _ = teacher_run
    before = os.path.getmtime(result.checkpoint)
    tracker = MemoryTracker()
    again = train_teacher(tjob(tiny_config(root)), out, run=CPU, tracker=tracker)
    assert again.checkpoint == result.checkpoint and os.path.getmtime(result.checkpoint) == before
    assert again.metrics["mAP"] == pytest.approx(result.metrics["mAP"]) and len(again.history) == 4
    assert tracker.metrics == []


def test_refine_chain_then_finetune_students(root: str, teacher_run, tmp_path) -> None:  # noqa: ANN001
    from oskt.chain import expand, load_chain
    from oskt.models import load_model, save_model
    from oskt.models.spec import parse_spec
    from oskt.train import KDPPLoss, finetune_student, refine_chain

    cfg = tiny_config(root)
    teacher_ckpt = teacher_run[0].checkpoint
    res = refine_chain(cjob(cfg, teacher_ckpt), teacher_ckpt, str(tmp_path / "chain"), run=CPU)
    _went_down(res.history)
    assert {"loss_t_id", "loss_s_tri", "loss_refine"} <= set(res.history[0])
    assert res.checkpoint == str(tmp_path / "chain" / "chain.pt")
    assert {"mAP", "s_mAP", "s_rank1"} <= set(res.metrics) and 0.0 <= res.metrics["s_mAP"] <= 1.0
    chain = load_chain(res.checkpoint)
    refined, _ = load_model(str(tmp_path / "chain" / "teacher_refined.pt"), kind="teacher")
    original, _ = load_model(teacher_ckpt)
    assert not torch.equal(refined.backbone.conv1.weight, original.backbone.conv1.weight)  # refined jointly
    # the chain snapshot was taken from the final teacher
    for n in chain.snapshot_names():
        torch.testing.assert_close(chain.snapshot.get(n), refined.backbone.state_dict()[n])

    spec = parse_spec("r4-2-4-8", "resnet50", img_size=(32, 16))
    num_classes = original.num_classes
    init = str(tmp_path / "init.pt")
    save_model(init, expand(chain, spec, num_classes), "student")
    st = finetune_student(fjob(cfg, init), init, str(tmp_path / "student"), run=CPU)
    before = _fixed_batch_loss(cfg, init)
    assert _fixed_batch_loss(cfg, st.checkpoint) < before
    assert load_checkpoint(st.checkpoint, kind="student")["extra"]["seed"] == 0

    aux = KDPPLoss(refined, cfg.baselines.kdpp, spec.feat_dim, refined.spec.feat_dim)
    proj0 = aux.projector[2].weight.detach().clone()
    kd = finetune_student(fjob(cfg, init), init, str(tmp_path / "kdpp"), run=CPU, aux=aux)
    assert _fixed_batch_loss(cfg, kd.checkpoint) < before
    assert {"loss_aux_kd", "loss_aux_nd"} <= set(kd.history[0])
    assert not torch.equal(aux.projector[2].weight, proj0)  # the projector is optimised too

    one = tiny_config(root, "students.epochs=1", "train.ids_per_batch=4")
    few = finetune_student(fjob(one, init, seed=1, few_shot=0.5), init, str(tmp_path / "few"), run=CPU)
    assert load_model(few.checkpoint)[0].num_classes < num_classes


def test_cluster_only_chain(root: str, teacher_run, tmp_path) -> None:  # noqa: ANN001
    from oskt.models import load_model
    from oskt.train import refine_chain

    ckpt = teacher_run[0].checkpoint
    res = refine_chain(cjob(tiny_config(root, "chain.epochs=0"), ckpt), ckpt, str(tmp_path), run=CPU)
    assert res.history == [] and os.path.exists(res.checkpoint)
    refined, _ = load_model(str(tmp_path / "teacher_refined.pt"))
    original, _ = load_model(teacher_run[0].checkpoint)
    for k, v in original.state_dict().items():
        assert torch.equal(v, refined.state_dict()[k]), k


def test_cli_train_teacher(root: str, tmp_path, capsys) -> None:  # noqa: ANN001
    from oskt.cli import main

    args = ["train", "teacher", "--dataset", "synth_a", "-o", str(tmp_path), "--profile", "smoke"]
    for o in (
        "teacher.epochs=1",
        "train.max_iters_per_epoch=1",
        "chain.widths=[4]",
        "teacher.name=r8-2-4-8",
        "students.names=[r4-2-4-8]",
        f"data.root={root}",
        "students.scenarios=[synth_a->synth_a]",
    ):
        args += ["--set", o]
    assert main(args) == 0
    assert os.path.exists(tmp_path / "teacher.pt") and '"mAP"' in capsys.readouterr().out
    # --val-ids: trained on the other ids, evaluated on the held-out ones; teacher.lr is the teacher's own rate
    val = tmp_path / "val"
    assert main([*args[:4], "-o", str(val), *args[6:], "--val-ids", "4", "--set", "teacher.lr=0.01"]) == 0
    meta = torch.load(val / "teacher.pt", weights_only=True)
    assert (
        meta["extra"]["dataset"] == "synth_a"
        and meta["config"]["data"]["val_ids"] == 4
        and meta["config"]["recipe"]["lr"] == 0.01
    )
    lr = [json.loads((d / "history.json").read_text())[0]["lr"] for d in (tmp_path, val)]
    train_lr = load_config(profile="smoke").train.lr
    assert lr[1] / lr[0] == pytest.approx(0.01 / train_lr)  # same schedule point, the teacher's own base rate


def test_vit_recipe_teacher_refine_student(root: str, tmp_path) -> None:  # noqa: ANN001
    """ViT recipe: SGD + cosine, soft triplet, no center loss, linear refining-weight ramp (SPEC.md §4.1-4.3)."""
    from oskt.chain import expand
    from oskt.models import save_model
    from oskt.models.spec import parse_spec
    from oskt.train import finetune_student, refine_chain, train_teacher

    cfg = load_config(
        profile="smoke_vit",
        overrides=[
            f"data.root={root}",
            "teacher.epochs=1",
            "chain.epochs=1",
            "students.epochs=1",
            "train.max_iters_per_epoch=2",
            "train.lr=0.01",
            "compute.device=cpu",
        ],
    )
    t = train_teacher(teacher_job(cfg, "synth_a"), str(tmp_path / "t"), run=CPU)
    assert "loss_center" not in t.history[0] and t.history[0]["lr"] < 0.01  # cosine (t=1 of 1), no center loss
    c = refine_chain(chain_job(cfg, teacher_job(cfg, "synth_a"), 48), t.checkpoint, str(tmp_path / "c"), run=CPU)
    assert {"loss_refine", "loss_s_tri"} <= set(c.history[0])
    from oskt.chain import load_chain

    spec = parse_spec("vit72", "vit_small", img_size=(32, 16), drop_path=0.0)
    init = str(tmp_path / "init.pt")
    save_model(init, expand(load_chain(c.checkpoint), spec, 12), "student")
    s = finetune_student(fjob(cfg, init), init, str(tmp_path / "s"), run=CPU)
    assert 0.0 <= s.metrics["mAP"] <= 1.0


class _Killed(Exception):
    pass


def test_refine_chain_resumes_exactly(root: str, teacher_run, tmp_path) -> None:  # noqa: ANN001
    from oskt.train import refine_chain

    cfg = tiny_config(root)

    def kill(epoch: int, record: dict) -> None:
        if epoch == 1:
            raise _Killed

    ckpt = teacher_run[0].checkpoint
    job = cjob(cfg, ckpt)
    full = refine_chain(job, ckpt, str(tmp_path / "full"), run=CPU)
    with pytest.raises(_Killed):
        refine_chain(job, ckpt, str(tmp_path / "cut"), run=CPU, callbacks=[kill])
    assert load_checkpoint(str(tmp_path / "cut" / "last.pt"), kind="train_state")["extra"]["epoch"] == 1
    cut = refine_chain(job, ckpt, str(tmp_path / "cut"), run=CPU)
    assert [h["loss"] for h in cut.history] == [h["loss"] for h in full.history]
    for name in ("chain.pt", "teacher_refined.pt"):
        a = load_checkpoint(str(tmp_path / "full" / name))["state_dict"]
        b = load_checkpoint(str(tmp_path / "cut" / name))["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_folder_of_another_config_is_trained_again(root: str, teacher_run, tmp_path) -> None:  # noqa: ANN001
    """A finished run or a ``last.pt`` is reused only by the job (its key) that made it: changing ``students.lr``
    and running into the same folder trains again, at the new rate, from epoch 1."""
    from oskt.chain import expand, load_chain
    from oskt.models import save_model
    from oskt.models.spec import parse_spec
    from oskt.train import finetune_student, refine_chain

    cfg = tiny_config(root)
    ckpt = teacher_run[0].checkpoint
    chain = refine_chain(cjob(cfg, ckpt), ckpt, str(tmp_path / "chain"), run=CPU)
    init = str(tmp_path / "init.pt")
    spec = parse_spec("r4-2-4-8", img_size=(cfg.data.height, cfg.data.width))
    save_model(init, expand(load_chain(chain.checkpoint), spec, 12), "student")
    out = str(tmp_path / "student")
    job = fjob(cfg, init)
    first = finetune_student(job, init, out, run=CPU)
    assert finetune_student(job, init, out, run=CPU).history == first.history  # same job: reused

    def kill(epoch: int, record: dict) -> None:
        if epoch == 1:
            raise _Killed

    faster = fjob(tiny_config(root, f"students.lr={cfg.train.lr * 4}"), init)
    assert faster.key != job.key
    with pytest.raises(_Killed):  # not the finished run of the old rate: trains, and leaves a last.pt at epoch 2
        finetune_student(faster, init, out, run=CPU, callbacks=[kill])
    assert load_checkpoint(os.path.join(out, "last.pt"), kind="train_state")["extra"]["epoch"] == 1
    # the old rate's finished run is still whole: returned as it is (and the faster job's last.pt is kept)
    assert finetune_student(job, init, out, run=CPU).history == first.history
    assert os.path.exists(os.path.join(out, "last.pt"))
    # the faster run continues its own last.pt, at 4x the rate
    done = finetune_student(faster, init, out, run=CPU)
    assert [h["lr"] for h in done.history] == pytest.approx([4 * h["lr"] for h in first.history])
    # a last.pt of another job is not continued: the old rate starts over and trains exactly like the first run
    other = str(tmp_path / "other")
    with pytest.raises(_Killed):
        finetune_student(faster, init, other, run=CPU, callbacks=[kill])
    over = finetune_student(job, init, other, run=CPU)
    assert [h["loss"] for h in over.history] == [h["loss"] for h in first.history]
