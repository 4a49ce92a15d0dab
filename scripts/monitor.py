"""paperbus live monitor: the state-publisher's view, kept in sync (Clone pattern).

    python scripts/monitor.py [--run-dir DIR] [--once] [--json] [--count N]

Default: a live terminal view (rich), redrawn in place. When the publisher goes
silent the last good state stays on screen marked STALE with its age, and the
monitor reconnects by itself.
--once   print one snapshot and exit 0 (exit 1 if nothing answers within --timeout)
--json   one JSON line per update instead of the terminal view (with the client's stream
         counters: snapshots, gaps, missed)
--count  with --json: exit after N lines
--key    tcp: a client secret certificate to connect with (default: the installation's)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bus.clone_client import CloneClient  # noqa: E402

EXIT_OK, EXIT_FAIL = 0, 1
HEIGHT = 24  # the lines render() fits by default: a plain 80x24 terminal


def _num(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _qty(x: Any) -> str:
    """A quantity as the exchange means it: "10" for whole units, "0.015" for a fractional one
    (every decimal it has, never rounded to the 2 of money), with thousands separators."""
    if x is None:
        return "-"
    if isinstance(x, float):
        if x.is_integer():
            return f"{int(x):,}"
        whole, _, frac = f"{x:,.9f}".partition(".")
        return f"{whole}.{frac.rstrip('0')}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def _when(ns: Any) -> str:
    """A wall-clock time as date and time in the local zone (the header names the zone)."""
    if not ns:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def _zone(now_ns: int) -> str:
    return dt.datetime.fromtimestamp(now_ns / 1e9).astimezone().strftime("%Z") or "local"


def _signed(x: Any) -> str:
    if not isinstance(x, (int, float)):
        return "-"
    x = round(x, 2) + 0.0  # no "-0.00"
    colour = "green" if x > 0 else "red" if x < 0 else "white"
    return f"[{colour}]{x:,.2f}[/{colour}]"


def trading_flags(state: dict[str, Any]) -> list[tuple[str, str]]:
    """(text, style) for each trading condition the operator must see; [] while trading normally."""
    t = state.get("trading") or {}
    out = []
    if not t.get("known"):
        out.append(("trading state not reported by the exchange yet", "yellow"))
    if t.get("halted"):
        out.append(("HALTED (kill switch)", "bold white on red"))
    if t.get("flattening"):
        out.append(("FLATTENING", "bold black on magenta"))
    if t.get("paused") and not t.get("halted"):  # after a halt, lifting it is the first step
        out.append(("PAUSED", "bold black on yellow"))
    if t.get("strategy") == "failed":
        out.append(("STRATEGY FAILED", "bold white on red"))
    return out


def market_lines(state: dict[str, Any]) -> list[Any]:
    """The session (state, next change) and the portfolio's greeks, one line each, when the
    view has them ([session] configured; options in the master)."""
    from rich.text import Text

    out = []
    ses = state.get("session") or {}
    if ses.get("configured"):
        st = str(ses.get("state", "unknown"))
        line = Text("session ", style="bold", no_wrap=True, overflow="ellipsis")
        line.append(st, style="bold green" if st == "open" else "bold yellow" if st in ("pre-open", "square-off")
                    else "bold red")
        if ses.get("next_ns"):
            line.append(f"  next {ses.get('next_state')} at {_when(ses['next_ns'])}")
        line.append(f"  ({ses.get('timezone')}{', ' + ses['calendar'] if ses.get('calendar') else ''})", style="dim")
        out.append(line)
    g = state.get("greeks") or {}
    if g.get("known"):
        pf = g.get("portfolio") or {}
        deltas = "  ".join(f"{u} {_signed(d)}" for u, d in sorted((pf.get("delta") or {}).items())) or "0"
        line = Text("greeks ", style="bold", no_wrap=True, overflow="ellipsis")
        line.append_text(Text.from_markup(
            f"delta {deltas}  vega {_signed(pf.get('vega'))}  theta {_signed(pf.get('theta'))}/yr"
            f"  ({len(g.get('positions') or {})} option positions)"))
        out.append(line)
    return out


def _table(*cols: tuple[str, str]) -> Any:
    """A borderless table, header row as its title: one line per row, never wrapped."""
    from rich.table import Table
    t = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1, 0, 0), header_style="bold", expand=False)
    for name, justify in cols:
        t.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
    return t


def render(state: dict[str, Any] | None, seq: int, stale: bool, age: float | None, error: str = "",
           height: int = HEIGHT, now_ns: int | None = None) -> Any:
    """The whole screen as one rich renderable (Live swaps it in place: no flicker).

    Fits ``height`` lines of any width from 80 columns up (every line is cut,
    never wrapped, at the console's width): the header, the trading
    state, the account, the actors and the positions first; the performance,
    open orders and last trades as space allows. Every time shown is wall-clock
    date and time in the local zone, named in the header.
    """
    from rich.console import Group
    from rich.text import Text

    now_ns = now_ns or time.time_ns()
    clock = f"{_when(now_ns)} {_zone(now_ns)}"
    if state is None:
        return Group(Text(f"paperbus  waiting for the state-publisher...  {clock}", style="yellow",
                          no_wrap=True, overflow="ellipsis"),
                     *([Text(error, style="red", no_wrap=True, overflow="ellipsis")] if error else []))
    parts: list[Any] = []

    head = Text(no_wrap=True, overflow="ellipsis")
    head.append(f"run {state.get('run_id', '?')}", style="bold")
    head.append(f"  seq {seq}  ")
    if stale:
        head.append(f"STALE {age:.1f}s" if age is not None else "STALE", style="bold white on red")
    else:
        head.append("live", style="bold green")
    head.append(f"  {clock}")
    parts.append(head)
    if stale and error:  # why it is stale, whole: the figures below are as of {age} ago
        parts.append(Text(f"stale: {error}; showing the last state received", style="red", no_wrap=True,
                          overflow="ellipsis"))

    feed = state.get("feed") or {}
    if feed.get("known"):
        fl = Text("feed ", style="bold", no_wrap=True, overflow="ellipsis")
        fl.append(f"{feed.get('feed', '?')}  ")
        fs = feed.get("state", "unknown")
        if fs == "ok":
            fl.append("ok", style="bold green")
        else:  # the exchange fills nothing on a stale feed: the operator must see it at once
            fl.append(f" {fs.upper()} ", style="bold white on red")
            fl.append(f" since {_when(feed.get('since_ns'))}")
            if feed.get("symbols"):
                fl.append(f"  {', '.join(feed['symbols'])}")
            if feed.get("detail"):
                fl.append(f"  {feed['detail']}", style="red")
        if feed.get("last_data_ns"):
            fl.append(f"  last data {_when(feed['last_data_ns'])}")
        parts.append(fl)

    t = state.get("trading") or {}
    line = Text("trading ", style="bold", no_wrap=True, overflow="ellipsis")
    flags = trading_flags(state)
    for i, (text, style) in enumerate(flags):
        line.append(("  " if i else "") + text, style=style)
    if not flags:
        line.append("active" if t.get("state") == "trading" else str(t.get("state", "unknown")),
                    style="bold green" if t.get("state") == "trading" else "yellow")
    if t.get("halted"):
        line.append("  `ctl unhalt`, then `ctl resume`")
    elif t.get("paused") and not t.get("flattening"):
        line.append("  `ctl resume` to trade")
    parts.append(line)
    parts += market_lines(state)

    acct = state.get("account") or {}
    a1 = Text(no_wrap=True, overflow="ellipsis")
    a1.append("equity ", style="bold")
    a1.append(_num(acct.get("equity")), style="bold")
    a1.append(f"  cash {_num(acct.get('cash'))}  initial {_num(acct.get('initial_cash'))}"
              f"  fees {_num(acct.get('fees'))}")
    if not acct.get("known"):
        a1.append("  (no report from the exchange yet)", style="yellow")
    bp = (f"  buying power {_num(acct.get('buying_power'))} ({acct.get('account_type')})"
          if acct.get("account_type") else "")
    a2 = Text.from_markup(f"realized {_signed(acct.get('realized'))}  unrealized (Total MTM) "
                          f"{_signed(acct.get('unrealized'))}  gross exposure {_num(acct.get('gross_exposure'))}{bp}")
    a2.no_wrap, a2.overflow = True, "ellipsis"
    parts += [a1, a2]

    actors = state.get("actors") or {}
    # pid and uptime are in `ctl status`; here what each actor is doing, and since when.
    act = _table(("actor", "left"), ("state", "left"), ("restarts", "right"), ("since", "left"),
                 ("detail", "left"))
    # The flag that matters most on the rows of the actors it concerns: "running" alone would mislead.
    flag = next((k for k in ("halted", "flattening", "paused") if t.get(k)), "")
    notes = {"paper-exchange": flag, "strategy": "" if flag == "flattening" else flag}
    failed = []
    for name, a in actors.items():
        st = a.get("state", "?")
        style = ("green" if st == "running" else "yellow" if st in ("starting", "ready", "stopping", "restarting")
                 else "bold red")
        state_text = Text(st.upper() if st == "failed" else st, style=style)
        if st == "running" and notes.get(name):
            state_text.append(f", {notes[name]}", style="bold red" if notes[name] == "halted" else "bold yellow")
        if st == "failed" and a.get("detail"):
            failed.append((name, a["detail"]))
        act.add_row(name, state_text, str(a.get("restarts", 0)), _when(a.get("since_ns")),
                    Text("" if st == "failed" else a.get("detail") or ""))
    parts.append(act)
    for name, why in failed:  # the cause, whole line: it is what the operator needs to act on
        parts.append(Text(f"{name} failed: {why}", style="red", no_wrap=True, overflow="ellipsis"))

    # What is left goes to the positions first, then performance, orders, trades.
    left = height - (len(parts) - 1) - (1 + len(actors))  # one line per part, but the actors table
    pos = state.get("positions") or {}
    orders = state.get("orders") or {}
    trades = list(state.get("trades") or [])
    if pos:
        ptab = _table(("position", "left"), ("qty", "right"), ("avg price", "right"), ("last", "right"),
                      ("MTM", "right"), ("market value", "right"))
        rows = list(pos.items())
        room = max(1, left - 1)
        shown = rows if len(rows) <= room else rows[:room - 1]
        for sym, p in shown:
            ptab.add_row(sym, _qty(p.get("qty")), _num(p.get("avg_price"), 4), _num(p.get("last"), 4),
                         _signed(p.get("mtm")), _num(p.get("market_value")))
        if len(shown) < len(rows):
            ptab.add_row(f"... {len(rows) - len(shown)} more", "", "", "", "", "")
        parts.append(ptab)
        left -= 1 + ptab.row_count
    elif left > 0:
        parts.append(Text("positions: none", style="dim"))
        left -= 1

    perf = state.get("performance") or {}
    if left > 0:
        parts.append(Text(
            f"performance  return {_pct(perf.get('total_return'))}  max dd {_pct(perf.get('max_drawdown'))}"
            f"  sharpe {_num(perf.get('sharpe'))}  win {_pct(perf.get('win_rate'))} of {_num(perf.get('trades'))}"
            f"{'' if perf.get('complete', True) else ' (since the view started)'}", no_wrap=True,
            overflow="ellipsis"))
        left -= 1

    if left > 0:
        if not orders or left == 1:
            parts.append(Text(f"open orders: {len(orders) or 'none'}", style="dim"))
            left -= 1
        else:
            # Rows under the header; shared with the trades when there are any.
            room = left - 1 if not trades else max(1, (left - 2) // 2)
            otab = _table(("open orders", "right"), ("client id", "left"), ("symbol", "left"), ("side", "left"),
                          ("qty", "right"), ("filled", "right"), ("type", "left"), ("price", "right"),
                          ("status", "left"))
            rows = list(orders.items())
            shown = rows if len(rows) <= room else rows[:max(0, room - 1)]
            for oid, o in shown:
                otab.add_row(oid, o.get("cl_id", ""), o.get("symbol", ""), o.get("side", ""), _qty(o.get("qty")),
                             _qty(o.get("filled")), o.get("type", ""), _num(o.get("price"), 4), o.get("status", ""))
            if len(shown) < len(rows):
                otab.add_row(f"+{len(rows) - len(shown)}", "more", "", "", "", "", "", "", "")
            if otab.row_count:
                parts.append(otab)
                left -= 1 + otab.row_count

    if left > 1 and trades:
        n = min(len(trades), left - 1)
        left -= 1 + n
        ttab = _table(("trade time", "left"), ("symbol", "left"), ("side", "left"), ("qty", "right"),
                      ("price", "right"), ("realized", "right"), ("position", "right"))
        for tr in trades[-n:][::-1]:
            ttab.add_row(_when(tr.get("at_ns")), tr.get("symbol", ""), tr.get("side", ""), _qty(tr.get("qty")),
                         _num(tr.get("price"), 4), _signed(tr.get("realized")), _qty(tr.get("position")))
        parts.append(ttab)
    if left > 0:
        c, inst = state.get("counters") or {}, state.get("instruments") or {}
        parts.append(Text(f"instruments {inst.get('count', 0)} (option mappings {inst.get('option_mappings', 0)})"
                          f"  snapshots {c.get('snapshots', 0)}  client resyncs {c.get('client_resyncs', 0)}"
                          f"  missed {c.get('client_missed', 0)}  bad {sum((c.get('bad_messages') or {}).values())}",
                          style="dim", no_wrap=True, overflow="ellipsis"))
    return Group(*parts)


def _json_line(c: CloneClient) -> str:
    # "client": this monitor's own stream counters (snapshots, gaps, missed deltas), so a
    # consumer of the lines can see when it resynced and how much it had lost.
    return json.dumps({"run_id": (c.state or {}).get("run_id"), "state_seq": c.seq, "stale": c.stale,
                       "age_s": None if c.age is None else round(c.age, 3), "client": c.stats,
                       "state": c.state},
                      separators=(",", ":"))


def _on_term(*_: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the loop like Ctrl-C, so the terminal is restored


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="monitor.py", description="paperbus live monitor")
    ap.add_argument("--run-dir", default="run", help="run directory of the supervisor (default ./run)")
    ap.add_argument("--once", action="store_true", help="print one snapshot and exit")
    ap.add_argument("--json", action="store_true", help="one JSON line per update")
    ap.add_argument("--count", type=int, default=0, help="with --json: exit after this many lines")
    ap.add_argument("--timeout", type=float, default=3.0, help="--once: give up after this many seconds")
    ap.add_argument("--key", default=None, metavar="FILE",
                    help="tcp: client secret certificate (.key_secret) to connect with")
    args = ap.parse_args(argv)
    run_dir = os.path.abspath(args.run_dir)
    if not os.path.isdir(run_dir):
        print(f"monitor: no run directory {run_dir} (is the supervisor running?)", file=sys.stderr)
        return EXIT_FAIL
    signal.signal(signal.SIGTERM, _on_term)
    client = CloneClient(run_dir, request_timeout=min(2.0, args.timeout), client_key=args.key)
    try:
        if args.once:
            if not client.wait_synced(args.timeout):
                why = client.error or "no reply"
                print(f"monitor: no state from a state-publisher in {run_dir} within {args.timeout:g}s ({why})",
                      file=sys.stderr)
                return EXIT_FAIL
            if args.json:
                print(_json_line(client), flush=True)
            else:
                from rich.console import Console
                con = Console()
                con.print(render(client.state, client.seq, False, client.age, height=con.height))
            return EXIT_OK
        if args.json:
            n, was_stale = 0, None
            while not args.count or n < args.count:
                changed = client.step(0.25)
                stale = client.stale
                if client.state is not None and (changed or stale != was_stale):
                    print(_json_line(client), flush=True)
                    n += 1
                    was_stale = stale
            return EXIT_OK
        from rich.console import Console
        from rich.live import Live
        con = Console()
        view = lambda: render(client.state, client.seq, client.stale, client.age, client.error,  # noqa: E731
                              height=con.height)
        with Live(view(), console=con, refresh_per_second=4, screen=False, auto_refresh=False) as live:
            last_draw = 0.0
            while True:
                changed = client.step(0.25)
                now = time.monotonic()
                # Redraw on change, and at least every second so the STALE age ticks.
                if changed or now - last_draw >= 1.0:
                    live.update(view(), refresh=True)
                    last_draw = now
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
