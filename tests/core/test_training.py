"""The resumable trainer state both trainers share, the recipe guard, and eval mode restored in `finally`."""

import pytest
import torch
from sdm.core.errors import SdmError
from sdm.core.training import ResumableTrainer, check_recipe, inference_mode, run_steps


class Quadratic(ResumableTrainer):
    """Fits w to seeded random targets: enough to show state, EMA and resume."""

    def __init__(self, seed: int = 0) -> None:
        self.w = torch.nn.Parameter(torch.zeros(3))
        super().__init__([("w", self.w)], torch.optim.Adam([self.w], lr=0.1), 0.9, seed, torch.device("cpu"))

    def train_step(self) -> list[float]:
        self.optimizer.zero_grad()
        loss = (self.w - torch.randn(3, generator=self.generator)).pow(2).sum()
        return self.finish_step([loss.detach(), self.optimise(loss, 1.0)])


def test_an_interrupted_and_resumed_run_equals_an_uninterrupted_one():
    whole = Quadratic()
    run_steps(whole, 6, 0, lambda: None, "whole")
    first, saved = Quadratic(), []
    run_steps(first, 3, 0, lambda: None, "first")
    saved.append(first.common_state())
    resumed = Quadratic(seed=99)
    with torch.no_grad():
        resumed.w.copy_(first.w)
    resumed.load_common_state(saved[0])
    run_steps(resumed, 6, 0, lambda: None, "resumed")
    assert torch.equal(resumed.w, whole.w) and torch.equal(resumed.ema["w"], whole.ema["w"])
    assert [r[:2] for r in resumed.losses] == [r[:2] for r in whole.losses]


def test_checkpoints_come_every_n_steps_but_not_at_the_end():
    trainer, at = Quadratic(), []
    run_steps(trainer, 5, 2, lambda: at.append(trainer.step), "steps")
    assert at == [2, 4] and trainer.step == 5


def test_a_time_limit_ends_the_run_early_counting_earlier_runs():
    trainer = Quadratic()
    run_steps(trainer, 100, 0, lambda: None, "limited", time_limit=1e-9)
    assert trainer.step == 1  # the first step already spends more than the limit
    resumed = Quadratic()
    resumed.load_common_state(trainer.common_state())
    run_steps(resumed, 100, 0, lambda: None, "resumed", time_limit=1e-9)
    assert resumed.step == 1  # the checkpoint's time counts: nothing left to spend
    run_steps(resumed, 3, 0, lambda: None, "no limit")
    assert resumed.step == 3


def test_a_non_finite_loss_is_refused_by_name():
    trainer = Quadratic()
    with pytest.raises(SdmError, match="loss became nan at step 1"):
        trainer.optimise(torch.tensor(float("nan"), requires_grad=True), 1.0)


def test_recipe_guard_names_the_flag_that_differs(tmp_path):
    state = {"recipe": {"lr": 0.1, "batch_size": 4}, "step": 3}
    check_recipe(state, tmp_path, {"lr": 0.1, "batch_size": 4}, 5)
    with pytest.raises(SdmError, match="made with --batch-size 4, this run has 8"):
        check_recipe(state, tmp_path, {"lr": 0.1, "batch_size": 8}, 5)
    with pytest.raises(SdmError, match="beyond --steps 2"):
        check_recipe(state, tmp_path, {"lr": 0.1, "batch_size": 4}, 2)


def test_inference_mode_restores_the_training_flag_even_on_error():
    module = torch.nn.Linear(2, 2).train()
    with pytest.raises(RuntimeError):
        with inference_mode(module):
            assert not module.training
            raise RuntimeError("boom")
    assert module.training
