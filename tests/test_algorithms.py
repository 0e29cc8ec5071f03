"""The seven finetuning scripts: each loss against a hand-computed value, an end-to-end run of every
script x every tuning, determinism, and one-line errors for bad input."""
import importlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.envs import spec
from common.tuning import PROMPT_KEYS, TUNINGS

from common.flags import ALGOS  # noqa: E402
from conftest import ENV, ROOT, TASK, run_algo  # noqa: E402


# ---------------------------------------------------------------- losses against hand-computed values
def test_sft_loss_is_the_masked_action_mse():
    from sft import sft_loss
    pred = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    a = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # step 0: (1 + 0) / 2 = 0.5; step 1 is padding
    assert sft_loss(pred, a, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.5)
    assert sft_loss(pred, a, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(0.75)


def test_dpo_log_ratio_algebra():
    from dpo import dpo_loss, gaussian_logp, rejected_actions
    mu, ref = torch.tensor([[[0.3, -0.2]]]), torch.tensor([[[0.1, 0.1]]])
    a, a_bar = torch.tensor([[[0.5, 0.0]]]), torch.tensor([[[0.2, 0.4]]])
    beta, std = 0.5, 0.3
    # log pi(x) = -|x - mu|^2 / (2 std^2) - d log(std sqrt(2 pi))
    assert gaussian_logp(a, mu, std).item() == pytest.approx(-(0.04 + 0.04) / 0.18 - 2 * math.log(0.3 * math.sqrt(2 * math.pi)))
    # chosen: log pi(a)/pi_ref(a) = (|a - ref|^2 - |a - mu|^2) / (2 std^2) = (0.17 - 0.08) / 0.18 = 0.5
    # rejected: (|a_bar - ref|^2 - |a_bar - mu|^2) / 0.18 = (0.10 - 0.37) / 0.18 = -1.5
    logit = beta * (0.5 - (-1.5))
    assert dpo_loss(mu, ref, a, a_bar, torch.ones(1, 1), beta, std).item() == pytest.approx(math.log1p(math.exp(-logit)), rel=1e-5)
    # equivalently beta (a - a_bar).(mu - ref) / std^2
    assert logit == pytest.approx(beta * float(((a - a_bar) * (mu - ref)).sum()) / std ** 2)
    # at the reference the loss is log 2
    assert dpo_loss(ref, ref, a, a_bar, torch.ones(1, 1), beta, std).item() == pytest.approx(math.log(2))
    assert torch.equal(rejected_actions(mu), mu) and not rejected_actions(mu.requires_grad_()).requires_grad


def dpo_grad(mu, ref, a, beta=0.5, std=0.3):
    from dpo import dpo_loss, rejected_actions
    mu = mu.clone().requires_grad_()
    dpo_loss(mu, ref, a, rejected_actions(mu), torch.ones(mu.shape[:2]), beta, std).backward()
    return mu.grad


def test_dpo_rests_on_the_data_and_steps_towards_it():
    """With the policy's own action as the rejected one, DPO's gradient vanishes when the policy sits
    on the data (whatever the reference), and a gradient step moves the policy towards the data."""
    torch.manual_seed(0)
    a = torch.rand(8, 3, 4) * 2 - 1
    ref = a + 0.05 * torch.randn(8, 3, 4)  # the pretrained policy errs by a few hundredths, as on our data
    assert dpo_grad(a, ref, a).abs().max().item() == 0.0
    assert dpo_grad(a, ref, a, beta=0.1, std=0.1).abs().max().item() == 0.0
    mu = ref.clone()
    for _ in range(100):  # plain gradient descent, beta 0.5 and std 0.1
        mu = mu - 0.05 * dpo_grad(mu, ref, a, std=0.1)  # (the loss averages over the 24 steps)
    assert (mu - a).norm() < 0.05 * (ref - a).norm()
    # the step is an imitation step: along a - mu, weighted by sigmoid(-beta logit) in (0, 1)
    mu = ref + 0.3 * (a - ref)
    g = dpo_grad(mu, ref, a)
    cos = torch.nn.functional.cosine_similarity(-g.flatten(), (a - mu).flatten(), dim=0)
    assert cos.item() > 0.99


def test_grpo_group_advantages_clipping_and_exact_kl():
    from grpo import gaussian_kl, gaussian_logp, group_advantages, grpo_loss
    np.testing.assert_allclose(group_advantages(np.array([1.0, 2.0, 3.0])), [-1.224744871, 0.0, 1.224744871], rtol=1e-6)
    assert np.all(group_advantages(np.full(5, 3.7)) == 0)  # equal returns: no advantage at all
    # the KL term equals the closed form of KL(N(mu, std^2) || N(mu_ref, std^2)) from torch.distributions
    mu, ref, std = torch.tensor([[0.3, -0.2, 0.5]]), torch.tensor([[0.1, 0.1, -0.4]]), 0.3
    exact = torch.distributions.kl_divergence(torch.distributions.Normal(mu, std), torch.distributions.Normal(ref, std)).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, ref, std), exact)
    assert gaussian_kl(mu, ref, std).item() == pytest.approx((0.04 + 0.09 + 0.81) / (2 * 0.09))
    # ratio e^0.5 = 1.65 with A = +1 is clipped to 1.2; with A = -1 the unclipped -1.65 is kept (min)
    logp, old = torch.tensor([[0.5, 0.5]]), torch.zeros(1, 2)
    adv, ones = torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    loss = grpo_loss(logp, old, adv, torch.zeros(1, 2), ones, clip_eps=0.2, beta=0.1, bc_weight=0.0)
    assert loss.item() == pytest.approx(-(1.2 - math.exp(0.5)) / 2)
    kl = torch.tensor([[0.3, 0.5]])
    assert grpo_loss(logp, old, adv, kl, ones, 0.2, 0.1, 0.0).item() == pytest.approx(loss.item() + 0.1 * 0.4)
    # the anchor adds -bc_weight * mean log pi(a)
    assert grpo_loss(logp, old, adv, kl, ones, 0.2, 0.1, 2.0).item() == pytest.approx(loss.item() + 0.04 - 2 * 0.5)


