"""The web dashboard's model, without sockets: what the page is sent, what a button may do.

scripts/dashboard.py is the thin server around it (HTTP, Server-Sent Events, threads);
everything it decides is here, as plain functions and classes the unit tests drive
by hand (tests/test_dashboard_model.py):

- ``Page``: the page state. Fed the Clone client's state after each step, it says which
  top-level keys changed (one push per step carries them all, stamped with the
  publisher's send time so the browser can measure the delay), keeps bounded series for
  the charts (equity, last price per symbol, fill markers) so a tab opened later still
  draws the curve, and the link state (live / STALE since when / why).
- ``check_control``: which control commands a POST may ask for, checked before anything
  is sent (the page offers exactly these).
- ``run_rows`` / ``delete_plan``: every run of the live and the backtest directory; what
  deleting some would remove, named file by file, refusing the current run and any
  ledger that live runs share.
- ``log_tail``: the last lines of the run's JSON logs, filtered by process and level.
- ``backtest_result``: a backtest directory's summary, equity and drawdown series, trades.
- ``Guard``: the request checks (token, Host, Origin, CSRF header), as pure predicates.

Values are passed through as the state view has them (numbers rendered by the page
generically; unknown keys kept): the view may grow keys (e.g. ``feed``) and quantities
may be fractional.
"""

from __future__ import annotations

import csv
import hmac
import json
import os
import re
import secrets
import shutil
from collections import deque
from typing import Any, Iterable

SERIES_MAX = 2000  # points kept per chart series: bounded memory whatever the uptime
MARKERS_MAX = 500  # fill markers kept
SAMPLE_MIN_S = 0.2  # at most this often a new point per series (a faster feed replaces the last one)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
TOKEN_BYTES = 24
# View keys that come from the exchange's reports: kept as last shown while a new
# publisher's account is not yet known.
HELD_UNTIL_KNOWN = ("account", "positions", "orders", "greeks")


