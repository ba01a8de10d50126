"""The table of instance-level ``log σ²`` and its sparse SGD with momentum (paper 3.1, 4.1, 4.4)."""

from __future__ import annotations

import pytest
import torch

from ilt_audit.training.ilt_params import CLAMP, ON_CPU_ABOVE, InstanceParams, storage_device


def test_table_has_one_zero_per_instance_per_task():
    params = InstanceParams(7, 3, lr=0.1)
    assert params.log_sigma2.shape == (7, 3)
    assert torch.equal(params.log_sigma2, torch.zeros(7, 3))
    assert torch.equal(params.momentum_buffer, torch.zeros(7, 3))


def test_step_touches_only_the_given_rows():
    params = InstanceParams(6, 2, lr=0.2, momentum=0.5)
    params.log_sigma2[:] = torch.arange(12, dtype=torch.float32).view(6, 2) / 10
    params.momentum_buffer[:] = -torch.arange(12, dtype=torch.float32).view(6, 2) / 20
    before_value, before_buffer = params.log_sigma2.clone(), params.momentum_buffer.clone()
    index = torch.tensor([4, 1])
    grad = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    params.step(index, grad)

    buf = 0.5 * before_buffer[index] + grad  # buf ← μ·buf + g
    assert torch.allclose(params.momentum_buffer[index], buf)
    assert torch.allclose(params.log_sigma2[index], (before_value[index] - 0.2 * buf).clamp(-4, 4))
    others = torch.tensor([0, 2, 3, 5])
    assert torch.equal(params.log_sigma2[others], before_value[others])
    assert torch.equal(params.momentum_buffer[others], before_buffer[others])


def test_step_clamps_to_plus_minus_four():
    params = InstanceParams(2, 1, lr=1.0)
    params.step(torch.tensor([0, 1]), torch.tensor([[-1e9], [1e9]]))
    assert params.log_sigma2.flatten().tolist() == [CLAMP, -CLAMP]
    assert CLAMP == 4.0


def test_state_dict_round_trip_restores_values_and_momentum():
    params = InstanceParams(4, 2, lr=0.3)
    params.step(torch.tensor([0, 2]), torch.tensor([[1.0, -1.0], [2.0, 0.5]]))
    restored = InstanceParams(4, 2, lr=0.3)
    restored.load_state_dict(params.state_dict())
    assert torch.equal(restored.log_sigma2, params.log_sigma2)
    assert torch.equal(restored.momentum_buffer, params.momentum_buffer)
    # and the next step continues identically
    grad = torch.tensor([[0.3, 0.3]])
    params.step(torch.tensor([2]), grad)
    restored.step(torch.tensor([2]), grad)
    assert torch.equal(restored.log_sigma2, params.log_sigma2)


def test_large_tables_stay_on_the_cpu():
    compute = torch.device("cuda")  # only compared, never allocated
    assert storage_device(ON_CPU_ABOVE + 1, 1, compute) == torch.device("cpu")
    assert storage_device(100, 4, compute) == compute


def test_grad_clip_bounds_the_step_of_a_loss_spike():
    params = InstanceParams(3, 1, lr=0.1, momentum=0.9, grad_clip=1.0)
    rows = torch.tensor([0, 1])
    params.step(rows, torch.tensor([[-64.0], [0.5]]))  # a loss spike on row 0, a normal row 1
    assert params.log_sigma2[0, 0].item() == pytest.approx(0.1)  # clipped to g = -1
    assert params.log_sigma2[1, 0].item() == pytest.approx(-0.05)
    assert params.log_sigma2[2, 0].item() == 0.0


def test_momentum_is_reset_where_the_clamp_holds_with_grad_clip():
    params = InstanceParams(2, 1, lr=10.0, momentum=0.9, grad_clip=1.0)
    params.step(torch.tensor([0, 1]), torch.tensor([[-1.0], [0.1]]))
    assert params.log_sigma2[0, 0].item() == CLAMP  # 0 + 10 would pass the bound
    assert params.momentum_buffer[0, 0].item() == 0.0  # so no momentum keeps pushing
    assert params.momentum_buffer[1, 0].item() == pytest.approx(0.1)  # inside the bounds: kept
    params.step(torch.tensor([0]), torch.tensor([[1.0]]))  # a well-fit instance comes straight back
    assert params.log_sigma2[0, 0].item() == -CLAMP  # 4 - 10·1, clamped at the other bound


def test_without_grad_clip_the_paper_form_keeps_momentum_at_the_clamp():
    params = InstanceParams(1, 1, lr=10.0, momentum=0.9)
    params.step(torch.tensor([0]), torch.tensor([[-1.0]]))
    assert params.log_sigma2[0, 0].item() == CLAMP
    assert params.momentum_buffer[0, 0].item() == -1.0
