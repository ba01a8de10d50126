"""Weightings: the paper's loss and its closed-form gradients (section 3.1), ILT, the baselines."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ilt_audit.dataset.card import TaskSpec
from ilt_audit.errors import OptionError
from ilt_audit.training.ilt_params import CLAMP, InstanceParams
from ilt_audit.training.losses import INSTANCE_LOSS, LIKELIHOOD, instance_losses, likelihood_scale
from ilt_audit.training.weighting import (
    WEIGHTINGS,
    DWAWeighting,
    EqualWeighting,
    GLSWeighting,
    ILTWeighting,
    UncertaintyWeighting,
    check_weighting,
    nll,
)

CLS, REG = 1.0, 0.5  # the factor in front of l_ik / σ²: eq. (4) and eq. (2)

TASKS = (
    TaskSpec("shape", "classification", ("shape",)),
    TaskSpec("size", "regression", ("w", "h")),
    TaskSpec("seg", "segmentation", ("mask",), classes=3),
    TaskSpec("depth", "dense-regression", ("depth",)),
)


def _losses_and_params(seed: int = 0, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    l_ik = torch.rand(n, generator=g, dtype=torch.float64) * 10  # unweighted losses ≥ 0
    s = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 8  # log σ² in [-4, 4]
    return l_ik, s


# --- the loss and its gradients, paper section 3.1 ------------------------------------------------


def test_nll_is_the_papers_loss():
    l_ik, s = _losses_and_params()
    assert torch.allclose(nll(l_ik, s, torch.tensor(CLS)), l_ik / torch.exp(s) + s)  # eq. (4)
    assert torch.allclose(nll(l_ik, s, torch.tensor(REG)), l_ik / (2 * torch.exp(s)) + s)  # eq. (2)


@pytest.mark.parametrize(
    ("scale", "closed_form"),
    [
        (CLS, lambda l_ik, s: 1 - l_ik * torch.exp(-s)),
        (REG, lambda l_ik, s: 1 - l_ik / (2 * torch.exp(s))),
    ],
    ids=["classification", "regression"],
)
def test_gradient_wrt_log_sigma2_is_the_closed_form(scale, closed_form):
    l_ik, s0 = _losses_and_params()
    s = s0.clone().requires_grad_(True)
    nll(l_ik, s, torch.tensor(scale, dtype=torch.float64)).sum().backward()
    assert torch.allclose(s.grad, closed_form(l_ik, s0))


@pytest.mark.parametrize(
    ("scale", "closed_form"),
    [
        (CLS, lambda l_ik, sigma: (2 / sigma) * (1 - l_ik / sigma**2)),  # ∂L/∂σ_cls
        (REG, lambda l_ik, sigma: (1 / sigma) * (2 - l_ik / sigma**2)),  # ∂L/∂σ_reg
    ],
    ids=["classification", "regression"],
)
def test_gradient_wrt_sigma_matches_the_paper(scale, closed_form):
    l_ik, _ = _losses_and_params()
    g = torch.Generator().manual_seed(1)
    sigma0 = torch.rand(len(l_ik), generator=g, dtype=torch.float64) * 3 + 0.2
    sigma = sigma0.clone().requires_grad_(True)
    nll(l_ik, torch.log(sigma**2), torch.tensor(scale, dtype=torch.float64)).sum().backward()
    assert torch.allclose(sigma.grad, closed_form(l_ik, sigma0))


def test_gradient_is_zero_where_the_loss_balances_log_sigma2():
    # ∂L/∂s = 0 at s = log(scale·l_ik): the optimum the ILT parameters move towards.
    l_ik = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    for scale in (CLS, REG):
        s = torch.log(scale * l_ik).requires_grad_(True)
        nll(l_ik, s, torch.tensor(scale, dtype=torch.float64)).sum().backward()
        assert torch.allclose(s.grad, torch.zeros_like(l_ik), atol=1e-12)


def test_likelihood_of_each_task_type():
    assert LIKELIHOOD == {
        "classification": "cls",
        "segmentation": "cls",
        "regression": "reg",
        "dense-regression": "reg",
        "multi-label": "cls",  # binary cross-entropy over the tags: a classification likelihood
    }
    assert likelihood_scale(TASKS).tolist() == [CLS, REG, CLS, REG]


def _outputs_and_targets(b: int = 4) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    outputs = {
        "shape": torch.randn(b, 3, generator=g),
        "size": torch.randn(b, 2, generator=g),
        "seg": torch.randn(b, 3, 5, 5, generator=g),
        "depth": torch.randn(b, 1, 5, 5, generator=g),
    }
    targets = {
        "shape": torch.randint(0, 3, (b,), generator=g),
        "size": torch.randn(b, 2, generator=g),
        "seg": torch.randint(0, 3, (b, 5, 5), generator=g),
        "depth": torch.randn(b, 5, 5, generator=g),
    }
    return outputs, targets


def test_instance_losses_are_per_instance_per_task():
    outputs, targets = _outputs_and_targets()
    l_ik = instance_losses(TASKS, outputs, targets)
    assert l_ik.shape == (4, len(TASKS))
    expected_cls = F.cross_entropy(outputs["shape"], targets["shape"], reduction="none")
    expected_reg = ((outputs["size"] - targets["size"]) ** 2).sum(dim=1)
    assert torch.allclose(l_ik[:, 0], expected_cls)
    assert torch.allclose(l_ik[:, 1], expected_reg)
    expected_seg = F.cross_entropy(outputs["seg"], targets["seg"], reduction="none").mean(
        dim=(1, 2)
    )
    assert torch.allclose(l_ik[:, 2], expected_seg)
    expected_depth = ((outputs["depth"][:, 0] - targets["depth"]) ** 2).mean(dim=(1, 2))
    assert torch.allclose(l_ik[:, 3], expected_depth)


def test_segmentation_loss_skips_ignored_pixels():
    task = TaskSpec("seg", "segmentation", ("mask",), classes=3, ignore_index=255)
    outputs, targets = _outputs_and_targets()
    target = targets["seg"].clone()
    target[:, :, :2] = 255
    l_ik = INSTANCE_LOSS["segmentation"](outputs["seg"], target, task)
    kept = F.cross_entropy(outputs["seg"][..., 2:], targets["seg"][..., 2:], reduction="none")
    assert torch.allclose(l_ik, kept.mean(dim=(1, 2)))


@pytest.mark.parametrize("index", range(len(TASKS)), ids=[t.type for t in TASKS])
def test_gradient_wrt_model_output_is_scaled_by_the_instance_weight(index):
    # ∂L/∂f = scale · e^(−s) · ∂l_ik/∂f: e^(−s) for classification, e^(−s)/2 for regression.
    task = TASKS[index]
    outputs, targets = _outputs_and_targets()
    s = torch.tensor([-1.5, 0.0, 0.7, 3.0])  # one log σ² per instance
    scale = likelihood_scale(TASKS)[index]

    plain = outputs[task.name].clone().requires_grad_(True)
    INSTANCE_LOSS[task.type](plain, targets[task.name], task).sum().backward()

    weighted = outputs[task.name].clone().requires_grad_(True)
    l_ik = INSTANCE_LOSS[task.type](weighted, targets[task.name], task)
    nll(l_ik, s, scale).sum().backward()

    factor = (scale * torch.exp(-s)).view(-1, *[1] * (plain.dim() - 1))
    assert torch.allclose(weighted.grad, factor * plain.grad, atol=1e-6)
    assert scale == (1.0 if LIKELIHOOD[task.type] == "cls" else 0.5)


# --- ILT ------------------------------------------------------------------------------------------


def _step(weighting: ILTWeighting, l_ik: torch.Tensor, index: torch.Tensor) -> None:
    """One epoch of one batch, as the loop runs it: the loss backpropagates into the losses,
    then the epoch's end applies the sparse update to the rows the epoch trained."""
    weighting(l_ik.detach().requires_grad_(True), index).backward()
    n, k = weighting.params.log_sigma2.shape
    losses, seen = torch.zeros(n, k), torch.zeros(n, dtype=torch.bool)
    losses[index], seen[index] = l_ik.detach(), True
    weighting.end_epoch(losses, seen)


