"""GRPO: group relative policy optimisation of the pretrained Prompt-DT on a task's trajectories.

    python grpo.py --env halfcheetahvel --tuning full --seed 1

Offline, as in the paper: a group is the set of the task's finetuning trajectories (they all start
from the env's reset distribution, the closest our data come to the paper's "same initial state");
every action of trajectory k gets its group-normalised return A_k = (R_k - mean R) / std R (eq. 8).
The loss (eq. 5) is the clipped surrogate min(ratio A, clip(ratio, 1 - eps, 1 + eps) A) with ratio
pi(a|s)/pi_old(a|s) on the data actions, plus beta times the KL to the pretrained policy pi_ref.
pi(a|s) is a Gaussian around the DT's action mu(s) with a fixed std (--policy-std); pi_ref's actions
for every window of the task are computed once (ref_actions).

Where we depart from the paper, and why (the measurements and the search history: docs/design.md):
- KL: eq. 7's estimator pi_ref/pi - log(pi_ref/pi) - 1 is unbiased for KL(pi || pi_ref) only at
  actions drawn from pi; at the data actions it estimates nothing. For two Gaussians of one std the
  KL is exact and cheap, |mu - mu_ref|^2 / (2 std^2), and we use that.
- An imitation anchor, --bc-weight times the data's negative log-likelihood (InstructGPT's PPO-ptx
  term). On an expert's data the normalised returns are mostly noise, and with a fixed std a negative
  advantage pushes mu away from the data action without limit (|mu - a| went 0.032 -> 0.166 in 150
  steps). With the anchor each data action pulls mu by (bc + ratio A)(a - mu) / std^2: the advantage
  re-weights imitation. Normalised returns of N trajectories satisfy |A| <= sqrt(N - 1), so
  bc >= (1 + eps) sqrt(N - 1) (8.4 for 50 trajectories) keeps every data action attracting (tested).
- --update-epochs n holds pi_old and the batch for n steps so that the clip can bind; the default 1
  (ratio 1, the clip inactive: advantage-weighted imitation plus the KL) validated above 4 on AntDir
  and MetaWorld.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from common.data import gather, masked_mean, sample_batch
from common.flags import FinetuneArgs, cli
from common.run import Run
from common.tuning import DEFAULT_LR


@dataclass
class Args(FinetuneArgs):
    clip_eps: float = 0.2
    """epsilon of the clipped ratio (eq. 5)"""
    beta: float = 0.04
    """weight of the KL to the pretrained policy (eq. 5)"""
    bc_weight: float = 1.0
    """weight of the imitation anchor, the data actions' negative log-likelihood (0: the paper's loss)"""
    policy_std: float = 0.1
    """fixed std of the Gaussian policy around the DT's action"""
    update_epochs: int = 1
    """gradient steps per sampled batch with pi_old held (pi_old is the policy before the first; at 1 the
    ratio is 1 and the clip inactive: the search chose 1 over 4 on AntDir and MetaWorld)"""


def gaussian_logp(x: torch.Tensor, mu: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; mu, std^2 I), summed over action dimensions."""
    return -((x - mu) ** 2).sum(-1) / (2 * std ** 2) - x.shape[-1] * math.log(std * math.sqrt(2 * math.pi))


def group_advantages(returns: np.ndarray) -> np.ndarray:
    """Eq. 8: each trajectory's return normalised by the group's mean and std."""
    return (returns - returns.mean()) / (returns.std() + 1e-8)


def gaussian_kl(mu: torch.Tensor, mu_ref: torch.Tensor, std: float) -> torch.Tensor:
    """KL(N(mu, std^2 I) || N(mu_ref, std^2 I)) = |mu - mu_ref|^2 / (2 std^2), exact (replaces eq. 7)."""
    return ((mu - mu_ref) ** 2).sum(-1) / (2 * std ** 2)


def grpo_loss(logp, logp_old, adv, kl, mask, clip_eps: float, beta: float, bc_weight: float) -> torch.Tensor:
    """Eq. 5 with the exact KL, plus the imitation anchor, averaged over the valid steps of the windows."""
    ratio = torch.exp((logp - logp_old).clamp(-20, 20))  # the clamp only guards exp against overflow
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    return -masked_mean(surrogate - beta * kl + bc_weight * logp, mask)



@torch.no_grad()
def ref_actions(policy, packed: dict, K: int, device, batch_size: int = 256) -> torch.Tensor:
    """pi_ref's action (N, K, act) for every K-step window of the task's data, computed once before any
    update: window i ends at flat step i, as sample_batch's `window` indexes it, so pi_ref's actions for a
    batch are a lookup, table[b["window"]], instead of a second forward pass per step."""
    traj = np.repeat(np.arange(len(packed["lengths"])), packed["lengths"])
    end = packed["timesteps"] + 1
    out = []
    for i in range(0, len(traj), batch_size):
        b = gather(packed, traj[i:i + batch_size], end[i:i + batch_size], K)
        t = {k: torch.as_tensor(v, device=device, dtype=torch.long if k == "timesteps" else torch.float32)
             for k, v in b.items()}
        out.append(policy(t["states"], t["actions"], t["rtg"], t["timesteps"], t["mask"]))
    return torch.cat(out)

def main(args: Args) -> dict:
    args.lr = DEFAULT_LR[args.tuning] if args.lr is None else args.lr  # --lr (or its preset), else the tuning's
    run = Run(args, "grpo")
    K = run.model.cfg.K
    for task in run.tasks:
        rng = run.seed(task)
        data = run.data[task]
        # dropout off, as TRL does for DPO and PPO: log-ratios to pi_ref and pi_old must not be dropout noise
        policy = run.policy(task).eval()
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=args.lr, weight_decay=args.weight_decay)
        ref_table = ref_actions(policy, data["packed"], K, run.device)  # pi_ref: the pretrained policy
        adv_table = torch.as_tensor(group_advantages(data["returns"]), dtype=torch.float32,
                                    device=run.device)
        curve = [run.evaluate(policy, task, step=0)]  # zero-shot
        for step in range(1, args.total_steps + 1):
            if (step - 1) % args.update_epochs == 0:  # a fresh batch and pi_old; else the held ones
                b, logp_old = sample_batch(data["packed"], K, args.batch_size, rng, run.device), None
            pred = policy(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
            logp = gaussian_logp(b["actions"], pred, args.policy_std)
            if logp_old is None:
                logp_old = logp.detach()
            kl = gaussian_kl(pred, ref_table[b["window"]], args.policy_std)
            adv = adv_table[b["traj"]][:, None].expand_as(logp)
            loss = grpo_loss(logp, logp_old, adv, kl, b["mask"], args.clip_eps, args.beta, args.bc_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), args.grad_clip)
            opt.step()
            logs = {"loss": run.check(loss, step, task), "kl": masked_mean(kl, b["mask"]).item()}
            run.log(task, step, logs)  # to wandb every --log-every steps (--track)
            if step % args.eval_every == 0 or step == args.total_steps:
                curve.append(run.evaluate(policy, task, step, logs))  # validation and reporting episodes
                run.select(policy, curve)  # keeps the parameters with the best validation score so far
        run.record(task, curve)
    return run.finish()


if __name__ == "__main__":
    cli(main, Args)
