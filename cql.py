"""CQL: conservative Q-learning finetuning of the pretrained Prompt-DT on a test task's trajectories.

    python cql.py --env halfcheetahvel --tuning full --seed 1

Critic (paper eqs. 10-11): twin Q-networks (3 hidden layers of 256, Mish) trained by the TD loss with
a' = pi(s') and Polyak-averaged targets, plus alpha times the CQL regulariser: the soft maximum
(logsumexp) of Q over --num-random uniform random actions and the policy's action, minus Q at the
data action. It pushes Q down away from the data and up on it, so that the policy cannot exploit
over-estimated out-of-distribution actions. Policy (eq. 12): maximise Q(s, pi(s)), with no imitation
term. a' = pi(s') is the policy's own action at the next step of the same window (the last step of
a window, whose s' lies outside it, is left out of the TD loss).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from common.finetune import FinetuneArgs, Run, cli, masked_mean


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
    """transitions per TD update, drawn from the batch's windows"""


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


def cql_regulariser(q_data: torch.Tensor, q_other: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 11 in its CQL(H) form: E_s[logsumexp_j Q(s, a_j)] - E_(s,a)[Q(s, a)], where q_other
    (n, B, K) holds Q at the random and policy actions and q_data (B, K) Q at the data action."""
    return masked_mean(torch.logsumexp(q_other, 0) - math.log(q_other.shape[0]) - q_data, mask)


def main(args: Args) -> dict:
    run = Run(args, "cql")
    sp, model = run.sp, run.model
    norm = lambda s: (s - model.state_mean) / model.state_std  # noqa: E731
    for task in run.tasks:
        rng = run.seed(task)
        policy = run.policy(task).train()
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=run.lr, weight_decay=args.weight_decay)
        critic = TwinQ(sp.obs_dim, sp.act_dim).to(run.device)
        critic_target = copy.deepcopy(critic).requires_grad_(False)
        critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)

        def update(b: dict, step: int) -> dict:
            pred = policy(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
            s = norm(b["states"])
            # critic: TD (eq. 10) on --critic-batch random steps whose next step is in the window, a' = pi(s')
            valid = (b["mask"][:, :-1] * b["mask"][:, 1:]).flatten()
            idx = torch.multinomial(valid, min(args.critic_batch, int(valid.sum())))
            pick = lambda x: x[:, :-1].flatten(0, 1)[idx]  # noqa: E731
            nxt = lambda x: x[:, 1:].flatten(0, 1)[idx]  # noqa: E731
            with torch.no_grad():
                y = pick(b["rewards"]) + args.gamma * (1 - pick(b["terminals"])) * torch.min(
                    *critic_target(nxt(s), nxt(pred.detach())))
            q1, q2 = critic(pick(s), pick(b["actions"]))
            td = ((q1 - y) ** 2 + (q2 - y) ** 2).mean()
            # regulariser (eq. 11) against uniform random actions and the policy's action, on the last
            # step of every window (one state per window keeps its cost at that of a 64-state batch)
            n, s_last = args.num_random, s[:, -1:]
            a_rand = torch.rand((n, *b["actions"][:, -1:].shape), device=run.device) * 2 - 1
            a_other = torch.cat([a_rand, pred[:, -1:].detach().unsqueeze(0)])
            q1_o, q2_o = critic(s_last.unsqueeze(0).expand(n + 1, *s_last.shape), a_other)
            q1_d, q2_d = critic(s_last, b["actions"][:, -1:])
            last = b["mask"][:, -1:]
            reg = cql_regulariser(q1_d, q1_o, last) + cql_regulariser(q2_d, q2_o, last)
            critic_loss = td + args.alpha * reg
            critic_opt.zero_grad(set_to_none=True)
            critic_loss.backward()
            critic_opt.step()
            with torch.no_grad():
                for p, pt in zip(critic.parameters(), critic_target.parameters()):
                    pt.lerp_(p, args.tau)
            # policy (eq. 12): maximise Q(s, pi(s))
            critic.requires_grad_(False)
            loss = -masked_mean(torch.min(*critic(s, pred)), b["mask"])
            critic.requires_grad_(True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), args.grad_clip)
            opt.step()
            return {"loss": run.check(loss, step, task), "td": td.item(), "cql_reg": reg.item(),
                    "critic_loss": run.check(critic_loss, step, task)}

        run.train(task, policy, update, rng)
    return run.finish()


if __name__ == "__main__":
    cli(main, Args)
