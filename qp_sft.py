"""QP-SFT: SFT plus a Q-guided policy-improvement term (the paper's Q-guided Policy Optimization).

    python qp_sft.py --env halfcheetahvel --tuning full --seed 1

Policy loss (paper eq. 13): |a - pi(s)|^2 - alpha * Q(s, pi(s)). As in QT and TD3+BC, the Q term is
divided by its mean magnitude (detached), so alpha in 0.001..2 means the same on every env whatever
its reward scale. Q is the smaller of twin Q-networks (3 hidden layers of 256, Mish, appendix C),
trained by the double-Q TD loss (eqs. 15-16) with Polyak-averaged (EMA) target networks.

Where we add to the paper (it gives no critic schedule): the critics are first regressed onto the
data's Monte-Carlo discounted returns for --critic-warmup updates (as many as the run has steps by
default), so that TD starts on the value scale (without it Q(data) was still about -2 after 1000
steps where the returns-to-go average -24). The target action a^ = pi_theta'(s') is the policy's own
action at the next step of the same window, detached: the forward pass the policy loss needs
anyway gives it for free (a snapshot table of the whole dataset cost as much as 60 steps of
training on metaworld). --max-target uses the max over sampled actions around a^ instead (the
paper's Table 6 ablation). Each task is adapted separately from the pretrained weights; the history
of these choices is in docs/design.md.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.data import masked_mean, returns_to_go, sample_batch
from common.flags import FinetuneArgs, cli
from common.run import Run
from common.tuning import DEFAULT_LR


@dataclass
class Args(FinetuneArgs):
    alpha: float = 0.1
    """weight of the Q term (eqs. 13-14), on the normalised Q"""
    gamma: float = 0.99
    """discount of the TD target (eq. 16)"""
    tau: float = 0.005
    """Polyak rate of the target Q-networks"""
    critic_lr: float = 3e-4
    """Adam learning rate of the Q-networks"""
    critic_warmup: int = -1
    """critic-only Monte-Carlo regression updates before the first step (-1: min(--total-steps, 1000))"""
    max_target: bool = False
    """Table 6 ablation: the TD target takes the max over --num-target-samples actions around a^"""
    num_target_samples: int = 10
    """actions sampled for --max-target"""
    target_sample_std: float = 0.2
    """std of the Gaussian noise around a^ for --max-target"""
    critic_batch: int = 256
    """transitions per critic update, drawn from the batch's windows"""


def sft_loss(pred: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3: E |a - pi(s)|^2, the squared error averaged over action dimensions and valid steps."""
    return masked_mean(((pred - actions) ** 2).mean(-1), mask)


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


def discounted_returns(trajs: list[dict], gamma: float, device) -> torch.Tensor:
    """Monte-Carlo discounted return-to-go of every step of the data (flat, in pack order): the behaviour
    policy's Q(s, a), the critics' warm-up target. A timeout's tail is not bootstrapped."""
    g = np.concatenate([returns_to_go(t["rewards"], gamma) for t in trajs])
    return torch.as_tensor(g, dtype=torch.float32, device=device)


def warm_up_critic(critic: TwinQ, opt, s: torch.Tensor, a: torch.Tensor, returns: torch.Tensor, steps: int,
                   batch_size: int, rng: np.random.Generator) -> None:
    """Where we add to the paper (it gives no critic schedule): both Qs regressed onto the data's Monte-Carlo
    returns for `steps` minibatches of random steps, so that TD starts on the value scale instead of from a
    random network (as QT regresses its critic on the returns before bootstrapping)."""
    for _ in range(steps):
        j = torch.as_tensor(rng.integers(0, len(returns), batch_size), device=returns.device)
        q1, q2 = critic(s[j], a[j])
        loss = ((q1 - returns[j]) ** 2).mean() + ((q2 - returns[j]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


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
    args.lr = DEFAULT_LR[args.tuning] if args.lr is None else args.lr  # --lr (or its preset), else the tuning's
    run = Run(args, "qp_sft")
    K = run.model.cfg.K
    sp, model = run.sp, run.model
    norm = lambda s: (s - model.state_mean) / model.state_std  # noqa: E731
    for task in run.tasks:
        rng = run.seed(task)
        data = run.data[task]
        policy = run.policy(task).train()
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=args.lr, weight_decay=args.weight_decay)
        critic = TwinQ(sp.obs_dim, sp.act_dim).to(run.device)
        critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
        p = data["packed"]
        warm_up_critic(critic, critic_opt, norm(torch.as_tensor(p["states"], device=run.device)),
                       torch.as_tensor(p["actions"], device=run.device),
                       discounted_returns(data["trajs"], args.gamma, run.device),
                       min(args.total_steps, 1000) if args.critic_warmup < 0 else args.critic_warmup,
                       args.critic_batch, rng)
        critic_target = copy.deepcopy(critic).requires_grad_(False)

        curve = [run.evaluate(policy, task, step=0)]  # zero-shot
        for step in range(1, args.total_steps + 1):
            b = sample_batch(data["packed"], K, args.batch_size, rng, run.device)
            pred = policy(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
            # critic (eqs. 15-16) on --critic-batch random steps whose next step is in the window (or that
            # end the episode): a^ = pi_theta'(s') is the policy's own action there, detached
            nxt = F.pad(b["mask"][:, 1:], (0, 1))
            valid = b["mask"] * torch.maximum(nxt, b["terminals"])
            idx = torch.multinomial(valid.flatten(), min(args.critic_batch, int(valid.sum())))
            t = {k: b[k].flatten(0, 1)[idx] for k in ("states", "actions", "rewards", "terminals", "next_states")}
            a_next = torch.cat([pred[:, 1:], pred[:, -1:]], 1).detach().flatten(0, 1)[idx]
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
                for w, wt in zip(critic.parameters(), critic_target.parameters()):
                    wt.lerp_(w, args.tau)
            # policy (eq. 13)
            bc = sft_loss(pred, b["actions"], b["mask"])
            q = q_term(critic.requires_grad_(False), norm(b["states"]), pred, b["mask"])
            critic.requires_grad_(True)
            loss = bc - args.alpha * q
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), args.grad_clip)
            opt.step()
            logs = {"loss": run.check(loss, step, task), "bc": bc.item(), "q": q.item(),
                    "critic_loss": run.check(critic_loss, step, task)}
            run.log(task, step, logs)  # to wandb every --log-every steps (--track)
            if step % args.eval_every == 0 or step == args.total_steps:
                curve.append(run.evaluate(policy, task, step, logs))  # validation and reporting episodes
                run.select(policy, curve)  # keeps the parameters with the best validation score so far
        run.record(task, curve)
    return run.finish()

if __name__ == "__main__":
    cli(main, Args)
