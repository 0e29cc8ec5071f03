"""DPO: direct preference optimisation of the pretrained Prompt-DT on a test task's trajectories.

    python dpo.py --env halfcheetahvel --tuning full --seed 1

Loss (paper eq. 4): -log sigmoid(beta * [log pi(a|s)/pi_ref(a|s) - log pi(a_bar|s)/pi_ref(a_bar|s)]),
preferring the data action a to a perturbation a_bar of it; pi_ref is the pretrained policy.

pi(a|s) is a Gaussian whose mean is the DT's action and whose std is fixed (--policy-std), so
log pi(x|s) = -|x - mu(s)|^2 / (2 std^2) + const. With a fixed std the DPO logit is linear in a - a_bar:
beta (a - a_bar).(mu - mu_ref) / std^2, so a perturbation in a random direction teaches nothing on
average. We therefore perturb the data action towards the reference action, per dimension,
a_bar = clip(a + |eps| sign(mu_ref - a), -1, 1), eps ~ N(0, --perturb-std^2): the rejected action errs the
way the pretrained policy errs, and DPO moves the policy from mu_ref towards a, within a trust region.
pi_ref's actions for every window of the task are computed once (Run.window_table), not per step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.finetune import FinetuneArgs, Run, cli, masked_mean


@dataclass
class Args(FinetuneArgs):
    beta: float = 0.1
    """DPO temperature (eq. 4)"""
    policy_std: float = 0.1
    """fixed std of the Gaussian policy around the DT's action"""
    perturb_std: float = 0.2
    """scale of the perturbation that makes the rejected action a_bar"""


def gaussian_logp(x: torch.Tensor, mu: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; mu, std^2 I), summed over action dimensions."""
    return -((x - mu) ** 2).sum(-1) / (2 * std ** 2) - x.shape[-1] * math.log(std * math.sqrt(2 * math.pi))


def rejected_actions(a: torch.Tensor, ref: torch.Tensor, std: float) -> torch.Tensor:
    """a_bar: the data action moved by |eps| towards the reference action, per dimension."""
    return (a + torch.randn_like(a).abs() * std * torch.sign(ref - a)).clamp(-1, 1)


def dpo_loss(mu, ref, a, a_bar, mask, beta: float, std: float) -> torch.Tensor:
    """Eq. 4, averaged over the valid steps of the windows."""
    chosen = gaussian_logp(a, mu, std) - gaussian_logp(a, ref, std)
    rejected = gaussian_logp(a_bar, mu, std) - gaussian_logp(a_bar, ref, std)
    return masked_mean(-F.logsigmoid(beta * (chosen - rejected)), mask)


def main(args: Args) -> dict:
    run = Run(args, "dpo")
    for task in run.tasks:
        rng = run.seed(task)
        policy = run.policy(task).train()
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=run.lr, weight_decay=args.weight_decay)
        ref_table = run.window_table(policy, task)  # pi_ref = the pretrained policy, before any update

        def update(b: dict, step: int) -> dict:
            ref = ref_table[b["window"]]
            a_bar = rejected_actions(b["actions"], ref, args.perturb_std)
            pred = policy(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
            loss = dpo_loss(pred, ref, b["actions"], a_bar, b["mask"], args.beta, args.policy_std)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), args.grad_clip)
            opt.step()
            return {"loss": run.check(loss, step, task)}

        run.train(task, policy, update, rng)
    return run.finish()


if __name__ == "__main__":
    cli(main, Args)
