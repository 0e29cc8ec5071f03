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

import pretrain_pdt
from common.envs import spec
from common.tuning import TUNINGS
from conftest import make_fake_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGOS = ("sft", "dpo", "grpo", "ppo", "cql", "qp_sft", "qp_dpo")
ENV = "halfcheetahvel"
TASK = spec(ENV).test_tasks[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Fake data for two pretraining tasks and the test tasks, and a tiny pretrained model."""
    root = tmp_path_factory.mktemp("algos")
    sp = spec(ENV)
    make_fake_data(root / "data", ENV, list(sp.train_tasks[:2]) + list(sp.test_tasks), n_trajs=6, length=30)
    make_fake_data(root / "data", ENV, list(sp.test_tasks), n_trajs=6, length=30, quality="medium", seed=7)
    args = pretrain_pdt.Args(env=ENV, data_dir=str(root / "data"), run_dir=str(root / "pre_runs"),
                             out=str(root / "pre.pt"), train_tasks=2, num_trajs=6, n_layer=1, n_embd=16, K=5,
                             batch_size=8, total_steps=10, eval_every=10, eval_episodes=1, threads=1)
    pretrain_pdt.main(args)
    return root


def run_algo(root, algo, run_dir="runs", **kw):
    mod = importlib.import_module(algo)
    base = dict(env=ENV, tasks=(TASK,), num_trajs=4, total_steps=4, eval_every=2, eval_episodes=1, batch_size=4,
                data_dir=str(root / "data"), run_dir=str(root / run_dir), pretrained=str(root / "pre.pt"), threads=1)
    base.update(kw)
    return mod.main(mod.Args(**base))


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
    # at the reference the loss is log 2, and the rejected action lies between a and the reference side
    assert dpo_loss(ref, ref, a, a_bar, torch.ones(1, 1), beta, std).item() == pytest.approx(math.log(2))
    torch.manual_seed(0)
    a = torch.zeros(1000, 1, 2)
    r = torch.tensor([0.5, -0.5]).expand(1000, 1, 2)
    ab = rejected_actions(a, r, 0.2)
    assert (ab[..., 0] >= 0).all() and (ab[..., 1] <= 0).all() and (ab != 0).all()


def test_grpo_group_advantages_clipping_and_kl_estimator():
    from grpo import group_advantages, grpo_loss, kl_estimator
    np.testing.assert_allclose(group_advantages(np.array([1.0, 2.0, 3.0])), [-1.224744871, 0.0, 1.224744871], rtol=1e-6)
    # eq. 7: r - log r - 1 with r = pi_ref / pi
    assert kl_estimator(torch.tensor(0.0), torch.tensor(math.log(2.0))).item() == pytest.approx(2 - math.log(2) - 1)
    assert kl_estimator(torch.tensor(1.3), torch.tensor(1.3)).item() == 0.0
    # ratio e^0.5 = 1.65 with A = +1 is clipped to 1.2; with A = -1 the unclipped -1.65 is kept (min)
    logp, old = torch.tensor([[0.5, 0.5]]), torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    loss = grpo_loss(logp, old, logp, adv, torch.ones(1, 2), clip_eps=0.2, beta=0.1)  # KL 0 at the reference
    assert loss.item() == pytest.approx(-(1.2 - math.exp(0.5)) / 2)
    loss_kl = grpo_loss(logp, old, logp + math.log(2.0), adv, torch.ones(1, 2), clip_eps=0.2, beta=0.1)
    assert loss_kl.item() == pytest.approx(loss.item() + 0.1 * (1 - math.log(2)))


def test_ppo_gae_and_clipped_surrogate():
    from ppo import gae, ppo_loss
    r = np.array([1.0, 2.0, 3.0, 1.0])
    v = np.array([0.5, 0.5, 0.5, 0.5])
    v_next = np.array([0.5, 0.5, 9.0, 0.5])  # two trajectories: steps 0-2 (a timeout at 2) and step 3 (terminal)
    term = np.array([0.0, 0.0, 0.0, 1.0])
    has_next = np.array([1.0, 1.0, 0.0, 0.0])
    g, lam = 0.9, 0.5
    d = [1 + 0.45 - 0.5, 2 + 0.45 - 0.5, 3 + 8.1 - 0.5, 1 - 0.5]
    a2 = d[2]
    a1 = d[1] + g * lam * a2
    a0 = d[0] + g * lam * a1
    np.testing.assert_allclose(gae(r, v, v_next, term, has_next, g, lam), [a0, a1, a2, d[3]])
    logp, old = torch.tensor([[-0.5]]), torch.zeros(1, 1)  # ratio 0.61 < 0.8 with A > 0: clipped at 0.8
    assert ppo_loss(logp, old, torch.ones(1, 1), torch.ones(1, 1), 0.2).item() == pytest.approx(-math.exp(-0.5))
    assert ppo_loss(logp, old, -torch.ones(1, 1), torch.ones(1, 1), 0.2).item() == pytest.approx(0.8)


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
    # QP's loss is (supervised loss) - alpha * Q term: higher Q, lower loss
    src = open(os.path.join(ROOT, f"{algo}.py")).read()
    assert "- args.alpha * q" in src


# ---------------------------------------------------------------- end to end
@pytest.mark.parametrize("algo", ALGOS)
def test_every_script_runs_with_every_tuning_and_writes_a_valid_result(setup, algo):
    for tuning in TUNINGS:
        res = run_algo(setup, algo, tuning=tuning)
        path = os.path.join(setup, "runs", f"{algo}_{ENV}_{tuning}_expert_n4_s1", "result.json")
        with open(path) as f:
            saved = json.load(f)
        assert saved["best"] == res["best"]
        for k in ("config", "zero_shot", "best", "final", "tasks", "wall_time_s", "trainable_params", "trainable_bytes"):
            assert k in saved, k
        (t,) = saved["tasks"]
        assert t["task"] == TASK and [c["step"] for c in t["curve"]] == [0, 2, 4]
        assert t["best"] == max(c["return"] for c in t["curve"][1:]) and t["final"] == t["curve"][-1]["return"]
        assert saved["config"]["tuning"] == tuning and saved["config"]["algo"] == algo
        assert saved["trainable_bytes"] == 4 * saved["trainable_params"] > 0
        # zero-shot is the pretrained policy: the same for every algorithm and tuning
        assert saved["zero_shot"] == pytest.approx(run_zero_shot(setup))


_zs = {}


def run_zero_shot(root):
    if "v" not in _zs:
        _zs["v"] = run_algo(root, "sft", run_dir="zs", total_steps=2)["zero_shot"]
    return _zs["v"]


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


def test_a_nan_loss_stops_the_run_without_a_result(setup, monkeypatch):
    import sft
    real = sft.sft_loss
    monkeypatch.setattr(sft, "sft_loss", lambda *a: real(*a) * float("nan"))
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        run_algo(setup, "sft", run_dir="nan")
    assert not os.path.exists(os.path.join(setup, "nan"))


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
    assert out.returncode == 1 and "not test tasks of halfcheetahvel" in out.stderr
    out = cli("ppo.py", "--data-dir", str(setup / "nodata"), "--pretrained", str(setup / "pre.pt"))
    assert out.returncode == 1 and "python collect_data.py --env halfcheetahvel --data-dir" in out.stderr


@pytest.mark.parametrize("base,qp", [("sft", "qp_sft"), ("dpo", "qp_dpo")])
def test_the_qp_scripts_are_their_base_plus_the_critic_and_the_q_term(base, qp):
    """Every code line of sft.py (dpo.py) is in qp_sft.py (qp_dpo.py), except the run name, the loss
    line that gains the Q term and the logged values."""
    def code(name):
        src = open(os.path.join(ROOT, f"{name}.py")).read()
        return src[src.index('"""', 3) + 3:].splitlines()  # without the module docstring
    qp_lines = set(code(qp))
    missing = [l for l in code(base) if l.strip() and l not in qp_lines]
    allowed = ("    run = Run(", "            loss = ", "            return {", '    """SFT has no hyperparameters')
    assert all(l.startswith(allowed) for l in missing), missing
    assert len(code(qp)) - len(code(base)) < 110  # the critic, its update and the Q term, nothing else


def test_window_tables_are_exact_lookups_of_the_policy_on_sampled_batches(setup):
    """The reference / target-policy tables must give, for any sampled batch, exactly what a forward
    pass of the same policy gives; and the flat step index that QP and PPO derive for each position
    of a window must point at that step's data."""
    import sft
    from common.finetune import Run
    args = sft.Args(env=ENV, tasks=(TASK,), num_trajs=4, data_dir=str(setup / "data"), pretrained=str(setup / "pre.pt"),
                    batch_size=16)
    run = Run(args, "sft")
    rng = run.seed(TASK)
    policy = run.policy(TASK).eval()
    table = run.window_table(policy, TASK, batch_size=7)
    canon = run.window_table(policy, TASK, last_only=True)
    p = run.data[TASK]["packed"]
    assert table.shape == (len(p["states"]), 5, spec(ENV).act_dim) and canon.shape == (len(p["states"]), spec(ENV).act_dim)
    torch.testing.assert_close(table[:, -1], canon, rtol=1e-5, atol=1e-6)
    for _ in range(3):
        b = run.sample(TASK, rng)
        with torch.no_grad():
            out = policy(b["states"], b["actions"], b["rtg"], b["timesteps"], b["mask"])
        m = b["mask"].bool()
        torch.testing.assert_close(table[b["window"]][m], out[m], rtol=1e-5, atol=1e-6)
        K = b["mask"].shape[1]
        flat = b["window"][:, None] - torch.arange(K - 1, -1, -1)[None]
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
