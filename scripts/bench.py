"""paperbus benchmarks: prints figures, asserts nothing about speed.

    python scripts/bench.py [--quick] [--config PATH] [--rounds N]

Supervision figures (targets on a 2-core machine): cold start to all READY
(<= 1 s), SIGINT to supervisor exit (<= 1 s), actor SIGKILL to detected
(<= 10 ms) and to READY again (<= 1 s), supervisor SIGKILL to last actor gone
(<= 100 ms); peak RSS per process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scripts.ctl import request  # noqa: E402


def _log(run_dir: str) -> list[dict]:
    try:
        with open(os.path.join(run_dir, "logs", "supervisor.jsonl")) as f:
            return [json.loads(x) for x in f if x.strip()]
    except OSError:
        return []


def _ts(e: dict) -> float:
    return dt.datetime.fromisoformat(e["timestamp"]).timestamp()


def _wait(pred, timeout: float, what: str, interval: float = 0.001):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(interval)


def _status(run_dir: str) -> dict | None:
    try:
        return request(run_dir, "status", timeout=2.0).data
    except RuntimeError:
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            st = f.read()
        return st[st.rindex(b")") + 2:st.rindex(b")") + 3] != b"Z"
    except OSError:
        return False


def _rss_kb(pid: int, key: str = "VmHWM") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _start(config: str, run_dir: str, sets: list[str]) -> tuple[subprocess.Popen, float]:
    args = [sys.executable, "supervisor.py", "--config", config, "--run-dir", run_dir]
    for s in sets:
        args += ["--set", s]
    t0 = time.time()
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    return p, t0


def _all_running(run_dir: str) -> bool:
    ev = _log(run_dir)
    return any(e["event"] == "all actors running" for e in ev)


def supervision_round(config: str, sets: list[str]) -> dict[str, float]:
    run_dir = tempfile.mkdtemp(prefix="pbb-", dir="/tmp")
    out: dict[str, float] = {}
    p = None
    try:
        p, t0 = _start(config, run_dir, sets)
        _wait(lambda: _all_running(run_dir), 30, "all running")
        e = next(e for e in _log(run_dir) if e["event"] == "all actors running")
        out["cold_start_s"] = _ts(e) - t0  # process launch to every actor READY + RUN sent
        st = _status(run_dir)
        pids = {n: a["pid"] for n, a in st["actors"].items()}
        out["rss_kb"] = {n: _rss_kb(pid) for n, pid in pids.items()} | {"supervisor": _rss_kb(p.pid)}
        # actor SIGKILL -> detected -> READY again
        victim = list(pids)[0]
        n_before = len(_log(run_dir))
        tk = time.time()
        os.kill(pids[victim], signal.SIGKILL)
        ready = _wait(lambda: next((e for e in _log(run_dir)[n_before:]
                                    if e["event"] == "actor ready" and e.get("actor") == victim), None),
                      30, "victim ready")
        exited = next(e for e in _log(run_dir)[n_before:] if e["event"] == "actor exited")
        out["actor_kill_detect_s"] = _ts(exited) - tk
        out["actor_kill_ready_s"] = _ts(ready) - tk
        _wait(lambda: (_status(run_dir) or {}).get("actors", {}).get(victim, {}).get("state") == "running", 30,
              "victim running")
        # SIGINT -> exit
        ts = time.monotonic()
        p.send_signal(signal.SIGINT)
        p.wait(30)
        out["sigint_exit_s"] = time.monotonic() - ts
        # supervisor SIGKILL -> last actor gone
        shutil.rmtree(run_dir, ignore_errors=True)
        os.makedirs(run_dir)
        p, _ = _start(config, run_dir, sets)
        _wait(lambda: _all_running(run_dir), 30, "all running")
        pids = [a["pid"] for a in _status(run_dir)["actors"].values()]
        tk = time.monotonic()
        p.send_signal(signal.SIGKILL)
        _wait(lambda: not any(_alive(x) for x in pids), 10, "actors gone", interval=0.0002)
        out["sup_kill_orphans_gone_s"] = time.monotonic() - tk
        p.wait(5)
        return out
    finally:
        if p and p.poll() is None:
            p.kill()
            p.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


def fmt(v: float) -> str:
    return f"{v * 1000:8.1f} ms"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="paperbus benchmarks (figures only)")
    ap.add_argument("--quick", action="store_true", help="one short round")
    ap.add_argument("--config", default="config/default.toml")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    results = [supervision_round(args.config, args.sets) for _ in range(rounds)]
    print(f"supervision ({rounds} round(s), config {args.config}; median / max)")
    targets = {"cold_start_s": 1.0, "sigint_exit_s": 1.0, "actor_kill_detect_s": 0.010, "actor_kill_ready_s": 1.0,
               "sup_kill_orphans_gone_s": 0.100}
    labels = {"cold_start_s": "cold start to all READY", "sigint_exit_s": "SIGINT to supervisor exit",
              "actor_kill_detect_s": "actor SIGKILL to detected", "actor_kill_ready_s": "actor SIGKILL to READY again",
              "sup_kill_orphans_gone_s": "supervisor SIGKILL to last actor gone"}
    for k, target in targets.items():
        vals = [r[k] for r in results]
        print(f"  {labels[k]:40} {fmt(statistics.median(vals))} / {fmt(max(vals))}   (target <= {target * 1000:g} ms)")
    rss = results[-1]["rss_kb"]
    print("peak RSS per process (VmHWM, first run)")
    for n, kb in rss.items():
        print(f"  {n:40} {kb / 1024:8.1f} MB")
    print(f"  {'total':40} {sum(rss.values()) / 1024:8.1f} MB   (target <= 300 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
