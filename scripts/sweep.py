"""Parameter sweeps on Dask: Optuna asks for points, Dask workers run each as one
in-process backtest (actors/sweep_core.py run_trial), Optuna is told the result.

    python scripts/sweep.py --config config/backtest.toml --space config/sweeps/sma.toml
    python scripts/sweep.py ... --scheduler tcp://10.0.0.5:8786     (a running Dask cluster)
    python scripts/sweep.py ... --walk-forward 3                    (out-of-sample check)

Execution: a local Dask cluster of ``--workers`` processes (default: one per core), or
the cluster whose scheduler ``--scheduler`` names. The data file is read and checked
once here and sent to every worker once (``client.scatter(..., broadcast=True)``): no
worker needs the file or a shared disk, and no trial parses it again. The config goes
with each task as a validated document (small); the project must be importable on the
workers (``pip install -e .`` there, or PYTHONPATH).

The sweep directory (``--dir``, default ``sweeps/<space file name>``) holds:
study.sqlite (the Optuna study: every trial, its params, state and figures), sweep.json
(what the sweep is: a resumed sweep must be the same), trials.csv and trials.parquet,
best.json and best/ (the best trial's backtest, report.png included), heatmap.png (the
objective over the first two numeric params), parallel.png (parallel coordinates);
with ``--walk-forward K`` also walkforward.csv and folds/fold-N/ (each fold's
out-of-sample backtest).

Resuming: kill the sweep (even ``kill -9``) and run the same command. Finished trials
are in study.sqlite and never run again; trials asked but not finished are RUNNING there
and run again under their own numbers; a finished trial is recorded once (its result and
its state in one ``tell``). A sampler resumed is seeded with ``seed + trials so far``, so
a random or TPE search does not replay the points it already drew. A grid gives trial k
the same point in every run, local or on a cluster; a random search draws the same
points in the same order too (its draws do not depend on results); TPE's later points
depend on which results came back first, so its table varies with the timing.

Exit codes: 0 done; 2 bad input (space file, config, data, a sweep directory holding
another sweep), nothing created; 1 a failure (no scheduler, no worker, every trial
failed, the directory in use by another sweep); 130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

import config as config_mod  # noqa: E402
from actors import sweep_core as sc  # noqa: E402
from actors.base import UserError, exit_reason  # noqa: E402
from actors.progress_bar import ProgressBar  # noqa: E402
from bus.fileio import atomic_write  # noqa: E402

EXIT_OK, EXIT_FAIL, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
INFEASIBLE_LIMIT = 10_000  # points in a row refused by the constraints: the space has (almost) none
WORKER_WAIT_S = 60.0  # a cluster with no worker yet: how long to wait for the first


class InputError(Exception):
    """Bad input: exit 2, nothing created."""


class Busy(Exception):
    """Another sweep holds the directory."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="sweep.py", description="parameter sweep of backtests on Dask (Optuna)")
    ap.add_argument("--config", required=True, help="backtest config (e.g. config/backtest.toml)")
    ap.add_argument("--space", required=True, help="space file (TOML; e.g. config/sweeps/sma.toml)")
    ap.add_argument("--trials", type=int, default=None, help="trials to run (default: the space's search.trials)")
    ap.add_argument("--objective", default=None, help="summary.json figure to optimise (default: the space's)")
    ap.add_argument("--direction", choices=("maximize", "minimize"), default=None,
                    help="default: the space's, else the objective's own (max_drawdown: minimize)")
    ap.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786",
                    help="a running Dask scheduler (default: a local cluster)")
    ap.add_argument("--workers", type=int, default=None, help="local cluster worker processes (default: cores)")
    ap.add_argument("--dir", default=None, help="sweep directory (default: sweeps/<space file name>)")
    ap.add_argument("--walk-forward", type=int, default=0, metavar="K",
                    help="K rolling folds: search in-sample, report each best out-of-sample")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config key for every trial (repeatable)")
    ap.add_argument("--retries", type=int, default=2, help="times a trial is retried after an error of its worker")
    ap.add_argument("--progress", action="store_true", help="draw the progress bar even when stderr is not a terminal")
    return ap.parse_args(argv)


