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
TRADES_SHOWN = 10


def _num(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def _time(ns: Any) -> str:
    if not ns:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9).strftime("%H:%M:%S")


def _signed(x: Any) -> str:
    if not isinstance(x, (int, float)):
        return "-"
    colour = "green" if x > 0 else "red" if x < 0 else "white"
    return f"[{colour}]{x:,.2f}[/{colour}]"


def render(state: dict[str, Any] | None, seq: int, stale: bool, age: float | None, error: str = "") -> Any:
    """The whole screen as one rich renderable (Live swaps it in place: no flicker)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    if state is None:
        return Panel(Text(f"waiting for the state-publisher... {error}", style="yellow"), title="paperbus")
    head = Text()
    head.append(f"run {state.get('run_id', '?')}", style="bold")
    head.append(f"   seq {seq}")
    if stale:
        head.append(f"   STALE {age:.1f}s" if age is not None else "   STALE", style="bold white on red")
        if error:
            head.append(f"  ({error})", style="red")
    else:
        head.append("   live", style="bold green")
    c = state.get("counters") or {}
    inst = state.get("instruments") or {}
    head.append(f"   instruments {inst.get('count', 0)} (option mappings {inst.get('option_mappings', 0)})"
                f"   snapshots {c.get('snapshots', 0)}  client resyncs {c.get('client_resyncs', 0)}"
                f"  missed {c.get('client_missed', 0)}  bad {sum((c.get('bad_messages') or {}).values())}")

    actors = Table(title="actors", expand=True)
    for col in ("actor", "state", "pid", "restarts", "since", "detail"):
        actors.add_column(col)
    for name, a in (state.get("actors") or {}).items():
        st = a.get("state", "?")
        style = "green" if st == "running" else "yellow" if st in ("starting", "ready", "stopping") else "red"
        actors.add_row(name, f"[{style}]{st}[/{style}]", str(a.get("pid") or "-"), str(a.get("restarts", 0)),
                       _time(a.get("since_ns")), (a.get("detail") or "")[:60])

    acct = state.get("account") or {}
    # label/value pairs on two columns: money figures stay whole on an 80-column terminal
    account = Table(title="account" + ("" if acct.get("known") else " (no report from the exchange yet)"),
                    expand=True, show_header=False)
    for justify in ("left", "right", "left", "right"):
        account.add_column(justify=justify, no_wrap=True)
    account.add_row("cash", _num(acct.get("cash")), "equity", f"[bold]{_num(acct.get('equity'))}[/bold]")
    account.add_row("realized", _signed(acct.get("realized")), "unrealized (Total MTM)",
                    _signed(acct.get("unrealized")))
    account.add_row("fees", _num(acct.get("fees")), "gross exposure", _num(acct.get("gross_exposure")))
    account.add_row("initial cash", _num(acct.get("initial_cash")), "", "")

    positions = Table(title="positions", expand=True)
    for col in ("symbol", "qty", "avg price", "last", "MTM", "market value"):
        positions.add_column(col, justify="right" if col != "symbol" else "left")
    for sym, p in (state.get("positions") or {}).items():
        positions.add_row(sym, _num(p.get("qty")), _num(p.get("avg_price"), 4), _num(p.get("last"), 4),
                          _signed(p.get("mtm")), _num(p.get("market_value")))

    orders = Table(title="open orders", expand=True)
    for col in ("id", "client id", "symbol", "side", "qty", "filled", "type", "price", "status"):
        orders.add_column(col)
    for oid, o in (state.get("orders") or {}).items():
        orders.add_row(oid, o.get("cl_id", ""), o.get("symbol", ""), o.get("side", ""), _num(o.get("qty")),
                       _num(o.get("filled")), o.get("type", ""), _num(o.get("price"), 4), o.get("status", ""))

    trades = Table(title=f"last trades (of {len(state.get('trades') or [])})", expand=True)
    for col in ("time", "symbol", "side", "qty", "price", "fee", "realized", "position"):
        trades.add_column(col)
    for t in list(state.get("trades") or [])[-TRADES_SHOWN:][::-1]:
        trades.add_row(_time(t.get("ts")), t.get("symbol", ""), t.get("side", ""), _num(t.get("qty")),
                       _num(t.get("price"), 4), _num(t.get("fee")), _signed(t.get("realized")),
                       _num(t.get("position")))

    perf = state.get("performance") or {}
    performance = Table(title="performance" + ("" if perf.get("complete", True) else " (since monitor start)"),
                        expand=True)
    for col in ("total return", "max drawdown", "sharpe", "win rate", "trades", "wins", "losses", "fills"):
        performance.add_column(col, justify="right")
    performance.add_row(_pct(perf.get("total_return")), _pct(perf.get("max_drawdown")), _num(perf.get("sharpe")),
                        _pct(perf.get("win_rate")), _num(perf.get("trades")), _num(perf.get("wins")),
                        _num(perf.get("losses")), _num(perf.get("fills")))
    return Group(head, actors, account, positions, orders, trades, performance)


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
                Console().print(render(client.state, client.seq, False, client.age))
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
        from rich.live import Live
        view = lambda: render(client.state, client.seq, client.stale, client.age, client.error)  # noqa: E731
        with Live(view(), refresh_per_second=4, screen=False, auto_refresh=False) as live:
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
