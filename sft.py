"""SFT: supervised finetuning of the pretrained Prompt-DT on a task's few trajectories.

    python sft.py --env halfcheetahvel --tuning full --seed 1

Loss (paper eq. 3): the mean squared error between the policy's action and the data action, over
every step of K-step windows of the task's --num-trajs trajectories. Each task is adapted separately
from the pretrained weights. The run's bookkeeping (flags and presets, data, evaluation points,
result.json) is in common/run.py; the history of choices in docs/design.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from common.data import masked_mean, sample_batch
from common.flags import FinetuneArgs, cli
from common.run import Run
from common.tuning import DEFAULT_LR


@dataclass
class Args(FinetuneArgs):
    """SFT has no hyperparameters beyond the core flags (common/flags.py)."""


def sft_loss(pred: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3: E |a - pi(s)|^2, the squared error averaged over action dimensions and valid steps."""
    return masked_mean(((pred - actions) ** 2).mean(-1), mask)


def main(args: Args) -> dict:
    args.lr = DEFAULT_LR[args.tuning] if args.lr is None else args.lr  # --lr (or its preset), else the tuning's
    run = Run(args, "sft")
    K = run.model.cfg.K
    for task in run.tasks:
        rng = run.seed(task)
        data = run.data[task]
        policy = run.policy(task).train()
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=args.lr, weight_decay=args.weight_decay)

        curve = [run.evaluate(policy, task, step=0)]  # zero-shot
        for step in range(1, args.total_steps + 1):
            b = sample_batch(data["packed"], K, args.batch_size, rng, run.device)
            pred = policy(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
            loss = sft_loss(pred, b["actions"], b["mask"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), args.grad_clip)
            opt.step()
            logs = {"loss": run.check(loss, step, task)}
            run.log(task, step, logs)  # to wandb every --log-every steps (--track)
            if step % args.eval_every == 0 or step == args.total_steps:
                curve.append(run.evaluate(policy, task, step, logs))  # validation and reporting episodes
                run.select(policy, curve)  # keeps the parameters with the best validation score so far
        run.record(task, curve)
    return run.finish()


if __name__ == "__main__":
    cli(main, Args)