# ------------------------------------------------------------------ the plan
class Plan:
    """Everything checked before anything is created."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        try:
            space = sc.parse_space(args.space)
            if args.objective is not None:
                space.objective = sc.check_objective(args.objective, "--objective")
                if args.direction is None:
                    space.direction = sc.OBJECTIVES[space.objective]
            if args.direction is not None:
                space.direction = args.direction
            if args.trials is not None:
                if args.trials < 1:
                    raise InputError(f"--trials: expected at least 1, got {args.trials}")
                space.trials = args.trials
            cfg = config_mod.load(args.config, args.sets)
            self.where = config_mod.source(args.config, args.sets)
            self.doc = msgspec.to_builtins(cfg)
            sc.check_against_config(space, self.doc, self.where, [])
            self.pack = sc.load_data(cfg)
        except (sc.SpaceError, config_mod.ConfigError, UserError) as e:
            raise InputError(exit_reason(e) if not isinstance(e, (sc.SpaceError, config_mod.ConfigError)) else str(e)) \
                from None
        if args.workers is not None and args.workers < 1:
            raise InputError(f"--workers: expected at least 1, got {args.workers}")
        if args.walk_forward < 0:
            raise InputError(f"--walk-forward: expected K >= 1 folds, got {args.walk_forward}")
        self.space = space
        n = len(self.pack)
        if args.walk_forward:
            try:
                self.folds = sc.folds(n, args.walk_forward)
            except ValueError as e:
                raise InputError(f"--walk-forward {args.walk_forward}: {e}") from None
        else:
            self.folds = []
        self.dir = os.path.abspath(args.dir or os.path.join("sweeps", Path(args.space).stem))
        # What the study is: a resumed sweep must be this one, or its trials would be mixed with another's.
        self.identity = {"space": space.fingerprint(), "trials": space.trials, "config": self.doc,
                         "data": hashlib.sha256(self.pack.ts + self.pack.ohlcv + self.pack.code).hexdigest(),
                         "walk_forward": args.walk_forward}

    def planned(self) -> int:
        """Trials each study runs: search.trials, or a grid's feasible points if fewer."""
        sp = self.space
        if sp.sampler != "grid":
            return sp.trials
        import itertools

        names = sp.names()
        feasible = sum(1 for v in itertools.product(*(p.grid() for p in sp.params)) if sp.feasible(dict(zip(names, v))))
        return min(sp.trials, feasible)

    def studies(self) -> list[tuple[str, tuple[int, int] | None]]:
        if not self.folds:
            return [("sweep", None)]
        return [(f"fold-{i + 1}", is_w) for i, (is_w, _) in enumerate(self.folds)]


