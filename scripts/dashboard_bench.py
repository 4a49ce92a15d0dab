"""What the web dashboard costs: trading throughput and latency without and with open tabs,
the dashboard's memory, and how long an update takes to show in the page. Asserts nothing.

    python scripts/dashboard_bench.py [--seconds 20] [--rate-hz 100] [--tabs 5] [--screenshot docs/dashboard.png]

One live run (PingPong on every bar of two symbols, fills at the bar's close) is measured
four times for --seconds each: no dashboard; the dashboard with --tabs readers of its event
stream (the server's own cost, no browser); the dashboard with --tabs Chromium tabs on its
live page (the browser shares the machine's cores with the run); no dashboard again (the
two bare phases bracket the noise). Per
phase: fills per second and bar -> fill latency (p50, p99; envelope times of the bar and of
the fill). With the tabs: the dashboard process's RSS (now and peak) and, in every tab, the
delay from the state-publisher's send time (carried in each push) to the frame that shows it
(p50, p95, max over all tabs). --screenshot: a picture of the first tab for the README.
Needs /usr/bin/chromium (Debian package chromium) and playwright.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scripts import testkit as tk  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def pct(vals: list[float], q: float) -> float:
    s = sorted(vals)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def trading(run_dir: str, seconds: float) -> dict:
    """Fills per second and bar -> fill latency over ``seconds`` of the live run."""
    import zmq

    from bus.codec import codec

    ctx = zmq.Context()
    sub = tk.bars_and_fills(ctx, run_dir)
    try:
        end_warm = time.monotonic() + 1.0  # the subscription settles
        while time.monotonic() < end_warm:
            if sub.poll(100):
                sub.recv_multipart()
        bars: dict[str, int] = {}
        lat: list[float] = []
        fills = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            if not sub.poll(100):
                continue
            topic, payload = sub.recv_multipart()
            if topic.startswith(b"md."):
                b = codec("md").decode(payload)
                bars[b.msg.symbol] = b.ts
            else:
                f = codec("orders").decode(payload)
                fills += 1
                if f.msg.symbol in bars:
                    lat.append((f.ts - bars.pop(f.msg.symbol)) / 1e6)
        return {"fills_s": fills / seconds, "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "n": len(lat)}
    finally:
        sub.close()
        ctx.term()


def streams(url: str, n: int, stop: "threading.Event") -> list[threading.Thread]:
    """``n`` readers of the dashboard's event stream without a browser: the server's own cost."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)

    def read() -> None:
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
        try:
            c.request("GET", "/events")
            r = c.getresponse()
            while not stop.is_set():
                r.fp.readline()
        finally:
            c.close()

    ts = [threading.Thread(target=read, daemon=True) for _ in range(n)]
    for t in ts:
        t.start()
    return ts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dashboard_bench.py", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="each phase (default 20)")
    ap.add_argument("--rate-hz", type=float, default=100.0, help="bars a second per symbol (default 100)")
    ap.add_argument("--tabs", type=int, default=5, help="browser tabs on the live page (default 5)")
    ap.add_argument("--screenshot", default="", help="save the first tab's picture here (e.g. docs/dashboard.png)")
    args = ap.parse_args(argv)
    if not os.path.exists(CHROMIUM):
        print(f"dashboard_bench: no {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    run_dir = tempfile.mkdtemp(prefix="pbdb-", dir="/tmp")
    sets = [f"market_data.rate_hz={args.rate_hz}", "strategy.plugin=actors.strategies.pingpong:PingPong",
            "strategy.params={ qty = 1 }", "exchange.fill_on=close"]
    sup = tk.start_supervisor(run_dir, sets=sets)
    dash = None
    try:
        out = {"bare": trading(run_dir, args.seconds)}
        dash, url = tk.start_dashboard(run_dir)
        stop = threading.Event()
        readers = streams(url, args.tabs, stop)
        out["streams"] = trading(run_dir, args.seconds)
        out["streams_rss_kb"] = tk.rss_kb(dash.pid, "VmRSS")
        stop.set()
        for t in readers:
            t.join(10)
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                pages = []
                for _ in range(args.tabs):
                    pg = b.new_page(viewport={"width": 1400, "height": 1000})
                    pg.goto(url)
                    pg.wait_for_selector("#link.ok", timeout=20_000)
                    pages.append(pg)
                for pg in pages:
                    pg.evaluate("() => { window.__pb.lat.length = 0; window.__pb.arrival.length = 0; }")
                out["tabs"] = trading(run_dir, args.seconds)
                lat = [x for pg in pages for x in pg.evaluate("window.__pb.lat")]
                arr = [x for pg in pages for x in pg.evaluate("window.__pb.arrival")]
                out["rss_kb"] = tk.rss_kb(dash.pid, "VmRSS")
                out["hwm_kb"] = tk.rss_kb(dash.pid, "VmHWM")
                out["page"] = {"n": len(lat), "p50_ms": pct(lat, 0.5), "p95_ms": pct(lat, 0.95),
                               "max_ms": max(lat) if lat else float("nan"),
                              "arr_p50_ms": pct(arr, 0.5), "arr_p95_ms": pct(arr, 0.95)}
                if args.screenshot:
                    pages[0].screenshot(path=args.screenshot)
            finally:
                b.close()
        tk.stop_dashboard(dash)
        dash = None
        out["bare2"] = trading(run_dir, args.seconds)
    finally:
        if dash is not None:
            tk.stop_dashboard(dash)
        tk.shutdown(sup, run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"live run: PingPong, 2 symbols x {args.rate_hz:g} bars/s, fill at close; {args.seconds:g} s a phase")
    print(f"{'phase':28} {'fills/s':>8} {'bar->fill p50':>14} {'p99':>8}")
    for k, name in (("bare", "no dashboard"), ("streams", f"dashboard + {args.tabs} streams"),
                    ("tabs", f"dashboard + {args.tabs} Chromium tabs"), ("bare2", "no dashboard again")):
        r = out[k]
        print(f"{name:28} {r['fills_s']:8.1f} {r['p50_ms']:12.2f}ms {r['p99_ms']:6.2f}ms")
    pg = out["page"]
    print(f"dashboard RSS with {args.tabs} streams: {out['streams_rss_kb'] / 1024:.1f} MB; with {args.tabs} tabs: {out['rss_kb'] / 1024:.1f} MB (peak {out['hwm_kb'] / 1024:.1f} MB)")
    print(f"publisher send -> shown in the page: p50 {pg['p50_ms']:.1f} ms, p95 {pg['p95_ms']:.1f} ms, "
          f"max {pg['max_ms']:.1f} ms over {pg['n']} updates in {args.tabs} tabs; received (before drawing) "
          f"p50 {pg['arr_p50_ms']:.1f} ms, p95 {pg['arr_p95_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
