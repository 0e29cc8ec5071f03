"""Online GRPO: the pretrained Prompt-DT finetuned on its own rollouts in the simulator, optionally with
the task's offline trajectories mixed into every group (LUFFY, Yan et al. 2025). Beyond the paper, whose
GRPO is offline (see grpo.py).

    python online_grpo.py --env metaworld --tuning full --seed 1                       # on-policy groups
    python online_grpo.py --env metaworld --tuning full --seed 1 --offline-members 2   # mixed groups

Per test task, each iteration (--total-steps of them) draws one reset seed, so that every member of the
group starts from the same initial state (the paper's grouping, made real), and rolls out --group-size
episodes of the stochastic policy pi(a|s) = N(mu(s), std^2 I), mu the DT's action, all at once (one
model call per env step for the group). A member's advantage is its group-normalised return
A_i = (R_i - mean R) / std R (eq. 8); every step of episode i gets A_i. Then --update-epochs passes over
--minibatches x --batch-size of the group's steps (drawn once per iteration) minimise eq. 5: the clipped
surrogate min(ratio A, clip(ratio) A), ratio pi(a|s) / pi_old(a|s) with pi_old the policy that acted, plus
beta times the exact KL to the pretrained policy |mu - mu_ref|^2 / (2 std^2) (grpo.py says why not eq. 7's
estimator); the learning rate is --lr-factor times the offline one. The budget is in env steps:
--total-steps x --group-size episodes per task, the count used is in the curve and result.json.

Mixed-policy groups (--offline-members k): each group also holds k of the task's offline trajectories,
drawn at random. Their returns join the group's mean and std, so a demonstration better than the
policy's rollouts gets a positive advantage. They were not sampled from pi_old, so instead of the
clipped ratio their steps are weighted by LUFFY's policy shaping f(pi) = pi / (pi + gamma): the
gradient pi' gamma / (pi + gamma)^2 is largest where pi is small, so good actions the policy finds
unlikely still teach it. LUFFY's pi is a token probability in [0, 1]; a Gaussian density has no such
bound, so we use the density relative to its peak, exp(-|a - mu|^2 / (2 std^2)), in (0, 1].
Evaluation, selection on validation episodes and result.json are those of the offline scripts.
--init-from <offline run folder> starts each task from that run's selected checkpoint instead of the
pretrained policy (offline-to-online), the KL then anchoring to it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.data import gather
from common.finetune import OnlineArgs, Run, cli
from common.rollout import online_seed, sample_episodes, subsample_steps
from grpo import gaussian_kl, gaussian_logp, group_advantages


@dataclass
class Args(OnlineArgs):
    offline_members: int = 0
    """offline trajectories of the task in every group (0: pure on-policy GRPO; >0: LUFFY's mixed groups)"""
    shaping_gamma: float = 0.1
    """gamma of LUFFY's policy shaping f(pi) = pi / (pi + gamma) for the offline members' steps"""


def online_grpo_loss(logp, logp_old, adv, kl, offline, pi_rel, clip_eps: float, beta: float,
                     gamma: float) -> torch.Tensor:
    """Eq. 5 on the on-policy steps, LUFFY's shaped term f(pi) A on the offline ones (offline = 1), the exact
    KL on all, averaged over the minibatch."""
    ratio = torch.exp((logp - logp_old).clamp(-20, 20))  # the clamp only guards exp against overflow
    on = torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    off = pi_rel / (pi_rel + gamma) * adv
    return -(torch.where(offline, off, on) - beta * kl).mean()


def main(args: Args) -> dict:
    if args.group_size + args.offline_members < 2 or args.offline_members > args.num_trajs:
        raise ValueError(f"a group needs 2 or more members and at most --num-trajs offline ones; got --group-size "
                         f"{args.group_size}, --offline-members {args.offline_members}, --num-trajs {args.num_trajs}")
    run = Run(args, ("online_grpo" if args.offline_members == 0 else "online_grpo_mixed")
              + ("_from_offline" if args.init_from else ""))
    for task in run.tasks:
        rng = run.seed(task)
        gen = torch.Generator(device=run.device).manual_seed(args.seed * 1000 + task)
        policy, ref = run.policy(task).eval(), run.policy(task).eval()  # ref: the starting policy, frozen
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=run.lr, weight_decay=args.weight_decay)
        p, K, target = run.data[task]["packed"], run.model.cfg.K, run.data[task]["target"]
        curve, env_steps = run.zero_shot(policy, task), 0
        for it in range(1, args.total_steps + 1):
            g = sample_episodes(policy, args.env, task, online_seed(task, it), args.group_size, target, K,
                                args.policy_std, gen, run.device)
            env_steps += g["env_steps"]
            returns, off = g["returns"], torch.zeros_like(g["episode"], dtype=torch.bool)
            if args.offline_members:  # LUFFY: demonstrations as off-policy members of the group
                trajs = rng.choice(len(p["lengths"]), args.offline_members, replace=False)
                idx = np.concatenate([np.full(p["lengths"][j], j) for j in trajs])
                ends = np.concatenate([np.arange(1, p["lengths"][j] + 1) for j in trajs])
                d = {k: torch.as_tensor(v, device=run.device, dtype=torch.long if k == "timesteps" else torch.float32)
                     for k, v in gather(p, idx, ends, K).items()}
                d["act"] = d["actions"][:, -1]
                d["episode"] = torch.as_tensor(args.group_size + np.repeat(np.arange(len(trajs)),
                                                                           p["lengths"][trajs]), device=run.device)
                d["mu"] = d["act"]  # only feeds logp_old, which offline steps do not use (no ratio)
                g = {k: torch.cat([g[k], d[k]]) for k in ("states", "actions", "rtg", "timesteps", "mask", "act",
                                                          "mu", "episode")}
                returns = np.concatenate([returns, [run.data[task]["trajs"][j]["rewards"].sum() for j in trajs]])
                off = torch.cat([off, torch.ones(len(idx), dtype=torch.bool, device=run.device)])
            adv = torch.as_tensor(group_advantages(np.asarray(returns, dtype=np.float64)), dtype=torch.float32,
                                  device=run.device)[g["episode"]]
            steps = subsample_steps(len(adv), args.batch_size, args.minibatches, gen, run.device)
            b = {k: g[k][steps] for k in ("states", "actions", "rtg", "timesteps", "mask", "act", "mu")}
            adv, off = adv[steps], off[steps]
            logp_old = gaussian_logp(b["act"], b["mu"], args.policy_std)
            with torch.no_grad():
                mu_ref = ref(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"], last_only=True)
            for _ in range(args.update_epochs):
                for j in torch.randperm(len(adv), generator=gen, device=run.device).split(args.batch_size):
                    mu = policy(b["states"][j], b["actions"][j], b["rtg"][j], b["timesteps"][j], b["mask"][j],
                                last_only=True)
                    logp = gaussian_logp(b["act"][j], mu, args.policy_std)
                    pi_rel = torch.exp(-((b["act"][j] - mu) ** 2).sum(-1) / (2 * args.policy_std ** 2))
                    kl = gaussian_kl(mu, mu_ref[j], args.policy_std)
                    loss = online_grpo_loss(logp, logp_old[j], adv[j], kl, off[j], pi_rel, args.clip_eps, args.beta,
                                            args.shaping_gamma)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), args.grad_clip)
                    opt.step()
            logs = {"loss": run.check(loss, it, task), "kl": kl.mean().item(),
                    "group_return": float(np.mean(returns[:args.group_size])), "env_steps": env_steps}
            run.log(policy, task, it, curve, logs)  # to wandb every --log-every iterations; evaluates when due
        run.record(task, curve)
    return run.finish()


if __name__ == "__main__":
    cli(main, Args)
