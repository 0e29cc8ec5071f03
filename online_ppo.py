"""Online PPO: the baseline for online_grpo.py, on the same kind of rollouts with a learned critic.

    python online_ppo.py --env metaworld --tuning full --seed 1

Per test task, each iteration (--total-steps of them) rolls out --group-size episodes of the
stochastic policy pi(a|s) = N(mu(s), std^2 I) from distinct reset seeds (the standard PPO setting; no
grouping), estimates advantages with GAE(gamma, lambda) from a state-value critic V(s, t/H) (3 hidden
layers of 256, Mish; the time input makes the horizon's truncation a true end of the episode, so the
last step does not bootstrap), normalised over the iteration's steps, and takes --update-epochs passes
over --minibatches x --batch-size of the iteration's steps (drawn once per iteration) on the clipped
surrogate min(ratio A, clip(ratio) A) (eq. 9) plus beta times the exact KL to the pretrained policy, as
online_grpo.py does, so that the two differ only in the advantage. V is regressed onto the lambda-returns
of every step first (it is cheap). The env steps used are counted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from common.finetune import OnlineArgs, Run, cli
from common.rollout import online_seed, sample_episodes, subsample_steps
from grpo import gaussian_kl, gaussian_logp
from ppo import gae


@dataclass
class Args(OnlineArgs):
    gamma: float = 0.99
    """discount"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    critic_lr: float = 3e-4
    """Adam learning rate of V"""


def online_ppo_loss(logp, logp_old, adv, kl, clip_eps: float, beta: float) -> torch.Tensor:
    """Eq. 9 with the exact KL to the pretrained policy, averaged over the minibatch."""
    ratio = torch.exp((logp - logp_old).clamp(-20, 20))  # the clamp only guards exp against overflow
    return -(torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv) - beta * kl).mean()


def main(args: Args) -> dict:
    run = Run(args, "online_ppo" + ("_from_offline" if args.init_from else ""))  # --init-from: see online_grpo.py
    sp, model = run.sp, run.model
    for task in run.tasks:
        run.seed(task)
        gen = torch.Generator(device=run.device).manual_seed(args.seed * 1000 + task)
        policy, ref = run.policy(task).eval(), run.policy(task).eval()  # ref: the starting policy, frozen
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=run.lr, weight_decay=args.weight_decay)
        critic = nn.Sequential(nn.Linear(sp.obs_dim + 1, 256), nn.Mish(), nn.Linear(256, 256), nn.Mish(),
                               nn.Linear(256, 256), nn.Mish(), nn.Linear(256, 1)).to(run.device)
        critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
        value = lambda s, t: critic(torch.cat([(s - model.state_mean) / model.state_std,  # noqa: E731
                                               t[:, None].float() / sp.horizon], -1)).squeeze(-1)
        curve, env_steps = run.zero_shot(policy, task), 0
        for it in range(1, args.total_steps + 1):
            seeds = [online_seed(task, (it - 1) * args.group_size + i) for i in range(args.group_size)]
            g = sample_episodes(policy, args.env, task, seeds, args.group_size, run.data[task]["target"],
                                model.cfg.K, args.policy_std, gen, run.device)
            env_steps += g["env_steps"]
            s_t, t_t = g["states"][:, -1], g["timesteps"][:, -1]
            with torch.no_grad():
                v = value(s_t, t_t).cpu().numpy()
            last = g["last"].cpu().numpy().astype(np.float64)
            v_next = np.append(v[1:], 0.0)  # the next step of the same episode (unused at an episode's last step)
            a = gae(g["reward"].cpu().numpy(), v, v_next, last, 1 - last, args.gamma, args.gae_lambda)
            ret = torch.as_tensor(a + v, dtype=torch.float32, device=run.device)  # lambda-returns: V's targets
            for _ in range(args.update_epochs):  # V is a small MLP: it fits every step of the iteration
                for j in torch.randperm(len(ret), generator=gen, device=run.device).split(args.batch_size):
                    critic_loss = ((value(s_t[j], t_t[j]) - ret[j]) ** 2).mean()
                    critic_opt.zero_grad(set_to_none=True)
                    critic_loss.backward()
                    critic_opt.step()
            adv = torch.as_tensor((a - a.mean()) / (a.std() + 1e-8), dtype=torch.float32, device=run.device)
            steps = subsample_steps(len(adv), args.batch_size, args.minibatches, gen, run.device)
            b = {k: g[k][steps] for k in ("states", "actions", "rtg", "timesteps", "mask", "act", "mu")}
            adv, logp_old = adv[steps], gaussian_logp(b["act"], b["mu"], args.policy_std)
            with torch.no_grad():
                mu_ref = ref(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"], last_only=True)
            for _ in range(args.update_epochs):
                for j in torch.randperm(len(adv), generator=gen, device=run.device).split(args.batch_size):
                    mu = policy(b["states"][j], b["actions"][j], b["rtg"][j], b["timesteps"][j], b["mask"][j],
                                last_only=True)
                    kl = gaussian_kl(mu, mu_ref[j], args.policy_std)
                    loss = online_ppo_loss(gaussian_logp(b["act"][j], mu, args.policy_std), logp_old[j], adv[j], kl,
                                           args.clip_eps, args.beta)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), args.grad_clip)
                    opt.step()
            logs = {"loss": run.check(loss, it, task), "kl": kl.mean().item(), "critic_loss": critic_loss.item(),
                    "rollout_return": float(np.mean(g["returns"])), "env_steps": env_steps}
            run.log(policy, task, it, curve, logs)  # to wandb every --log-every iterations; evaluates when due
        run.record(task, curve)
    return run.finish()


if __name__ == "__main__":
    cli(main, Args)