# ------------------------------------------------------------------ page state
class Page:
    """What every open tab is shown, and the pushes that keep it current."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.seq = 0
        self.pub_ms: float | None = None  # publisher's send time of the state shown (epoch ms)
        self.equity: deque[tuple[float, float]] = deque(maxlen=SERIES_MAX)
        self.prices: dict[str, deque[tuple[float, float]]] = {}
        self.markers: deque[dict[str, Any]] = deque(maxlen=MARKERS_MAX)
        self._last_fill = 0
        self.link: dict[str, Any] = {"connected": False, "stale": True, "last_msg_ms": None, "error": "",
                                     "hb_ms": None, "run_id": None}
        self.status: dict[str, Any] | None = None  # the supervisor's `ctl status` data, or None
        self.status_error = ""

    # ---------------------------------------------------------------- updates
    def update(self, state: dict[str, Any] | None, seq: int, pub_ms: float | None, now_s: float
               ) -> dict[str, Any] | None:
        """The push for a new state (None when nothing the page shows changed).

        ``state``: the Clone client's whole current state; compared key by key with
        what was pushed last, so a resync (a new snapshot) sends only what differs."""
        if state is None:
            return None
        acct = state.get("account")
        if (isinstance(acct, dict) and acct.get("known") is False
                and isinstance(self.state.get("account"), dict) and self.state["account"].get("known")):
            # A restarted state-publisher knows no account until the exchange reports (a
            # few hundred ms): the page keeps the last good figures, never empties or zeros.
            state = {**state, **{k: self.state[k] for k in HELD_UNTIL_KNOWN if k in self.state}}
        changed = {k: v for k, v in state.items() if self.state.get(k) != v}
        gone = [k for k in self.state if k not in state]
        if not changed and not gone:
            self.seq = seq
            return None
        # Copies: the Clone client replaces top-level values but the page must not
        # share them with it across threads.
        changed = json.loads(json.dumps(changed))
        for k in gone:
            del self.state[k]
        pts = self._series(changed, now_s)
        msg: dict[str, Any] = {"t": "upd", "seq": seq, "pub_ms": pub_ms, "keys": changed}
        add = _appended(self.state.get("trades"), changed.get("trades"))
        if add is not None:
            # The view sends its whole list of last trades on every fill; the tabs get only the
            # new ones (a fast feed would otherwise send each trade fifty times).
            del changed["trades"]
            self.state["trades"] = json.loads(json.dumps(state["trades"]))
            msg["trades_add"], msg["trades_len"] = add, len(state["trades"])
        self.state.update(changed)
        self.seq, self.pub_ms = seq, pub_ms
        if gone:
            msg["gone"] = gone
        if pts:
            msg["pts"] = pts
        return msg

    def _series(self, changed: dict[str, Any], now_s: float) -> dict[str, Any]:
        pts: dict[str, Any] = {}
        acct = changed.get("account")
        if isinstance(acct, dict) and acct.get("known") and isinstance(acct.get("equity"), (int, float)):
            pts["eq"] = _append(self.equity, now_s, float(acct["equity"]))
        market = changed.get("market")
        if isinstance(market, dict) and isinstance(market.get("last"), dict):
            px = {}
            for sym, p in market["last"].items():
                if isinstance(p, (int, float)):
                    series = self.prices.setdefault(sym, deque(maxlen=SERIES_MAX))
                    px[sym] = _append(series, now_s, float(p))
            if px:
                pts["px"] = px
        trades = changed.get("trades")
        if isinstance(trades, list):
            new = []
            for t in trades:
                fid = t.get("fill_id") if isinstance(t, dict) else None
                if isinstance(fid, int) and fid > self._last_fill:
                    at = t.get("at_ns") or 0
                    m = {"t": at / 1e9 if at else now_s, "symbol": t.get("symbol"), "side": t.get("side"),
                         "price": t.get("price"), "qty": t.get("qty"), "fill_id": fid}
                    self.markers.append(m)
                    new.append(m)
                    self._last_fill = fid
            if new:
                pts["fills"] = new
        return pts

    def set_link(self, connected: bool, stale: bool, last_msg_ms: float | None, error: str,
                 hb_ms: float | None) -> dict[str, Any] | None:
        """The link push when it changed (stale flips, a new error, reconnected), else None.

        The page ticks the age itself from ``last_msg_ms``: no push per second needed."""
        new = {"connected": connected, "stale": stale, "last_msg_ms": last_msg_ms if stale else None,
               "error": error if stale else "", "hb_ms": hb_ms, "run_id": self.state.get("run_id")}
        if stale and self.link.get("stale") and self.link.get("last_msg_ms") == last_msg_ms:
            new["last_msg_ms"] = self.link["last_msg_ms"]
        if new == self.link:
            return None
        self.link = new
        return {"t": "link", **new}

    def set_status(self, status: dict[str, Any] | None, error: str = "") -> dict[str, Any] | None:
        """The supervisor's status (heartbeat ages, uptimes, pids) when it changed in a way the
        page shows; the ages themselves change every time, so they are sent at most as often as
        the server asks (once a second)."""
        if status == self.status and error == self.status_error:
            return None
        self.status, self.status_error = status, error
        return {"t": "status", "status": status, "error": error}

    def hello(self) -> dict[str, Any]:
        """Everything a tab that just connected needs: the state, the series so far, the link."""
        return {"t": "hello", "seq": self.seq, "pub_ms": self.pub_ms, "state": self.state,
                "series": {"eq": list(self.equity), "px": {s: list(v) for s, v in self.prices.items()},
                           "fills": list(self.markers)},
                "link": self.link, "status": {"status": self.status, "error": self.status_error}}


def _appended(old: Any, new: Any) -> list[Any] | None:
    """The items to append to ``old`` (then keeping its last len(new)) to get ``new``: the
    fewest that do it, so a bounded list of the last trades sends only its new ones. None
    when either is not a non-empty list."""
    if not isinstance(old, list) or not isinstance(new, list) or not old or not new:
        return None
    for k in range(0, len(new) + 1):  # k: how many are new, fewest first
        keep = new[:len(new) - k]
        if not keep or keep == old[-len(keep):]:
            return new[len(new) - k:]
    return None


def _append(series: deque[tuple[float, float]], t: float, v: float) -> list[float]:
    """A point at ``t``; within SAMPLE_MIN_S of the last one it replaces it (same memory, same shape)."""
    if series and t - series[-1][0] < SAMPLE_MIN_S:
        series[-1] = (series[-1][0], v)
        return [series[-1][0], v]
    series.append((t, v))
    return [t, v]


# -------------------------------------------------------------------- controls
# The commands the page's buttons send, with what the confirmation says. ``start`` is
# the server's own (it spawns a supervisor); the rest go to the control endpoint.
CONTROLS: dict[str, str] = {
    "start": "start a supervisor on the chosen config (detached; refused if one runs)",
    "pause": "the strategy, then the exchange, stop taking new orders",
    "resume": "take orders again (refused while halted)",
    "stop-and-close": "pause and flatten every position",
    "halt": "kill switch: cancel everything, reject new orders",
    "unhalt": "lift the kill switch; trading stays paused until resume",
    "restart": "stop an actor and start it again",
    "shutdown": "stop every actor, then the supervisor",
}
ACTOR_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class BadRequest(ValueError):
    """The request was refused before anything was done; the message says what was wrong."""


def check_control(body: Any, actors: Iterable[str] = (), configs: Iterable[str] = ()) -> tuple[str, str]:
    """(command, argument) of a control POST body, or BadRequest naming what is wrong.

    ``actors``: the actor names restart may name (the state view's); ``configs``: the
    config names start may name (the server's list: never a path from the page)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object {\"cmd\": ..., \"arg\": ...}")
    cmd, arg = body.get("cmd"), body.get("arg", "")
    if cmd not in CONTROLS:
        raise BadRequest(f"unknown command {cmd!r}; one of: {', '.join(CONTROLS)}")
    if not isinstance(arg, str):
        raise BadRequest(f"{cmd}: arg must be a string, not {type(arg).__name__}")
    if cmd == "restart":
        known = sorted(actors)
        if not ACTOR_NAME.match(arg) or (known and arg not in known):
            raise BadRequest(f"restart: unknown actor {arg!r}" + (f"; one of: {', '.join(known)}" if known else ""))
    elif cmd == "start":
        names = list(configs)
        if arg not in names:
            raise BadRequest(f"start: unknown config {arg!r}; one of: {', '.join(names) or '(none)'}")
    elif arg:
        raise BadRequest(f"{cmd} takes no argument (got {arg!r})")
    return cmd, arg


# ------------------------------------------------------------------------ runs
def run_rows(run_dirs: Iterable[str], current: set[str], running: set[str]) -> list[dict[str, Any]]:
    """Every run of the given directories (live and backtest), newest first.

    ``current``: run ids the page must never offer to delete (the running ones);
    ``running``: run ids whose supervisor holds its lock now. Each row is
    actors.rundir.list_runs's, plus ``kind`` (live / backtest), ``running``,
    ``deletable`` and, when not, ``keep`` (why not)."""
    from actors.rundir import list_runs

    rows = []
    for d in run_dirs:
        if not os.path.isdir(d):
            continue
        for r in list_runs(d):
            r = dict(r)
            r["running"] = r["run_id"] in running
            r["kind"] = "backtest" if r.get("mode") == "backtest" else "live"
            why = _keep_reason(r, current)
            r["deletable"] = why is None
            r["keep"] = why or ""
            rows.append(r)
    rows.sort(key=lambda r: (r.get("start") or "", r["run_id"]), reverse=True)
    return rows


def _keep_reason(r: dict[str, Any], current: set[str]) -> str | None:
    if r["run_id"] in current or r.get("running"):
        return "the current run"
    if r["kind"] != "backtest" or os.path.basename(r["dir"]) != r["run_id"]:
        # Live runs share one ledger (positions and cash carry over): a live run is
        # never deleted from here, whatever is clicked.
        return "live runs share the run directory's ledger"
    return None


def delete_plan(rows: list[dict[str, Any]], run_ids: Any) -> dict[str, Any]:
    """What deleting ``run_ids`` removes: per run its directory and every file in it, by name.

    Refused (BadRequest, nothing planned) if any id is unknown or may not be deleted."""
    if not isinstance(run_ids, list) or not run_ids or not all(isinstance(x, str) for x in run_ids):
        raise BadRequest("run_ids must be a non-empty list of run ids")
    by_id = {r["run_id"]: r for r in rows}
    plan = []
    for rid in dict.fromkeys(run_ids):
        r = by_id.get(rid)
        if r is None:
            raise BadRequest(f"no run {rid!r} in the run directories")
        if not r["deletable"]:
            raise BadRequest(f"run {rid} is not deleted: {r['keep']}")
        files = []
        for base, _dirs, names in os.walk(r["dir"]):
            files += sorted(os.path.relpath(os.path.join(base, n), r["dir"]) for n in names)
        plan.append({"run_id": rid, "dir": r["dir"], "files": files})
    return {"runs": plan, "text": "; ".join(f"{p['dir']} ({len(p['files'])} files: {', '.join(p['files'])})"
                                             for p in plan)}


def delete_runs(plan: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Carry out a plan the user confirmed, checked again against the runs as they are now
    (a run that started since, or a changed directory, refuses the whole plan)."""
    fresh = delete_plan(rows, [p["run_id"] for p in plan["runs"]])
    if [(p["dir"], p["files"]) for p in fresh["runs"]] != [(p["dir"], p["files"]) for p in plan["runs"]]:
        raise BadRequest("the runs changed since the confirmation; nothing was deleted, ask again")
    done = []
    for p in fresh["runs"]:
        shutil.rmtree(p["dir"])
        done.append(p["run_id"])
    return done


# ------------------------------------------------------------------------ logs
def log_tail(run_dir: str, process: str = "", level: str = "", n: int = 200, max_bytes: int = 1 << 20
             ) -> dict[str, Any]:
    """The last ``n`` log events of ``<run_dir>/logs/*.jsonl`` (every process, or one),
    at ``level`` or above, oldest first; only the tail of each file is read."""
    if level and level not in LOG_LEVELS:
        raise BadRequest(f"unknown level {level!r}; one of: {', '.join(LOG_LEVELS)}")
    if process and not ACTOR_NAME.match(process):
        raise BadRequest(f"bad process name {process!r}")
    if not 1 <= n <= 5000:
        raise BadRequest(f"n must be 1..5000, not {n}")
    logs = os.path.join(run_dir, "logs")
    try:
        names = sorted(f[:-6] for f in os.listdir(logs) if f.endswith(".jsonl"))
    except OSError:
        names = []
    floor = LOG_LEVELS.index(level) if level else 0
    events = []
    for name in names:
        if process and name != process:
            continue
        try:
            with open(os.path.join(logs, name + ".jsonl"), "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_bytes))
                tail = f.read()
        except OSError:
            continue
        lines = tail.split(b"\n")
        if size > max_bytes:
            lines = lines[1:]  # the first may be cut
        lines = [ln for ln in lines if ln.strip()]
        for line in lines[-(n * 4 if level else n):]:
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a line still being written
            if not isinstance(ev, dict):
                continue
            lv = str(ev.get("level", "info")).lower()
            if LOG_LEVELS.index(lv) < floor if lv in LOG_LEVELS else floor > 0:
                continue
            ev.setdefault("process", name)
            events.append(ev)
    events.sort(key=lambda e: str(e.get("timestamp") or e.get("ts") or ""))
    return {"processes": names, "events": events[-n:]}


# ------------------------------------------------------------------- backtests
def _num(s: str) -> Any:
    try:
        v = float(s)
    except (TypeError, ValueError):
        return s
    return int(v) if v.is_integer() and "." not in s and "e" not in s.lower() else v


def backtest_result(d: str, points: int = 1000, trades: int = 500) -> dict[str, Any]:
    """A backtest directory's results: summary.json, equity and drawdown (at most ``points``
    points, the extremes of each bucket kept), the last ``trades`` trades."""
    from actors.rundir import read_json

    out: dict[str, Any] = {"dir": d, "run_id": os.path.basename(d), "summary": read_json(os.path.join(d, "summary.json")),
                           "run": read_json(os.path.join(d, "run.json")), "equity": [], "trades": [], "columns": []}
    rows = []
    try:
        with open(os.path.join(d, "equity.csv"), newline="") as f:
            r = csv.DictReader(f)
            for row in r:
                t, eq = row.get("ts") or row.get("time"), row.get("equity")
                if t is None or eq is None:
                    continue
                try:
                    rows.append((int(t) / 1e9 if t.isdigit() else t, float(eq)))
                except ValueError:
                    continue
    except OSError:
        pass
    peak, series = 0.0, []
    for t, eq in rows:
        peak = max(peak, eq)
        series.append((t, eq, (eq - peak) / peak if peak > 0 else 0.0))
    step = max(1, len(series) // points)
    out["equity"] = [list(p) for p in series[::step]]
    if series and out["equity"][-1] != list(series[-1]):
        out["equity"].append(list(series[-1]))
    try:
        with open(os.path.join(d, "trades.csv"), newline="") as f:
            r = csv.DictReader(f)
            out["columns"] = list(r.fieldnames or [])
            tail: deque[dict[str, Any]] = deque(maxlen=trades)
            for row in r:
                tail.append({k: _num(v) for k, v in row.items()})
            out["trades"] = list(tail)
    except OSError:
        pass
    return out


PROGRESS = re.compile(rb"([\d,]+)/([\d,]+) bars")


def parse_progress(chunk: bytes) -> tuple[int, int] | None:
    """(done, total) from the last progress line in a piece of a backtest's stderr."""
    m = None
    for m in PROGRESS.finditer(chunk):
        pass
    if m is None:
        return None
    return int(m.group(1).replace(b",", b"")), int(m.group(2).replace(b",", b""))


SET_KEY = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")


def backtest_sets(params: Any) -> list[str]:
    """``--set`` items from the page's backtest form: {"strategy.params": "{ fast = 5 }", ...}.

    Only keys of the form section.key (checked again by the supervisor's config loader,
    which refuses an unknown key or a bad value with a message naming it)."""
    if params is None:
        return []
    if not isinstance(params, dict):
        raise BadRequest("params must be an object of section.key: value")
    out = []
    for k, v in params.items():
        if not isinstance(k, str) or not SET_KEY.match(k) or k.startswith(("service.", "bus.")):
            raise BadRequest(f"bad key {k!r}: section.key, not in [service] or [bus]")
        if not isinstance(v, (str, int, float, bool)) or (isinstance(v, str) and ("\n" in v or len(v) > 500)):
            raise BadRequest(f"bad value for {k}: one line of TOML")
        out.append(f"{k}={json.dumps(v) if isinstance(v, bool) else v}")
    return out


# -------------------------------------------------------------------- security
def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def load_or_make_token(path: str) -> tuple[str, bool]:
    """(token, made now): read it, or make one and store it 0600 (O_EXCL: one writer)."""
    try:
        with open(path) as f:
            tok = f.read().strip()
        if tok:
            return tok, False
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    tok = secrets.token_urlsafe(TOKEN_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(tok + "\n")
    return tok, True


class Guard:
    """Request checks. ``token``: required on every request when not None (a non-loopback
    bind); ``csrf``: the per-server secret the page sends back in a header on each POST."""

    def __init__(self, host: str, port: int, token: str | None, csrf: str | None = None):
        self.port = port
        self.token = token
        self.csrf = csrf or secrets.token_urlsafe(TOKEN_BYTES)
        # Bound to loopback, only loopback names are served: a page on another site that
        # rebinds its DNS name to 127.0.0.1 sends its own name as Host and is refused.
        self.hosts = ({f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"} if is_loopback(host) else None)

    def host_ok(self, host_header: str | None) -> bool:
        return self.hosts is None or (host_header or "") in self.hosts

    def token_ok(self, supplied: str | None) -> bool:
        if self.token is None:
            return True
        return bool(supplied) and hmac.compare_digest(supplied.encode(), self.token.encode())

    def post_ok(self, headers: dict[str, str]) -> str | None:
        """None when a POST may go on, else why not. Same-origin only: Origin (when the
        browser sends it) must be this server, Sec-Fetch-Site must not be cross-site, and the
        CSRF header must carry the page's secret (a form on another site cannot set it)."""
        host = headers.get("host", "")
        origin = headers.get("origin")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            return f"cross-site request refused (Origin {origin} is not http://{host})"
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return f"cross-site request refused (Sec-Fetch-Site {headers.get('sec-fetch-site')})"
        sent = headers.get("x-csrf-token", "")
        if not sent or not hmac.compare_digest(sent.encode(), self.csrf.encode()):
            return "missing or wrong X-CSRF-Token header (reload the page)"
        return None
