"""The web dashboard's server (scripts/dashboard.py) against a real supervisor, over real HTTP.

Each test starts the dashboard as a process (``procs``, so anything it leaves behind
fails the test) and talks to it with the standard library's HTTP client.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import stat
import threading
import time
import urllib.parse

import pytest

from actors.supervision.runfiles import lock_holder
from bus.clone_client import CloneClient
from scripts import testkit as tk

pytestmark = pytest.mark.timeout(120)

LIVE = ["market_data.rate_hz=5", "strategy.plugin=actors.strategies.pingpong:PingPong"]


class Http:
    """A client of one dashboard: GET, POST with the page's CSRF token, and the event stream."""

    def __init__(self, url: str, token: str | None = None):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.token = token
        self.csrf = ""

    def conn(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        h = {}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        h.update(extra or {})
        return h

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        c = self.conn()
        try:
            c.request("GET", path, headers=self._headers(headers))
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def page(self) -> str:
        status, _, body = self.get("/")
        assert status == 200, body
        html = body.decode()
        self.csrf = re.search(r'<meta name="csrf" content="([^"]+)"', html).group(1)
        return html

    def post(self, path: str, body: object, headers: dict[str, str] | None = None, timeout: float = 30.0
             ) -> tuple[int, dict]:
        h = {"Content-Type": "application/json", "X-CSRF-Token": self.csrf,
             "Origin": f"http://{self.host}:{self.port}"}
        h.update(headers or {})
        c = self.conn(timeout)
        try:
            c.request("POST", path, body=json.dumps(body), headers=self._headers({k: v for k, v in h.items() if v}))
            r = c.getresponse()
            return r.status, json.loads(r.read() or b"{}")
        finally:
            c.close()

    def state(self, pred, timeout: float, what: str) -> dict:
        """The page's state as a tab builds it (the hello, then each update) until ``pred(state)``."""
        st: dict = {}

        def apply(e: dict) -> bool:
            if e["t"] == "hello":
                st.clear()
                st.update(e["state"])
            elif e["t"] == "upd":
                st.update(e["keys"])
            return e["t"] in ("hello", "upd") and bool(pred(st))

        self.events(apply, timeout, what)
        return st

    def events(self, pred, timeout: float, what: str) -> dict:
        """Read the event stream until ``pred(event)`` is truthy; returns that event."""
        c = self.conn(timeout)
        try:
            c.request("GET", "/events", headers=self._headers(None))
            r = c.getresponse()
            assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                line = r.fp.readline()
                if line.startswith(b"data: "):
                    ev = json.loads(line[6:])
                    if pred(ev):
                        return ev
            raise AssertionError(f"no event within {timeout}s: {what}")
        finally:
            c.close()


@pytest.fixture
def dash(procs, run_dir):
    """A dashboard on the test's run directory: yields a function that starts it (with extra args)."""
    started = []

    def start(*args: str, token: str | None = None) -> Http:
        p, url = tk.start_dashboard(run_dir, list(args), spawn=procs.spawn)
        started.append(p)
        h = Http(url, token)
        h.proc = p  # type: ignore[attr-defined]
        return h

    yield start
    for p in started:
        tk.stop_dashboard(p)


@pytest.fixture
def system(procs, run_dir):
    p = tk.start_supervisor(run_dir, sets=LIVE, spawn=procs.spawn)
    yield p
    tk.shutdown(p, run_dir)


def test_page_and_stream_show_the_publishers_state(system, dash, run_dir):
    h = dash()
    html = h.page()
    assert "/static/vendor/uplot/uPlot.iife.min.js" in html and "http" not in html.split("<body")[1].replace(
        "http://", "")  # no CDN: every asset from this server
    for asset in ("/static/app.js", "/static/app.css", "/static/vendor/uplot/uPlot.iife.min.js",
                  "/static/vendor/uplot/LICENSE", "/favicon.ico"):
        assert h.get(asset)[0] == 200, asset
    with CloneClient(run_dir) as c:
        assert c.wait_synced(10)
        st = h.state(lambda st: st.get("run_id"), 15, "the state with its run_id")
        assert st["run_id"] == c.state["run_id"] and set(c.state) <= set(st)
    upd = h.events(lambda e: e["t"] == "upd" and "market" in e["keys"], 15, "a market update")
    assert upd["pub_ms"] > 0 and upd["seq"] > 0


def test_cross_site_and_tokenless_posts_are_refused_and_change_nothing(system, dash, run_dir):
    h = dash()
    h.page()
    cases = [({"Origin": "http://evil.example"}, "cross-site request refused"),
             ({"X-CSRF-Token": ""}, "X-CSRF-Token"),
             ({"X-CSRF-Token": "guessed"}, "X-CSRF-Token"),
             ({"Sec-Fetch-Site": "cross-site", "Origin": ""}, "cross-site request refused")]
    for headers, want in cases:
        status, body = h.post("/api/control", {"cmd": "pause"}, headers)
        assert status == 403 and want in body["error"], (headers, body)
    status, _, body = h.get("/", {"Host": "attacker.example:80"})  # DNS rebinding: a foreign Host
    assert status == 421
    status, body = h.post("/api/control", {"cmd": "explode"})
    assert status == 400 and "unknown command 'explode'" in body["error"]
    assert tk.field(run_dir, "actors", "paper-exchange", "status", "paused") is False


def test_pause_resume_restart_through_the_control_endpoint(system, dash, run_dir):
    h = dash()
    h.page()
    status, body = h.post("/api/control", {"cmd": "pause"})
    assert status == 200 and body["ok"], body
    tk.wait_for(lambda: tk.field(run_dir, "actors", "paper-exchange", "status", "paused") is True, 10,
                "ctl status to show paused")
    status, body = h.post("/api/control", {"cmd": "resume"})
    assert status == 200 and body["ok"], body
    tk.wait_for(lambda: tk.field(run_dir, "actors", "paper-exchange", "status", "paused") is False, 10,
                "ctl status to show resumed")
    # An actor restart: the name must be one the view knows.
    h.state(lambda st: "strategy" in (st.get("actors") or {}), 15, "the actors in the view")
    before = tk.actor_pids(run_dir)["strategy"]
    status, body = h.post("/api/control", {"cmd": "restart", "arg": "strategy"})
    assert status == 200 and body["ok"], body
    tk.wait_for(lambda: tk.actor_pids(run_dir).get("strategy") not in (None, 0, before), 15, "a new strategy pid")


def test_start_twice_makes_one_supervisor_and_the_second_is_told(procs, dash, run_dir):
    h = dash()
    h.page()
    status, body = h.post("/api/control", {"cmd": "shutdown"})
    assert status == 503 and "no supervisor running" in body["error"]
    results: list[tuple[int, dict]] = []

    def click() -> None:
        results.append(h.post("/api/control", {"cmd": "start", "arg": "default"}, timeout=60))

    clicks = [threading.Thread(target=click) for _ in range(2)]
    for t in clicks:
        t.start()
    for t in clicks:
        t.join(60)
    ok = [b for s, b in results if s == 200]
    refused = [b for s, b in results if s == 409]
    assert len(ok) == 1 and len(refused) == 1, results
    pid = lock_holder(run_dir)["pid"]
    assert refused[0]["error"] == f"already running (pid {pid})" and f"pid {pid}" in ok[0]["message"]
    try:
        tk.wait_for(lambda: tk.running_status(run_dir), 30, "the started supervisor running")
        again = h.post("/api/control", {"cmd": "start", "arg": "default"})
        assert again == (409, {"ok": False, "error": f"already running (pid {pid})"})
        # The new run is pushed to the page without asking.
        rid = tk.field(run_dir, "run_id")
        h.events(lambda e: any(r["run_id"] == rid and r["running"] for r in e.get("runs", [])), 15,
                 "the new run in the runs list")
    finally:
        status, body = h.post("/api/control", {"cmd": "shutdown"})
        assert status == 200, body
        tk.wait_gone([pid], 30)
    assert tk.wait_for(lambda: lock_holder(run_dir) is None, 10, "the lock released")


def test_backtest_from_the_page_then_its_result_and_deleting_it(procs, dash, run_dir):
    h = dash()
    h.page()
    status, body = h.post("/api/backtest", {"config": "backtest", "params": {"service.run_dir": "/"}})
    assert status == 400 and "not in [service]" in body["error"]
    status, body = h.post("/api/backtest", {"config": "backtest",
                                            "params": {"strategy.params": "{ fast = 5, slow = 30, qty = 10 }"}})
    assert status == 200 and body["ok"], body
    job = h.events(lambda e: e["t"] == "job" and e["job"]["state"] != "running"
                   or e["t"] == "hello" and any(j["state"] != "running" for j in e.get("jobs", [])), 90,
                   "the backtest to finish")
    job = job.get("job") or job["jobs"][0]
    assert job["state"] == "finished" and job["total"] == 2148 and job["run_id"], job
    rid = job["run_id"]
    status, _, raw = h.get(f"/api/backtest/{rid}")
    res = json.loads(raw)
    assert status == 200 and res["summary"]["bars"] == 2148 and res["equity"] and res["trades"]
    assert res["run"]["run_id"] == rid and res["columns"][:3] == ["symbol", "side", "qty"]
    # Deleting it: the plan names the directory and its ledger; only then, with the plan, it goes.
    status, plan = h.post("/api/runs/plan", {"run_ids": [rid]})
    assert status == 200 and "ledger.sqlite" in plan["runs"][0]["files"], plan
    status, body = h.post("/api/runs/delete", {"plan": {"runs": plan["runs"]}})
    assert status == 400 and "confirm" in body["error"]
    status, body = h.post("/api/runs/delete", {"plan": {"runs": plan["runs"]}, "confirm": True})
    assert status == 200 and body["deleted"] == [rid]
    assert not os.path.exists(plan["runs"][0]["dir"])


def test_logs_of_a_run_filtered(system, dash, run_dir):
    h = dash()
    rid = tk.field(run_dir, "run_id")
    status, _, raw = h.get(f"/api/logs?run_id={rid}&process=supervisor&level=info&n=50")
    out = json.loads(raw)
    assert status == 200 and "supervisor" in out["processes"] and out["events"]
    assert {e["process"] for e in out["events"]} == {"supervisor"} and all(e["run_id"] == rid for e in out["events"])
    assert h.get("/api/logs?level=loud")[0] == 400
    assert h.get("/api/logs?run_id=nope")[0] == 404


def test_other_interface_needs_the_token_on_every_request_and_stream(procs, dash, run_dir):
    path = os.path.join(run_dir, "dashboard.token")
    h = dash("--host", "0.0.0.0")
    with open(path) as f:
        tok = f.read().strip()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    h.host = "127.0.0.1"  # the test connects through loopback only
    for p in ("/", "/events", "/api/runs", "/static/app.js"):
        assert h.get(p)[0] == 401, p
    assert h.get("/", {"Authorization": "Bearer wrong"})[0] == 401
    h.token = tok
    h.page()
    assert h.events(lambda e: e["t"] == "hello", 10, "hello with the token")
    status, hdrs, _ = Http(f"http://127.0.0.1:{h.port}/").get(f"/?token={tok}")
    assert status == 303 and "pb_token=" in hdrs.get("set-cookie", "")
    # Made once: a second start reads it and does not print it again.
    tk.stop_dashboard(h.proc)
    p, url = tk.start_dashboard(run_dir, ["--host", "0.0.0.0"], spawn=procs.spawn)
    try:
        assert tok not in url
        with open(path) as f:
            assert f.read().strip() == tok
    finally:
        tk.stop_dashboard(p)


def test_the_dashboard_as_a_supervised_actor(procs, run_dir):
    sup = tk.start_supervisor(run_dir, sets=LIVE + ["actors.dashboard.module=actors.dashboard",
                                                    "actors.dashboard.params={ port = 0 }"], spawn=procs.spawn)
    try:
        url = tk.wait_for(lambda: tk.field(run_dir, "actors", "dashboard", "status", "url"), 15, "its URL in status")
        h = Http(url)
        h.page()
        st = h.state(lambda st: "dashboard" in (st.get("actors") or {}), 15, "the state with the dashboard actor")
        assert st["run_id"] == tk.field(run_dir, "run_id")
    finally:
        assert tk.shutdown(sup, run_dir) == 0


def test_a_start_that_fails_says_why_in_the_supervisors_words(procs, dash, run_dir):
    with open(os.path.join(run_dir, "run.json"), "w") as f:  # the directory belongs to backtests
        json.dump({"run_id": "20250101T000000-abcdef", "mode": "backtest"}, f)
    h = dash()
    h.page()
    status, body = h.post("/api/control", {"cmd": "start", "arg": "default"})
    assert status == 409 and body["error"].startswith("supervisor exited 2: supervisor: run directory "), body
    assert "belongs to backtests" in body["error"] and lock_holder(run_dir) is None
    status, body = h.post("/api/control", {"cmd": "start", "arg": "backtest"})
    assert status == 400 and "start it from Backtests" in body["error"]
