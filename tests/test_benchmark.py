"""benchmark/: every experiment script at SCALE=smoke end to end, the command grids at SCALE=paper, bad settings,
and what stays out of git. The validation search is in test_tune.py, report.py's statistics in test_report.py
(three files, so that the test workers share the load)."""
import os
import re
import subprocess

import pytest

from conftest import ROOT, benchmark_script as script

OUTPUTS = {"table1": ["table1.md", "table1.png", "table1_profiles.png", "table1_curves.png"], "table2": ["table2.md", "table2.png"],
           "fig1": ["fig1.md", "fig1.png"], "fig2": ["fig2.md", "fig2.png"],
           "fig34": ["fig34.md", "fig3.png", "fig4.png"], "fig5": ["fig5.md", "fig5.png"],
           "fig7": ["fig7.md", "fig7.png"], "table4": ["table4.md", "table4.png"],
           "table6": ["table6.md", "table6.png"], "fig8": ["fig8.md", "fig8.png"], "online": ["online.md", "online.png"]}


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke")


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_smoke_scale_of_every_script_writes_its_table_and_figure(smoke_root, name):
    out = script(name, SCALE="smoke", ROOT_DIR=str(smoke_root), WORKERS="2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for f in OUTPUTS[name]:
        path = smoke_root / "results" / f
        assert path.exists(), f"{name} did not write {f}"
        if f.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (smoke_root / "results" / OUTPUTS[name][0]).read_text()
    number = r"-?\d+\.\d+"
    if name == "table1":  # the smoke grid (SFT, QP-SFT x prompt, full) is filled, the rest is "-"
        row = next(line for line in md.splitlines() if line.startswith("| Prompt | HalfCheetahVel |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert re.fullmatch(number, cells[3]) and re.fullmatch(number, cells[9]) and cells[4] == "-"
        assert "The paper's takeaways" in md and "Runtime" in md
    elif name == "table2":
        assert re.search(rf"\| HalfCheetahVel \| Expert \| {number} \| {number} \| 0\.99 \| 0\.50 \|", md)
    elif name == "fig5":
        assert "l1 e32 h1" in md and "l3 e128 h1" in md
    elif name == "online":  # zero-shot, the best offline method, and the three online methods with their env steps
        assert "(best offline)" in md and all(m in md for m in ("| online GRPO |", "| mixed GRPO (LUFFY) |", "| online PPO |",
                                                                "| SFT, then mixed GRPO |"))
        assert "| 800 |" in md  # 2 iterations x 2 rollouts x 200 steps on the one smoke task
    elif name == "table6":
        assert re.search(rf"\| HalfCheetahVel \| {number} \| {number} \|", md)
    else:
        assert re.search(number, md)


def commands(name, **env):
    out = script(name, DRY_RUN="1", **env)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line.startswith("python ")]


def test_paper_scale_grids_have_every_cell_once(tmp_path):
    cmds = commands("table1", SCALE="paper")
    assert len(cmds) == len(set(cmds)) == 7 * 4 * 4 * 3
    cells = {tuple(re.search(rf"--{k} (\S+)", c).group(1) for k in ("env", "tuning", "seed")) + (c.split()[1],)
             for c in cmds}
    # each env's own episodes per evaluation (common/rollout.py EVAL_EPISODES): no --eval-episodes flag
    assert len(cells) == 336 and all("--total-steps 1000" in c and "--eval-episodes" not in c for c in cmds)
    fig7 = commands("fig7", SCALE="paper")
    assert len(fig7) == 2 * 5 * 2 * 4 * 4 * 3  # algos x alphas x qualities x tunings x envs x seeds
    assert {re.search(r"--alpha (\S+)", c).group(1) for c in fig7} == {"0.001", "0.01", "0.1", "1", "2"}
    fig5 = commands("fig5", SCALE="paper")
    assert len(fig5) == 5 * 2 * 4 * 3 and all("--env metaworld" in c and "qp_dpo.py" in c for c in fig5)
    assert len(commands("table6", SCALE="paper")) == 4 * 2 * 3
    online = commands("online", SCALE="paper")  # SFT runs to start from, Table 1's full tuning, 4 online methods
    init = [c for c in online if "--save-model selected" in c]
    assert len(online) == len(set(online)) == 4 * 3 * (1 + 7 + 4) and len(init) == 4 * 3
    names = [re.search(r"--run-name (\S+)", c).group(1) for c in init]
    assert all(f"--init-from runs/o2o_init/paper/{n}" in " ".join(online) for n in names)
    # overrides narrow the grid (an empty run folder: the committed cpu runs would be skipped as done)
    assert len(commands("table1", SCALE="cpu", ALGOS="sft qp_sft", TUNINGS="full", SEEDS="3",
                        RUN_DIR=str(tmp_path / "runs"))) == 2


@pytest.mark.parametrize("env,msg", [({"SCALE": "huge"}, "SCALE must be smoke, cpu or paper"),
                                     ({"ALGOS": "sft trpo"}, "unknown algorithm 'trpo'"),
                                     ({"TUNINGS": "adapter"}, "unknown tuning 'adapter'"),
                                     ({"WORKERS": "0"}, "WORKERS must be a positive integer")])
def test_bad_settings_give_one_line_errors(env, msg):
    out = script("table1", DRY_RUN="1", **env)
    assert out.returncode == 2 and msg in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, ".git")), reason="needs the git checkout")
@pytest.mark.parametrize("path", ["benchmark/results/cpu/runs/sft_antdir_full_expert_n50_s1/adapters/task_06_selected.safetensors",
                                  "benchmark/results/paper/runs/sft_antdir_full_expert_n50_s1/videos/task_06_step_0.gif"])
def test_saved_adapters_and_videos_of_benchmark_runs_stay_out_of_git(path):
    # a submission that committed the runs' adapters was too big to land: result.json is what the tables need
    assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0
    assert subprocess.run(["git", "check-ignore", "-q", "benchmark/results/cpu/runs/x/result.json"], cwd=ROOT).returncode == 1
