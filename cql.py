"""CQL: conservative Q-learning finetuning of the pretrained Prompt-DT on a test task's trajectories.

    python cql.py --env halfcheetahvel --tuning full --seed 1

Critic (paper eqs. 10-11): twin Q-networks (3 hidden layers of 256, Mish) trained by the TD loss with
a' = pi(s') and Polyak-averaged targets, plus alpha times the CQL regulariser: the soft maximum
(logsumexp) of Q over --num-random uniform random actions and the policy's action, minus Q at the
data action; --critic-batch transitions per update. It pushes Q down away from the data and up on
it, so that the policy cannot exploit over-estimated out-of-distribution actions. a' = pi(s') is the
policy's own action at the next step of the same window (the last step of a window, whose s' lies
outside it, is not drawn for the critic). Policy (eq. 12): maximise Q(s, pi(s)), on the critic batch's
states (as CQL and TD3+BC do: their actor and critic share one batch of transitions).

Where we depart from the paper, and why (measured on halfcheetahvel, full tuning):
- The critics are first regressed onto the data's Monte-Carlo discounted returns for
  --critic-warmup updates (as many as the run has steps by default), so TD and the regulariser
  start on the value scale; a fixed 500-step warm-up cost minutes even in a 4-step smoke run.
- The policy maximises Q divided by its detached mean magnitude (TD3+BC's normalisation, so the
  weights mean the same on every env) plus --bc-weight times |pi(s) - a|^2, TD3+BC's imitation
  anchor. On -Q alone, 50 trajectories' critic is exploited within a few hundred steps: the return
  fell from -55 zero-shot to -115 (best) and -173 (final) in our default run.
- The Q term is averaged over the --critic-batch steps the critic trains on, not over every step of every
  window as the imitation term is: a mean over 256 random steps of the 1,280 is an unbiased estimate of
  the mean over all of them, and the twin critics' forward and backward through all 1,280 cost 37 ms a
  step on one CPU thread against 7.6 ms (AntDir shapes; CQL's step went from 1.38x SFT's to 1.13x).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from common.data import masked_mean, returns_to_go, sample_batch
from common.flags import FinetuneArgs, cli
from common.run import Run
from common.tuning import DEFAULT_LR


@dataclass
class Args(FinetuneArgs):
    alpha: float = 5.0
    """weight of the CQL regulariser (eq. 11)"""
    gamma: float = 0.99
    """discount of the TD target (eq. 10)"""
    tau: float = 0.005
    """Polyak rate of the target Q-networks"""
    critic_lr: float = 3e-4
    """Adam learning rate of the Q-networks"""
    num_random: int = 10
    """uniform random actions per state in the regulariser"""
    critic_batch: int = 256
    """transitions per critic update, drawn from the batch's windows"""
    critic_warmup: int = -1
    """critic-only Monte-Carlo regression updates before the first policy step (-1: min(--total-steps, 1000))"""
    bc_weight: float = 10.0
    """weight of the imitation anchor |pi(s) - a|^2 against the normalised Q (0: the paper's eq. 12; 1 fell
    below zero-shot in the AntDir search, benchmark/results/tune/antdir.md)"""


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
    """Eq. 10's target: r + gamma * min_i Q'_i(s', a'), no bootstrap after a true termination."""
    return r + gamma * (1 - done) * torch.min(*q_target(s_next, a_next))


def cql_regulariser(q_data: torch.Tensor, q_other: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 11 in its CQL(H) form: E_s[logsumexp_j Q(s, a_j)] - E_(s,a)[Q(s, a)], where q_other
    (n, B, K) holds Q at the random and policy actions and q_data (B, K) Q at the data action."""
    return masked_mean(torch.logsumexp(q_other, 0) - math.log(q_other.shape[0]) - q_data, mask)


def policy_q(critic: TwinQ, s: torch.Tensor, pi_s: torch.Tensor) -> torch.Tensor:
    """The Q of eq. 12: min_i Q_i(s, pi(s)) averaged over the given (valid) steps and divided by its
    detached mean magnitude (TD3+BC), so that --bc-weight means the same on every env."""
    q = torch.min(*critic(s, pi_s))
    return q.mean() / q.abs().mean().detach().clamp_min(1e-6)


def main(args: Args) -> dict:
    args.lr = DEFAULT_LR[args.tuning] if args.lr is None else args.lr  # --lr (or its preset), else the tuning's
    run = Run(args, "cql")
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
            s = norm(b["states"])
            # critic (eqs. 10-11) on --critic-batch random steps whose next step is in the window: a' = pi(s') is
            # the policy's own action there, detached (a window's last step, whose s' lies outside it, is not drawn)
            valid = (b["mask"][:, :-1] * b["mask"][:, 1:]).flatten()
            idx = torch.multinomial(valid, min(args.critic_batch, int(valid.sum())))
            t = {k: b[k][:, :-1].flatten(0, 1)[idx] for k in ("actions", "rewards", "terminals")}
            a_next = pred[:, 1:].detach().flatten(0, 1)[idx]
            s_t, s_next = s[:, :-1].flatten(0, 1)[idx], s[:, 1:].flatten(0, 1)[idx]
            with torch.no_grad():
                y = td_target(critic_target, t["rewards"], t["terminals"], s_next, a_next, args.gamma)
            q1, q2 = critic(s_t, t["actions"])
            td = ((q1 - y) ** 2 + (q2 - y) ** 2).mean()
            # eq. 11's regulariser on the last step of every window (one state per window), against uniform
            # random actions and the policy's action
            s_reg, a_reg = s[:, -1], b["actions"][:, -1]
            a_rand = torch.rand((args.num_random, *a_reg.shape), device=run.device) * 2 - 1
            a_other = torch.cat([a_rand, pred[:, -1].detach().unsqueeze(0)])
            q1_o, q2_o = critic(s_reg.unsqueeze(0).expand(len(a_other), *s_reg.shape), a_other)
            q1_d, q2_d = critic(s_reg, a_reg)
            ones = torch.ones_like(q1_d)
            reg = cql_regulariser(q1_d, q1_o, ones) + cql_regulariser(q2_d, q2_o, ones)
            critic_loss = td + args.alpha * reg
            critic_opt.zero_grad(set_to_none=True)
            critic_loss.backward()
            critic_opt.step()
            with torch.no_grad():
                for w, wt in zip(critic.parameters(), critic_target.parameters()):
                    wt.lerp_(w, args.tau)
            # policy (eq. 12): maximise Q(s, pi(s)) on the critic batch's states, divided by its detached mean
            # magnitude (TD3+BC), plus the imitation anchor on every step (see the module doc)
            q = policy_q(critic.requires_grad_(False), s_t, pred[:, :-1].flatten(0, 1)[idx])
            critic.requires_grad_(True)
            bc = masked_mean(((pred - b["actions"]) ** 2).mean(-1), b["mask"])
            loss = -q + args.bc_weight * bc
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), args.grad_clip)
            opt.step()
            logs = {"loss": run.check(loss, step, task), "bc": bc.item(), "td": td.item(), "cql_reg": reg.item(),
                    "critic_loss": run.check(critic_loss, step, task)}
            run.log(task, step, logs)  # to wandb every --log-every steps (--track)
            if step % args.eval_every == 0 or step == args.total_steps:
                curve.append(run.evaluate(policy, task, step, logs))  # validation and reporting episodes
                run.select(policy, curve)  # keeps the parameters with the best validation score so far
        run.record(task, curve)
    return run.finish()


if __name__ == "__main__":
    cli(main, Args)
