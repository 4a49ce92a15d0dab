"""paperbus benchmarks: prints figures beside references measured in the same run;
asserts nothing about speed.

    python scripts/bench.py [--quick] [--rounds N]

1. backtest throughput and memory, side by side on the same generated GBM bars
   (config/backtest.toml, SmaCross 10/20): the in-process kernel and the actor kernel
   (bars/s, whether their results are byte-identical, peak RSS of every process),
   backtesting.py and backtrader on the same data and strategy, raw pyzmq PUB/SUB
   msgs/s over ipc between two processes; then both kernels on a --mem-bars file
   (10,000,000 bars) for peak memory;
2. live latency bar -> order -> ack -> fill (PingPong strategy orders on every
   bar, exchange fill_on = "close" fills at once): fill send time minus the
   triggering bar's send time, both from the envelopes, p50/p99/max; beside a
   raw pyzmq REQ/REP round trip over ipc;
3. supervision: cold start to all READY, SIGINT to exit, actor SIGKILL to
   detected and to READY again, supervisor SIGKILL to last actor gone;
4. peak RSS (VmHWM) of the five processes of the live run.
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
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scripts import testkit  # noqa: E402


def _wait(pred, timeout: float, what: str, interval: float = 0.001):
    return testkit.wait_for(pred, timeout, what, interval)


_log = testkit.log_events
_status = testkit.status
_alive = testkit.pid_alive


def _ts(e: dict) -> float:
    return dt.datetime.fromisoformat(e["timestamp"]).timestamp()


def _rss_kb(pid: int, key: str = "VmHWM") -> int:
    return testkit.rss_kb(pid, key) or 0


def _start(config: str, run_dir: str, sets: list[str]) -> tuple[subprocess.Popen, float]:
    t0 = time.time()
    p = testkit.start_supervisor(run_dir, config, sets, wait_running=False, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
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


def pct(vals: list[float], q: float) -> float:
    vals = sorted(vals)
    return vals[min(len(vals) - 1, int(q * len(vals)))]


# ----------------------------------------------------------------- data
def gen_bars(n: int, seed: int = 7) -> dict:
    """GBM closes with plausible OHLC, as numpy arrays (only the bench imports numpy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rets = rng.normal(0.0, 0.0005, n)  # small per-bar moves: prices stay in range over 1M bars
    close = 100.0 * np.exp(np.cumsum(rets))
    open_ = np.concatenate([[100.0], close[:-1]]) * np.exp(rng.normal(0.0, 0.002, n))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.003, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.003, n)))
    r = lambda a: np.round(a, 2)  # noqa: E731  on the 0.01 tick
    return {"open": r(open_), "high": r(high), "low": r(low), "close": r(close),
            "volume": rng.integers(100, 10_000, n)}


def write_paperbus_csv(path: str, bars: dict) -> None:
    import numpy as np
    import pandas as pd

    n = len(bars["close"])
    ts = 946_684_800 + 60 * np.arange(n, dtype=np.int64)  # minute bars from 2000-01-01, epoch seconds
    pd.DataFrame({"ts": ts, **bars}).to_csv(path, index=False)


def write_backtrader_csv(path: str, bars: dict, n: int) -> None:
    import pandas as pd

    dates = pd.date_range("1970-01-01", periods=n, freq="D").strftime("%Y-%m-%d")
    df = pd.DataFrame({"": dates, "Open": bars["open"][:n], "High": bars["high"][:n], "Low": bars["low"][:n],
                       "Close": bars["close"][:n], "Volume": bars["volume"][:n]})
    df.to_csv(path, index=False)


# ----------------------------------------------------------------- references
RAW_PUBSUB_CHILD = textwrap.dedent("""
    import sys, time, zmq
    ep, n = sys.argv[1], int(sys.argv[2])
    ctx = zmq.Context(); s = ctx.socket(zmq.SUB); s.setsockopt(zmq.RCVHWM, 0)
    s.setsockopt(zmq.SUBSCRIBE, b""); s.connect(ep)
    while s.recv_multipart()[0] != b"go":   # warm-up frames until the sender starts
        pass
    print("ready", flush=True)
    t0 = None
    for i in range(n):
        s.recv_multipart()
        if t0 is None: t0 = time.perf_counter()
    print(time.perf_counter() - t0, flush=True)
""")

