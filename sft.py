"""SFT: supervised finetuning of the pretrained Prompt-DT on a test task's few trajectories.

    python sft.py --env halfcheetahvel --tuning full --seed 1

Loss (paper eq. 3): the mean squared error between the policy's action and the data action, over
every step of K-step windows of the task's --num-trajs trajectories. Each test task is adapted
separately from the pretrained weights; common/finetune.py holds the plain helpers (data, sampling,
evaluation, the result file) that this loop calls.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from common.finetune import FinetuneArgs, Run, cli, masked_mean


@dataclass
class Args(FinetuneArgs):
    """SFT has no hyperparameters beyond the core flags of common/finetune.py."""


def sft_loss(pred: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3: E |a - pi(s)|^2, the squared error averaged over action dimensions and valid steps."""
    return masked_mean(((pred - actions) ** 2).mean(-1), mask)


def main(args: Args) -> dict:
    run = Run(args, "sft")
    for task in run.tasks:
        rng = run.seed(task)
        policy = run.policy(task).train()
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=run.lr, weight_decay=args.weight_decay)

        curve = run.zero_shot(policy, task)
        for step in range(1, args.total_steps + 1):
            b = run.sample(task, rng)
            pred = policy(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
            loss = sft_loss(pred, b["actions"], b["mask"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), args.grad_clip)
            opt.step()
            logs = {"loss": run.check(loss, step, task)}
            run.log(policy, task, step, curve, logs)  # to wandb every --log-every steps; evaluates when due
        run.record(task, curve)
    return run.finish()


if __name__ == "__main__":
    cli(main, Args)
