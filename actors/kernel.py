"""The in-process backtest kernel: one process drives feed -> strategy host -> exchange
core -> results, deterministically, with no sockets and no flow control.

    python supervisor.py --config config/backtest.toml      (service.kernel = "inprocess")

The components are the ones the actors wrap (actors/feeds.py, actors/strategy_host.py,
actors/exchange_core.py), so a backtest gives the same fills, trades, equity and summary
under either kernel; what this kernel drops is the transport: no processes, no
serialisation, no Progress credit protocol (the actor kernel needs it because its
components run concurrently; here they take turns).

For each bar f, in this order:
1. the exchange core processes bar f: orders decided on bars before f may fill on it;
2. its events (fills, order updates) reach the strategy host (``on_fill``...);
3. the host hands bar f to the plugin; its orders go straight to the exchange core,
   decided on bar f, so they may fill from bar f + 1 on (``decision_bar``); the
   replies (a reject) and any events reach the host before bar f + 1.
Events are queued while a component runs and delivered after it returns, so a plugin is
never re-entered (its ``on_fill`` never runs inside its own ``submit``).

At end of data: DAY/IOC orders expire, fills.csv and trades.csv are exported, then
equity.csv, summary.json and report.png are written; the summary is printed.

The run directory rules are the supervisor's: the caller (supervisor.py main) has
checked the mode, made ``<run-dir>/<run_id>/``, pointed ``latest`` at it and holds the
lock; this kernel writes config.json, run.json and runs.jsonl, its log is
``logs/supervisor.jsonl`` (echoed on the console), and a failure ends with the same
exit codes and last line as under the actor kernel: 2 and ``supervisor: config error:
<component>: <reason>`` for bad input (a plugin, its params, a data file), 1 and
``supervisor: <component> failed during the backtest: <exception> (at file:line in fn)``
for a bug, 1 and ``supervisor: paper-exchange: disk error: ...`` for a full or
read-only disk. Components are named as the actors they replace. Ctrl+C (or SIGTERM)
stops at the end of the batch of bars it is in, exports what was traded and exits 0, as the actor kernel does;
a second Ctrl+C stops at once.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any, Callable

import config as config_mod
from actors.base import UserError, exit_reason
from actors import market_rules
from actors.exchange import open_ledger
from actors.exchange_core import ExchangeCore
from actors.feeds import ReplayFeed, load_instruments
from actors.progress_bar import ProgressBar
from actors.strategy_host import StrategyHost
from actors.supervision.runfiles import RunRecord
from bus import log as logmod
from bus.faults import disk_error
from bus.fileio import atomic_write
from bus.messages import AccountUpdate, CancelOrder, Fill, Flatten, OrderReject, OrderUpdate, Quote, SubmitOrder

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
EXIT_FORCED = 130  # a second Ctrl+C: stopped at once, nothing more written
BATCH = 512  # bars between looks at the clock (progress bar) and at Ctrl+C
FINAL_LINE_WAIT_S = 2.0  # how long the last line may wait for a console that is not read
# Where a failure is reported: the module of the innermost project frame names the
# component, as the actor that runs that code would be named under the actor kernel.
COMPONENT_OF = {"exchange_core": "paper-exchange", "ledger": "paper-exchange", "accounting": "paper-exchange",
                "exports": "paper-exchange", "results": "paper-exchange", "report": "paper-exchange",
                "exchange": "paper-exchange", "feeds": "market-data", "replay": "market-data",
                "instruments": "market-data"}


class Failed(BaseException):
    """A component failed; BaseException so a plugin's ``except Exception`` cannot swallow
    the exchange's failure (its memory may be ahead of the ledger) on the way out."""

    def __init__(self, component: str, exc: BaseException, when: str):
        super().__init__(component, exc)
        self.component, self.exc, self.when = component, exc, when


_HERE = os.path.dirname(os.path.abspath(__file__))
_INFRA = tuple(os.path.join(os.path.dirname(_HERE), d) for d in ("bus", "config"))  # the project's own plumbing