def surrogate_grad(loss_fn, mu, a, mu_old, adv, std=0.1):
    """d loss / d mu for a Gaussian policy with pi_old at mu_old."""
    from grpo import gaussian_logp
    mu = mu.clone().requires_grad_()
    loss_fn(gaussian_logp(a, mu, std), gaussian_logp(a, mu_old, std).detach(), adv, mu).backward()
    return mu.grad


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_the_surrogates_rest_where_they_should_and_the_clip_binds(algo):
    """Equal advantages leave mu where it is (without the anchor); the anchor alone pulls mu onto the
    data; a negative advantage pushes mu off the data only until the ratio leaves the clip range (then
    the gradient is zero), i.e. after the first epoch of an iteration the clip binds."""
    from grpo import gaussian_kl, grpo_loss
    from ppo import ppo_loss
    ones = torch.ones(6, 1)

    def loss(bc, beta=0.0, ref=None):
        if algo == "grpo":
            return lambda lp, lo, A, mu: grpo_loss(lp, lo, A, gaussian_kl(mu, ref if ref is not None else mu.detach(), 0.1),
                                                   ones, 0.2, beta, bc)
        return lambda lp, lo, A, mu: ppo_loss(lp, lo, A, ones, 0.2, bc)

    torch.manual_seed(1)
    a, mu = torch.rand(6, 1, 4) * 2 - 1, torch.rand(6, 1, 4) * 2 - 1
    zero = torch.zeros(6, 1)
    assert surrogate_grad(loss(0.0), mu, a, mu, zero).abs().max().item() == 0.0
    g = surrogate_grad(loss(1.0), mu, a, mu, zero)
    assert torch.nn.functional.cosine_similarity(-g.flatten(), (a - mu).flatten(), dim=0).item() > 0.999
    assert surrogate_grad(loss(1.0), a, a, a, zero).abs().max().item() == 0.0  # the anchor rests on the data
    # a negative advantage: inside the clip range it pushes mu away from a; once pi(a)/pi_old(a) < 1 - eps
    # (mu moved away by one epoch's step) its gradient is exactly zero
    neg = -torch.ones(6, 1)
    g_in = surrogate_grad(loss(0.0), a + 0.001, a, a + 0.001, neg)
    assert (g_in * 0.001).sum() < 0  # descent moves mu further from a
    far = a + 0.05  # |a - mu|^2 / (2 std^2) = 4 * 0.0025 / 0.02 = 0.5 nats: ratio e^-0.5 < 0.8
    assert surrogate_grad(loss(0.0), far, a, a, neg).abs().max().item() == 0.0
    if algo == "grpo":  # with A = 0 the anchor and the KL meet between the data and the reference
        ref = torch.rand(6, 1, 4) * 2 - 1
        rest = (2.0 * a + 0.5 * ref) / 2.5
        assert surrogate_grad(loss(2.0, beta=0.5, ref=ref), rest, a, rest, zero).abs().max().item() < 1e-3


@pytest.mark.parametrize("bc,walks_away", [(1.0, True), (10.0, False)])
def test_grpo_anchor_above_the_largest_advantage_keeps_every_data_action_attracting(bc, walks_away):
    """The worst trajectory of 50 has A = -sqrt(49) = -7. With bc < (1 + eps) 7 its action repels mu, and
    refreshing pi_old every 4 steps restarts the push after each clip, so mu walks away; with bc = 10
    the pull (bc + ratio A) stays positive and mu returns to the data."""
    from grpo import gaussian_kl, gaussian_logp, group_advantages, grpo_loss
    adv = torch.tensor([[group_advantages(np.r_[np.zeros(49), -1.0])[-1]]], dtype=torch.float32)
    assert adv.item() == pytest.approx(-7.0, rel=1e-6)
    a, mu, ones = torch.zeros(1, 1, 1), torch.full((1, 1, 1), 0.01, requires_grad=True), torch.ones(1, 1)
    opt = torch.optim.SGD([mu], lr=1e-4)
    for step in range(400):
        if step % 4 == 0:
            logp_old = gaussian_logp(a, mu, 0.1).detach()
        loss = grpo_loss(gaussian_logp(a, mu, 0.1), logp_old, adv, gaussian_kl(mu, mu.detach(), 0.1), ones, 0.2, 0.0, bc)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (abs(mu.item()) > 0.1) if walks_away else (abs(mu.item()) < 0.001)


