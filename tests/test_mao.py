"""``--weighting mao``: per-task gradients, each scaled per parameter by its own second moment."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from ilt_audit.audit.gate import resolve_score
from ilt_audit.errors import OptionError
from ilt_audit.training.loop import load_checkpoint, train
from ilt_audit.training.weighting import MAOWeighting

SCALE = torch.tensor([1.0, 0.5])  # (K,) one classification-like, one regression task


def _two_task_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, factor: float = 1.0):
    """(B, 2) per-instance losses of a network whose two outputs are two tasks."""
    out = model(x)  # (B, 2)
    return torch.stack([(out[:, 0] - y[:, 0]) ** 2, factor * (out[:, 1] - y[:, 1]) ** 2], dim=1)


def _model() -> nn.Module:
    """A shared hidden layer, then one output per task."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, generator=generator), torch.randn(8, 2, generator=generator)


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1)
            for p, g in zip(params, grads, strict=True)
        ]
    )


def test_the_combined_gradient_follows_the_formula_over_two_steps():
    model, (x, y) = _model(), _data()
    params = _params(model)
    p = sum(q.numel() for q in params)
    mao = MAOWeighting(SCALE, p)
    beta, eps = mao.beta, mao.eps
    v = torch.zeros(2, p)
    for step in (1, 2):
        l = _two_task_losses(model, x, y)
        g = torch.stack([_flat_grad(l[:, k].mean(), params) for k in range(2)])  # (K, P) by hand
        v = beta * v + (1 - beta) * g**2
        v_hat = v / (1 - beta**step)
        expected = (g / (v_hat.sqrt() + eps)).sum(dim=0)

        mao.backward(l, params)
        got = torch.cat([q.grad.reshape(-1) for q in params])
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(mao.v, v)
        with torch.no_grad():  # move, so that the second step's gradients differ
            for q in params:
                q -= 0.1 * q.grad
        for q in params:
            q.grad = None
    assert int(mao.step) == 2


def test_a_task_whose_loss_is_scaled_by_1000_does_not_dominate_the_update():
    def direction(factor: float) -> torch.Tensor:
        model, (x, y) = _model(), _data()
        params = _params(model)
        mao = MAOWeighting(SCALE, sum(q.numel() for q in params))
        mao.backward(_two_task_losses(model, x, y, factor), params)
        return torch.cat([q.grad.reshape(-1) for q in params])

    plain, scaled = direction(1.0), direction(1000.0)
    # each task's part of each parameter is normalised by that task's own moment: scaling a
    # task's loss leaves the combined gradient unchanged (up to ε)
    torch.testing.assert_close(plain, scaled, rtol=1e-4, atol=1e-4)
    # whereas summing the losses (the equal weighting) lets the scaled task take over: the
    # summed gradient points along the scaled task's own gradient
    model, (x, y) = _model(), _data()
    params = _params(model)
    l = _two_task_losses(model, x, y, 1000.0)
    second = _flat_grad(l[:, 1].mean(), params)
    equal = _flat_grad(l.sum(dim=1).mean(), params)
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(equal, second, dim=0) > 0.999
    assert cosine(scaled, second, dim=0) < 0.9


def test_mao_refuses_fp16(features_card, tmp_path, tiny):
    with pytest.raises(OptionError, match="--weighting mao does not support --precision fp16"):
        train(features_card, tmp_path / "run", config=tiny(weighting="mao", precision="fp16"))


def test_mao_trains_and_keeps_its_moments_in_the_checkpoint(features_card, tmp_path, tiny):
    run = tmp_path / "run"
    train(features_card, run, config=tiny(weighting="mao", epochs=2))
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["config"]["options"]["weighting"] == "mao"
    v = state["weighting"]["v"]
    assert v.shape[0] == 2 and bool((v > 0).any())
    assert int(state["weighting"]["step"]) == 2 * 5  # 40 rows, batch 8, two epochs
    frame = pd.read_parquet(run / "trajectories")
    assert frame.log_sigma2.isna().all()  # no per-instance log σ² ...
    assert frame.loss.notna().all()  # ... but the losses, to rank by
    assert resolve_score(run) == "p_wrong"  # from the evidence: no log σ² needed


def test_resumed_mao_run_equals_an_uninterrupted_one(features_card, tmp_path, tiny):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(features_card, whole, config=tiny(weighting="mao", epochs=3))
    train(features_card, split, config=tiny(weighting="mao", epochs=2))
    train(features_card, split, config=tiny(weighting="mao", epochs=3), resume=True)
    a, b = load_checkpoint(whole / "checkpoint.pt"), load_checkpoint(split / "checkpoint.pt")
    torch.testing.assert_close(a["weighting"], b["weighting"])
    torch.testing.assert_close(a["model"], b["model"])
    pd.testing.assert_frame_equal(
        pd.read_parquet(whole / "trajectories"), pd.read_parquet(split / "trajectories")
    )


def test_cli_trains_with_mao_and_ranks_by_loss(features_card, tmp_path, cli):
    run = tmp_path / "run"
    result = cli(
        "train", features_card, "--out", run, "--epochs", "2", "--weighting", "mao",
        "--device", "cpu", "--batch-size", "8",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    result = cli("rank", run, "--by", "loss", "--top", "3", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    ranked = result.stdout.strip().splitlines()
    assert ranked[0].startswith("rank,id,task,score")
    assert len(ranked) == 1 + 2 * 3  # two tasks, three each
    result = cli("rank", run, "--by", "final")
    assert result.exit_code == 2
    assert "--weighting mao, which has no per-instance log σ²; rank it with --by loss" in (
        result.err
    )


def test_mao_under_torchrun_averages_each_tasks_gradient_over_the_ranks(tmp_path):
    from conftest import FLIPPED, SHIFTED, write_features_dataset
    from test_distributed import TRAIN_OPTIONS, torchrun

    from ilt_audit.audit.ranking import rank

    card = write_features_dataset(tmp_path / "data", n=60, flip=FLIPPED, shift=SHIFTED)
    run = tmp_path / "run"
    done = torchrun("train", card, "--out", run, *TRAIN_OPTIONS, "--weighting", "mao")
    assert done.returncode == 0, done.stderr
    state = load_checkpoint(run / "checkpoint.pt")
    assert int(state["weighting"]["step"]) == 20 * 4  # 30 rows a rank, batch 8, 20 epochs
    frame = pd.read_parquet(run / "trajectories")
    assert (frame.groupby("epoch").size() == 60 * 2).all()
    assert frame.query("task == 'label'").margin.notna().all()  # every rank's rows, gathered
    top = rank(run, task="label", top=len(FLIPPED) * 2, by="loss")
    assert set(FLIPPED) <= set(top.id)
