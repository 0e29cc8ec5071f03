"""Prompt-DT (common/model.py) and the four tuning configurations (common/tuning.py)."""
import numpy as np
import pytest
import torch

from common.model import ModelConfig, PromptDT, load_pretrained, num_params
from common.tuning import TUNINGS, TunedPolicy

OBS, ACT, K, P = 5, 3, 6, 2


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    m = PromptDT(ModelConfig(OBS, ACT, max_ep_len=50, n_layer=2, n_embd=16, n_head=2, K=K, prompt_len=P, **kw))
    m.state_mean.copy_(torch.randn(OBS))
    m.state_std.copy_(torch.rand(OBS) + 0.5)
    m.rtg_scale.fill_(10.0)
    # the residual projections start near zero; randomise so that every path carries signal
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def batch(B=4, pad=0, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, K)
    mask[:, :pad] = 0
    prompt = {"states": torch.randn(B, P, OBS, generator=g), "actions": torch.rand(B, P, ACT, generator=g) * 2 - 1,
              "rtg": torch.randn(B, P, generator=g) * 10, "timesteps": torch.arange(P).expand(B, P).clone(),
              "mask": torch.ones(B, P)}
    return (torch.randn(B, K, OBS, generator=g), torch.rand(B, K, ACT, generator=g) * 2 - 1,
            torch.randn(B, K, generator=g) * 10, torch.arange(10, 10 + K).expand(B, K).clone(), mask, prompt)


def one_prompt(p):
    return {k: v[0].numpy() for k, v in p.items()}


def test_shapes_range_and_last_only():
    m = tiny_model()
    s, a, r, t, mask, p = batch(pad=2)
    out = m(s, a, r, t, mask, p)
    assert out.shape == (4, K, ACT) and out.abs().max() <= 1
    torch.testing.assert_close(m(s, a, r, t, mask, p, last_only=True), out[:, -1])
    s, a, r, t, mask, p = batch(pad=0)
    torch.testing.assert_close(m(s, a, r, t, mask, p, last_only=True), m(s, a, r, t, mask, p)[:, -1])


@pytest.mark.parametrize("pad", [0, 3])
def test_causality_a_later_token_never_changes_an_earlier_action(pad):
    m = tiny_model()
    s, a, r, t, mask, p = batch(pad=pad)
    base = m(s, a, r, t, mask, p)
    for j in range(pad, K):
        for which in ("s", "r", "a"):
            s2, a2, r2 = s.clone(), a.clone(), r.clone()
            {"s": s2, "a": a2, "r": r2}[which][:, j] += 1.0
            out = m(s2, a2, r2, t, mask, p)
            first_changed = j if which != "a" else j + 1  # a_j is seen from step j + 1 on (never by s_j)
            torch.testing.assert_close(out[:, :first_changed], base[:, :first_changed], rtol=0, atol=0)
            if first_changed < K:
                assert (out[:, first_changed:] - base[:, first_changed:]).abs().max() > 1e-6


def test_padding_content_is_ignored_and_the_prompt_matters():
    m = tiny_model()
    s, a, r, t, mask, p = batch(pad=3)
    base = m(s, a, r, t, mask, p)
    s2, r2 = s.clone(), r.clone()
    s2[:, :3] += 5.0
    r2[:, :3] -= 7.0
    torch.testing.assert_close(m(s2, a, r2, t, mask, p)[:, 3:], base[:, 3:])
    p2 = dict(p, states=p["states"] + 1.0)
    assert (m(s, a, r, t, mask, p2) - base).abs().max() > 1e-4


def expected_trainable(m, tuning, rank=4):
    c = m.cfg
    return {"prompt": P * (OBS + ACT + 1),
            "lora": c.n_layer * rank * ((c.n_embd + 4 * c.n_embd) * 2),
            "decorator": (OBS * 32 + 32) + 2 * (32 * 32 + 32) + (32 * ACT + ACT),
            "full": num_params(m)}[tuning]


