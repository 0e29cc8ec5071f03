"""QP-DPO: DPO plus a Q-guided policy-improvement term (the paper's Q-guided Policy Optimization).

    python qp_dpo.py --env halfcheetahvel --tuning full --seed 1

Policy loss (paper eq. 14): the DPO loss of dpo.py - alpha * Q(s, pi(s)). The Q term, its twin
Q-networks, their double-Q TD loss (eqs. 15-16), the Monte-Carlo warm-up of the critics and the
target action a^ (the policy's own action at the next step of the window, detached) are those of
qp_sft.py, where the reasons are given; Q is divided by its detached mean magnitude (as in QT and
TD3+BC) so that alpha is scale-free.

DPO loss (paper eq. 4) and its Gaussian policy with a fixed std are those of dpo.py, including the
rejected action a_bar = the policy's own action, detached (dpo.py's docstring gives the reason and
the measurement); pi_ref is the pretrained policy, its actions computed once per task.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.data import gather, masked_mean, returns_to_go, sample_batch
from common.flags import FinetuneArgs, cli
from common.run import Run
from common.tuning import DEFAULT_LR


@dataclass
class Args(FinetuneArgs):
    beta: float = 0.1
    """DPO temperature (eq. 4)"""
    policy_std: float = 0.1
    """fixed std of the Gaussian policy around the DT's action"""
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



def gaussian_logp(x: torch.Tensor, mu: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; mu, std^2 I), summed over action dimensions."""
    return -((x - mu) ** 2).sum(-1) / (2 * std ** 2) - x.shape[-1] * math.log(std * math.sqrt(2 * math.pi))


def rejected_actions(mu: torch.Tensor) -> torch.Tensor:
    """a_bar: the policy's own current action, detached (see the module doc)."""
    return mu.detach()


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
    run = Run(args, "qp_dpo")
    K = run.model.cfg.K
    sp, model = run.sp, run.model
    norm = lambda s: (s - model.state_mean) / model.state_std  # noqa: E731
    for task in run.tasks:
        rng = run.seed(task)
        data = run.data[task]
        # dropout off, as TRL does for DPO and PPO: log-ratios to pi_ref and pi_old must not be dropout noise
        policy = run.policy(task).eval()
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=args.lr, weight_decay=args.weight_decay)
        ref_table = ref_actions(policy, data["packed"], K, run.device)  # pi_ref: the pretrained policy
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
            # policy (eq. 14)
            ref = ref_table[b["window"]]
            a_bar = rejected_actions(pred)
            pref = dpo_loss(pred, ref, b["actions"], a_bar, b["mask"], args.beta, args.policy_std)
            q = q_term(critic.requires_grad_(False), norm(b["states"]), pred, b["mask"])
            critic.requires_grad_(True)
            loss = pref - args.alpha * q
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), args.grad_clip)
            opt.step()
            logs = {"loss": run.check(loss, step, task), "dpo": pref.item(), "q": q.item(),
                    "critic_loss": run.check(critic_loss, step, task)}
            run.log(task, step, logs)  # to wandb every --log-every steps (--track)
            if step % args.eval_every == 0 or step == args.total_steps:
                curve.append(run.evaluate(policy, task, step, logs))  # validation and reporting episodes
                run.select(policy, curve)  # keeps the parameters with the best validation score so far
        run.record(task, curve)
    return run.finish()


if __name__ == "__main__":
    cli(main, Args)
