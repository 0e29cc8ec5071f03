"""The paper's four finetuning configurations (section 3.2, appendix D), applied to a pretrained
Prompt-DT:

- prompt:    only the K*-step trajectory prompt (r*, s*, a*) of the test task trains, initialised
             from one of its trajectories (Hu et al., 2023); the backbone is frozen.
- lora:      LoRA adaptors (Hu et al., 2021) on the two MLP linears of every block; backbone frozen.
- decorator: a residual policy pi_res(s) added to the frozen base policy's action (Yuan et al., 2024).
- full:      every parameter of the Prompt-DT trains.

Every configuration is a `TunedPolicy`: it holds the task's prompt (a buffer, or parameters for
`prompt` tuning), so an algorithm calls `policy(states, actions, rtg, timesteps, mask)` and never
handles prompts. Prompt values are stored normalised (state z-scores, scaled returns) so that one
learning rate suits every state dimension.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.model import PromptDT

TUNINGS = ("prompt", "lora", "decorator", "full")
# Each tuning's default learning rate (a script's --lr when neither the flag nor a preset sets it): the fewer
# parameters a tuning trains, the larger the step they need.
DEFAULT_LR = {"prompt": 1e-2, "lora": 1e-3, "decorator": 3e-4, "full": 1e-4}


class LoRALinear(nn.Module):
    """y = W x + b + (scale) B A x with W, b frozen; B starts at zero, so at init y = W x + b."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as in the LoRA reference code
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale


class Decorator(nn.Module):
    """Residual policy pi_res(s): an MLP on the normalised state (3 hidden layers of 256, Mish, the
    size of the paper's Q-networks) whose bounded output bound * tanh(.) is added to the base
    action. Its last layer starts at zero, so at init the decorated policy is the base policy."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, bound: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Mish(), nn.Linear(hidden, hidden), nn.Mish(),
                                 nn.Linear(hidden, hidden), nn.Mish(), nn.Linear(hidden, act_dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.bound = bound

    def forward(self, s_norm):
        return self.bound * torch.tanh(self.net(s_norm))


class TunedPolicy(nn.Module):
    def __init__(self, model: PromptDT, tuning: str, prompt: dict, lora_rank: int = 12, lora_alpha: float = 12.0,
                 decorator_hidden: int = 256, decorator_bound: float = 1.0):
        super().__init__()
        if tuning not in TUNINGS:
            raise ValueError(f"unknown --tuning {tuning!r}; choose one of {', '.join(TUNINGS)}")
        self.tuning, self.model = tuning, copy.deepcopy(model)  # the caller's model stays untouched
        dev = model.state_mean.device
        t = lambda k, dt=torch.float32: torch.as_tensor(prompt[k], dtype=dt, device=dev)[None]  # noqa: E731
        z_states = (t("states") - model.state_mean) / model.state_std
        z_rtg = t("rtg") / model.rtg_scale
        self.register_buffer("prompt_timesteps", t("timesteps", torch.long))
        self.register_buffer("prompt_mask", t("mask"))
        if tuning == "prompt":
            self.prompt_states, self.prompt_actions = nn.Parameter(z_states), nn.Parameter(t("actions"))
            self.prompt_rtg = nn.Parameter(z_rtg)
        else:
            self.register_buffer("prompt_states", z_states)
            self.register_buffer("prompt_actions", t("actions"))
            self.register_buffer("prompt_rtg", z_rtg)
        self.model.requires_grad_(tuning == "full")
        if tuning == "lora":
            for block in self.model.blocks:
                block.mlp_fc = LoRALinear(block.mlp_fc, lora_rank, lora_alpha)
                block.mlp_proj = LoRALinear(block.mlp_proj, lora_rank, lora_alpha)
        self.decorator = None
        if tuning == "decorator":
            self.decorator = Decorator(model.cfg.obs_dim, model.cfg.act_dim, decorator_hidden, decorator_bound).to(dev)

    def prompt(self, batch_size: int) -> dict:
        """The prompt in the model's raw units, repeated over the batch."""
        m = self.model
        p = {"states": self.prompt_states * m.state_std + m.state_mean, "actions": self.prompt_actions,
             "rtg": self.prompt_rtg * m.rtg_scale, "timesteps": self.prompt_timesteps, "mask": self.prompt_mask}
        return {k: v.expand(batch_size, *v.shape[1:]) for k, v in p.items()}

    def forward(self, states, actions, rtg, timesteps, mask, last_only: bool = False):
        """Actions for every step (B, K, act), or for the last step (B, act) when last_only."""
        a = self.model(states, actions, rtg, timesteps, mask, self.prompt(states.shape[0]), last_only=last_only)
        if self.decorator is not None:
            s = states[:, -1] if last_only else states
            a = a + self.decorator((s - self.model.state_mean) / self.model.state_std)
        return a

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_size(self) -> tuple[int, int]:
        """(number of trainable parameters, their bytes)."""
        ps = self.trainable_parameters()
        return sum(p.numel() for p in ps), sum(p.numel() * p.element_size() for p in ps)