@pytest.mark.parametrize("tuning", TUNINGS)
def test_each_tuning_trains_exactly_its_parameters(tuning):
    m = tiny_model()
    s, a, r, t, mask, p = batch(pad=1)
    pol = TunedPolicy(m, tuning, one_prompt(p), lora_rank=4, lora_alpha=4.0, decorator_hidden=32)
    n, nbytes = pol.trainable_size()
    assert n == expected_trainable(m, tuning) and nbytes == 4 * n
    loss = ((pol(s, a, r, t, mask) - a) ** 2).mean()
    loss.backward()
    for name, q in pol.named_parameters():
        if q.requires_grad:  # (zero-initialised output layers, LoRA's B and the decorator's last
            # layer, leave the layers before them a zero gradient on the first step)
            assert q.grad is not None, name
        else:
            assert q.grad is None, name
    assert sum(q.grad.abs().sum() for q in pol.trainable_parameters()) > 0
    names = {name for name, q in pol.named_parameters() if q.requires_grad}
    if tuning == "prompt":
        assert names == {"prompt_states", "prompt_actions", "prompt_rtg"}
    elif tuning == "lora":
        assert names and all("lora_" in x and ("mlp_fc" in x or "mlp_proj" in x) for x in names)
    elif tuning == "decorator":
        assert names and all(x.startswith("decorator.") for x in names)
    # the caller's pretrained model is never modified or made trainable
    assert all(q.grad is None for q in m.parameters())


@pytest.mark.parametrize("tuning", TUNINGS)
def test_every_tuning_starts_as_the_pretrained_policy(tuning):
    m = tiny_model()
    s, a, r, t, mask, p = batch(pad=2)
    pol = TunedPolicy(m, tuning, one_prompt(p)).eval()
    ref = m(s, a, r, t, mask, {k: v[:1].expand_as(v) for k, v in p.items()})
    torch.testing.assert_close(pol(s, a, r, t, mask), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pol(s, a, r, t, mask, last_only=True), ref[:, -1], rtol=1e-5, atol=1e-5)


def test_a_training_step_moves_the_policy_for_every_tuning():
    m = tiny_model()
    s, a, r, t, mask, p = batch(pad=0)
    for tuning in TUNINGS:
        pol = TunedPolicy(m, tuning, one_prompt(p))
        before = pol(s, a, r, t, mask).detach()
        opt = torch.optim.Adam(pol.trainable_parameters(), lr=1e-2)
        ((pol(s, a, r, t, mask) - a) ** 2).mean().backward()
        opt.step()
        assert (pol(s, a, r, t, mask) - before).abs().max() > 1e-5, tuning


def test_bad_tuning_name():
    with pytest.raises(ValueError, match="unknown --tuning 'adaptor'.*prompt, lora, decorator, full"):
        TunedPolicy(tiny_model(), "adaptor", one_prompt(batch()[-1]))


def save_ckpt(m, path, env="halfcheetahvel"):
    torch.save({"env": env, "config": m.config_dict(), "state_dict": m.state_dict()}, path)


def test_load_pretrained_roundtrip_and_mismatch_errors(tmp_path):
    m = tiny_model()
    path = str(tmp_path / "m.pt")
    save_ckpt(m, path)
    m2 = load_pretrained(path, "halfcheetahvel", OBS, ACT)
    s, a, r, t, mask, p = batch()
    torch.testing.assert_close(m2.eval()(s, a, r, t, mask, p), m(s, a, r, t, mask, p))
    with pytest.raises(ValueError, match=r"does not match this run: env halfcheetahvel != antdir"):
        load_pretrained(path, "antdir", OBS, ACT)
    with pytest.raises(ValueError, match=r"obs_dim 5 != 27, act_dim 3 != 8"):
        load_pretrained(path, "halfcheetahvel", 27, 8)
    with pytest.raises(ValueError, match=r"n_layer 2 != 3.*python pretrain_pdt.py --env halfcheetahvel"):
        load_pretrained(path, "halfcheetahvel", OBS, ACT, n_layer=3)
    with pytest.raises(FileNotFoundError, match=r"missing; make it with: python pretrain_pdt.py --env antdir"):
        load_pretrained(str(tmp_path / "none.pt"), "antdir", OBS, ACT)
    sd = m.state_dict()
    sd["action_head.weight"] = torch.zeros(ACT + 1, 16)
    torch.save({"env": "halfcheetahvel", "config": m.config_dict(), "state_dict": sd}, path)
    with pytest.raises(ValueError, match="weights that do not fit its config \\(action_head.weight"):
        load_pretrained(path, "halfcheetahvel", OBS, ACT)
    with open(path, "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="unreadable"):
        load_pretrained(path, "halfcheetahvel", OBS, ACT)


def test_model_is_deterministic_for_a_seed():
    s, a, r, t, mask, p = batch()
    torch.testing.assert_close(tiny_model(seed=3)(s, a, r, t, mask, p), tiny_model(seed=3)(s, a, r, t, mask, p),
                               rtol=0, atol=0)
    assert not np.allclose(tiny_model(seed=3)(s, a, r, t, mask, p).detach(), tiny_model(seed=4)(s, a, r, t, mask, p).detach())