def component_of(exc: BaseException, default: str) -> str:
    """The component whose code raised ``exc``: its innermost frame in actors/ names it (this
    kernel's own frames, bus/, config/, Python's and the libraries' pass the name on; the
    strategy host's are the strategy's); a frame anywhere else is a plugin's, the strategy's."""
    tb = exc.__traceback__
    name = default
    while tb is not None:
        path = os.path.abspath(tb.tb_frame.f_code.co_filename)
        where = os.path.dirname(path)
        if where == _HERE:
            mod = os.path.splitext(os.path.basename(path))[0]
            if mod in COMPONENT_OF:
                name = COMPONENT_OF[mod]
            elif mod == "strategy_host":
                name = "strategy"
        elif not (where in _INFRA or path.startswith((sys.prefix, sys.base_prefix))
                  or tb.tb_frame.f_code.co_filename.startswith("<")):
            name = "strategy"  # the user's plugin (or a built-in one in actors/strategies/)
        tb = tb.tb_next
    return name


class Backtest:
    """The three components wired in one process; ``run()`` replays the feed to the end
    (or until ``stop`` says why not) and returns (text summary, summary)."""

    def __init__(self, cfg: config_mod.Config, run_dir: str, run_id: str, log: Any):
        self.cfg = cfg
        self.run_dir = run_dir
        self.run_id = run_id
        self.log = log
        self.stop: str | None = None  # set (by a signal) to end the run at the next batch
        self.events: list[Any] = []  # what the exchange emitted, for the host, in order
        self.progress: ProgressBar | None = None
        self.ex: ExchangeCore | None = None
        self.host: StrategyHost | None = None
        self.png = True  # report.png at the end (a sweep's trials skip it: scripts/sweep.py)

    def start(self) -> None:
        """The components in the actors' start order, each started once the one before is ready."""
        self.init("market-data", self._init_feed)
        self.init("paper-exchange", self._init_exchange)
        self.init("strategy", self._init_strategy)

    # ------------------------------------------------------------------ start
    def init(self, component: str, fn: Callable[[], dict[str, Any]]) -> None:
        """Start one component, logged as the actor it replaces: ready with its info, or
        failed (a UserError is the user's input: exit 2)."""
        t0 = time.monotonic()
        try:
            info = fn()
        except Exception as e:
            reason = exit_reason(e)
            self.log.error("actor init failed", actor=component, reason=reason)
            raise Failed(component, e, "before the backtest") from None
        self.log.info("actor ready", actor=component, init_s=round(time.monotonic() - t0, 4),
                      **{k: v for k, v in info.items() if isinstance(v, (int, float, str))})
        for w in info.get("warnings") or ():  # e.g. replay rows skipped: said where the user looks
            self.log.warning("actor warning", actor=component, warning=str(w))

    def _init_feed(self) -> dict[str, Any]:
        md = self.cfg.market_data
        self.instruments, option_mappings, src = load_instruments(md)
        by_symbol = {i.symbol: i for i in self.instruments}
        self.log.info("instrument master loaded", source=src, instruments=len(self.instruments),
                      option_mappings=option_mappings)
        self.feed = ReplayFeed(md, by_symbol)
        r = self.feed.replay
        self.log.info("replay opened", path=r.path, format=r.fmt, kind=md.kind, columns=r.colmap,
                      timestamp_column=r.ts_col, symbol=r.symbol or "<column>")
        info: dict[str, Any] = {"instruments": len(self.instruments), "option_mappings": option_mappings,
                                "total": self.feed.total}
        if self.feed.warnings:
            info["warnings"] = self.feed.warnings
        return info

    def _init_exchange(self) -> dict[str, Any]:
        self.ledger = open_ledger(self.run_dir, self.run_id, self.cfg)
        ex = self.ex = ExchangeCore(self.cfg.exchange, self.instruments, self.ledger, out_dir=self.run_dir,
                                    emit=self.events.append, log=self.log.bind(component="paper-exchange"),
                                    backtest=True)
        market_rules.attach(ex, self.cfg, self.instruments)  # [session] hours, option expiry
        ex.decision_bar = 1  # orders from on_start: decided before bar 1, fill from bar 2 as under the actors
        return {"instruments": len(ex.instruments), "equity": round(ex.acct.equity, 2)}

    def _init_strategy(self) -> dict[str, Any]:
        assert self.ex is not None
        # Client order ids bt-1, bt-2...: a backtest starts from an empty ledger, so
        # fills.csv is byte-identical from run to run and between the kernels.
        host = self.host = StrategyHost(self.cfg.strategy, self.instruments, send=self._order, cl_prefix="bt",
                                        log=self.log.bind(component="strategy"), log_orders=False)
        if market_rules.wanted(self.cfg, self.instruments):  # [session] hours, option chains
            host.attach_market(market_rules.StrategyMarket(self.cfg, self.instruments))
        host.seed(self.ex.query("all"))
        host.start()
        self._deliver()
        return {"plugin": host.spec, "symbols": len(host.symbols), "state": host.state()}

    # ------------------------------------------------------------ the wiring
    def _order(self, msg: Any) -> None:
        """The host's orders, straight to the exchange core; its replies join the events."""
        ex = self.ex
        assert ex is not None
        try:
            if isinstance(msg, SubmitOrder):
                r = ex.submit(msg)
                if isinstance(r, OrderReject):
                    self.events.append(r)
                ex.settle()
            elif isinstance(msg, CancelOrder):
                r = ex.cancel(msg.cl_id)
                if isinstance(r, OrderReject):
                    self.events.append(r)
            elif isinstance(msg, Flatten):
                ex.flatten(msg.symbol)
            else:
                raise TypeError(f"the strategy host sent {type(msg).__name__}")
        except Exception as e:
            raise Failed(component_of(e, "paper-exchange"), e, "during the backtest") from None

    def _deliver(self) -> None:
        """Hand the queued events to the host, in order; what they cause is queued and
        delivered too, until nothing is left."""
        host = self.host
        assert host is not None
        events = self.events
        i = 0
        while i < len(events):
            m = events[i]
            i += 1
            if type(m) is Fill:
                host.on_fill(m)
            elif type(m) is OrderUpdate:
                host.on_order_update(m)
            elif type(m) is OrderReject:
                host.on_reject(m)
            elif type(m) is AccountUpdate:
                host.on_account(m)
        del events[:]

    # ------------------------------------------------------------------- run
    def run(self) -> tuple[str, dict[str, Any]]:
        ex, host, feed = self.ex, self.host, self.feed
        assert ex is not None and host is not None
        events = self.events
        deliver = self._deliver
        ex_bar, host_bar = ex.on_bar, host.on_bar
        total = feed.total
        bar_feed = feed.kind == "bars"
        source = feed.batches(BATCH) if bar_feed else _chunked(feed.messages(), BATCH)
        cal = market_rules.sessions.calendar_of(self.cfg)
        gate = market_rules.InSession(cal) if cal is not None else None
        if gate is not None:  # [session]: bars outside it are not market data (as live)
            source = gate.batches(source)
        self.log.info("backtest running", kernel="inprocess", bars=total)
        done = 0
        try:
            for batch in source:
                if self.stop is not None:
                    break
                if bar_feed:
                    for b in batch:
                        ex_bar(b)
                        if events:
                            deliver()
                        ex.decision_bar = b.fseq
                        host_bar(b)
                        if events:
                            deliver()
                else:
                    # A tick replay; a feed that records quotes (best bid/offer) hands
                    # them in among the ticks, and they go to on_quote on both sides.
                    for t in batch:
                        quote = type(t) is Quote
                        if quote:
                            ex.on_quote(t)
                        else:
                            ex.on_tick(t)
                        if events:
                            deliver()
                        ex.decision_bar = t.fseq
                        if quote:
                            host.on_quote(t)
                        else:
                            host.on_tick(t)
                        if events:
                            deliver()
                done = batch[-1].fseq
                if self.progress is not None:
                    self.progress.update(time.monotonic(), done, total)
        except Exception as e:  # Failed is a BaseException: it passes through as it is
            raise Failed(component_of(e, "strategy"), e, "during the backtest") from None
        if self.stop is not None:
            self.log.info("backtest stopped", reason=self.stop, bars=done)
            return "", {}
        eod = feed.end() if gate is None else gate.end(feed.end())
        host.end_of_data(eod)
        try:
            ex.end_of_data(eod)
            deliver()
        except Exception as e:
            raise Failed(component_of(e, "paper-exchange"), e, "during the backtest") from None
        if self.progress is not None:
            self.progress.update(time.monotonic(), done, total, final=True)
            self.progress.close()
        try:
            text, summary = ex.write_results(title=f"paperbus backtest {self.run_id}", rows_skipped=eod.rows_skipped,
                                             png=self.png)
        except Exception as e:
            raise Failed("paper-exchange", e, "writing the results") from None
        self.log.info("backtest finished", bars=summary.get("bars"), fills=summary.get("fills"),
                      final_equity=summary.get("final_equity"))
        return text, summary

    def close(self, failed: str = "") -> None:
        """An ordered stop: the plugin's on_stop, then the exchange's export and the ledger's
        end of run; not for the component that ``failed`` (as a crashed actor runs no on_stop:
        the exchange's memory may be ahead of its ledger)."""
        if self.host is not None and failed != "strategy":
            try:
                self.host.stop()
            except Exception as e:  # as under the actors: the run's results stand
                self.log.error("strategy on_stop raised", error=exit_reason(e))
        if self.ex is not None and failed != "paper-exchange":
            ex, self.ex = self.ex, None
            try:
                ex.close()
            except Exception as e:
                raise Failed("paper-exchange", e, "closing the ledger") from None