def claim_dir(plan: Plan) -> int:
    """Make the sweep directory, lock it, check (or write) sweep.json; the lock's fd."""
    d = plan.dir
    path = os.path.join(d, "sweep.json")
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                old = json.loads(f.read())
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: unreadable ({e}); use another --dir") from None
        if old != json.loads(json.dumps(plan.identity)):
            diff = sorted(k for k in plan.identity if json.dumps(old.get(k), sort_keys=True)
                          != json.dumps(plan.identity[k], sort_keys=True))
            raise InputError(f"{d} holds another sweep (its {', '.join(diff) or 'record'} differ); "
                             "use another --dir, or the same space, config, data and options to resume it")
    os.makedirs(d, exist_ok=True)
    fd = os.open(os.path.join(d, "sweep.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Busy(f"{d} is in use by another sweep") from None
    if not os.path.exists(path):
        atomic_write(path, json.dumps(plan.identity, indent=1).encode())
    return fd


# ------------------------------------------------------------------- Dask
def connect(args: argparse.Namespace, scratch: str) -> tuple[Any, Any]:
    """(client, local cluster or None). A local cluster's workers keep their scratch files
    in ``scratch`` (removed after the sweep), not in a dask-scratch-space left in /tmp."""
    from distributed import Client, LocalCluster

    if args.scheduler:
        try:
            client = Client(args.scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise RuntimeError(f"cannot reach the Dask scheduler at {args.scheduler}: {e}") from None
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            client.close()
            raise RuntimeError(f"the Dask scheduler at {args.scheduler} has no worker "
                               f"(waited {WORKER_WAIT_S:.0f} s)") from None
        return client, None
    n = args.workers or os.cpu_count() or 1
    import dask

    dask.config.set({"temporary-directory": scratch})  # the scheduler's files too, not only the workers'
    # Processes, one thread each: a backtest is pure Python (one GIL per trial).
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR, local_directory=scratch)
    return Client(cluster), cluster


def n_workers(client: Any) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


# ---------------------------------------------------------------- a study
def _grid_class() -> type:
    from optuna.samplers import GridSampler

    class Grid(GridSampler):
        """Optuna's grid, but the sweep decides when it ends (it counts the points it
        asked): GridSampler's own stop after the last point works only inside
        ``study.optimize``, and a sweep asks and tells."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return Grid


def _Grid(*a: Any, **kw: Any) -> Any:  # noqa: N802
    return _grid_class()(*a, **kw)


class Runner:
    def __init__(self, plan: Plan, client: Any, data: Any, progress: ProgressBar | None):
        import optuna

        self.optuna = optuna
        self.plan, self.space, self.client, self.data = plan, plan.space, client, data
        self.storage = optuna.storages.RDBStorage(f"sqlite:///{os.path.join(plan.dir, 'study.sqlite')}")
        self.progress = progress
        self.done = 0  # trials finished in this sweep, all studies (for the progress bar)
        self.total = 0
        self.first_submit = self.last_tell = 0.0  # the trials' wall time (best.json "timing")
        self.durations: list[float] = []  # each trial's backtest on its worker, s

    def sampler(self, seed: int) -> Any:
        s = self.optuna.samplers
        sp = self.space
        if sp.sampler == "grid":
            return _Grid({p.name: p.grid() for p in sp.params}, seed=sp.seed)
        if sp.sampler == "random":
            return s.RandomSampler(seed=seed)
        return s.TPESampler(seed=seed)

    def submit(self, name: str, number: int, params: dict[str, Any], window: tuple[int, int] | None) -> Any:
        if not self.first_submit:
            self.first_submit = time.monotonic()
        return self.client.submit(sc.trial_task, self.plan.doc, self.space.overrides(params), self.data, window,
                                  key=f"{name}-trial-{number}-{time.time_ns()}", retries=self.plan.args.retries,
                                  pure=False)

    def run_study(self, name: str, window: tuple[int, int] | None) -> Any:
        from distributed import wait

        optuna = self.optuna
        TS = optuna.trial.TrialState
        sp = self.space
        existing = optuna.create_study(storage=self.storage, study_name=name, direction=sp.direction,
                                       load_if_exists=True).get_trials(deepcopy=False)
        # A resumed random/TPE sampler must not draw the points it drew before (module docstring).
        study = optuna.create_study(storage=self.storage, study_name=name, direction=sp.direction,
                                    sampler=self.sampler(sp.seed + len(existing)), load_if_exists=True)
        dists = {p.name: p.distribution() for p in sp.params}
        grid = sp.grid_size() if sp.sampler == "grid" else math.inf
        pending: dict[Any, tuple[int, int]] = {}  # future -> (trial number, trial id)
        # Asked but never told (the sweep was killed): run again, under their own numbers.
        study.get_trials(deepcopy=False)  # this study's storage cache must know them (Trial below)
        for t in existing:
            if t.state == TS.RUNNING:
                trial = optuna.Trial(study, t._trial_id)
                # Killed inside ask() the storage has some of its params, not all: finish asking
                # as ask() does (the sampler draws the rest; a grid point is kept).
                params = {n: trial._suggest(n, d) for n, d in dists.items()}
                if self.refused(study, trial, params):  # killed before its refusal was told
                    continue
                pending[self.submit(name, t.number, params, window)] = (t.number, t._trial_id)

        def finished() -> int:
            return sum(1 for t in study.get_trials(deepcopy=False, states=(TS.COMPLETE, TS.FAIL)))

        ran = finished()
        asked = len(existing)
        limit = 2 * n_workers(self.client)  # in flight: every worker busy, one queued each
        infeasible = 0
        while True:
            while len(pending) < limit and ran + len(pending) < sp.trials and asked < grid:
                trial = study.ask(dists)
                asked += 1
                if self.refused(study, trial, trial.params):
                    infeasible += 1
                    if infeasible >= INFEASIBLE_LIMIT:
                        raise InputError(f"{sp.path}: key search.constraints: {INFEASIBLE_LIMIT} points in a row "
                                         "break them; the space has (almost) no feasible point")
                    continue
                infeasible = 0
                pending[self.submit(name, trial.number, trial.params, window)] = (trial.number, trial._trial_id)
            if not pending:
                break
            done, _ = wait(list(pending), return_when="FIRST_COMPLETED")
            for fut in done:
                number, trial_id = pending.pop(fut)
                self.tell(study, number, trial_id, fut)
                self.last_tell = time.monotonic()
                ran += 1
                self.done += 1
                if self.progress is not None:
                    self.progress.update(time.monotonic(), self.done, self.total)
        return study

    def refused(self, study: Any, trial: Any, params: dict[str, Any]) -> bool:
        """Not run when the constraints refuse its point (told PRUNED: a grid's point is used
        up; a sampler draws again)."""
        if self.space.feasible(params):
            return False
        trial.set_user_attr("error", "refused by the constraints")
        study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)
        return True

    def tell(self, study: Any, number: int, trial_id: int, fut: Any) -> None:
        """A trial's result into the study: its figures first, then the state and value in
        one tell (a kill between the two leaves it RUNNING: run again on resume)."""
        TS = self.optuna.trial.TrialState
        trial = self.optuna.trial.Trial(study, trial_id)
        try:
            r = fut.result()
        except Exception as e:  # the task itself failed (retries spent): a worker's error
            r = {"error": f"{type(e).__name__}: {e}"}
        for k in ("metrics", "duration_s", "error"):
            if r.get(k) is not None:
                trial.set_user_attr(k, r[k])
        if r.get("duration_s") is not None:
            self.durations.append(r["duration_s"])
        value = sc.objective_value(r.get("metrics") or {}, self.space.objective) if not r.get("error") else None
        if value is None:
            if not r.get("error"):
                trial.set_user_attr("error", f"{self.space.objective} is undefined for this backtest "
                                             f"({r.get('metrics', {}).get('trades', 0)} trades)")
            study.tell(number, state=TS.FAIL)
        else:
            study.tell(number, value)


# ----------------------------------------------------------------- results
def rows_of(plan: Plan, studies: list[Any]) -> list[dict[str, Any]]:
    TS_NAMES = {"COMPLETE": "complete", "FAIL": "failed", "PRUNED": "infeasible", "RUNNING": "running"}
    rows = []
    for study in studies:
        for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
            m = t.user_attrs.get("metrics") or {}
            row = {"study": study.study_name, "trial": t.number, "state": TS_NAMES.get(t.state.name, t.state.name),
                   **{n: t.params.get(n) for n in plan.space.names()}, "value": t.value,
                   **{k: m.get(k) for k in sc.TABLE_METRICS}, "duration_s": t.user_attrs.get("duration_s"),
                   "error": t.user_attrs.get("error", "")}
            rows.append(row)
    return rows


def best_of(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no complete trial
        return None


def local_backtest(plan: Plan, params: dict[str, Any], window: tuple[int, int] | None, out: str) -> dict[str, Any]:
    """The backtest of ``params`` again, here, with every file (report.png too) in ``out``."""
    shutil.rmtree(out, ignore_errors=True)  # derived: made again from the study
    os.makedirs(out)
    return sc.run_trial(plan.doc, plan.space.overrides(params), plan.pack, out, window=window, png=True,
                        where=plan.where)


def write_outputs(plan: Plan, runner: Runner, studies: list[Any]) -> dict[str, Any]:
    sp, d = plan.space, plan.dir
    rows = rows_of(plan, studies)
    sc.write_table(rows, sc.table_columns(sp), os.path.join(d, "trials.csv"), os.path.join(d, "trials.parquet"))
    numeric = [p.name for p in sp.params if p.type != "categorical"]
    axes = (numeric + [p.name for p in sp.params if p.type == "categorical"])[:2]
    plot_rows = [r for r in rows if r["study"] == studies[0].study_name] if plan.folds else rows
    if len(axes) == 2:
        sc.write_heatmap(os.path.join(d, "heatmap.png"), plot_rows, axes[0], axes[1], sp.objective, sp.direction)
    sc.write_parallel(os.path.join(d, "parallel.png"), plot_rows, sp.names(), sp.objective)
    out: dict[str, Any] = {"objective": sp.objective, "direction": sp.direction, "sampler": sp.sampler}
    if not plan.folds:
        best = best_of(studies[0])
        if best is None:
            raise RuntimeError("no trial completed: see the error column of trials.csv")
        summary = local_backtest(plan, best.params, None, os.path.join(d, "best"))
        out.update({"trial": best.number, "params": best.params, "overrides": sp.overrides(best.params),
                    "value": best.value, "report": os.path.join(d, "best"), "summary": summary})
    else:
        fold_rows = []
        for (is_w, oos_w), study in zip(plan.folds, studies):
            best = best_of(study)
            row: dict[str, Any] = {"fold": study.study_name, "in_sample_bars": f"{is_w[0]}..{is_w[1]}",
                                   "out_of_sample_bars": f"{oos_w[0]}..{oos_w[1]}"}
            if best is None:
                row.update({"error": "no in-sample trial completed"})
            else:
                s = local_backtest(plan, best.params, oos_w, os.path.join(d, "folds", study.study_name))
                row.update({"trial": best.number, **best.params, "in_sample": best.value,
                            "out_of_sample": sc.objective_value(s, sp.objective),
                            "oos_start": s.get("start"), "oos_end": s.get("end"),
                            "oos_total_return": s.get("total_return"), "oos_trades": s.get("trades")})
            fold_rows.append(row)
        cols = ["fold", "in_sample_bars", "out_of_sample_bars", "trial", *sp.names(), "in_sample", "out_of_sample",
                "oos_start", "oos_end", "oos_total_return", "oos_trades", "error"]
        import pandas as pd

        atomic_write(os.path.join(d, "walkforward.csv"),
                     pd.DataFrame(fold_rows, columns=cols).to_csv(index=False).encode())
        oos = [r["out_of_sample"] for r in fold_rows if r.get("out_of_sample") is not None]
        out.update({"folds": fold_rows, "out_of_sample_mean": sum(oos) / len(oos) if oos else None})
    n = len(runner.durations)
    wall = runner.last_tell - runner.first_submit
    # This run's trials only (a resumed sweep's earlier ones are not timed): scripts/bench.py --sweep reads it.
    out["timing"] = {"trials": n, "workers": n_workers(runner.client), "trials_wall_s": round(wall, 4),
                     "trials_per_s": round(n / wall, 3) if n and wall > 0 else None,
                     "backtest_mean_s": round(sum(runner.durations) / n, 6) if n else None}
    atomic_write(os.path.join(d, "best.json"), json.dumps(out, indent=1, default=str).encode())
    return out


def report_text(plan: Plan, out: dict[str, Any], rows: int, wall: float) -> str:
    sp = plan.space
    lines = [f"sweep         {sp.sampler} over {', '.join(sp.names())}: {rows} trials in the table, {wall:.1f} s"]
    if "folds" in out:
        for r in out["folds"]:
            if r.get("error"):
                lines.append(f"{r['fold']:<13} {r['error']}")
            else:
                ps = ", ".join(f"{n}={r[n]}" for n in sp.names())
                lines.append(f"{r['fold']:<13} {ps}: in-sample {sp.objective} {r['in_sample']:.4g}, "
                             f"out-of-sample {_g(r['out_of_sample'])}")
        lines.append(f"out-of-sample mean {sp.objective} {_g(out['out_of_sample_mean'])}")
    else:
        ps = ", ".join(f"{k}={v}" for k, v in out["params"].items())
        lines.append(f"best          trial {out['trial']}: {ps}: {sp.objective} {out['value']:.6g}")
        lines.append(f"report        {out['report']}")
    lines.append(f"results       {plan.dir}")
    return "\n".join(lines)


def _g(v: Any) -> str:
    return "undefined" if v is None else f"{v:.4g}"


# -------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)
    args = parse_args(argv)
    try:
        plan = Plan(args)
        lock_fd = claim_dir(plan)
    except InputError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return EXIT_INPUT
    except Busy as e:
        print(f"sweep: {e}", file=sys.stderr)
        return EXIT_FAIL
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.monotonic()
    client = cluster = None
    scratch = os.path.join(plan.dir, ".dask-scratch")
    progress = ProgressBar(sys.stderr, unit="trials") if (args.progress or sys.stderr.isatty()) else None
    try:
        client, cluster = connect(args, scratch)
        # The data, once per worker: every trial's task names this one future.
        data = client.scatter(plan.pack, broadcast=True)
        runner = Runner(plan, client, data, progress)
        runner.total = plan.planned() * len(plan.studies())
        if progress is not None:
            progress.t0 = time.monotonic()  # the rate counts from the start, not from the first trial
        studies = [runner.run_study(name, window) for name, window in plan.studies()]
        if progress is not None:
            progress.update(time.monotonic(), runner.done, runner.total, final=True)
            progress.close()
        out = write_outputs(plan, runner, studies)
        print(report_text(plan, out, sum(len(s.trials) for s in studies), time.monotonic() - t0), flush=True)
        return EXIT_OK
    except InputError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"\nsweep: interrupted; run the same command to resume ({plan.dir})", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (RuntimeError, UserError) as e:
        print(f"sweep: {exit_reason(e) if isinstance(e, UserError) else e}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        if progress is not None:
            progress.close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        shutil.rmtree(scratch, ignore_errors=True)
        os.close(lock_fd)


if __name__ == "__main__":
    sys.exit(main())
