"""The web dashboard in a real browser: headless Chromium (the system's, Debian package
``chromium``) driven by Playwright, against a real supervisor and a real dashboard server.

Skipped, with the reason, where /usr/bin/chromium or the playwright package is missing
(.ci/run installs chromium). A screenshot of each page is kept in tests/artifacts/.
"""

from __future__ import annotations

import os
import signal

import pytest

from actors.supervision.runfiles import lock_holder
from bus.clone_client import CloneClient
from scripts import testkit as tk

CHROMIUM = os.environ.get("PAPERBUS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HB_MS = 500  # the state stream's heartbeat here: STALE after three silent periods
LIVE = ["market_data.rate_hz=2", "strategy.plugin=actors.strategies.pingpong:PingPong",
        f"state.heartbeat_ms={HB_MS}",
        # A killed state-publisher comes back only after 3 s: long enough to see STALE.
        "supervisor.backoff_initial_ms=3000"]

pytestmark = pytest.mark.timeout(180)


def _why_no_browser() -> str | None:
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (Debian package chromium; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
def browser():
    why = _why_no_browser()
    if why:
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    b = None
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
    finally:
        if b is not None:
            b.close()  # kills every browser process it started
        pw.stop()


@pytest.fixture
def dashboard(procs, run_dir):
    p, url = tk.start_dashboard(run_dir, spawn=procs.spawn)
    yield url
    tk.stop_dashboard(p)


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.goto(url)
    return page, errors


def shot(page, name: str) -> str:
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    page.screenshot(path=path, full_page=True)
    return path


def confirm(page) -> None:
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-ok")


PAGE_VIEW = """() => ({
  seq: +document.body.dataset.seq,
  equity: document.getElementById('acct-equity').dataset.value,
  unrealized: document.getElementById('acct-unrealized').dataset.value,
  positions: Object.fromEntries([...document.querySelectorAll('#positions tbody tr[data-symbol]')].map(
    (tr) => [tr.dataset.symbol, {qty: +tr.children[1].dataset.value, last: +tr.children[3].dataset.value,
                                 mtm: +tr.children[4].dataset.value}])),
})"""


def test_live_page_equals_the_publisher_pause_shows_in_ctl_and_stale_keeps_the_values(
        browser, procs, run_dir, dashboard):
    sup = tk.start_supervisor(run_dir, sets=LIVE, spawn=procs.spawn)
    try:
        page, errors = open_page(browser, dashboard)
        page.wait_for_selector("#link.ok", timeout=20_000)
        # Equity and positions on the page equal the state-publisher's view at the same state_seq
        # (compared between two bars, when both have applied the same deltas), with a position held.
        with CloneClient(run_dir) as c:
            assert c.wait_synced(10)
            seen: dict = {}

            def same() -> bool:
                v = page.evaluate(PAGE_VIEW)
                c.step(0.05)
                if c.seq != v["seq"] or not v["positions"]:
                    return False
                acct, pos = c.state["account"], c.state["positions"]
                assert float(v["equity"]) == acct["equity"] and float(v["unrealized"]) == acct["unrealized"]
                assert v["positions"] == {s: {"qty": p["qty"], "last": p["last"], "mtm": p["mtm"]}
                                          for s, p in pos.items()}
                seen.update(v)
                return True

            tk.wait_for(same, 60, "page and publisher at the same seq with a position", step=lambda: None)
        # Pause, clicked on the page, confirmed: `ctl status` shows it.
        page.click("#btn-pause")
        confirm(page)
        page.wait_for_selector("#reply.ok >> text=pause: ok", timeout=15_000)
        tk.wait_for(lambda: tk.field(run_dir, "actors", "paper-exchange", "status", "paused") is True, 15,
                    "ctl status showing paused")
        page.wait_for_selector('#trading[data-state="paused"]', timeout=15_000)
        page.wait_for_selector('#actors tr.hl-paused[data-actor="paper-exchange"]', timeout=15_000)
        assert errors == [], errors
        shot(page, "dashboard-live.png")

        # Kill the state-publisher: STALE with its age, the last values kept, then back by itself.
        last = page.evaluate(PAGE_VIEW)
        assert float(last["equity"]) > 0
        page.evaluate("""() => { window.__staleAge = null; new MutationObserver(() => {
            const b = document.getElementById('stale-banner');
            if (!b.hidden && window.__staleAge === null) window.__staleAge = Date.now() - window.__pb.state.link.last_msg_ms;
          }).observe(document.getElementById('stale-banner'), {attributes: true}); }""")
        pub = tk.actor_pids(run_dir)["state-publisher"]
        os.kill(pub, signal.SIGKILL)
        page.wait_for_selector("#stale-banner:not([hidden])", timeout=3 * HB_MS + 10_000)
        stale_age = page.evaluate("window.__staleAge")
        # Marked stale when three heartbeat periods had passed without a message (plus the
        # dashboard's 20 ms step and the page's 250 ms tick at most).
        assert stale_age is not None and stale_age <= 3 * HB_MS + 1000, stale_age
        banner = page.inner_text("#stale-banner")
        assert banner.startswith("STALE: no message from the state-publisher for ") and "last received" in banner
        now = page.evaluate(PAGE_VIEW)
        assert now["equity"] == last["equity"] and now["positions"] == last["positions"]  # never zeros
        assert page.inner_text("#link").startswith("STALE")
        shot(page, "dashboard-stale.png")
        page.wait_for_selector("#stale-banner", state="hidden", timeout=30_000)  # a new publisher: live again
        page.wait_for_selector("#link.ok", timeout=5_000)
        tk.wait_for(lambda: tk.actor_pids(run_dir).get("state-publisher") not in (None, 0, pub), 10, "new publisher")
        assert errors == [], errors
        lat = page.evaluate("window.__pb.lat")
        assert lat, "no update latency measured"
    finally:
        tk.shutdown(sup, run_dir)


def test_start_from_the_page_new_run_listed_logs_backtest_and_shutdown(browser, procs, run_dir, dashboard):
    page, errors = open_page(browser, dashboard)
    page.wait_for_selector("#link", timeout=10_000)
    page.wait_for_selector("#start-config option[value='default'], #start-config option:text('default')",
                           state="attached", timeout=10_000)
    assert errors == [], errors  # the page loads cleanly with no supervisor at all
    page.click("#tab-runs")
    page.wait_for_selector("#runs >> text=no runs yet")
    page.click("#tab-live")
    pid = None
    try:
        page.click("#btn-start")
        confirm(page)
        page.wait_for_selector("#reply.ok >> text=supervisor started", timeout=30_000)
        pid = lock_holder(run_dir)["pid"]
        assert f"pid {pid}" in page.inner_text("#reply")
        # A second click while it runs: the lock's holder is named, no second instance.
        page.click("#btn-start")
        confirm(page)
        page.wait_for_selector(f"#reply.err >> text=already running (pid {pid})", timeout=30_000)
        tk.wait_for(lambda: tk.running_status(run_dir), 30, "the supervisor started from the page running")
        rid = tk.field(run_dir, "run_id")
        # The new run is in the list, without a reload.
        page.click("#tab-runs")
        page.wait_for_selector(f'#runs tr[data-run="{rid}"] >> text=running', timeout=15_000)
        page.click(f'#runs button.logs-btn[data-run="{rid}"]')
        page.wait_for_selector("#logs >> text=all actors running", timeout=15_000)
        shot(page, "dashboard-runs.png")

        # A backtest from the page: progress, then its summary, equity over drawdown, trades.
        page.click("#tab-backtests")
        page.fill("#bt-params", "strategy.params={ fast = 5, slow = 30, qty = 10 }")
        page.click("#btn-backtest")
        page.wait_for_selector("#bt-reply.ok", timeout=15_000)
        page.wait_for_selector("#jobs >> text=finished", timeout=90_000)
        assert "2,148/2,148" in page.inner_text("#jobs")
        page.fill("#bt-params", "strategy.params={ fast = 10, slow = 50, qty = 10 }")
        page.click("#btn-backtest")
        page.wait_for_selector("#jobs tbody tr:nth-child(2) >> text=finished", timeout=90_000)
        page.wait_for_selector("#bt-b option:nth-child(3)", state="attached", timeout=15_000)  # (none) + 2
        runs = page.eval_on_selector_all("#bt-a option", "os => os.map((o) => o.value)")
        page.select_option("#bt-a", runs[0])
        page.select_option("#bt-b", runs[1])
        page.click("#btn-compare")
        page.wait_for_selector(f'.bt-result[data-run="{runs[1]}"] .uplot', timeout=15_000)
        cards = page.locator(".bt-result")
        assert cards.count() == 2 and page.locator(".bt-result .uplot").count() == 4  # equity over drawdown, each
        assert "final_equity" in cards.nth(0).inner_text() and "net_pnl" in cards.nth(1).inner_text()
        shot(page, "dashboard-backtests.png")

        # Deleting a backtest: the confirmation names every file that goes, its ledger first among
        # them; the live run has no box to tick; the list updates by itself.
        page.click("#tab-runs")
        assert page.locator(f'#runs tr[data-run="{rid}"] input').count() == 0
        page.check(f'#runs tr[data-run="{runs[0]}"] input')
        page.click("#btn-delete")
        page.wait_for_selector("#confirm[open]")
        text = page.inner_text("#confirm-text")
        assert runs[0] in text and "ledger.sqlite" in text and "summary.json" in text, text
        page.click("#confirm-ok")
        page.wait_for_selector(f"#runs-reply.ok >> text=deleted {runs[0]}", timeout=15_000)
        page.wait_for_selector(f'#runs tr[data-run="{runs[0]}"]', state="detached", timeout=15_000)
        assert page.locator(f'#runs tr[data-run="{runs[1]}"]').count() == 1

        # Shutdown from the page: the supervisor it started ends in order.
        page.click("#tab-live")
        page.wait_for_selector("#btn-shutdown:not([disabled])", timeout=15_000)
        page.click("#btn-shutdown")
        confirm(page)
        page.wait_for_selector("#reply.ok >> text=shutdown: ok", timeout=15_000)
        tk.wait_gone([pid], 30)
        pid = None
    finally:
        if pid is not None and lock_holder(run_dir) is not None:
            tk.request(run_dir, "shutdown", timeout=5)
            tk.wait_gone([pid], 30)



def test_the_cost_bench_runs_and_prints_every_figure(procs, tmp_path):
    """scripts/dashboard_bench.py (docs/BENCHMARKS.md), at the smallest size: it runs and
    prints each figure; the figures themselves are not judged here."""
    why = _why_no_browser()
    if why:
        pytest.skip(why)
    import subprocess

    png = str(tmp_path / "shot.png")
    p = procs.spawn([tk.PY, "scripts/dashboard_bench.py", "--seconds", "1", "--tabs", "1", "--rate-hz", "5",
                     "--screenshot", png], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out, _ = p.communicate(timeout=150)
    text = out.decode()
    assert p.returncode == 0, text
    for want in ("no dashboard", "dashboard + 1 streams", "dashboard + 1 Chromium tabs", "no dashboard again",
                 "dashboard RSS with 1 streams:", "publisher send -> shown in the page: p50"):
        assert want in text, text
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