def _chunked(it: Any, n: int) -> Any:
    out = []
    for m in it:
        out.append(m)
        if len(out) == n:
            yield out
            out = []
    if out:
        yield out


# ------------------------------------------------------------------ the run
def run(cfg: config_mod.Config, run_dir: str, run_id: str, config_path: str) -> int:
    """One in-process backtest in ``run_dir`` (made, locked and linked by the caller);
    returns the exit code, having printed the summary or the reason it failed."""
    log = logmod.setup(run_dir, "supervisor", run_id, cfg.service.log_level, console=True)
    # The same run files as the supervisor's (actors/supervision/runfiles.py), marked with the kernel.
    record = RunRecord(run_dir, run_id, cfg.service.mode, config_path, extra={"kernel": "inprocess"})
    code, reason, text = EXIT_OK, "", ""
    bt: Backtest | None = None
    try:
        atomic_write(os.path.join(run_dir, "config.json"), config_mod.to_json_bytes(cfg))
        record.started()
    except OSError as e:
        print(f"supervisor: cannot use run directory {run_dir}: {disk_error(e) or e}", file=sys.stderr)
        return EXIT_FAIL
    log.info("supervisor started", run_dir=run_dir, config=config_path, kernel="inprocess", pid=os.getpid())
    presses: list[str] = []  # the signals received, by name

    def on_signal(signum: int, _frame: Any) -> None:
        presses.append(signal.Signals(signum).name)
        if len(presses) > 1:
            raise KeyboardInterrupt  # the second one: at once, wherever it is
        if bt is not None:
            bt.stop = presses[0]

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    prof_dir = os.environ.get("PAPERBUS_PROFILE")
    if prof_dir:  # opt-in profiling (docs/BENCHMARKS.md), as the actors do: DIR/kernel.prof
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.monotonic()
    try:
        try:
            bt = Backtest(cfg, run_dir, run_id, log)
            bt.start()
            if presses:  # a signal during start: stop before the first batch
                bt.stop = presses[0]
            if sys.stderr.isatty():
                bt.progress = ProgressBar(sys.stderr)
            text, summary = bt.run()
            if bt.stop is not None:
                reason = bt.stop
            else:
                reason = "backtest finished"
                text += f"\nresults       {run_dir}"
            bt.close()
        except Failed as f:
            reason, code = _failure(f)
            log.error("shutting down", reason=reason)
            if bt is not None:
                try:
                    bt.close(failed=f.component)  # what was traded is exported, the run's end recorded
                except Failed as g:
                    log.error("closing after a failure failed", error=exit_reason(g.exc))
    except KeyboardInterrupt:
        code, reason, text = EXIT_FORCED, "second interrupt: stopped at once", ""
        log.warning("second interrupt: forcing shutdown")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if bt is not None and bt.progress is not None:
            bt.progress.close()
        if prof_dir:
            prof.disable()
            prof.dump_stats(os.path.join(prof_dir, "kernel.prof"))
    log.info("supervisor exiting", exit_code=code, reason=reason, run_s=round(time.monotonic() - t0, 4),
             **({"peak_rss_kb": peak} if (peak := _peak_rss_kb()) else {}))
    try:
        record.ended(code, reason)
    except OSError as e:  # the run is over either way; the next start just sees it as unclean
        log.error("cannot record the end of the run", error=str(e))
    if code:
        logmod.console_write(f"supervisor: {reason}\n", wait_s=FINAL_LINE_WAIT_S)
    if text:
        print(text, flush=True)
    return code


def _peak_rss_kb() -> int:
    """This process's peak resident memory (VmHWM), kB; 0 where /proc does not say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _failure(f: Failed) -> tuple[str, int]:
    """(reason, exit code) in the actor kernel's words: bad input 2, a disk 1, a bug 1."""
    e = f.exc
    err = disk_error(e)
    if err is not None:
        return f"{f.component}: {err}", EXIT_FAIL
    if isinstance(e, UserError):
        return f"config error: {f.component}: {exit_reason(e)}", EXIT_CONFIG
    return f"{f.component} failed {f.when}: {exit_reason(e)}", EXIT_FAIL