def test_cql_regulariser_value_and_sign():
    from cql import cql_regulariser
    q_data = torch.tensor([[2.0]])
    q_other = torch.tensor([[[1.0]], [[3.0]]])
    val = cql_regulariser(q_data, q_other, torch.ones(1, 1)).item()
    assert val == pytest.approx(math.log(math.exp(1) + math.exp(3)) - math.log(2) - 2)
    assert cql_regulariser(q_data, q_other + 1, torch.ones(1, 1)).item() > val  # Q off the data up: penalised
    assert cql_regulariser(q_data + 1, q_other, torch.ones(1, 1)).item() < val  # Q on the data up: rewarded


class FixedQ(torch.nn.Module):
    def __init__(self, q1, q2):
        super().__init__()
        self.q1, self.q2 = q1, q2

    def forward(self, s, a):
        return self.q1(s, a), self.q2(s, a)


def test_cql_policy_q_is_the_smaller_twin_over_its_mean_magnitude():
    from cql import policy_q
    critic = FixedQ(lambda s, a: 10 * a.sum(-1), lambda s, a: 10 * a.sum(-1) + 1.0)
    pi = torch.tensor([[0.1, 0.1], [-0.3, 0.0]], requires_grad=True)
    val = policy_q(critic, torch.zeros(2, 3), pi)
    # min(Q1, Q2) = Q1 = [2, -3]: mean -0.5, mean |.| 2.5
    assert val.item() == pytest.approx(-0.2)
    val.backward()  # the normaliser is detached: the gradient is that of mean Q1 / 2.5
    torch.testing.assert_close(pi.grad, torch.full((2, 2), 2.0))


