"""QP-DPO: DPO plus a Q-guided policy-improvement term (the paper's Q-guided Policy Optimization).

    python qp_dpo.py --env halfcheetahvel --tuning full --seed 1

Policy loss (paper eq. 14): the DPO loss of dpo.py - alpha * Q(s, pi(s)). The Q term, its twin
Q-networks and their double-Q TD loss (eqs. 15-16) are those of qp_sft.py: Q is divided by its mean
magnitude (detached, as in QT and TD3+BC) so that alpha is scale-free, and the target action
a^ = pi_theta'(s') comes from a snapshot of the policy taken every --target-policy-every steps.

DPO loss (paper eq. 4): -log sigmoid(beta * [log pi(a|s)/pi_ref(a|s) - log pi(a_bar|s)/pi_ref(a_bar|s)]),
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
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
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
    alpha: float = 0.1
    """weight of the Q term (eqs. 13-14), on the normalised Q"""
    gamma: float = 0.99
    """discount of the TD target (eq. 16)"""
    tau: float = 0.005
    """Polyak rate of the target Q-networks"""
    critic_lr: float = 3e-4
    """Adam learning rate of the Q-networks"""
    target_policy_every: int = 500
    """steps between snapshots of the slowly-updated policy copy that gives the target actions"""
    max_target: bool = False
    """Table 6 ablation: the TD target takes the max over --num-target-samples actions around a^"""
    num_target_samples: int = 10
    """actions sampled for --max-target"""
    target_sample_std: float = 0.2
    """std of the Gaussian noise around a^ for --max-target"""
    critic_batch: int = 256
    """transitions per critic update, drawn from the batch's windows"""



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


class TwinQ(nn.Module):
    """Two independent Q(s, a) MLPs (3 hidden layers of 256, Mish) on the normalised state."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256):
        super().__init__()
        mlp = lambda: nn.Sequential(nn.Linear(obs_dim + act_dim, hidden), nn.Mish(), nn.Linear(hidden, hidden),  # noqa: E731
                                    nn.Mish(), nn.Linear(hidden, hidden), nn.Mish(), nn.Linear(hidden, 1))
        self.q1, self.q2 = mlp(), mlp()

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([s, a], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


def td_target(q_target: TwinQ, r, done, s_next, a_next, gamma: float) -> torch.Tensor:
    """Eq. 16: r + gamma * min_i Q'_i(s', a^), no bootstrap after a true termination."""
    return r + gamma * (1 - done) * torch.min(*q_target(s_next, a_next))


def max_td_target(q_target: TwinQ, r, done, s_next, a_next, gamma: float, n: int, std: float) -> torch.Tensor:
    """Table 6 variant: r + gamma * max_j min_i Q'_i(s', a^ + noise_j) over n sampled actions."""
    a = (a_next.unsqueeze(0) + std * torch.randn((n, *a_next.shape), device=a_next.device)).clamp(-1, 1)
    q = torch.min(*q_target(s_next.unsqueeze(0).expand(n, *s_next.shape), a)).max(0).values
    return r + gamma * (1 - done) * q


def q_term(q: TwinQ, s: torch.Tensor, pi_s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The Q of eq. 13: Q_1(s, pi(s)) (the first twin, as in TD3+BC) averaged over valid steps and
    divided by its detached mean magnitude (so that alpha is scale-free)."""
    qv = q.q1(torch.cat([s, pi_s], -1)).squeeze(-1)
    return masked_mean(qv, mask) / masked_mean(qv.abs(), mask).detach().clamp_min(1e-6)


def main(args: Args) -> dict:
    run = Run(args, "qp_dpo", "_maxq" if args.max_target else "")
    sp, model = run.sp, run.model
    norm = lambda s: (s - model.state_mean) / model.state_std  # noqa: E731
    for task in run.tasks:
        rng = run.seed(task)
        policy = run.policy(task).train()
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=run.lr, weight_decay=args.weight_decay)
        ref_table = run.window_table(policy, task)  # pi_ref = the pretrained policy, before any update
        critic = TwinQ(sp.obs_dim, sp.act_dim).to(run.device)
        critic_target = copy.deepcopy(critic).requires_grad_(False)
        critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
        target_actions = run.window_table(policy, task, last_only=True)  # pi_theta' at every step

        def update(b: dict, step: int) -> dict:
            nonlocal target_actions
            if step % args.target_policy_every == 0 and step < args.total_steps:
                target_actions = run.window_table(policy, task, last_only=True)
            # critic (eqs. 15-16) on --critic-batch random steps of the windows; a^ = pi_theta'(s') is the
            # snapshot's action at the next step of the data
            K = b["mask"].shape[1]
            flat = b["window"][:, None] - torch.arange(K - 1, -1, -1, device=run.device)[None]
            valid = b["mask"] * torch.maximum(b["has_next"], b["terminals"])  # a timeout's s' has no a^
            idx = torch.multinomial(valid.flatten(), min(args.critic_batch, int(valid.sum())))
            t = {k: b[k].flatten(0, 1)[idx] for k in ("states", "actions", "rewards", "terminals", "next_states")}
            a_next = target_actions[(flat.flatten()[idx] + 1).clamp(max=len(target_actions) - 1)]
            s_t, s_next = norm(t["states"]), norm(t["next_states"])
            with torch.no_grad():
                if args.max_target:
                    y = max_td_target(critic_target, t["rewards"], t["terminals"], s_next, a_next, args.gamma,
                                      args.num_target_samples, args.target_sample_std)
                else:
                    y = td_target(critic_target, t["rewards"], t["terminals"], s_next, a_next, args.gamma)
            q1, q2 = critic(s_t, t["actions"])
            critic_loss = ((q1 - y) ** 2 + (q2 - y) ** 2).mean()
            critic_opt.zero_grad(set_to_none=True)
            critic_loss.backward()
            critic_opt.step()
            with torch.no_grad():
                for p, pt in zip(critic.parameters(), critic_target.parameters()):
                    pt.lerp_(p, args.tau)
            # policy (eq. 14)
            ref = ref_table[b["window"]]
            a_bar = rejected_actions(b["actions"], ref, args.perturb_std)
            pred = policy(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
            pref = dpo_loss(pred, ref, b["actions"], a_bar, b["mask"], args.beta, args.policy_std)
            q = q_term(critic.requires_grad_(False), norm(b["states"]), pred, b["mask"])
            critic.requires_grad_(True)
            loss = pref - args.alpha * q
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), args.grad_clip)
            opt.step()
            return {"loss": run.check(loss, step, task), "dpo": pref.item(), "q": q.item(),
                    "critic_loss": run.check(critic_loss, step, task)}

        run.train(task, policy, update, rng)
    return run.finish()


if __name__ == "__main__":
    cli(main, Args)