def test_ilt_epoch_update_equals_updating_each_row_after_its_batch():
    # every row is in one batch of an epoch: deferring its update to the epoch's end changes nothing
    n, lr = 12, 0.3
    g = torch.Generator().manual_seed(0)
    deferred, immediate = _ilt(n=n, lr=lr), _ilt(n=n, lr=lr)
    for params in (deferred.params, immediate.params):
        params.log_sigma2.copy_(torch.linspace(-3, 3, n * 2).view(n, 2))
        params.momentum_buffer.copy_(torch.linspace(1, -1, n * 2).view(n, 2))
    scale = torch.tensor([CLS, REG])
    losses = torch.zeros(n, 2)
    for batch in torch.randperm(n, generator=g).split(5):
        l_ik = torch.rand(len(batch), 2, generator=g) * 4
        deferred(l_ik, batch)
        losses[batch] = l_ik
        s = immediate.params.log_sigma2[batch]
        immediate.params.step(batch, 1 - scale * l_ik * torch.exp(-s))  # right after the batch
    deferred.end_epoch(losses, torch.ones(n, dtype=torch.bool))
    assert torch.allclose(deferred.params.log_sigma2, immediate.params.log_sigma2)
    assert torch.allclose(deferred.params.momentum_buffer, immediate.params.momentum_buffer)