RAW_REP_CHILD = textwrap.dedent("""
    import sys, zmq
    ctx = zmq.Context(); s = ctx.socket(zmq.REP); s.bind(sys.argv[1])
    print("ready", flush=True)
    for _ in range(int(sys.argv[2])):
        s.send(s.recv())
""")


def raw_pubsub(n: int, tmp: str) -> float:
    """msgs/s of ~120-byte [topic, payload] messages, PUB -> SUB over ipc, two processes."""
    import zmq

    ep = f"ipc://{tmp}/raw-pub.sock"
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.setsockopt(zmq.LINGER, 1000)
    pub.bind(ep)
    child = subprocess.Popen([sys.executable, "-c", RAW_PUBSUB_CHILD, ep, str(n)], stdout=subprocess.PIPE, text=True)
    try:
        import select
        while not select.select([child.stdout], [], [], 0.01)[0]:
            pub.send_multipart([b"go", b""])  # slow joiner: repeat until the subscriber has one
        assert child.stdout.readline().strip() == "ready"
        payload = b"x" * 100
        for _ in range(n):
            pub.send_multipart([b"md.bar.BENCH", payload])
        secs = float(child.stdout.readline())
        child.wait(30)
        return n / secs
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        pub.close()
        ctx.term()


def raw_reqrep(n: int, tmp: str, gap_s: float = 0.0) -> list[float]:
    """Round trips over ipc; ``gap_s`` idles between them like a paced feed does.

    On a VM an idle vCPU is slow to wake, so a back-to-back ping-pong (both
    processes hot) says little about a system that waits for its next bar.
    """
    import threading

    import zmq

    ep = f"ipc://{tmp}/raw-rep.sock"
    child = subprocess.Popen([sys.executable, "-c", RAW_REP_CHILD, ep, str(n)], stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        assert child.stdout.readline().strip() == "ready"
        req.connect(ep)
        out = []
        msg = b"x" * 100
        pace = threading.Event()  # never set: wait() is the pacing gap
        for _ in range(n):
            if gap_s:
                pace.wait(gap_s)
            t0 = time.perf_counter()
            req.send(msg)
            req.recv()
            out.append(time.perf_counter() - t0)
        child.wait(30)
        return out
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        req.close()
        ctx.term()


def backtrader_rate(path: str, n: int) -> float:
    from scripts.bt_reference import run_backtrader

    t0 = time.perf_counter()
    run_backtrader(path)
    return n / (time.perf_counter() - t0)


BTPY_CHILD = textwrap.dedent("""
    import resource, sys, time, warnings
    import pandas as pd
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover
    warnings.filterwarnings("ignore")
    df = pd.read_csv(sys.argv[1], nrows=int(sys.argv[2]))
    df.index = pd.to_datetime(df["ts"], unit="s")
    df = df.rename(columns=str.capitalize)[["Open", "High", "Low", "Close", "Volume"]]

    def SMA(v, n):
        return pd.Series(v).rolling(n).mean()

    class SmaCross(Strategy):   # SmaCross(10, 20) +/-100 at the next open, as paperbus's
        def init(self):
            self.fast = self.I(SMA, self.data.Close, 10)
            self.slow = self.I(SMA, self.data.Close, 20)
        def next(self):
            if crossover(self.fast, self.slow):
                self.buy(size=100)
            elif crossover(self.slow, self.fast):
                self.sell(size=100)

    bt = Backtest(df, SmaCross, cash=1_000_000, commission=0.002, exclusive_orders=True)
    t0 = time.perf_counter()
    stats = bt.run()
    dt = time.perf_counter() - t0
    import backtesting
    print(backtesting.__version__, len(df), dt, stats["# Trades"], flush=True)
""")


def backtesting_py_rate(path: str, n: int) -> dict | None:
    """backtesting.py on the same file (its own process): bars/s of bt.run(), or None if not installed."""
    p = subprocess.Popen([sys.executable, "-c", BTPY_CHILD, path, str(n)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=3600)
    if p.returncode != 0:
        if "No module named 'backtesting'" in err:
            return None
        raise RuntimeError(f"backtesting.py failed: {err[-2000:]}")
    version, rows, secs, trades = out.split()
    return {"version": version, "bars": int(rows), "secs": float(secs), "bars_per_s": int(rows) / float(secs),
            "trades": int(trades)}


# ----------------------------------------------------------------- paperbus
def bench_data(n: int, tmp: str, name: str = "bench") -> tuple[str, str, dict]:
    """A generated n-bar file (one symbol, BENCH) and its instrument file."""
    bars = gen_bars(n)
    data = os.path.join(tmp, f"{name}.csv")
    write_paperbus_csv(data, bars)
    inst = os.path.join(tmp, "instruments.csv")
    with open(inst, "w") as f:
        f.write("symbol,kind,tick_size,lot_size,multiplier,currency\nBENCH,equity,0.01,1,1,USD\n")
    return data, inst, bars


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return ""
    return args[args.index(b"--name") + 1].decode() if b"--name" in args else ""


def backtest_run(kernel: str, data: str, inst: str, n: int, tmp: str) -> dict:
    """One backtest of ``data`` under ``kernel``: bars/s from the first bar (in-process) or RUN
    (actors) to the results written, and the peak RSS of every process: VmHWM sampled while
    it runs (the in-process kernel also logs its own as it exits). Not wait4's ru_maxrss:
    on Linux it counts the bench's own memory, which the child had between fork and exec."""
    run_dir = os.path.join(tmp, f"bt-{kernel}-{n}")
    sets = [f"market_data.path={data}", f"market_data.instruments={inst}", "market_data.symbol=BENCH",
            "market_data.timestamp_column=ts", f"service.kernel={kernel}"]
    p, t0 = _start("config/backtest.toml", run_dir, sets)
    rss: dict[str, int] = {}
    while p.poll() is None:
        for pid in [p.pid, *testkit.children(p.pid)]:
            name = "supervisor" if pid == p.pid else (_name(pid) or "?")
            rss[name] = max(rss.get(name, 0), _rss_kb(pid))
        try:
            p.wait(0.1)
        except subprocess.TimeoutExpired:
            pass
    wall = time.time() - t0
    res = os.path.realpath(os.path.join(run_dir, "latest"))
    ev = _log(res)
    start_ev = "backtest running" if kernel == "inprocess" else "all actors running"
    t_run = next((_ts(e) for e in ev if e["event"] == start_ev), None)
    t_eod = next((_ts(e) for e in ev if e["event"] == "end of data" and e.get("component") == "paper-exchange"), None)
    t_end = next((_ts(e) for e in ev if e["event"] == "backtest finished"), None)
    if t_run is None or t_end is None:
        why = next((e.get("reason") for e in reversed(ev) if e["event"] == "supervisor exiting"), "unknown")
        raise RuntimeError(f"{kernel} backtest of {n:,} bars failed (exit {p.returncode}): {why}")
    own = next((e.get("peak_rss_kb") for e in ev if e["event"] == "supervisor exiting"), None)
    if own:
        rss["supervisor"] = max(rss.get("supervisor", 0), own)
    with open(os.path.join(res, "summary.json")) as f:
        summ = json.load(f)
    return {"kernel": kernel, "bars": n, "exit": p.returncode, "run_s": t_end - t_run, "wall_s": wall,
            "bars_per_s": n / (t_end - t_run), "loop_bars_per_s": n / (t_eod - t_run) if t_eod else None,
            "fills": summ.get("fills"), "rss_kb": rss, "max_kb": max(rss.values()), "dir": res, "summary": summ}


def same_results(a: dict, b: dict) -> bool:
    """Both kernels' fills.csv, trades.csv and equity.csv byte for byte, and summary.json."""
    for name in ("fills.csv", "trades.csv", "equity.csv"):
        with open(os.path.join(a["dir"], name), "rb") as x, open(os.path.join(b["dir"], name), "rb") as y:
            if x.read() != y.read():
                return False
    return a["summary"] == b["summary"]


def _rss_line(r: dict) -> str:
    procs = ", ".join(f"{k} {v / 1024:.0f}" for k, v in sorted(r["rss_kb"].items(), key=lambda kv: -kv[1]))
    return f"largest {r['max_kb'] / 1024:.0f} MB ({procs} MB)"


def live_latency(n_bars: int, rate_hz: float) -> dict:
    import zmq

    from bus.codec import codec

    run_dir = tempfile.mkdtemp(prefix="pbl-", dir="/tmp")
    sets = ['market_data.symbols=["LAT"]', f"market_data.rate_hz={rate_hz}",
            "strategy.plugin=actors.strategies.pingpong:PingPong", "strategy.params={ qty = 1 }",
            "exchange.fill_on=close", "exchange.export_every_ms=1000"]
    p, _ = _start("config/default.toml", run_dir, sets)
    ctx = zmq.Context()
    try:
        _wait(lambda: _all_running(run_dir), 30, "all running")
        sub = testkit.bars_and_fills(ctx, run_dir)
        last_bar_ts = None
        lat: list[float] = []
        deadline = time.monotonic() + n_bars / rate_hz * 3 + 20
        while len(lat) < n_bars and time.monotonic() < deadline:
            if not sub.poll(1000):
                continue
            topic, payload = sub.recv_multipart()
            if topic.startswith(b"md."):
                last_bar_ts = codec("md").decode(payload).ts
            elif last_bar_ts is not None:
                lat.append((codec("orders").decode(payload).ts - last_bar_ts) / 1e9)
                last_bar_ts = None  # one fill per bar
        st = _status(run_dir)
        rss = {n: _rss_kb(a["pid"]) for n, a in st["actors"].items()} | {"supervisor": _rss_kb(p.pid)}
        sub.close()
        p.send_signal(signal.SIGINT)
        p.wait(30)
        return {"lat": lat, "rss_kb": rss}
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        ctx.term()
        shutil.rmtree(run_dir, ignore_errors=True)


SWEEP_SPACE = """
[search]
sampler = "random"
trials = {trials}
seed = 1
objective = "sharpe"
constraints = ["fast < slow"]

[params.fast]
type = "int"
low = 2
high = 30

[params.slow]
type = "int"
low = 31
high = 120
"""


def sweep_bench(quick: bool) -> int:
    """Sweep throughput (scripts/sweep.py on a local Dask cluster): trials/s on 1 and 2
    workers, and what a trial costs beyond its backtest (Optuna's ask/tell in SQLite,
    Dask's scheduling), against the backtest alone and a supervisor.py process."""
    n_bars, trials = (2_000, 20) if quick else (2_000, 200)
    tmp = tempfile.mkdtemp(prefix="pbs-", dir="/tmp")
    try:
        from actors import sweep_core as sc
        import config as config_mod

        data, inst, _ = bench_data(n_bars, tmp)
        sets = [f'market_data.path="{data}"', f'market_data.instruments="{inst}"', 'market_data.symbol="BENCH"']
        space = os.path.join(tmp, "space.toml")
        with open(space, "w") as f:
            f.write(SWEEP_SPACE.format(trials=trials))
        cfg = config_mod.load("config/backtest.toml", sets)
        pack = sc.load_data(cfg)
        doc = __import__("msgspec").to_builtins(cfg)
        ov = {"strategy.params.fast": 10, "strategy.params.slow": 40}
        sc.run_trial(doc, ov, pack)  # warm: imports, first bars made
        reps = 10 if quick else 50
        t0 = time.perf_counter()
        for _ in range(reps):
            sc.run_trial(doc, ov, pack)
        alone = (time.perf_counter() - t0) / reps
        t0 = time.perf_counter()
        code = subprocess.run([sys.executable, "supervisor.py", "--config", "config/backtest.toml", "--run-dir",
                               os.path.join(tmp, "bt"), *sum((["--set", x] for x in sets), [])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT).returncode
        process = time.perf_counter() - t0
        print(f"paperbus sweep bench{' --quick' if quick else ''}  (python {sys.version.split()[0]}, "
              f"{os.cpu_count()} cpus; {trials} random trials of SmaCross fast/slow on {n_bars:,} generated bars)")
        print(f"  one backtest in-process (run_trial, data in memory) {alone * 1000:8.1f} ms")
        print(f"  one backtest as a process (supervisor.py, exit {code})    {process * 1000:8.1f} ms")
        rates = {}
        for workers in (1, 2):
            out = os.path.join(tmp, f"sweep-{workers}")
            r = subprocess.run([sys.executable, "scripts/sweep.py", "--config", "config/backtest.toml", "--space", space,
                                "--dir", out, "--workers", str(workers), *sum((["--set", x] for x in sets), [])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
                               env={**os.environ, "TMPDIR": tmp})
            if r.returncode:
                print(f"  sweep on {workers} worker(s) failed: {r.stderr.decode()[-500:]}")
                return 1
            with open(os.path.join(out, "best.json")) as f:
                t = json.load(f)["timing"]
            rates[workers] = t["trials_per_s"]
            per = t["trials_wall_s"] * workers / t["trials"]  # worker-seconds per trial
            print(f"  sweep, {workers} worker(s): {t['trials_per_s']:8.2f} trials/s   per trial {per * 1000:6.1f} "
                  f"worker-ms = backtest {t['backtest_mean_s'] * 1000:6.1f} ms + overhead "
                  f"{(per - t['backtest_mean_s']) * 1000:6.1f} ms")
        print(f"  2 workers / 1 worker: {rates[2] / rates[1]:.2f}x")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def options_figures(quick: bool, tmp: str) -> dict:
    """Section 5: the option maths (prices with greeks a second), the synthetic feed's cost of
    quoting the config/options-intraday.toml chain each interval, and the options backtest
    (config/options-backtest.toml, the shipped sample) under the in-process kernel."""
    import datetime as dt

    import config as config_mod
    from actors import market_rules
    from actors import options as op
    from actors.instruments import load as load_instruments

    n = 20_000 if quick else 200_000
    t0 = time.perf_counter()
    for i in range(n):
        op.greeks(100.0 + (i % 50) * 0.1, 100.0, 0.1, 0.03, 0.25, "C" if i % 2 else "P")
    greeks_s = n / (time.perf_counter() - t0)
    cfg = config_mod.load(os.path.join(ROOT, "config", "options-intraday.toml"))
    insts, _ = load_instruments("synthetic", cfg.market_data.symbols)
    insts, mapped = op.with_synthetic_chain(cfg, insts, dt.date.today())
    q = market_rules.OptionQuoter(cfg, insts)
    now = time.time_ns()
    rounds = 200 if quick else 2_000
    t0 = time.perf_counter()
    for k in range(rounds):
        q.quotes({"SYN1": 100.0 + (k % 20) * 0.05}, now)
    per_interval = (time.perf_counter() - t0) / rounds
    run_dir = os.path.join(tmp, "opt-bt")
    os.makedirs(run_dir)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "supervisor.py", "--config", "config/options-backtest.toml", "--run-dir",
                        run_dir], cwd=ROOT, capture_output=True, timeout=600)
    bt_s = time.monotonic() - t0
    return {"greeks_per_s": greeks_s, "options": mapped, "quote_interval_s": per_interval, "backtest_s": bt_s,
            "backtest_exit": p.returncode}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="paperbus benchmarks (figures only)")
    ap.add_argument("--quick", action="store_true", help="small sizes, one round (runs in the test suite)")
    ap.add_argument("--rounds", type=int, default=3, help="supervision rounds")
    ap.add_argument("--bars", type=int, default=1_000_000, help="backtest bars (both kernels and backtesting.py)")
    ap.add_argument("--mem-bars", type=int, default=10_000_000,
                    help="bars of the file both kernels run for peak memory (0: skip)")
    ap.add_argument("--sweep", action="store_true",
                    help="only the parameter sweep figures (scripts/sweep.py: trials/s on 1 and 2 workers)")
    ap.add_argument("--only-options", action="store_true", help="section 5 (options) alone")
    args = ap.parse_args(argv)
    quick = args.quick
    if args.sweep:
        return sweep_bench(quick)
    if args.only_options:
        tmp = tempfile.mkdtemp(prefix="pbb-", dir="/tmp")
        try:
            return _print_options(options_figures(quick, tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    n_bars = 20_000 if quick else args.bars
    n_bt = 2_000 if quick else 50_000
    n_lat = 50 if quick else 1_000
    tmp = tempfile.mkdtemp(prefix="pbb-", dir="/tmp")
    try:
        print(f"paperbus bench{' --quick' if quick else ''}  (python {sys.version.split()[0]}, {os.cpu_count()} cpus)")
        data, inst, bars = bench_data(n_bars, tmp)
        inproc = backtest_run("inprocess", data, inst, n_bars, tmp)
        actors = backtest_run("actors", data, inst, n_bars, tmp)
        same = same_results(inproc, actors)
        btpy = backtesting_py_rate(data, n_bars)
        raw = raw_pubsub(200_000 if not quick else 20_000, tmp)
        bt_csv = os.path.join(tmp, "backtrader.csv")
        write_backtrader_csv(bt_csv, bars, n_bt)
        btr = backtrader_rate(bt_csv, n_bt)
        print("\n1. backtest throughput (config/backtest.toml: SmaCross 10/20 +/-100, next-open fills, 0.2% commission;"
              " generated GBM bars, one symbol)")
        loop = f"; the loop alone {inproc['loop_bars_per_s']:,.0f} bars/s" if inproc["loop_bars_per_s"] else ""
        print(f"  paperbus in-process kernel, {n_bars:,} bars {inproc['bars_per_s']:>12,.0f} bars/s   "
              f"({inproc['run_s']:.2f} s first bar to results written{loop}; {inproc['fills']} fills, "
              f"exit {inproc['exit']})   target >= 100,000 and >= 2x backtesting.py")
        print(f"  paperbus actor kernel, {n_bars:,} bars      {actors['bars_per_s']:>12,.0f} bars/s   "
              f"({actors['run_s']:.2f} s RUN to Finished, {actors['fills']} fills, exit {actors['exit']})   "
              f"target >= 40,000")
        print(f"  same results from both kernels (fills.csv, trades.csv, equity.csv byte for byte; summary.json): "
              f"{'yes' if same else 'NO'}")
        if btpy is None:
            print("  reference: backtesting.py              not installed (pip install backtesting)")
        else:
            print(f"  reference: backtesting.py {btpy['version']}, {btpy['bars']:,} bars {btpy['bars_per_s']:>10,.0f} "
                  f"bars/s   (bt.run(), {btpy['trades']} trades; in-process kernel = "
                  f"{inproc['bars_per_s'] / btpy['bars_per_s']:.2f}x)")
        print(f"  reference: backtrader, {n_bt:,} bars       {btr:>12,.0f} bars/s   "
              f"(in-process kernel = {inproc['bars_per_s'] / btr:.1f}x)")
        print(f"  reference: raw pyzmq PUB/SUB over ipc   {raw:>12,.0f} msgs/s")
        print(f"  peak RSS, {n_bars:,} bars: in-process {_rss_line(inproc)}")
        print(f"  peak RSS, {n_bars:,} bars: actors     {_rss_line(actors)}")
        mem_bars = 50_000 if quick else args.mem_bars
        if mem_bars:
            del bars
            big, inst, _ = bench_data(mem_bars, tmp, "big")
            for kernel in ("inprocess", "actors"):
                r = backtest_run(kernel, big, inst, mem_bars, tmp)
                label = "in-process" if kernel == "inprocess" else kernel
                print(f"  peak RSS, {mem_bars:,} bars: {label:10} {_rss_line(r)}   target <= 200 MB each "
                      f"({r['bars_per_s']:,.0f} bars/s)")
            os.unlink(big)

        rate = 20.0 if quick else 50.0
        live = live_latency(n_lat, rate)
        rr = raw_reqrep(2_000 if quick else 20_000, tmp)
        rr_paced = raw_reqrep(50 if quick else 500, tmp, gap_s=1.0 / rate)
        lat = live["lat"]
        print("\n2. live latency, bar -> order -> ack -> fill through market-data, strategy, exchange")
        if lat:
            print(f"  paperbus ({len(lat)} fills)   p50 {pct(lat, .5) * 1e6:8.0f} us   p99 {pct(lat, .99) * 1e6:8.0f} us"
                  f"   max {max(lat) * 1e6:8.0f} us   (targets p50 <= 250 us, p99 <= 1000 us)")
        print(f"  reference: raw REQ/REP round trip       p50 {pct(rr, .5) * 1e6:8.0f} us   p99 "
              f"{pct(rr, .99) * 1e6:8.0f} us   max {max(rr) * 1e6:8.0f} us   (back to back: both processes hot)")
        print(f"  reference: same, one per {1000 / rate:.0f} ms      p50 {pct(rr_paced, .5) * 1e6:8.0f} us   p99 "
              f"{pct(rr_paced, .99) * 1e6:8.0f} us   max {max(rr_paced) * 1e6:8.0f} us   (paced like the feed)")

        rounds = 1 if quick else args.rounds
        results = [supervision_round("config/default.toml", []) for _ in range(rounds)]
        print(f"\n3. supervision, the four real actors ({rounds} round(s); median / max)")
        targets = {"cold_start_s": 1.0, "sigint_exit_s": 1.0, "actor_kill_detect_s": 0.010,
                   "actor_kill_ready_s": 1.0, "sup_kill_orphans_gone_s": 0.100}
        labels = {"cold_start_s": "cold start to all READY", "sigint_exit_s": "SIGINT to supervisor exit",
                  "actor_kill_detect_s": "actor SIGKILL to detected",
                  "actor_kill_ready_s": "actor SIGKILL to READY again",
                  "sup_kill_orphans_gone_s": "supervisor SIGKILL to last actor gone"}
        for k, target in targets.items():
            vals = [r[k] for r in results]
            print(f"  {labels[k]:40} {fmt(statistics.median(vals))} / {fmt(max(vals))}   "
                  f"(target <= {target * 1000:g} ms)")

        rss = live["rss_kb"]
        print("\n4. peak RSS (VmHWM) of the live run")
        for n, kb in rss.items():
            print(f"  {n:40} {kb / 1024:8.1f} MB")
        print(f"  {'total':40} {sum(rss.values()) / 1024:8.1f} MB   (target <= 300 MB)")
        opt_ok = _print_options(options_figures(quick, tmp)) == 0
        return 0 if inproc["exit"] == 0 and actors["exit"] == 0 and same and opt_ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _print_options(o: dict) -> int:
    print("\n5. options (actors/options.py, the synthetic chain, config/options-backtest.toml)")
    print(f"  Black-Scholes price + 4 greeks          {o['greeks_per_s']:>12,.0f} /s")
    print(f"  synthetic quotes of {o['options']} options          {o['quote_interval_s'] * 1e3:>12.2f} ms per interval "
          f"(one quote and one bar each)")
    print(f"  options backtest, shipped sample         {o['backtest_s']:>12.2f} s wall, supervisor start to exit "
          f"(exit {o['backtest_exit']})")
    return 0 if o["backtest_exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
