"""Prompt Decision Transformer (Xu et al., 2022) in the minGPT style: the paper's backbone.

Input (paper eq. 1): a K*-step trajectory prompt (r*, s*, a*) of the task, with its own embeddings,
in front of the last K steps (r, s, a) of the current episode, one token per element, each plus a
timestep embedding. Causal self-attention blocks (pre-LayerNorm, MLP 4x); a tanh action head reads
the hidden state of every state token, which sees r_t and s_t but never a_t.

The model takes raw states and raw returns-to-go: the state normalisation and the return scale are
buffers saved with the weights, so a checkpoint is self-contained.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    obs_dim: int
    act_dim: int
    max_ep_len: int  # timestep embedding size (the env's horizon)
    n_layer: int = 3
    n_embd: int = 128
    n_head: int = 1
    K: int = 20  # steps of history
    prompt_len: int = 5  # K*, steps of trajectory prompt
    dropout: float = 0.1


class Block(nn.Module):
    """Pre-LN transformer block. `queries=1` returns only the last token's output (rollouts need
    only the action of the last state token, so the last block skips the rest)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.n_embd
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)  # lora wraps these two
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, queries: int | None = None):
        B, T, d = x.shape
        h = self.ln_1(x)
        q, k, v = self.c_attn(h).split(d, dim=2)
        if queries is not None:  # the last token attends to every earlier one: no causal mask needed
            q, x = q[:, -queries:], x[:, -queries:]
            attn_mask = attn_mask[..., -queries:, :] if attn_mask is not None else None
        heads = lambda t: t.reshape(B, t.shape[1], self.n_head, d // self.n_head).transpose(1, 2)  # noqa: E731
        p = self.dropout if self.training else 0.0
        if attn_mask is None and queries is None:  # no padding: the fused causal kernel
            y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=attn_mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, -1, d)
        x = x + self.drop(self.c_proj(y))
        return x + self.drop(self.mlp_proj(F.gelu(self.mlp_fc(self.ln_2(x)))))


