"""Optimizer groups, discriminative learning rates, penalties and schedules."""

import math

import pytest
import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.optim import Schedule, build_optimizer, penalty, stage_lr_factors


class TwoStage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3)
        self.norm = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 2)


STAGES = {"stem.weight": 0, "stem.bias": 0, "norm.weight": 0, "norm.bias": 0, "fc.weight": 1, "fc.bias": 1}


def test_stage_factors_interpolate_geometrically():
    factors = stage_lr_factors(4, 1e-4)
    assert factors[-1] == 1.0 and math.isclose(factors[0], 1e-4 ** (4 / 4))
    ratios = [factors[i + 1] / factors[i] for i in range(4)]
    assert all(math.isclose(r, ratios[0]) for r in ratios)
    assert stage_lr_factors(3, 1.0) == [1.0] * 4


def test_groups_carry_stage_lr_and_no_decay_on_norms_and_biases():
    model = TwoStage()
    config = TrialConfig(optimizer="adamw", lr=1e-2, lr_ratio=0.1, weight_decay=0.05)
    opt = build_optimizer(model, STAGES, num_stages=1, config=config)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_param[id(model.stem.weight)]["lr"] == pytest.approx(1e-3)
    assert by_param[id(model.fc.weight)]["lr"] == pytest.approx(1e-2)
    assert by_param[id(model.stem.weight)]["weight_decay"] == 0.05
    assert by_param[id(model.norm.weight)]["weight_decay"] == 0.0
    assert by_param[id(model.fc.bias)]["weight_decay"] == 0.0


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)])
def test_each_optimizer(name, cls):
    opt = build_optimizer(TwoStage(), STAGES, 1, TrialConfig(optimizer=name, nesterov=True))
    assert isinstance(opt, cls)


def test_penalty_skips_norms_biases_and_frozen():
    model = TwoStage()
    expected = 0.1 * (model.stem.weight.abs().sum() + model.fc.weight.abs().sum()) + 0.2 * (
        model.stem.weight.pow(2).sum() + model.fc.weight.pow(2).sum())
    torch.testing.assert_close(penalty(model.named_parameters(), 0.1, 0.2), expected)
    model.stem.weight.requires_grad_(False)
    torch.testing.assert_close(penalty(model.named_parameters(), 0.1, 0.0), 0.1 * model.fc.weight.abs().sum())
    assert penalty(model.named_parameters(), 0.0, 0.0) is None


def _curve(steps_per_epoch: int = 10, **kw) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = Schedule(opt, TrialConfig(lr=1.0, **kw), steps_per_epoch)
    values = []
    for _ in range(steps_per_epoch * kw.get("epochs", 10)):
        values.append(opt.param_groups[0]["lr"])
        sched.step()
    return values


def test_schedules_have_their_shapes():
    assert set(_curve(schedule="constant")) == {1.0}
    step = _curve(schedule="step", step_size=3, gamma=0.5)
    assert step[29] == 1.0 and step[30] == 0.5 and step[60] == 0.25
    multi = _curve(schedule="multistep", milestones=(2, 5), gamma=0.1)
    assert multi[19] == 1.0 and multi[20] == pytest.approx(0.1) and multi[50] == pytest.approx(0.01)
    expo = _curve(schedule="exponential", gamma=0.9)
    assert expo[25] == pytest.approx(0.81)
    cos = _curve(schedule="cosine", warmup_epochs=2, min_lr_ratio=0.0)
    assert cos[0] == pytest.approx(0.05) and cos[19] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(cos[20:], cos[21:])) and cos[-1] < 0.01
    one = _curve(schedule="onecycle")
    peak = max(range(len(one)), key=one.__getitem__)
    assert 25 <= peak <= 35 and one[0] < 0.05 and one[-1] < 0.01


def test_plateau_and_state_round_trip():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = Schedule(opt, TrialConfig(lr=1.0, schedule="plateau", plateau_patience=1, gamma=0.5), 10)
    for loss in (1.0, 0.9, 0.95, 0.95):
        sched.end_epoch(loss)
    assert opt.param_groups[0]["lr"] == 0.5
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = Schedule(opt2, TrialConfig(lr=1.0, schedule="plateau", plateau_patience=1, gamma=0.5), 10)
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == 0.5 and sched2.best_loss == 0.9
