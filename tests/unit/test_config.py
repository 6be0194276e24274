from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from oskt.config import (
    PROFILES,
    Config,
    config_from_dict,
    dump_config,
    load_config,
    with_overrides,
    write_resolved,
)
from oskt.errors import ConfigError


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_resolves_and_round_trips(profile: str) -> None:
    cfg = load_config(profile=profile)
    assert isinstance(cfg, Config) and cfg.profile == profile
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_precedence_defaults_profile_params_overrides(tmp_path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("profile: smoke\ntrain:\n  lr: 0.001\nstudents:\n  seeds: [0, 1]\n")
    cfg = load_config(str(params), overrides=["students.seeds=[3,4,5]", "train.weight_decay=1e-5"])
    assert cfg.profile == "smoke"
    assert cfg.train.lr == pytest.approx(1e-3)  # params file beats profile
    assert cfg.students.seeds == (3, 4, 5)  # override beats params file
    assert cfg.train.weight_decay == pytest.approx(1e-5)  # YAML-1.1 '1e-5' string coerced to float
    assert cfg.teacher.epochs == load_config(profile="smoke").teacher.epochs  # from the profile
    assert cfg.train.center_lr == Config().train.center_lr  # dataclass default


def test_explicit_profile_beats_params_profile(tmp_path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("profile: smoke\n")
    assert load_config(str(params), profile="quick").profile == "quick"


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.lrr=1", r"unknown key 'train\.lrr'; valid keys of train: optimizer, lr"),
        ("bogus.x=1", r"unknown key 'bogus'"),
        ("train.lr=abc", r"train\.lr='abc' has the wrong type: expected a number"),
        ("train.amp=3", r"train\.amp=3 has the wrong type: expected true/false"),
        ("students.seeds=1", r"students\.seeds=1 has the wrong type: expected a list of an integer"),
        ("train.lr=-1", r"train\.lr=-1\.0 is not allowed: expected a float > 0"),
        ("teacher.arch=vgg", r"teacher\.arch='vgg' is not allowed"),
        ("students.names=[S9]", r"students\.names=\['S9'\]: student 'S9' is not a ResNet name"),
        ("students.names=[S5]", None),  # the teacher width itself (quick teacher = S5 widths) is a valid student
        ("students.names=[T]", r"is wider than the teacher"),
        ("chain.widths=[64]", r"chain\.widths=\[64\]: width 64 is not narrower than the teacher"),
        ("data.datasets.synth_a.layout=foo", r"data\.datasets\.synth_a\.layout='foo' is not allowed"),
        ("students.scenarios=[synth_b->synth_a]", r"a source listed in data\.sources"),
        ("data.synthetic.height=30", r"data\.synthetic\.height=30 is not allowed"),
        ("train", r"must look like key=value"),
        ("chain.lr=0", r"chain\.lr=0\.0 is not allowed: expected null or a float > 0"),
        ("students.lr=-1", r"students\.lr=-1\.0 is not allowed"),
        ("data.val_ids=-3", r"data\.val_ids=-3 is not allowed: expected an integer >= 0"),
    ],
)
def test_bad_values_name_key_value_and_allowed(override: str, match: str | None) -> None:
    if match is None:
        load_config(profile="quick", overrides=[override])
        return
    with pytest.raises(ConfigError, match=match):
        load_config(profile="quick", overrides=[override])


def test_vit_student_width_must_divide_heads() -> None:
    with pytest.raises(ConfigError, match="not divisible by the 6 heads"):
        load_config(profile="smoke_vit", overrides=["students.names=[vit50]"])


def test_student_narrower_than_every_chain_is_rejected() -> None:
    with pytest.raises(ConfigError, match="narrower than every chain"):
        load_config(profile="quick", overrides=["students.names=[r4-2-4-8]"])


def test_bad_params_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml' is not valid YAML"):
        load_config(str(bad))
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(str(lst))


def test_write_resolved_is_readable_and_atomic(tmp_path) -> None:
    cfg = load_config(profile="smoke")
    path = write_resolved(cfg, str(tmp_path / "out"))
    assert config_from_dict(yaml.safe_load(Path(path).read_text())) == cfg
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["config.yaml"]  # no temp files left behind


def test_flat_keys() -> None:
    flat = load_config(profile="paper").flat()
    assert flat["train.lr"] == pytest.approx(3.5e-4) and flat["chain.lr"] is None
    assert flat["data.datasets.synth_b.domain"] == "b" and flat["students.milestones"] == [40, 70, 90]


def _oskt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "oskt", *args], capture_output=True, text=True, timeout=120)


