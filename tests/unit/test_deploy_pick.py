"""``oskt.deploy.pick``: the width grid, budgets, the latency binary search, and the written checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from oskt.chain import WeightChain, build_chain, save_chain
from oskt.deploy.pick import Budget, parse_count, pick_spec, pick_to_file, rank_candidates, width_grid
from oskt.errors import ConfigError, SpecError
from oskt.eval.complexity import count_macs, count_params, spec_macs, spec_params
from oskt.models import ModelSpec, build_model, load_model

TEACHER = ModelSpec(arch="resnet50", in_planes=16, multipliers=(2, 4, 8), img_size=(64, 32))  # r16-2-4-8
VIT_T = ModelSpec(arch="vit_small", dim=48, img_size=(32, 16), drop_path=0.0)


@pytest.fixture(scope="module")
def chain_path(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, WeightChain]:
    torch.manual_seed(0)
    chain = build_chain(build_model(TEACHER, 5), 8)
    path = str(tmp_path_factory.mktemp("chain") / "chain8.pt")
    save_chain(path, chain)
    return path, chain


def test_grid_lies_between_chain_and_teacher() -> None:
    grid = width_grid(TEACHER, [8])
    lo = TEACHER.chain_spec(8)
    assert len(grid) == len(set(grid)) == 3 * 5 * 9 + 2 * 3 * 5  # w=8: m in [2,4]x[4,8]x[8,16]; w=16: [1,2]x[2,4]x[4,8]
    assert all(lo.fits_within(s) and s.fits_within(TEACHER) for s in grid)
    assert lo in grid and TEACHER in grid
    assert all(s.img_size == TEACHER.img_size and s.last_stride == TEACHER.last_stride for s in grid)
    vit = width_grid(VIT_T, [24])
    assert [s.dim for s in vit] == [24, 30, 36, 42, 48]


def test_ranking_order_and_tie_break() -> None:
    cands = rank_candidates(width_grid(TEACHER, [8]))
    assert [c.params for c in cands] == sorted(c.params for c in cands)
    for a, b in zip(cands, cands[1:], strict=False):
        if a.params == b.params:
            assert a.macs >= b.macs  # equal size: the cheaper one ranks wider


@pytest.mark.parametrize("budget", [Budget(max_params=4e5), Budget(max_macs=8e6), Budget(max_params=6e5, max_macs=7e6)])
def test_pick_is_the_widest_fitting_candidate(budget: Budget) -> None:
    res = pick_spec(TEACHER, [8], budget)
    best = res.candidate
    assert best.params == spec_params(best.spec) and best.macs == spec_macs(best.spec)
    assert (budget.max_params or math.inf) >= best.params and (budget.max_macs or math.inf) >= best.macs
    # exhaustive check on the small grid: nothing with more parameters fits
    for s in width_grid(TEACHER, [8]):
        p, m = spec_params(s), spec_macs(s)
        if p <= (budget.max_params or math.inf) and m <= (budget.max_macs or math.inf):
            assert (p, -m) <= (best.params, -best.macs)
    assert res.num_timed == 0 and res.chain_width == 8 and res.num_candidates == 165


def test_macs_counted_at_the_given_size_and_last_stride() -> None:
    res = pick_spec(TEACHER, [8], Budget(max_macs=7e6), input_size=(64, 32), last_stride=2)
    assert res.candidate.macs == spec_macs(res.candidate.spec, (64, 32), 2) <= 7e6
    assert res.last_stride == 2 and res.candidate.spec.last_stride == TEACHER.last_stride  # counting only


def test_impossible_budgets_name_the_smallest_figure() -> None:
    smallest = spec_params(TEACHER.chain_spec(8))
    with pytest.raises(SpecError, match=rf"smallest achievable is {smallest / 1e6:.3f}M params"):
        pick_spec(TEACHER, [8], Budget(max_params=smallest - 1))
    macs = spec_macs(TEACHER.chain_spec(8))
    with pytest.raises(SpecError, match=rf"smallest achievable is .* {macs / 1e6:.3f}M MACs"):
        pick_spec(TEACHER, [8], Budget(max_macs=1000))
    with pytest.raises(SpecError, match=r"smallest candidate S1 \[8, 8, 16, 32, 64\] .* takes 7\.000 ms"):
        pick_spec(TEACHER, [8], Budget(max_latency_ms=1.0), latency_fn=lambda s: 7.0)
    with pytest.raises(ConfigError, match="no budget"):
        Budget()
    with pytest.raises(ConfigError, match="not a count"):
        parse_count("lots")
    assert parse_count("1.5M") == 1.5e6 and parse_count("0.3G") == 3e8 and parse_count("2500k") == 2.5e6


def test_latency_binary_search_times_few_models() -> None:
    timed: list[ModelSpec] = []

    def fake(spec: ModelSpec) -> float:  # monotone in params: 1 ms per 100k parameters
        timed.append(spec)
        return spec_params(spec) / 1e5

    budget = Budget(max_params=1e6, max_latency_ms=5.0)
    res = pick_spec(TEACHER, [8], budget, latency_fn=fake)
    within = [c for c in rank_candidates(width_grid(TEACHER, [8])) if c.params <= 1e6]
    expected = [c for c in within if c.params / 1e5 <= 5.0][-1]
    assert res.candidate.spec == expected.spec and res.candidate.latency_ms == pytest.approx(expected.params / 1e5)
    assert res.num_within == len(within)
    assert res.num_timed == len(set(timed)) <= math.ceil(math.log2(len(within))) + 2


def test_real_latency_on_cpu_is_measured() -> None:
    budget = Budget(max_params=spec_params(VIT_T.chain_spec(30)), max_latency_ms=1e4, device="cpu")
    res = pick_spec(VIT_T, [24], budget)
    assert res.candidate.spec.dim == 30 and res.candidate.latency_ms > 0 and res.num_timed == 2


def test_pick_writes_a_reloadable_student(chain_path: tuple[str, WeightChain], tmp_path: Path) -> None:
    path, chain = chain_path
    out = str(tmp_path / "student.pt")
    res = pick_to_file([path], out, Budget(max_params=5e5))
    model, ckpt = load_model(out, kind="student")
    assert model.spec == res.candidate.spec and ckpt["extra"]["pick"]["spec"] == res.candidate.spec.name
    assert count_params(model) == res.candidate.params <= 5e5
    assert count_macs(model, None) == res.candidate.macs
    model.eval()
    assert model(torch.randn(2, 3, 64, 32)).shape == (2, model.spec.feat_dim)