def _ilt(n: int = 10, k: int = 2, lr: float = 0.5, momentum: float = 0.9) -> ILTWeighting:
    return ILTWeighting(torch.tensor([CLS, REG]), InstanceParams(n, k, lr=lr, momentum=momentum))


def test_ilt_params_start_at_zero():
    weighting = _ilt()
    assert torch.equal(weighting.params.log_sigma2, torch.zeros(10, 2))
    assert torch.equal(weighting.params.momentum_buffer, torch.zeros(10, 2))


def test_ilt_loss_is_eq1_without_its_constant_log_sigma2_term():
    weighting = _ilt()
    index = torch.tensor([1, 4, 7])
    weighting.params.log_sigma2[index] = torch.tensor([[0.5, -1.0], [2.0, 0.0], [-3.0, 1.0]])
    l_ik = torch.tensor([[1.0, 2.0], [0.5, 4.0], [3.0, 0.1]])
    s = weighting.params.log_sigma2[index]
    eq1 = (l_ik * torch.exp(-s) * torch.tensor([CLS, REG]) + s).sum(dim=1).mean()
    # the log σ² term has no gradient for the network: the loss leaves it out
    assert torch.allclose(weighting(l_ik, index), eq1 - s.sum(dim=1).mean())


def test_ilt_weights_follow_every_write_to_the_table():
    weighting = _ilt(n=4)
    index = torch.tensor([2, 3])
    l_ik = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    scale = torch.tensor([CLS, REG])

    def expected() -> torch.Tensor:
        s = weighting.params.log_sigma2[index]
        return (l_ik * scale * torch.exp(-s)).sum(dim=1).mean()

    assert torch.allclose(weighting(l_ik, index), expected())  # weights computed and cached
    weighting.params.log_sigma2[3] = torch.tensor([1.5, -0.5])  # an indexed write
    assert torch.allclose(weighting(l_ik, index), expected())
    other = _ilt(n=4)
    other.params.log_sigma2.fill_(2.0)
    weighting.params.load_state_dict(other.params.state_dict())  # a resume
    assert torch.allclose(weighting(l_ik, index), expected())
    _step(weighting, l_ik, index)  # the end-of-epoch update
    assert torch.allclose(weighting(l_ik, index), expected())
    weighting.params.log_sigma2 = torch.zeros(4, 2)  # a new table altogether
    assert torch.allclose(weighting(l_ik, index), expected())


