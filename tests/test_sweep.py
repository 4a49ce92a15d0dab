"""Parameter sweeps (scripts/sweep.py, actors/sweep_core.py): the space file and its
errors, a trial equal to the in-process backtest, and sweeps on a real Dask cluster
(a `dask scheduler` and two `dask worker` processes on 127.0.0.1): equal to the same
sweep on a local cluster, a worker killed mid-sweep, the sweep itself killed and resumed."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sqlite3
import subprocess

import pytest

from actors import sweep_core as sc
from scripts import testkit
from tests.harness import free_ports

ROOT = testkit.ROOT
PY = os.path.join(ROOT, ".venv", "bin", "python")
DASK = os.path.join(ROOT, ".venv", "bin", "dask")
SWEEP = os.path.join(ROOT, "scripts", "sweep.py")
BACKTEST = os.path.join(ROOT, "config", "backtest.toml")

GRID = """
[search]
sampler = "grid"
trials = 40
seed = 3
objective = "sharpe"
constraints = ["fast < slow"]

[params.fast]
type = "int"
low = 4
high = 16
step = 4

[params.slow]
type = "int"
low = 10
high = 50
step = 10
"""  # 4 x 5 = 20 points, all with fast < slow but (12, 10) and (16, 10): 18 trials run, 2 refused


def write_bars(path: str, n: int, seed: int = 7) -> str:
    """n one-minute bars of a seeded random walk (deterministic), GOOG's columns."""
    rng = random.Random(seed)
    p = 100.0
    lines = ["date,open,high,low,close,volume"]
    t0 = 1_600_000_000
    for i in range(n):
        o = p
        p = max(1.0, p * math.exp(rng.gauss(0, 0.01)))
        hi, lo = max(o, p) * 1.002, min(o, p) * 0.998
        ts = t0 + 60 * i
        lines.append(f"{ts},{o:.2f},{hi:.2f},{lo:.2f},{p:.2f},{rng.randint(100, 1000)}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def space_file(d: str, text: str = GRID, name: str = "space.toml") -> str:
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def sweep_env(d: str) -> dict[str, str]:
    """A local cluster's scratch space (dask-scratch-space) under the test's own directory."""
    tmp = os.path.join(d, "tmp")
    os.makedirs(tmp, exist_ok=True)
    return {"TMPDIR": tmp}


def sweep_args(space: str, out: str, data: str, *extra: str) -> list[str]:
    return [PY, SWEEP, "--config", BACKTEST, "--space", space, "--dir", out,
            "--set", f'market_data.path="{data}"', "--set", "market_data.symbol=GOOG", *extra]


def table(out: str) -> list[dict]:
    """trials.csv as rows, without the timing column (it differs from run to run)."""
    import pandas as pd

    df = pd.read_csv(os.path.join(out, "trials.csv")).drop(columns=["duration_s"])
    pq = pd.read_parquet(os.path.join(out, "trials.parquet")).drop(columns=["duration_s"])
    assert len(pq) == len(df) and list(pq["trial"]) == list(df["trial"])
    return json.loads(df.to_json(orient="records"))


def check_complete_unique(rows: list[dict]) -> None:
    ran = [r for r in rows if r["state"] == "complete"]
    assert len(ran) == 18, rows
    assert len({r["trial"] for r in rows}) == len(rows) == 20
    assert len({(r["fast"], r["slow"]) for r in rows}) == 20  # every grid point once
    refused = {(r["fast"], r["slow"]) for r in rows if r["state"] == "infeasible"}
    assert refused == {(12, 10), (16, 10)}


@pytest.fixture
def cluster(procs, run_dir):
    """A Dask scheduler and two workers on 127.0.0.1, as separate processes (no nanny: a
    killed worker stays dead). Their scratch files go under run_dir (TMPDIR), removed with it."""
    from distributed import Client

    port = free_ports(1)
    addr = f"tcp://127.0.0.1:{port}"
    tmp = os.path.join(run_dir, "tmp")
    os.makedirs(tmp)
    env = {"TMPDIR": tmp, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    sched = procs.spawn([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                        env=env, **quiet)
    workers = [procs.spawn([DASK, "worker", addr, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", f"w{i}",
                            "--host", "127.0.0.1", "--local-directory", tmp], env=env, **quiet) for i in range(2)]
    with Client(addr, timeout="30s") as c:
        c.wait_for_workers(2, timeout=60)
    yield addr, sched, workers


def finished_trials(out: str) -> list[tuple[int, str, str]]:
    """(number, state, datetime_complete) of the finished trials in study.sqlite."""
    path = os.path.join(out, "study.sqlite")
    if not os.path.exists(path):
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT number, state, datetime_complete FROM trials WHERE state != 'RUNNING' "
                              "ORDER BY number").fetchall()
        finally:
            db.close()
    except sqlite3.OperationalError:  # the tables are not made yet
        return []


# ---------------------------------------------------------------- the space
BAD = [
    ('[params.fast]\ntype = "integer"\nlow = 1\nhigh = 5\n', "params.fast.type"),
    ('[params.fast]\ntype = "int"\nlow = 9\nhigh = 5\n', "params.fast"),
    ('[params.fast]\ntype = "int"\nlow = 1\nhigh = 5\nstpe = 1\n', "params.fast.stpe"),
    ('[params.fast]\ntype = "int"\nlow = 1.5\nhigh = 5\n', "params.fast.low"),
    ('[search]\nobjective = "sharp"\n[params.fast]\ntype = "int"\nlow = 1\nhigh = 5\n', "search.objective"),
    ('[search]\nsampler = "anneal"\n[params.fast]\ntype = "int"\nlow = 1\nhigh = 5\n', "search.sampler"),
    ('[search]\nconstraints = ["fast < slwo"]\n[params.fast]\ntype = "int"\nlow = 1\nhigh = 5\n',
     "search.constraints[0]"),
    ('[search]\nconstraints = ["__import__(\'os\').system(\'true\') < fast"]\n[params.fast]\ntype = "int"\n'
     'low = 1\nhigh = 5\n', "search.constraints[0]"),
    ('[params.fsat]\ntype = "int"\nlow = 1\nhigh = 5\n', "params.fsat"),
    ('[config."exchange.comission_pct"]\ntype = "float"\nlow = 0.0\nhigh = 0.01\n', 'config."exchange.comission_pct"'),
    ('[search]\nsampler = "grid"\n[config."exchange.commission_pct"]\ntype = "float"\nlow = 0.0\nhigh = 0.01\n',
     'config."exchange.commission_pct".step'),
    ('[params.fast\ntype = "int"\n', "not valid TOML"),
]


@pytest.mark.parametrize("text,key", BAD, ids=[k for _, k in BAD])
def test_a_bad_space_file_is_refused_naming_the_key_and_nothing_is_made(data_dir, capsys, text, key):
    from scripts import sweep

    space = space_file(data_dir, text)
    out = os.path.join(data_dir, "out")
    code = sweep.main(["--config", BACKTEST, "--space", space, "--dir", out])
    err = capsys.readouterr().err
    assert code == 2, err
    assert key in err and space in err, err
    assert not os.path.exists(out)


def test_constraints_compare_params_without_running_code():
    c = sc.Constraint("2 * fast <= slow - 1", {"fast", "slow"})
    assert c.holds({"fast": 5, "slow": 11}) and not c.holds({"fast": 5, "slow": 10})
    assert sc.Constraint("a < b < c", {"a", "b", "c"}).holds({"a": 1, "b": 2, "c": 3})
    assert not sc.Constraint("a < b < c", {"a", "b", "c"}).holds({"a": 1, "b": 3, "c": 3})
    assert sc.Constraint("exchange.commission_pct < 0.01", {"exchange.commission_pct"}).holds(
        {"exchange.commission_pct": 0.001})
    for bad in ("fast", "fast < open('x')", "fast.__class__ < 1", "fast < 'x'", "lambda: 1 < 2"):
        with pytest.raises(ValueError):
            sc.Constraint(bad, {"fast", "slow"})


def test_walk_forward_folds_follow_each_other_without_overlap():
    f = sc.folds(2000, 3)
    assert f == [((0, 500), (500, 1000)), ((500, 1000), (1000, 1500)), ((1000, 1500), (1500, 2000))]
    with pytest.raises(ValueError):
        sc.folds(5, 3)


def test_a_trial_is_the_in_process_backtest(run_dir):
    """run_trial (from memory, no report.png) gives the summary.json of supervisor.py's
    in-process backtest of the same params; a window's history warms the plugin up."""
    import config as config_mod
    import msgspec

    sets = ["strategy.params.fast=7", "strategy.params.slow=25"]
    code, _, err = testkit.run_backtest(run_dir, sets)
    assert code == 0, err
    with open(os.path.join(run_dir, "latest", "summary.json")) as f:
        ref = json.load(f)
    cfg = config_mod.load(BACKTEST)
    pack = sc.load_data(cfg)
    got = sc.run_trial(msgspec.to_builtins(cfg), {"strategy.params.fast": 7, "strategy.params.slow": 25}, pack)
    assert got == ref
    late = sc.run_trial(BACKTEST, {"strategy.params.fast": 7, "strategy.params.slow": 25}, pack, window=(1000, 2148))
    assert late["bars"] == 1148 and late["trades"] > 0  # warmed up: trades from the window's start
    with pytest.raises(sc.TrialError, match="fast .30. must be shorter than slow .25."):
        sc.run_trial(BACKTEST, {"strategy.params.fast": 30, "strategy.params.slow": 25}, pack)


# --------------------------------------------------------------- on a cluster
@pytest.mark.timeout(120)
def test_a_sweep_on_a_dask_cluster_equals_the_same_sweep_run_locally(procs, cluster, data_dir):
    addr, _, _ = cluster
    data = write_bars(os.path.join(data_dir, "bars.csv"), 2000)
    space = space_file(data_dir)
    remote, local = os.path.join(data_dir, "remote"), os.path.join(data_dir, "local")
    p = procs.spawn(sweep_args(space, remote, data, "--scheduler", addr), stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=90)
    assert p.returncode == 0, err.decode()[-3000:]
    p = procs.spawn(sweep_args(space, local, data, "--workers", "1"), env=sweep_env(data_dir), stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
    out2, err = p.communicate(timeout=90)
    assert p.returncode == 0, err.decode()[-3000:]
    a, b = table(remote), table(local)
    check_complete_unique(a)
    assert a == b
    for d in (remote, local):
        for f in ("study.sqlite", "trials.csv", "trials.parquet", "best.json", "heatmap.png", "parallel.png",
                  "best/summary.json", "best/report.png"):
            assert os.path.exists(os.path.join(d, f)), f
    best = json.load(open(os.path.join(remote, "best.json")))
    done = [r for r in a if r["state"] == "complete"]
    assert best["value"] == max(r["value"] for r in done)
    assert best["summary"]["sharpe"] == best["value"]  # the best's report is that trial's backtest
    assert b"best          trial" in out and b"best          trial" in out2


@pytest.mark.timeout(150)
def test_a_worker_killed_mid_sweep_its_trials_run_elsewhere(procs, cluster, data_dir):
    from distributed import Client

    addr, _, workers = cluster
    data = write_bars(os.path.join(data_dir, "bars.csv"), 30_000)  # trials long enough to be killed in
    space = space_file(data_dir)
    out = os.path.join(data_dir, "out")
    p = procs.spawn(sweep_args(space, out, data, "--scheduler", addr), stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
    with Client(addr, timeout="30s") as c:
        # The first worker, once it is running a trial (and some trials are done).
        victim = None

        def busy():
            nonlocal victim
            proc = c.processing()
            info = c.scheduler_info()["workers"]
            if len(finished_trials(out)) < 2:
                return False
            for w, tasks in proc.items():
                if tasks and info.get(w, {}).get("name") == "w0":
                    victim = w
                    return True
            return p.poll() is not None

        testkit.wait_for(busy, 90, "worker 1 running a trial", interval=0.02)
        assert victim is not None, "the sweep ended before a worker could be killed"
        before = len(finished_trials(out))
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].wait()
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()[-3000:]
    assert before < 20  # killed mid-sweep
    check_complete_unique(table(out))


@pytest.mark.timeout(150)
def test_a_sweep_killed_and_run_again_runs_no_finished_trial_twice(procs, cluster, data_dir):
    addr, _, _ = cluster
    data = write_bars(os.path.join(data_dir, "bars.csv"), 30_000)
    space = space_file(data_dir)
    out = os.path.join(data_dir, "out")
    args = sweep_args(space, out, data, "--scheduler", addr)
    p = procs.spawn(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    testkit.wait_for(lambda: len(finished_trials(out)) >= 4 or p.poll() is not None, 90, "4 trials finished")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = finished_trials(out)
    assert 4 <= len(before) < 20, "the sweep must be killed mid-way"
    p = procs.spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()[-3000:]
    after = finished_trials(out)
    # A trial finished before the kill is untouched: same number, state and completion time.
    assert set(before) <= set(after)
    check_complete_unique(table(out))


@pytest.mark.timeout(120)
def test_walk_forward_reports_each_folds_out_of_sample_result(procs, data_dir):
    data = write_bars(os.path.join(data_dir, "bars.csv"), 2000)
    space = space_file(data_dir)
    out = os.path.join(data_dir, "wf")
    p = procs.spawn(sweep_args(space, out, data, "--workers", "1", "--walk-forward", "2"), env=sweep_env(data_dir),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, err = p.communicate(timeout=100)
    assert p.returncode == 0, err.decode()[-3000:]
    best = json.load(open(os.path.join(out, "best.json")))
    assert [f["fold"] for f in best["folds"]] == ["fold-1", "fold-2"]
    rows = table(out)
    for fold, window in zip(best["folds"], [(667, 1333), (1333, 2000)]):  # 3 segments of 2,000 bars
        ran = [r for r in rows if r["study"] == fold["fold"] and r["state"] != "infeasible"]
        assert len(ran) == 18
        # A trial whose objective is undefined (no trade in the window: no Sharpe) failed, saying why.
        assert all(r["state"] == "complete" or "undefined" in r["error"] for r in ran), ran
        done = [r for r in ran if r["state"] == "complete"]
        top = max(done, key=lambda r: r["value"])
        assert (fold["fast"], fold["slow"], fold["in_sample"]) == (top["fast"], top["slow"], top["value"])
        # The out-of-sample backtest is the next segment's, with the in-sample best's params.
        oos = sc.run_trial(BACKTEST, {"strategy.params.fast": top["fast"], "strategy.params.slow": top["slow"]},
                           data, window=window)
        assert oos["bars"] == window[1] - window[0]
        assert fold["out_of_sample"] == oos["sharpe"]
        assert os.path.exists(os.path.join(out, "folds", fold["fold"], "report.png"))
    assert b"out-of-sample mean" in stdout


@pytest.mark.timeout(120)
def test_a_sweep_killed_inside_ask_resumes_with_every_grid_point_once(procs, data_dir):
    """Killed between two params of one ask (the storage has 'fast', not 'slow'): the
    resumed sweep finishes asking that trial and runs it; no grid point lost or run twice."""
    data = write_bars(os.path.join(data_dir, "bars.csv"), 2000)
    space = space_file(data_dir)
    out = os.path.join(data_dir, "out")
    args = sweep_args(space, out, data, "--workers", "1")
    p = procs.spawn(args, env=sweep_env(data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=100)
    assert p.returncode == 0, err.decode()[-3000:]
    import optuna

    storage = f"sqlite:///{os.path.join(out, 'study.sqlite')}"
    study = optuna.load_study(study_name="sweep", storage=storage)
    keep = [t for t in study.get_trials(deepcopy=False) if t.number >= 17]
    # Rewind: the last trials as if never run, one of them asked with only its first param.
    db = sqlite3.connect(os.path.join(out, "study.sqlite"))
    try:
        ids = [t._trial_id for t in keep]
        marks = ",".join("?" * len(ids))
        db.execute(f"UPDATE trials SET state = 'RUNNING', datetime_complete = NULL WHERE trial_id IN ({marks})", ids)
        db.execute(f"DELETE FROM trial_values WHERE trial_id IN ({marks})", ids)
        pid = db.execute("SELECT param_id FROM trial_params p JOIN trials t USING (trial_id) WHERE t.number = 17 "
                         "AND p.param_name = 'slow'").fetchone()[0]
        db.execute("DELETE FROM trial_params WHERE param_id = ?", (pid,))
        db.commit()
    finally:
        db.close()
    p = procs.spawn(args, env=sweep_env(data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=100)
    assert p.returncode == 0, err.decode()[-3000:]
    check_complete_unique(table(out))
