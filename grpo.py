"""GRPO: group relative policy optimisation of the pretrained Prompt-DT on a test task's trajectories.

    python grpo.py --env halfcheetahvel --tuning full --seed 1

Offline, as in the paper: a group is the set of the task's finetuning trajectories; every action of
trajectory k gets its group-normalised return A_k = (R_k - mean R) / std R (eq. 8). The loss (eq. 5)
is the clipped surrogate min(ratio A, clip(ratio, 1 - eps, 1 + eps) A) with ratio pi(a|s)/pi_old(a|s)
on the data actions, minus beta times the KL to the pretrained policy pi_ref, estimated by
pi_ref/pi - log(pi_ref/pi) - 1 at the data action (eq. 7).

pi(a|s) is a Gaussian around the DT's action with a fixed std (--policy-std). pi_old is the policy
that sampled the batch: each batch is used for --update-epochs gradient steps, and pi_old's actions
are those of the first of them (so, as in PPO, no extra forward pass). pi_ref's actions for every
window of the task are computed once (Run.window_table).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from common.finetune import FinetuneArgs, Run, cli, masked_mean


@dataclass
class Args(FinetuneArgs):
    clip_eps: float = 0.2
    """epsilon of the clipped ratio (eq. 5)"""
    beta: float = 0.04
    """weight of the KL to the pretrained policy (eq. 5)"""
    policy_std: float = 0.5
    """fixed std of the Gaussian policy around the DT's action (0.1 makes the ratios of a 6-D action
    overflow within one update)"""
    update_epochs: int = 2
    """gradient steps per sampled batch (pi_old is the policy before the first)"""


def gaussian_logp(x: torch.Tensor, mu: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; mu, std^2 I), summed over action dimensions."""
    return -((x - mu) ** 2).sum(-1) / (2 * std ** 2) - x.shape[-1] * math.log(std * math.sqrt(2 * math.pi))


def group_advantages(returns: np.ndarray) -> np.ndarray:
    """Eq. 8: each trajectory's return normalised by the group's mean and std."""
    return (returns - returns.mean()) / (returns.std() + 1e-8)


def kl_estimator(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Eq. 7: pi_ref/pi - log(pi_ref/pi) - 1 (>= 0, unbiased for KL(pi || pi_ref) under pi)."""
    log_ratio = (logp_ref - logp).clamp(-20, 20)  # the clamp only guards exp against overflow
    return torch.exp(log_ratio) - log_ratio - 1


def grpo_loss(logp, logp_old, logp_ref, adv, mask, clip_eps: float, beta: float) -> torch.Tensor:
    """Eq. 5, averaged over the valid steps of the windows."""
    ratio = torch.exp((logp - logp_old).clamp(-20, 20))
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    return -masked_mean(surrogate - beta * kl_estimator(logp, logp_ref), mask)


def main(args: Args) -> dict:
    run = Run(args, "grpo")
    for task in run.tasks:
        rng = run.seed(task)
        policy = run.policy(task).train()
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=run.lr, weight_decay=args.weight_decay)
        ref_table = run.window_table(policy, task)  # pi_ref = the pretrained policy, before any update
        adv_table = torch.as_tensor(group_advantages(run.data[task]["returns"]), dtype=torch.float32,
                                    device=run.device)
        held = {}

        def update(b: dict, step: int) -> dict:
            if (step - 1) % args.update_epochs == 0:  # a fresh batch; else reuse the held one
                held.clear()
                held["b"] = b
            b = held["b"]
            pred = policy(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
            logp = gaussian_logp(b["actions"], pred, args.policy_std)
            if "logp_old" not in held:
                held["logp_old"] = logp.detach()
            logp_ref = gaussian_logp(b["actions"], ref_table[b["window"]], args.policy_std)
            adv = adv_table[b["traj"]][:, None].expand_as(logp)
            loss = grpo_loss(logp, held["logp_old"], logp_ref, adv, b["mask"], args.clip_eps, args.beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), args.grad_clip)
            opt.step()
            return {"loss": run.check(loss, step, task)}

        run.train(task, policy, update, rng)
    return run.finish()


if __name__ == "__main__":
    cli(main, Args)