def test_ilt_loss_backpropagates_into_the_losses_not_into_the_table():
    weighting = _ilt()
    index = torch.tensor([0, 3])
    weighting.params.log_sigma2[3] = torch.tensor([1.0, -1.0])
    l_ik = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    weighting(l_ik, index).backward()
    # ∂L/∂l = scale·e^(−s) / B: the instance weight, the batch mean's 1/B
    s = weighting.params.log_sigma2[index]
    assert torch.allclose(l_ik.grad, torch.tensor([CLS, REG]) * torch.exp(-s) / 2)
    assert not weighting.params.log_sigma2.requires_grad


def test_ilt_updates_batch_rows_by_their_own_gradient_and_leaves_other_rows_alone():
    lr = 0.5
    weighting = _ilt(lr=lr)
    params = weighting.params
    # a row outside the batch with a value and a momentum of its own
    params.log_sigma2[9] = torch.tensor([0.3, -0.2])
    params.momentum_buffer[9] = torch.tensor([0.7, -0.4])
    outside_value = params.log_sigma2[[0, 2, 9]].clone()
    outside_buffer = params.momentum_buffer[[0, 2, 9]].clone()

    index = torch.tensor([3, 1, 5, 8])
    l_ik = torch.tensor([[0.2, 0.4], [3.0, 5.0], [1.0, 2.0], [0.0, 9.0]]).requires_grad_(True)
    _step(weighting, l_ik, index)

    # the instance's own gradient, B × the batch-mean gradient: 1 − scale·l_ik·e^(−0)
    per_instance = 1 - torch.tensor([CLS, REG]) * l_ik.detach()
    assert torch.allclose(params.momentum_buffer[index], per_instance)
    assert torch.allclose(params.log_sigma2[index], -lr * per_instance)
    assert torch.equal(params.log_sigma2[[0, 2, 9]], outside_value)
    assert torch.equal(params.momentum_buffer[[0, 2, 9]], outside_buffer)


def test_ilt_update_does_not_depend_on_the_batch_size():
    l_row = torch.tensor([[2.0, 3.0]])
    small, large = _ilt(), _ilt()
    _step(small, l_row.repeat(2, 1), torch.tensor([0, 1]))
    _step(large, l_row.repeat(8, 1), torch.arange(8))
    assert torch.allclose(small.params.log_sigma2[0], large.params.log_sigma2[0])


def test_ilt_momentum_is_sparse_across_epochs():
    lr, mu = 0.1, 0.9
    weighting = _ilt(lr=lr, momentum=mu)
    params = weighting.params
    scale = torch.tensor([CLS, REG])
    l1 = torch.tensor([[3.0, 1.0], [0.5, 6.0]])
    _step(weighting, l1, torch.tensor([0, 1]))
    g1 = 1 - scale * l1  # s = 0 before the first step
    s1 = -lr * g1

    # an epoch that does not train row 0: its value and momentum must not move (no decay either)
    _step(weighting, torch.tensor([[1.0, 1.0], [2.0, 2.0]]), torch.tensor([1, 2]))
    assert torch.allclose(params.log_sigma2[0], s1[0])
    assert torch.allclose(params.momentum_buffer[0], g1[0])

    # row 0 again: buf ← μ·buf + g;  s ← s − lr·buf
    l3 = torch.tensor([[0.1, 8.0]])
    _step(weighting, l3, torch.tensor([0]))
    g3 = 1 - scale * l3[0] * torch.exp(-s1[0])
    buf = mu * g1[0] + g3
    assert torch.allclose(params.momentum_buffer[0], buf)
    assert torch.allclose(params.log_sigma2[0], s1[0] - lr * buf)