def test_cli_config_show_and_errors(tmp_path) -> None:
    ok = _oskt("config", "show", "--profile", "quick")
    assert ok.returncode == 0, ok.stderr
    shown = yaml.safe_load(ok.stdout)
    assert shown["profile"] == "quick" and shown["teacher"]["arch"] == "resnet50"
    for bad, needle in [
        ("train.lrr=1", "unknown key 'train.lrr'"),
        ("train.lr=abc", "wrong type"),
        ("train.lr=-1", "not allowed"),
    ]:
        r = _oskt("config", "show", "--profile", "quick", "--set", bad)
        assert r.returncode == 2
        assert needle in r.stderr and r.stderr.count("\n") == 1  # one clear line
        assert r.stdout == ""


def test_cli_config_init_writes_full_params_and_keeps_existing(tmp_path) -> None:
    out = tmp_path / "params.yaml"
    r = _oskt("config", "init", "--profile", "smoke", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert load_config(str(out)) == load_config(profile="smoke")
    out.write_text("profile: smoke\n")
    r = _oskt("config", "init", "--profile", "quick", "-o", str(out))
    assert r.returncode == 2 and out.read_text() == "profile: smoke\n"


def test_cli_help_on_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    from oskt.cli import build_parser, main

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    assert {"train", "eval", "run", "rehearse"} <= set(sub.choices)  # the flows verbs come in by the entry point
    for verb in sub.choices:  # each verb's --help through the command's own main()
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
        assert e.value.code == 0 and "usage: oskt " + verb in capsys.readouterr().out, verb
    # and the installed command itself, once for a library verb and once for a plugged-in one
    for verb in ("--help", "run"):
        r = _oskt(*([verb] if verb == "--help" else [verb, "--help"]))
        assert r.returncode == 0 and "usage:" in r.stdout, (verb, r.stderr)


def test_with_overrides_applies_and_checks_like_set() -> None:
    from oskt.config import with_overrides

    cfg = load_config(profile="quick")
    out = with_overrides(cfg, ["chain.init=random", "students.seeds=[0,1,2]"])
    assert out.chain.init == "random" and out.students.seeds == (0, 1, 2) and out.teacher == cfg.teacher
    with pytest.raises(ConfigError, match="chain.init"):
        with_overrides(cfg, ["chain.init=nearest"])


def test_compute_num_threads_is_honoured_by_cli_commands() -> None:
    code = (
        "import argparse, torch\n"
        "from oskt.cli.common import config_from_args\n"
        "a = argparse.Namespace(params=None, profile='smoke', overrides=['compute.num_threads=1'])\n"
        "config_from_args(a)\n"
        "print(torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_phase_learning_rates_fall_back_as_documented() -> None:
    from oskt.pipeline.graph import jobs_from_config

    def rates(cfg):  # noqa: ANN001, ANN202
        g = jobs_from_config(cfg)
        return g.teachers["synth_a"].recipe.lr, g.chains[("synth_a", 8)].recipe.lr, g.cells[0].recipe.lr

    base = load_config(profile="smoke", overrides=["teacher.lr=null"])
    assert set(rates(base)) == {base.train.lr}
    t = with_overrides(base, ["teacher.lr=0.01"])  # refinement goes on training the teacher: its rate
    assert rates(t) == (0.01, 0.01, base.train.lr)
    own = with_overrides(t, ["chain.lr=0.002", "students.lr=0.003"])
    assert rates(own) == (0.01, 0.002, 0.003)


def test_sigterm_unwinds_a_command_like_ctrl_c(tmp_path) -> None:
    """A job stopped with SIGTERM runs its cleanup (finally blocks, context managers: temporary Prefect servers,
    local Ray, MLflow runs) and exits 143; an OsktError is one line and exit code 2."""
    marker = tmp_path / "cleaned"
    code = f"""
import argparse, os, signal, sys
from oskt.cli.common import run_guarded
from oskt.errors import ConfigError
def job(args):
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()
    finally:
        open({str(marker)!r}, "w").write("yes")
def bad(args):
    raise ConfigError("train.lr=-1 is not allowed")
if sys.argv[1] == "bad":
    sys.exit(run_guarded(bad, argparse.Namespace()))
sys.exit(run_guarded(job, argparse.Namespace()))
"""
    r = subprocess.run([sys.executable, "-c", code, "term"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 143 and marker.read_text() == "yes", r.stderr
    r = subprocess.run([sys.executable, "-c", code, "bad"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == "oskt: error: train.lr=-1 is not allowed"


def test_reuse_from_must_name_other_roots() -> None:
    cfg = load_config(profile="quick", overrides=["compute.reuse_from=[outputs_quick, 's3://bucket/quick']"])
    assert cfg.compute.reuse_from == ("outputs_quick", "s3://bucket/quick") and cfg.compute.out_dir == "outputs"
    with pytest.raises(ConfigError, match=r"compute.reuse_from='outputs/' is not allowed: expected a list of other"):
        load_config(profile="quick", overrides=["compute.reuse_from=[outputs/]"])
    with pytest.raises(ConfigError, match="compute.reuse_from"):
        load_config(profile="quick", overrides=["compute.reuse_from=['']"])