# A saved adapter (a finetuning script's --save-model): the trainable parameters of a TunedPolicy plus the task's
# prompt, in safetensors (no pickled code), beside a JSON manifest of how to rebuild and evaluate it.
# With the pretrained checkpoint it names, the two files are the whole finetuned policy.
PROMPT_KEYS = ("prompt_states", "prompt_actions", "prompt_rtg", "prompt_timesteps", "prompt_mask")


def adapter_state(policy: TunedPolicy) -> dict[str, torch.Tensor]:
    """The trainable parameters and the prompt, as contiguous CPU copies (a snapshot that later steps
    do not change)."""
    sd = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    sd.update({n: b for n, b in policy.named_buffers() if n in PROMPT_KEYS})
    return {n: t.detach().to("cpu", copy=True).contiguous() for n, t in sd.items()}


def save_adapter(path: str, state: dict[str, torch.Tensor], manifest: dict) -> None:
    """Write <path> (.safetensors) and its manifest (.json beside it), each atomically; the manifest
    last, so a manifest always has its tensors."""
    from safetensors.torch import save

    from common.files import atomic_write, atomic_write_json

    atomic_write(path, lambda f: f.write(save(state, metadata={"format": "pt"})))
    atomic_write_json(path[:-len(".safetensors")] + ".json", manifest)


# what a manifest (save_adapter's JSON) must hold for load_adapter and evaluate.py
MANIFEST_KEYS = ("algo", "task", "checkpoint", "step", "scores", "target", "pretrained", "pretrained_sha256", "config")
MANIFEST_CONFIG = ("env", "tuning", "lora_rank", "lora_alpha", "decorator_bound", "eval_episodes")


def adapter_manifest(path: str) -> dict:
    """The JSON manifest of a saved adapter <name>.safetensors (<name>.json beside it)."""
    import json
    import os

    meta = path[:-len(".safetensors")] + ".json" if path.endswith(".safetensors") else ""
    if not meta or not os.path.exists(path) or not os.path.exists(meta):
        raise FileNotFoundError(f"{path} is not a saved adapter (want <name>.safetensors with <name>.json beside it, "
                                f"as finetuning writes under <run-dir>/<run-name>/adapters/)")
    try:
        with open(meta) as f:
            m = json.load(f)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{meta} is not valid JSON; rerun the finetuning that wrote it") from None
    missing = [k for k in MANIFEST_KEYS if not isinstance(m, dict) or k not in m]
    missing += [f"config.{k}" for k in MANIFEST_CONFIG if not missing and (not isinstance(m["config"], dict)
                                                                          or k not in m["config"])]
    if missing:
        raise ValueError(f"{meta} is not an adapter manifest (no {', '.join(missing[:3])}); rerun the finetuning "
                         f"that wrote it")
    return m


def load_adapter(path: str, model: PromptDT) -> tuple[TunedPolicy, dict]:
    """Rebuild a saved adapter on `model` (the pretrained Prompt-DT it was trained from): (policy, manifest).
    Anything that does not fit ends with a one-line error."""
    from safetensors.torch import load_file

    manifest = adapter_manifest(path)
    try:
        sd = load_file(path)
    except Exception as e:  # noqa: BLE001 (a truncated or foreign file: SafetensorError, OSError, ...)
        raise ValueError(f"{path} is damaged or not a safetensors file ({type(e).__name__}); rerun the finetuning "
                         f"that wrote it") from None
    c = manifest["config"]
    prompt = {k[len("prompt_"):]: torch.zeros(sd[k].shape[1:], dtype=sd[k].dtype) for k in PROMPT_KEYS if k in sd}
    if len(prompt) != len(PROMPT_KEYS):
        raise ValueError(f"{path} holds no prompt ({', '.join(k for k in PROMPT_KEYS if k not in sd)} missing)")
    policy = TunedPolicy(model, c["tuning"], prompt, c["lora_rank"], c["lora_alpha"],
                         decorator_bound=c["decorator_bound"]).to(model.state_mean.device)
    own = adapter_state(policy)
    bad = sorted(set(own) ^ set(sd)) + [k for k in own if k in sd and own[k].shape != sd[k].shape]
    if bad:
        raise ValueError(f"{path} does not fit a {c['tuning']} policy on this model ({', '.join(bad[:3])}); "
                         f"load it onto the checkpoint it was trained from: {manifest['pretrained']}")
    policy.load_state_dict(sd, strict=False)
    return policy.eval(), manifest