def test_ilt_params_are_clamped_for_extreme_losses():
    weighting = _ilt(n=2, lr=1.0)
    index = torch.tensor([0, 1])
    l_ik = torch.tensor([[1e6, 1e6], [0.0, 0.0]])  # a hopeless label, a perfect one
    for _ in range(5):
        _step(weighting, l_ik, index)
        assert weighting.params.log_sigma2.abs().max() <= CLAMP
    assert torch.equal(weighting.params.log_sigma2[0], torch.full((2,), CLAMP))
    assert torch.equal(weighting.params.log_sigma2[1], torch.full((2,), -CLAMP))
    assert CLAMP == 4.0


def test_ilt_high_loss_raises_log_sigma2_and_low_loss_lowers_it():
    weighting = _ilt(n=2)
    l_ik = torch.tensor([[6.0, 6.0], [0.01, 0.01]])
    for _ in range(3):
        _step(weighting, l_ik, torch.tensor([0, 1]))
    s = weighting.params.log_sigma2
    assert (s[0] > 0).all() and (s[1] < 0).all()


# --- baselines ------------------------------------------------------------------------------------


def test_equal_weighting_sums_tasks_and_averages_instances():
    l_ik = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert EqualWeighting(torch.tensor([CLS, REG]))(l_ik, torch.tensor([0, 1])).item() == 6.0


def test_uncertainty_weighting_shares_one_log_sigma2_per_task():
    weighting = UncertaintyWeighting(torch.tensor([CLS, REG]))
    assert [tuple(p.shape) for p in weighting.parameters()] == [(2,)]
    with torch.no_grad():
        weighting.log_sigma2.copy_(torch.tensor([1.0, -1.0]))
    l_ik = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    s = weighting.log_sigma2.detach()
    expected = (l_ik * torch.exp(-s) * torch.tensor([CLS, REG]) + s).sum(dim=1).mean()
    assert torch.allclose(weighting(l_ik, torch.tensor([0, 1])), expected)


def test_dwa_weights_favour_the_task_whose_loss_falls_slowest():
    weighting = DWAWeighting(torch.tensor([CLS, REG]), temperature=2.0)
    l_ik = torch.tensor([[1.0, 1.0]])
    assert weighting(l_ik, torch.tensor([0])).item() == 2.0  # weights start at 1
    seen = torch.ones(3, dtype=torch.bool)
    weighting.end_epoch(torch.tensor([[1.0, 1.0], [0.5, 1.5], [1.5, 0.5]]), seen)  # means 1, 1
    assert torch.equal(weighting.weights, torch.ones(2))  # one epoch of history is not enough
    weighting.end_epoch(torch.tensor([[0.5, 1.0], [0.25, 1.5], [0.75, 0.5]]), seen)  # 0.5, 1
    ratio = torch.tensor([0.5, 1.0])
    assert torch.allclose(weighting.weights, 2 * torch.softmax(ratio / 2.0, dim=0))
    assert weighting.weights[1] > weighting.weights[0]
    assert torch.isclose(weighting.weights.sum(), torch.tensor(2.0))


def test_gls_is_the_geometric_mean_of_task_losses():
    l_ik = torch.tensor([[1.0, 8.0], [3.0, 10.0]])  # task means 2 and 9
    value = GLSWeighting(torch.tensor([CLS, REG]))(l_ik, torch.tensor([0, 1]))
    assert math.isclose(value.item(), math.sqrt(2 * 9), rel_tol=1e-6)


def test_weightings_are_looked_up_by_name():
    assert set(WEIGHTINGS) == {"ilt", "equal", "uncertainty", "dwa", "gls", "mao"}
    assert check_weighting("dwa") == "dwa"
    with pytest.raises(OptionError, match=r"unknown weighting 'ilt2'; choose one of ilt, equal"):
        check_weighting("ilt2")


def test_cli_offers_exactly_the_library_weightings():
    from ilt_audit.cli.train import Weighting

    assert {w.value for w in Weighting} == set(WEIGHTINGS)
