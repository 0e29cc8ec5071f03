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

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from common.flags import FinetuneArgs, cli
from common.rollout import evaluate, online_seed
from common.run import Run
from common.tuning import DEFAULT_LR


@dataclass
class Args(FinetuneArgs):
    total_steps: int = 40
    """iterations per test task: --group-size rollouts, then --update-epochs passes over their steps"""
    eval_every: int = 10
    """iterations between evaluations"""
    batch_size: int = 256
    """steps per minibatch"""
    group_size: int = 8
    """episodes rolled out per iteration (online_grpo: one group from one reset seed; online_ppo: a seed each)"""
    clip_eps: float = 0.2
    """epsilon of the clipped ratio (eqs. 5, 9)"""
    beta: float = 0.04
    """weight of the exact KL to the starting policy (the pretrained one, or --init-from's)"""
    policy_std: float = 0.1
    """fixed std of the Gaussian policy around the DT's action (exploration noise of the rollouts)"""
    update_epochs: int = 2
    """passes over each iteration's minibatches"""
    minibatches: int = 4
    """minibatches of --batch-size steps per pass, drawn once per iteration from the rollouts' steps (0: all
    of them); bounds the update's cost (a MetaWorld group of 8 rollouts has 4,000 steps)"""
    init_from: str = ""
    """offline-to-online: an offline run's folder <run-dir>/<run-name> (saved with --save-model selected, the
    default) whose selected checkpoint starts each task and anchors the KL; empty: the pretrained policy"""
    lr_factor: float = 0.1
    """without --lr, the learning rate is this times the tuning's offline default (on-policy updates drift
    further per step than imitation does)"""


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



def gaussian_logp(x: torch.Tensor, mu: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; mu, std^2 I), summed over action dimensions."""
    return -((x - mu) ** 2).sum(-1) / (2 * std ** 2) - x.shape[-1] * math.log(std * math.sqrt(2 * math.pi))


def gaussian_kl(mu: torch.Tensor, mu_ref: torch.Tensor, std: float) -> torch.Tensor:
    """KL(N(mu, std^2 I) || N(mu_ref, std^2 I)) = |mu - mu_ref|^2 / (2 std^2), exact (replaces eq. 7)."""
    return ((mu - mu_ref) ** 2).sum(-1) / (2 * std ** 2)


def gae(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, terminals: np.ndarray,
        has_next: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """GAE over concatenated trajectories: delta_t = r_t + gamma V(s_t+1) (1 - terminal) - V(s_t),
    A_t = delta_t + gamma lambda A_t+1 within a trajectory (has_next = 0 at each one's last step;
    a timeout there still bootstraps from V(s'))."""
    deltas = rewards + gamma * next_values * (1 - terminals) - values
    adv, acc = np.zeros_like(deltas), 0.0
    for t in range(len(deltas) - 1, -1, -1):
        acc = deltas[t] + gamma * lam * acc * has_next[t]
        adv[t] = acc
    return adv


@torch.no_grad()
def sample_episodes(policy, env_name: str, task: int, seeds, n: int, target: float, K: int, std: float,
                    gen: torch.Generator, device="cpu") -> dict:
    """n episodes of the stochastic policy N(mu(s), std^2 I) from reset seeds `seeds` (one int: all n start
    from it; or n of them), one model call per env step for the n (common/rollout.py's evaluate, whose act
    samples and records each step). Returns the valid
    steps, episode by episode in time order: the K-step windows the policy saw (states, actions, rtg,
    timesteps, mask), the sampled `act` (before the env clips it to [-1, 1]), `mu`, `reward`, the step's
    `episode` index and `last` (its episode's last step), plus per episode `returns` and `success`, and
    `env_steps`."""
    rec = []

    def act(s, a, r, t, m):
        mu = policy(s, a, r, t, m, last_only=True)
        x = mu + std * torch.randn(mu.shape, generator=gen, device=mu.device)
        rec.append((s.clone(), a.clone(), r.clone(), t.clone(), m.clone(), x, mu))
        return x

    seeds = [int(seeds)] * n if np.ndim(seeds) == 0 else [int(x) for x in seeds]
    ev = evaluate(act, env_name, [task], n, [target], K, device, seeds=[seeds])
    lengths = torch.as_tensor(ev["lengths"].reshape(n), device=device)
    t = torch.arange(len(rec), device=device)[None]
    valid = t < lengths[:, None]  # (n, T): each episode's steps before its end
    out = {k: torch.stack([x[i] for x in rec], 1)[valid] for i, k in
           enumerate(("states", "actions", "rtg", "timesteps", "mask", "act", "mu"))}
    out["reward"] = torch.as_tensor(ev["step_rewards"], dtype=torch.float32, device=device)[valid]
    out["episode"] = torch.arange(n, device=device)[:, None].expand(n, len(rec))[valid]
    out["last"] = (t == lengths[:, None] - 1).expand(n, len(rec))[valid]
    out.update(returns=ev["returns"].reshape(n), success=ev["success"].reshape(n), env_steps=int(lengths.sum()))
    return out


def subsample_steps(n: int, batch_size: int, minibatches: int, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """Indices of minibatches x batch_size distinct steps out of an iteration's n (all n when minibatches is 0
    or they would cover n), in random order: the online scripts draw them once per iteration and reshuffle
    them into minibatches on every pass, so the update's cost does not grow with the rollouts' length."""
    perm = torch.randperm(n, generator=gen, device=device)
    return perm if minibatches == 0 else perm[:minibatches * batch_size]

def main(args: Args) -> dict:
    args.lr = DEFAULT_LR[args.tuning] * args.lr_factor if args.lr is None else args.lr
    run = Run(args, "online_ppo" + ("_from_offline" if args.init_from else ""))  # --init-from: see online_grpo.py
    sp, model = run.sp, run.model
    for task in run.tasks:
        run.seed(task)
        gen = torch.Generator(device=run.device).manual_seed(args.seed * 1000 + task)
        policy, ref = run.policy(task).eval(), run.policy(task).eval()  # ref: the starting policy, frozen
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=args.lr, weight_decay=args.weight_decay)
        critic = nn.Sequential(nn.Linear(sp.obs_dim + 1, 256), nn.Mish(), nn.Linear(256, 256), nn.Mish(),
                               nn.Linear(256, 256), nn.Mish(), nn.Linear(256, 1)).to(run.device)
        critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
        value = lambda s, t: critic(torch.cat([(s - model.state_mean) / model.state_std,  # noqa: E731
                                               t[:, None].float() / sp.horizon], -1)).squeeze(-1)
        curve, env_steps = [run.evaluate(policy, task, step=0)], 0
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
            run.log(task, it, logs)  # to wandb every --log-every iterations (--track)
            if it % args.eval_every == 0 or it == args.total_steps:
                curve.append(run.evaluate(policy, task, it, logs))  # validation and reporting episodes
                run.select(policy, curve)  # keeps the parameters with the best validation score so far
        run.record(task, curve)
    return run.finish()


if __name__ == "__main__":
    cli(main, Args)