@pytest.mark.parametrize("algo", ["qp_sft", "qp_dpo"])
def test_double_q_min_target_and_the_q_term(algo):
    mod = importlib.import_module(algo)
    qt = FixedQ(lambda s, a: a.sum(-1) + 1.0, lambda s, a: a.sum(-1) - 1.0)
    r, done = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0])
    s, a = torch.zeros(2, 3), torch.tensor([[0.5, 0.5], [0.2, 0.2]])
    # r + gamma (1 - done) min(Q1', Q2') = [1 + 0.9 (1 - 1), 2]
    torch.testing.assert_close(mod.td_target(qt, r, done, s, a, 0.9), torch.tensor([1.0, 2.0]))
    # the max-over-samples target with zero noise is the plain target; with noise it can only be higher here
    torch.testing.assert_close(mod.max_td_target(qt, r, done, s, a, 0.9, 5, 0.0), mod.td_target(qt, r, done, s, a, 0.9))
    assert (mod.max_td_target(qt, r, done, s, a, 0.9, 50, 0.3) >= mod.td_target(qt, r, done, s, a, 0.9) - 1e-6).all()
    # the Q term: Q1(s, pi(s)) (as in TD3+BC) over valid steps divided by its mean |.|, so its sign is that of Q
    class Q1Only(torch.nn.Module):
        def q1(self, x):  # the action is the last 2 inputs
            return 10 * x[..., -2:].sum(-1, keepdim=True)
    pi = torch.tensor([[[0.1, 0.1], [-0.3, 0.0], [5.0, 5.0]]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    val = mod.q_term(Q1Only(), torch.zeros(1, 3, 3), pi, mask)
    # Q1 = [2, -3] (third step masked): mean -0.5, mean |.| 2.5
    assert val.item() == pytest.approx(-0.2)
    val.backward()  # the normaliser is detached: the gradient is that of mean Q1 / 2.5, pushing pi up Q
    torch.testing.assert_close(pi.grad, torch.tensor([[[2.0, 2.0], [2.0, 2.0], [0.0, 0.0]]]))


# ---------------------------------------------------------------- end to end
@pytest.mark.parametrize("algo", ALGOS)
def test_every_script_runs_with_every_tuning_and_writes_a_valid_result(setup, algo):
    for tuning in TUNINGS:
        res = run_algo(setup, algo, tuning=tuning)
        path = os.path.join(setup, "runs", f"{algo}_{ENV}_{tuning}_expert_n4_s1", "result.json")
        with open(path) as f:
            saved = json.load(f)
        assert saved["best"] == res["best"]
        for k in ("config", "zero_shot", "selected", "best", "final", "tasks", "wall_time_s", "trainable_params",
                  "trainable_bytes"):
            assert k in saved, k
        (t,) = saved["tasks"]
        assert t["task"] == TASK and [c["step"] for c in t["curve"]] == [0, 2, 4]
        assert t["best"] == max(c["return"] for c in t["curve"][1:]) and t["final"] == t["curve"][-1]["return"]
        sel = max(t["curve"][1:], key=lambda c: c["val_return"])  # chosen on validation, scored on reporting
        assert t["selected"] == sel["return"] and t["selected_step"] == sel["step"]
        assert saved["config"]["tuning"] == tuning and saved["config"]["algo"] == algo
        assert saved["trainable_bytes"] == 4 * saved["trainable_params"] > 0
        # zero-shot is the pretrained policy: the same for every algorithm and tuning
        assert saved["zero_shot"] == pytest.approx(run_zero_shot(setup))


@pytest.mark.parametrize("tuning", TUNINGS)
def test_saved_adapters_reload_and_evaluate_to_the_runs_returns(setup, tuning):
    import evaluate
    from safetensors.torch import load_file

    res = run_algo(setup, "sft", run_dir="adapters", tuning=tuning, save_model="both")
    run = os.path.join(setup, "adapters", f"sft_{ENV}_{tuning}_expert_n4_s1")
    assert res["adapters"] == [f"adapters/task_{TASK:02d}_final.safetensors", f"adapters/task_{TASK:02d}_selected.safetensors"]
    (t,) = res["tasks"]
    for which, step in (("selected", t["selected_step"]), ("final", 4)):
        path = os.path.join(run, "adapters", f"task_{TASK:02d}_{which}.safetensors")
        sd = load_file(path)
        buffers = ("prompt_timesteps", "prompt_mask") if tuning == "prompt" else PROMPT_KEYS  # the prompt, not trained
        assert sum(v.numel() for v in sd.values()) - sum(sd[k].numel() for k in buffers) == res["trainable_params"]
        out = evaluate.main(evaluate.Args(adapter=path, threads=1))
        point = next(c for c in t["curve"] if c["step"] == step)
        assert (out["return"], out["val_return"]) == (point["return"], point["val_return"])  # exactly
    # the pretrained policy is not what was saved: a zero-shot evaluation differs from the final one
    assert t["curve"][0]["return"] != t["curve"][-1]["return"]
    # without --save-model nothing is saved; onto another model it is a one-line error
    assert run_algo(setup, "sft", run_dir="no_adapters", tuning=tuning, save_model="none")["adapters"] == []
    with pytest.raises(ValueError, match="pretrained checkpoint .* does not match|not the checkpoint"):
        evaluate.main(evaluate.Args(adapter=path, pretrained="pretrained/antdir.pt"))


_zs = {}


def run_zero_shot(root):
    if "v" not in _zs:
        _zs["v"] = run_algo(root, "sft", run_dir="zs", total_steps=2)["zero_shot"]
    return _zs["v"]


@pytest.mark.parametrize("algo,base", [("qp_sft", "bc"), ("qp_dpo", "dpo")])
def test_the_qp_loss_is_the_supervised_loss_minus_alpha_times_the_q_term(setup, algo, base):
    """Behavioural: in the real training loop, the policy's loss at every logged step equals the
    supervised loss minus alpha times the normalised Q term (eqs. 13-14), for two alphas."""
    for alpha in (0.7, 0.0):
        res = run_algo(setup, algo, run_dir=f"qpterm_{alpha}", alpha=alpha)
        for c in res["tasks"][0]["curve"][1:]:
            assert c["loss"] == pytest.approx(c[base] - alpha * c["q"], rel=1e-5, abs=1e-6)
            assert -1 - 1e-6 <= c["q"] <= 1 + 1e-6  # mean Q / mean |Q|: normalised


def test_sparse_medium_and_max_target_variants_run(setup):
    res = run_algo(setup, "qp_sft", sparse_reward=True, quality="medium", max_target=True)
    assert res["config"]["sparse_reward"] and res["config"]["max_target"]
    assert os.path.exists(os.path.join(setup, "runs", f"qp_sft_{ENV}_full_medium_n4_sparse_maxq_s1", "result.json"))


@pytest.mark.parametrize("algo", ["qp_dpo", "ppo"])
def test_a_fixed_seed_gives_identical_results(setup, algo):
    a = run_algo(setup, algo, run_dir="det_a", tuning="lora")
    b = run_algo(setup, algo, run_dir="det_b", tuning="lora")
    assert a["tasks"] == b["tasks"]
    c = run_algo(setup, algo, run_dir="det_c", tuning="lora", seed=2)
    assert c["tasks"] != a["tasks"]


def test_zero_shot_is_evaluated_once_per_policy_and_the_cache_changes_no_number(setup, capsys):
    # every tuning starts from the pretrained policy's actions (LoRA's B and the decorator's output are zero)
    fresh = {t: run_algo(setup, "sft", run_dir=f"zs_{t}", tuning=t)["tasks"][0]["curve"][0] for t in TUNINGS}
    assert all(p == fresh["full"] for p in fresh.values())
    assert "(cached)" not in capsys.readouterr().out
    cache = setup / "zs_full" / ".zero_shot"
    assert len(os.listdir(cache)) == 1
    shared = run_algo(setup, "dpo", run_dir="zs_full", seed=2)  # another algorithm and seed, the same policy
    assert "zero-shot return" in (out := capsys.readouterr().out) and "(cached)" in out
    assert shared["tasks"][0]["curve"][0] == fresh["full"]
    run_algo(setup, "sft", run_dir="zs_full", quality="medium")  # another prompt and target: its own entry
    assert "(cached)" not in capsys.readouterr().out and len(os.listdir(cache)) == 2
    for f in os.listdir(cache):  # a damaged entry is evaluated again and rewritten
        (cache / f).write_text("{")
    again = run_algo(setup, "cql", run_dir="zs_full")
    assert "(cached)" not in capsys.readouterr().out and again["tasks"][0]["curve"][0] == fresh["full"]


def test_a_nan_loss_stops_the_run_without_a_result(setup, monkeypatch):
    import sft
    real = sft.sft_loss
    monkeypatch.setattr(sft, "sft_loss", lambda *a: real(*a) * float("nan"))
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        run_algo(setup, "sft", run_dir="nan")
    assert not os.path.exists(os.path.join(setup, "nan", "sft_halfcheetahvel_full_expert_n4_s1", "result.json"))


def cli(*argv):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_bad_flags_give_one_line_errors(setup):
    common = ["--data-dir", str(setup / "data"), "--pretrained", str(setup / "pre.pt")]
    out = cli("sft.py", "--env", "cheetah")
    assert out.returncode != 0 and "cheetah" in out.stderr
    out = cli("qp_sft.py", "--tuning", "adaptor")
    assert out.returncode != 0 and "adaptor" in out.stderr
    out = cli("dpo.py", "--num-trajs", "60", *common)
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0
    assert "--num-trajs 60 exceeds the 6 trajectories" in out.stderr
    out = cli("grpo.py", "--pretrained", str(setup / "none.pt"), "--data-dir", str(setup / "data"))
    assert out.returncode == 1 and "error: pretrained checkpoint" in out.stderr
    assert "python pretrain_pdt.py --env halfcheetahvel" in out.stderr and out.stderr.strip().count("\n") == 0
    out = cli("cql.py", "--tasks", "0", *common)
    assert out.returncode == 1 and "neither validation nor test tasks of halfcheetahvel" in out.stderr
    out = cli("ppo.py", "--data-dir", str(setup / "nodata"), "--pretrained", str(setup / "pre.pt"))
    assert out.returncode == 1 and "python collect_data.py --env halfcheetahvel --data-dir" in out.stderr


def _statements(name: str) -> tuple[dict, list[str]]:
    """A script's top-level definitions {name: normalised source, docstrings dropped} and main()'s statements,
    each normalised by the AST (formatting, comments and line breaks do not count); a compound statement
    stands for its header only, its body's statements follow it."""
    import ast
    import copy

    tree = ast.parse(open(os.path.join(ROOT, f"{name}.py")).read())

    def strip(node):
        for n in ast.walk(node):
            body = getattr(n, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
                n.body = body[1:] or [ast.Pass()]
        return node

    defs = {n.name: ast.unparse(strip(n)) for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    stmts = []

    def walk(body):
        for st in body:
            inner = [getattr(st, k) for k in ("body", "orelse") if isinstance(getattr(st, k, None), list)]
            if inner:
                head = copy.copy(st)  # the header: the body replaced by `pass`
                head.body = [ast.Pass()]
                if hasattr(head, "orelse"):
                    head.orelse = []
                stmts.append(ast.unparse(head))
                for b in inner:
                    walk(b)
            else:
                stmts.append(ast.unparse(st))

    walk(main.body)
    return defs, stmts


CRITIC_PIECES = {"TwinQ", "discounted_returns", "warm_up_critic", "td_target", "max_td_target", "q_term"}


@pytest.mark.parametrize("base,qp", [("sft", "qp_sft"), ("dpo", "qp_dpo")])
def test_the_qp_scripts_are_their_base_plus_the_critic_and_the_q_term(base, qp):
    """Compared on normalised ASTs: every function of sft.py (dpo.py) is in qp_sft.py (qp_dpo.py) unchanged,
    the new ones are the critic's pieces only, and every statement of main() is there too except the run's
    name, the loss line that gains the Q term and the logged values."""
    (bdefs, bmain), (qdefs, qmain) = _statements(base), _statements(qp)
    for name, src in bdefs.items():
        if name not in ("Args", "main"):
            assert qdefs.get(name) == src, f"{qp}.py changes {name}"
    assert set(qdefs) - set(bdefs) == CRITIC_PIECES
    missing = [st for st in bmain if st not in qmain]
    assert len(missing) == 3 and missing[0].startswith("run = Run(args, ") and missing[1].startswith("loss = ")
    assert missing[2].startswith("logs = {"), missing
    assert len(qmain) - len(bmain) < 40  # the critic's set-up and update and the Q term, nothing else


def test_each_piece_is_written_the_same_way_in_every_script_that_has_it():
    """The critic (cql.py, qp_sft.py, qp_dpo.py), pi_ref's table (dpo.py, grpo.py, qp_dpo.py) and the Gaussian
    policy's log-density (every script with a Gaussian policy) are copies, so reading one file is enough."""
    scripts = ("sft", "dpo", "grpo", "ppo", "cql", "qp_dpo", "qp_sft", "online_grpo", "online_ppo")
    defs = {name: _statements(name)[0] for name in scripts}
    for piece in ("TwinQ", "discounted_returns", "warm_up_critic", "td_target", "ref_actions", "gaussian_logp",
                  "gaussian_kl", "group_advantages", "gae", "sample_episodes", "subsample_steps"):
        have = {name: d[piece] for name, d in defs.items() if piece in d}
        assert len(have) >= 2 and len(set(have.values())) == 1, (piece, sorted(have))


def test_the_online_scripts_import_no_other_script():
    import ast

    for name in ("online_grpo", "online_ppo"):
        tree = ast.parse(open(os.path.join(ROOT, f"{name}.py")).read())
        mods = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not mods & {"sft", "dpo", "grpo", "ppo", "cql", "qp_dpo", "qp_sft"}, (name, mods)


def test_window_tables_are_exact_lookups_of_the_policy_on_sampled_batches(setup):
    """pi_ref's table (dpo.py ref_actions) must give, for any sampled batch, exactly what a forward pass of
    the same policy gives; and the flat step index that PPO derives for each position of a window must
    point at that step's data (the batch contract of common/data.py sample_batch)."""
    import dpo
    from common.data import gather, sample_batch
    from common.run import Run
    args = dpo.Args(env=ENV, tasks=(TASK,), num_trajs=4, data_dir=str(setup / "data"), pretrained=str(setup / "pre.pt"),
                    batch_size=16, lr=1e-4)
    run = Run(args, "dpo")
    rng = run.seed(TASK)
    policy = run.policy(TASK).eval()
    p, K = run.data[TASK]["packed"], run.model.cfg.K
    table = dpo.ref_actions(policy, p, K, run.device, batch_size=7)
    traj = np.repeat(np.arange(len(p["lengths"])), p["lengths"])
    w = {k: torch.as_tensor(v, dtype=torch.long if k == "timesteps" else torch.float32)
         for k, v in gather(p, traj, p["timesteps"] + 1, K).items()}
    with torch.no_grad():
        canon = policy(w["states"], w["actions"], w["rtg"], w["timesteps"], w["mask"], last_only=True)
    assert table.shape == (len(p["states"]), K, spec(ENV).act_dim) and canon.shape == (len(p["states"]), spec(ENV).act_dim)
    torch.testing.assert_close(table[:, -1], canon, rtol=1e-5, atol=1e-6)
    for _ in range(3):
        b = sample_batch(p, K, args.batch_size, rng, run.device)
        with torch.no_grad():
            out = policy(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
        m = b["mask"].bool()
        torch.testing.assert_close(table[b["window"]][m], out[m], rtol=1e-5, atol=1e-6)
        flat = b["window"][:, None] - torch.arange(K - 1, -1, -1)[None]
        torch.testing.assert_close(b["index"][m], flat[m])  # sample_windows' own flat index
        np.testing.assert_array_equal(b["states"][m].numpy(), p["states"][flat[m].numpy()])
        np.testing.assert_array_equal(b["next_states"][m].numpy(), p["next_states"][flat[m].numpy()])
        nxt = flat[m & (b["has_next"] > 0)] + 1
        np.testing.assert_array_equal(p["states"][nxt.numpy()], b["next_states"][m & (b["has_next"] > 0)].numpy())


def test_track_logs_to_wandb_offline(setup, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(setup))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_algo(setup, "qp_sft", run_dir="tracked", track=True)
    runs = [d for d in os.listdir(setup / "wandb") if d.startswith("offline-run-")]
    assert runs and os.listdir(setup / "wandb" / runs[0])


def test_track_follows_cleanrl_group_tags_code_and_steps(setup, monkeypatch):
    import wandb

    calls = {"init": [], "log": []}
    monkeypatch.setattr(wandb, "init", lambda **kw: calls["init"].append(kw))
    monkeypatch.setattr(wandb, "log", lambda d, step=None: calls["log"].append((step, d)))
    monkeypatch.setattr(wandb, "finish", lambda: None)
    run_algo(setup, "sft", run_dir="tracked_calls", track=True, wandb_entity="lab", log_every=1, total_steps=4,
             eval_every=2, seed=3)
    (init,) = calls["init"]
    assert init["entity"] == "lab" and init["group"] == f"sft_{ENV}_full_expert_n4" and init["save_code"]
    assert init["tags"] == ["sft", ENV, "full", "expert"] and init["name"] == f"sft_{ENV}_full_expert_n4_s3"
    loss_steps = [s for s, d in calls["log"] if f"task_{TASK}/loss" in d and f"task_{TASK}/return" not in d]
    assert loss_steps == [1, 2, 3, 4]  # every --log-every step, with wandb's step
    assert [s for s, d in calls["log"] if f"task_{TASK}/return" in d] == [2, 4]  # the evaluations


def test_selection_uses_validation_episodes_and_reports_reporting_ones():
    from common.rollout import summarise
    curve = [{"step": 0, "return": -50.0, "val_return": -40.0},
             {"step": 10, "return": -30.0, "val_return": -45.0},   # best on the reporting episodes
             {"step": 20, "return": -42.0, "val_return": -20.0},   # best on validation: selected
             {"step": 30, "return": -44.0, "val_return": -35.0}]
    s = summarise(curve)
    assert (s["zero_shot"], s["selected"], s["best"], s["final"]) == (-50.0, -42.0, -30.0, -44.0)
    assert s["selected_step"] == 20 and s["selected_val"] == -20.0
    # MetaWorld: validation success first, then validation return
    mw = [dict(c, success=float(i == 3), val_success=float(i in (1, 3))) for i, c in enumerate(curve)]
    s = summarise(mw, success=True)
    assert s["selected_step"] == 30 and s["selected_success"] == 1.0 and s["best_success"] == 1.0


def test_critic_warm_up_scales_with_the_run_and_ranks_states_like_the_returns(setup):
    """After the default warm-up, Q(data) orders the data's steps like their observed discounted
    return-to-go (Spearman >= 0.8), so TD starts from the value scale."""
    import qp_sft
    from common.run import Run
    args = qp_sft.Args(env=ENV, tasks=(TASK,), num_trajs=6, data_dir=str(setup / "data"), pretrained=str(setup / "pre.pt"),
                       lr=1e-4)
    run = Run(args, "qp_sft")
    rng = run.seed(TASK)
    p = run.data[TASK]["packed"]
    m = run.model
    s = (torch.as_tensor(p["states"]) - m.state_mean) / m.state_std
    a, g = torch.as_tensor(p["actions"]), qp_sft.discounted_returns(run.data[TASK]["trajs"], 0.99, "cpu")
    assert g[0].item() == pytest.approx(sum(0.99 ** i * r for i, r in enumerate(p["rewards"][:30])), rel=1e-4)
    critic = qp_sft.TwinQ(s.shape[1], a.shape[1])
    opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    with torch.no_grad():
        before = np.corrcoef(rank(critic(s, a)[0].numpy()), rank(g.numpy()))[0, 1]
    qp_sft.warm_up_critic(critic, opt, s, a, g, min(args.total_steps, 1000), args.critic_batch, rng)
    with torch.no_grad():
        q1, q2 = critic(s, a)
    for q in (q1, q2):
        assert np.corrcoef(rank(q.numpy()), rank(g.numpy()))[0, 1] >= 0.8 > abs(before)


def _presets_run(setup, tmp_path, presets: dict | str, script="qp_sft.py", env=ENV):
    path = tmp_path / "presets.json"
    path.write_text(presets if isinstance(presets, str) else json.dumps(presets))
    common = ["--env", env, "--tasks", str(TASK), "--num-trajs", "4", "--total-steps", "2", "--eval-every", "2",
              "--eval-episodes", "1", "--batch-size", "4", "--data-dir", str(setup / "data"),
              "--pretrained", str(setup / "pre.pt"), "--run-dir", str(tmp_path / "runs"), "--threads", "1"]
    return lambda *extra: subprocess.run([sys.executable, script, *common, *extra], cwd=ROOT,  # noqa: E731
                                         env={**os.environ, "RFT_PRESETS": str(path)}, capture_output=True, text=True,
                                         timeout=300)


def test_presets_are_the_command_line_defaults_and_flags_override_them(setup, tmp_path):
    run = _presets_run(setup, tmp_path, {ENV: {"full": {"qp_sft": {"alpha": 0.5, "critic_batch": 32}},
                                               "lora": {"qp_sft": {"alpha": 0.7}}}})
    out = subprocess.run([sys.executable, "qp_sft.py", "--env", ENV, "--help"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "RFT_PRESETS": str(tmp_path / "presets.json")}, timeout=60)
    assert "presets: --alpha 0.5 --critic-batch 32 (from" in out.stdout and "(default: 0.5)" in out.stdout
    cfg = lambda name: json.load(open(tmp_path / "runs" / name / "result.json"))["config"]  # noqa: E731
    a = run("--run-name", "a")
    assert a.returncode == 0 and (cfg("a")["alpha"], cfg("a")["critic_batch"]) == (0.5, 32)
    assert a.stdout.splitlines()[0].startswith("a: presets: --alpha 0.5 --critic-batch 32 (from ")  # the first line
    assert cfg("a")["preset"]["flags"] == {"alpha": 0.5, "critic_batch": 32}
    assert cfg("a")["preset"]["from"].endswith(f"[{ENV}][full][qp_sft]")
    assert run("--run-name", "b", "--alpha", "0.2").returncode == 0 and cfg("b")["alpha"] == 0.2
    assert run("--run-name", "c", "--no-presets").returncode == 0 and cfg("c")["alpha"] == 0.1
    assert cfg("c")["preset"] == {"flags": {}, "from": "off"}
    assert run("--run-name", "d", "--tuning", "lora").returncode == 0 and cfg("d")["alpha"] == 0.7  # per tuning
    assert run("--run-name", "e", "--tuning", "prompt").returncode == 0 and cfg("e")["alpha"] == 0.1  # none chosen


@pytest.mark.parametrize("presets, match", [
    ('{"halfcheetahvel": {"full": {"qp_sft": {"alpha": 0.5', "is unreadable"),
    ("[1, 2]", "is not {env: {tuning: {algo: {flag: value}}}}"),
    ({ENV: {"qp_sft": {"alpha": 0.5}}}, "is not {env: {tuning: {algo: {flag: value}}}}"),
    ({ENV: {"full": {"qp_sft": {"alpah": 0.5}}}}, "has 'alpah', which is not a flag of qp_sft.py"),
    ({ENV: {"full": {"qp_sft": {"alpha": "big"}}}}, "alpha = 'big' is not a float"),
    ({ENV: {"full": {"qp_sft": {"critic_batch": 3.5}}}}, "critic_batch = 3.5 is not a int"),
    ({ENV: {"full": {"qp_sft": {"lr": -1.0}}}}, "--lr must be positive, got -1.0; fix the preset"),
])
def test_a_bad_presets_file_is_one_line_naming_it(setup, tmp_path, presets, match):
    out = _presets_run(setup, tmp_path, presets)("--help")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "presets.json" in last and match in last, out.stderr


def test_halfcheetahdir_takes_halfcheetahvel_presets(tmp_path):
    (tmp_path / "presets.json").write_text(json.dumps({"halfcheetahvel": {"full": {"sft": {"lr": 3e-4}}}}))
    out = subprocess.run([sys.executable, "sft.py", "--env", "halfcheetahdir", "--help"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "RFT_PRESETS": str(tmp_path / "presets.json")}, timeout=60)
    assert out.returncode == 0 and "presets: --lr 0.0003 (from" in out.stdout and "[halfcheetahvel][full][sft]" in out.stdout


def test_validation_tasks_finetune_and_a_task_the_checkpoint_saw_is_refused(setup, tmp_path):
    val = spec(ENV).val_tasks[0]
    res = run_algo(setup, "sft", run_dir=str(tmp_path / "ok"), tasks=(val,))
    assert [t["task"] for t in res["tasks"]] == [val]
    ck = torch.load(setup / "pre.pt", weights_only=True)
    ck["pretrain_tasks"] = [val]  # as if pretrained on the validation task
    torch.save(ck, tmp_path / "seen.pt")
    with pytest.raises(ValueError, match=rf"was pretrained on task\(s\) \[{val}\].*pretrain_pdt.py --env {ENV}"):
        run_algo(setup, "sft", run_dir=str(tmp_path / "bad"), tasks=(val,), pretrained=str(tmp_path / "seen.pt"))
    del ck["pretrain_tasks"]  # a checkpoint from before validation tasks: taken to have seen every non-test task < 50
    torch.save(ck, tmp_path / "old.pt")
    seen = spec(ENV).train_tasks[5]
    with pytest.raises(ValueError, match="neither validation nor test"):
        run_algo(setup, "sft", run_dir=str(tmp_path / "bad"), tasks=(seen,), pretrained=str(tmp_path / "old.pt"))
    from common.model import pretrain_tasks
    assert set(pretrain_tasks(ck, "metaworld")) == set(range(45))  # the old metaworld checkpoint saw the val classes
    assert set(pretrain_tasks(ck, ENV)).isdisjoint(spec(ENV).val_tasks)


@pytest.mark.parametrize("gl", ["osmesa", "egl"])
def test_capture_video_writes_a_gif_or_says_in_one_line_why_not(setup, tmp_path, gl):
    """--capture-video renders one reporting episode per evaluation; where MuJoCo has no OpenGL backend
    (osmesa is missing on the CI machine) the run ends before training with one line and writes nothing."""
    cmd = [sys.executable, "sft.py", "--env", ENV, "--tasks", str(TASK), "--num-trajs", "4", "--total-steps", "2",
           "--eval-every", "2", "--eval-episodes", "1", "--batch-size", "4", "--data-dir", str(setup / "data"),
           "--pretrained", str(setup / "pre.pt"), "--run-dir", str(tmp_path), "--threads", "1", "--capture-video"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "MUJOCO_GL": gl})
    run = tmp_path / f"sft_{ENV}_full_expert_n4_s1"
    if out.returncode == 0:
        import imageio.v3 as iio

        gif = run / "videos" / f"task_{TASK:02d}_step_00002.gif"
        assert iio.imread(gif, index=None).shape[1:] == (240, 240, 3)
    else:
        last = out.stderr.strip().splitlines()[-1]
        assert out.returncode == 1 and last.startswith(f"error: --capture-video cannot render here (MUJOCO_GL={gl}")
        assert "Traceback" not in out.stderr and not run.exists()


def test_only_tasks_the_split_keeps_out_of_pretraining_are_refused_as_seen():
    from common.model import seen_in_pretraining
    from common.model import pretrain_tasks

    d = spec("halfcheetahdir")  # its two tasks are pretraining and test tasks by design, old checkpoint or new
    assert seen_in_pretraining(d.test_tasks, pretrain_tasks({}, "halfcheetahdir"), d) == []
    assert seen_in_pretraining(d.test_tasks, pretrain_tasks({"pretrain_tasks": [0, 1]}, "halfcheetahdir"), d) == []
    mw = spec("metaworld")
    assert seen_in_pretraining(mw.finetune_tasks, pretrain_tasks({}, "metaworld"), mw) == list(mw.val_tasks)
    assert seen_in_pretraining(mw.finetune_tasks, pretrain_tasks({"pretrain_tasks": list(mw.train_tasks)}, "metaworld"),
                               mw) == []


@pytest.mark.parametrize("script", ["qp_sft", "online_ppo"])
def test_a_copied_method_runs_on_its_own(setup, tmp_path, script):
    """The README's "copy one method": the script and common/ alone, in an empty folder, finetune there."""
    import shutil

    dst = tmp_path / "project"
    shutil.copytree(os.path.join(ROOT, "common"), dst / "common", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, f"{script}.py"), dst)
    flags = ["--env", ENV, "--tasks", str(TASK), "--num-trajs", "4", "--total-steps", "2", "--eval-every", "2",
             "--eval-episodes", "1", "--batch-size", "4", "--threads", "1", "--data-dir", str(setup / "data"),
             "--pretrained", str(setup / "pre.pt"), "--run-dir", str(dst / "runs")]
    if script.startswith("online"):
        flags += ["--group-size", "2"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, f"{script}.py", *flags], cwd=dst, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (result,) = (dst / "runs").glob("*/result.json")
    assert json.loads(result.read_text())["tasks"][0]["task"] == TASK