class PromptDT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "--n-embd must be divisible by --n-head"
        self.cfg = cfg
        d = cfg.n_embd
        self.embed_timestep = nn.Embedding(cfg.max_ep_len, d)
        self.embed_return, self.embed_state = nn.Linear(1, d), nn.Linear(cfg.obs_dim, d)
        self.embed_action = nn.Linear(cfg.act_dim, d)
        # Prompt-DT: the prompt has its own embeddings
        self.prompt_embed_timestep = nn.Embedding(cfg.max_ep_len, d)
        self.prompt_embed_return, self.prompt_embed_state = nn.Linear(1, d), nn.Linear(cfg.obs_dim, d)
        self.prompt_embed_action = nn.Linear(cfg.act_dim, d)
        self.embed_ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.action_head = nn.Linear(d, cfg.act_dim)
        self.register_buffer("state_mean", torch.zeros(cfg.obs_dim))
        self.register_buffer("state_std", torch.ones(cfg.obs_dim))
        self.register_buffer("rtg_scale", torch.ones(()))
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scaled init of the residual projections
            if name.endswith("c_proj.weight") or name.endswith("mlp_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def _tokens(self, states, actions, rtg, timesteps, emb_r, emb_s, emb_a, emb_t):
        """(B, L) steps -> (B, 3L, d) tokens ordered r_1, s_1, a_1, r_2, ..."""
        B, L = rtg.shape
        s = (states - self.state_mean) / self.state_std
        r = (rtg / self.rtg_scale).unsqueeze(-1)
        t = emb_t(timesteps)
        return torch.stack([emb_r(r) + t, emb_s(s) + t, emb_a(actions) + t], dim=2).reshape(B, 3 * L, -1)

    def forward(self, states, actions, rtg, timesteps, mask, prompt: dict, last_only: bool = False):
        """states (B, K, obs), actions (B, K, act), rtg (B, K), timesteps (B, K) long, mask (B, K)
        (0 on left padding); prompt: the same five keys for the K* prompt steps, each (B, K*, ...).
        Returns the predicted actions (B, K, act), or (B, act) for the last step when last_only."""
        B, K = rtg.shape
        x = torch.cat([
            self._tokens(prompt["states"], prompt["actions"], prompt["rtg"], prompt["timesteps"],
                         self.prompt_embed_return, self.prompt_embed_state, self.prompt_embed_action,
                         self.prompt_embed_timestep),
            self._tokens(states, actions, rtg, timesteps, self.embed_return, self.embed_state,
                         self.embed_action, self.embed_timestep)], dim=1)
        x = self.drop(self.embed_ln(x))
        keep = torch.cat([prompt["mask"], mask], dim=1).bool()
        attn_mask = None
        if not bool(keep.all()):  # left padding: causal and not a padded key (a token always sees itself)
            T = x.shape[1]
            keep = keep.repeat_interleave(3, dim=1)
            eye = torch.eye(T, dtype=torch.bool, device=x.device)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            attn_mask = ((causal & keep[:, None, :]) | eye).unsqueeze(1)
        if last_only:  # a_t is unknown and, by causality, never seen by s_t: drop its token
            x = x[:, :-1]
            attn_mask = attn_mask[..., :-1, :-1] if attn_mask is not None else None
        for i, block in enumerate(self.blocks):
            last = last_only and i == len(self.blocks) - 1
            x = block(x, attn_mask, queries=1 if last else None)  # then s_t is the last token
        if last_only:
            return torch.tanh(self.action_head(self.ln_f(x[:, -1])))
        s_hidden = x[:, 3 * self.cfg.prompt_len + 1::3]  # every state token of the history
        return torch.tanh(self.action_head(self.ln_f(s_hidden)))

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def pretrain_command(env: str, cfg: dict | None = None, out: str = "") -> str:
    """The pretrain_pdt.py command that makes a checkpoint of this env and model size at `out`."""
    extra = ""
    if cfg is not None:
        extra = "".join(f" --{k.replace('_', '-')} {cfg[k]}" for k in ("n_layer", "n_embd", "n_head")
                        if cfg[k] != ModelConfig.__dataclass_fields__[k].default)
    return f"python pretrain_pdt.py --env {env}{extra}" + (f" --out {out}" if out else "")


PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def in_project(path: str) -> str:
    """A relative path that does not exist from the working folder, taken from the project root instead (the
    shipped pretrained/<env>.pt, when a script runs from another folder)."""
    return path if os.path.isabs(path) or os.path.exists(path) else os.path.join(PROJECT_ROOT, path)


def default_checkpoint(env: str, n_layer: int = 3, n_embd: int = 128, n_head: int = 1) -> str:
    """Where the finetuning scripts look by default: pretrained/<env>.pt at the default scale (kept in
    git), pretrained/<env>_l<L>_e<E>_h<H>.pt otherwise. pretrain_pdt.py writes there only when told
    (--out), so an experimental pretraining never replaces a shipped checkpoint."""
    default = (n_layer, n_embd, n_head) == (3, 128, 1)
    return f"pretrained/{env}.pt" if default else f"pretrained/{env}_l{n_layer}_e{n_embd}_h{n_head}.pt"


def load_pretrained(path: str, env: str, obs_dim: int, act_dim: int, device="cpu", **expect) -> PromptDT:
    """Load a pretrain_pdt.py checkpoint; a missing file or any mismatch (env, obs/action dims, a
    model-shape entry in `expect`, weight shapes) raises a one-line error saying what and how to fix."""
    import os

    if not os.path.exists(path):
        raise FileNotFoundError(f"pretrained checkpoint {path} is missing; make it with: {pretrain_command(env, None, path)}"
                                f" (or pass --pretrained PATH)")
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
        cfg_d, sd = ck["config"], ck["state_dict"]
    except Exception as e:  # noqa: BLE001 (any unreadable file gets the same one-line message)
        raise RuntimeError(f"pretrained checkpoint {path} is unreadable ({type(e).__name__}); "
                           f"remake it with: {pretrain_command(env, None, path)} --overwrite") from None
    mism = []
    if ck.get("env") != env:
        mism.append(f"env {ck.get('env')} != {env}")
    for k, want in (("obs_dim", obs_dim), ("act_dim", act_dim), *expect.items()):
        if cfg_d.get(k) != want:
            mism.append(f"{k} {cfg_d.get(k)} != {want}")
    if mism:
        want = {**cfg_d, **expect}
        out = default_checkpoint(env, want["n_layer"], want["n_embd"], want["n_head"])
        raise ValueError(f"pretrained checkpoint {path} does not match this run: {', '.join(mism)}; "
                         f"pass the right --pretrained or make one with: {pretrain_command(env, want, out)}")
    model = PromptDT(ModelConfig(**cfg_d)).to(device)
    own = model.state_dict()
    bad = [k for k in own if k not in sd or sd[k].shape != own[k].shape] + [k for k in sd if k not in own]
    if bad:
        raise ValueError(f"pretrained checkpoint {path} has weights that do not fit its config "
                         f"({', '.join(bad[:3])}{'...' if len(bad) > 3 else ''}); remake it with: "
                         f"{pretrain_command(env, cfg_d, path)} --overwrite")
    model.load_state_dict(sd)
    model.pretrain_tasks = pretrain_tasks(ck, env)
    return model


def pretrain_tasks(ck: dict, env: str) -> tuple[int, ...]:
    """The tasks a checkpoint was pretrained on: pretrain_pdt.py records them; a checkpoint made before it
    did is taken to have seen every non-test task of the 50 of its time (the split then had no validation
    tasks), so a validation task it may have seen is refused rather than silently finetuned."""
    from common.envs import NUM_TASKS, spec

    if "pretrain_tasks" in ck:
        return tuple(int(t) for t in ck["pretrain_tasks"])
    sp = spec(env)
    return tuple(t for t in range(min(NUM_TASKS, sp.num_tasks)) if t not in sp.test_tasks or t in sp.train_tasks)


def seen_in_pretraining(tasks, pretrain_tasks, sp) -> list[int]:
    """The tasks of `tasks` a checkpoint was pretrained on though the split keeps them out of pretraining
    (halfcheetahdir's two tasks are pretraining and test tasks by design, as in Prompt-DT)."""
    return [t for t in tasks if t in pretrain_tasks and t not in sp.train_tasks]
