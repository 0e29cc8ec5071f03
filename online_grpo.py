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

import math
from dataclasses import dataclass

import numpy as np
import torch

from common.data import gather
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



def gaussian_logp(x: torch.Tensor, mu: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; mu, std^2 I), summed over action dimensions."""
    return -((x - mu) ** 2).sum(-1) / (2 * std ** 2) - x.shape[-1] * math.log(std * math.sqrt(2 * math.pi))


def gaussian_kl(mu: torch.Tensor, mu_ref: torch.Tensor, std: float) -> torch.Tensor:
    """KL(N(mu, std^2 I) || N(mu_ref, std^2 I)) = |mu - mu_ref|^2 / (2 std^2), exact (replaces eq. 7)."""
    return ((mu - mu_ref) ** 2).sum(-1) / (2 * std ** 2)


def group_advantages(returns: np.ndarray) -> np.ndarray:
    """Eq. 8: each trajectory's return normalised by the group's mean and std."""
    return (returns - returns.mean()) / (returns.std() + 1e-8)


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
    if args.group_size + args.offline_members < 2 or args.offline_members > args.num_trajs:
        raise ValueError(f"a group needs 2 or more members and at most --num-trajs offline ones; got --group-size "
                         f"{args.group_size}, --offline-members {args.offline_members}, --num-trajs {args.num_trajs}")
    args.lr = DEFAULT_LR[args.tuning] * args.lr_factor if args.lr is None else args.lr
    run = Run(args, ("online_grpo" if args.offline_members == 0 else "online_grpo_mixed")
              + ("_from_offline" if args.init_from else ""))
    for task in run.tasks:
        rng = run.seed(task)
        gen = torch.Generator(device=run.device).manual_seed(args.seed * 1000 + task)
        policy, ref = run.policy(task).eval(), run.policy(task).eval()  # ref: the starting policy, frozen
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=args.lr, weight_decay=args.weight_decay)
        p, K, target = run.data[task]["packed"], run.model.cfg.K, run.data[task]["target"]
        curve, env_steps = [run.evaluate(policy, task, step=0)], 0
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
            run.log(task, it, logs)  # to wandb every --log-every iterations (--track)
            if it % args.eval_every == 0 or it == args.total_steps:
                curve.append(run.evaluate(policy, task, it, logs))  # validation and reporting episodes
                run.select(policy, curve)  # keeps the parameters with the best validation score so far
        run.record(task, curve)
    return run.finish()


if __name__ == "__main__":
    cli(main, Args)
