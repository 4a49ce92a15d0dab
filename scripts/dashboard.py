"""paperbus web dashboard: the state-publisher's view in a browser, live, with the controls.

    python scripts/dashboard.py [--run-dir DIR] [--backtest-dir DIR] [--host 127.0.0.1] [--port 8765]

Open http://127.0.0.1:8765/. The server is a Clone client of the state-publisher
(bus/clone_client.py, in a thread of its own) and pushes each change to every open tab
over Server-Sent Events: the browser never reads a file and never polls. When the
publisher goes silent the page shows STALE with its age and keeps the last values; the
client reconnects by itself. Buttons: start a supervisor (detached, through the run
directory's own lock), pause, resume, stop & close, halt, unhalt, restart an actor,
shutdown (each a same-origin POST carrying the page's CSRF token, sent to the control
endpoint by scripts/ctl.py's ``request``); runs of both directories, their logs, deleting
old backtests; starting backtests and looking at their results.

Bound to 127.0.0.1 by default. Any other --host requires a token, made once, stored 0600
in --token-file (default <run-dir>/dashboard.token) and printed when made: open
http://HOST:PORT/?token=TOKEN once (it becomes a same-site cookie) or send
``Authorization: Bearer TOKEN``; every request and every stream is checked.

The logic is in scripts/dashboard_model.py (no sockets); this is the HTTP adapter and
the threads that feed it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scripts import dashboard_model as model  # noqa: E402

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard_static")
CONFIG_DIR = os.path.join(ROOT, "config")
STEP_S = 0.02  # Clone client step: a delta reaches the tabs within this plus the push
STATUS_EVERY_S = 1.0  # supervisor status (heartbeat ages, uptimes) asked this often
RUNS_EVERY_S = 0.5  # run directories looked at this often for a new or ended run
PING_S = 2.0  # a push at least this often, so a tab knows the dashboard itself is there
QUEUE_MAX = 2000  # pushes waiting for one tab; a tab that falls further behind is sent a fresh hello
START_WAIT_S = 20.0  # a started supervisor must hold its lock (or exit) within this


class Hub:
    """The open tabs (one asyncio queue each) and what they are all sent. Lives in the event
    loop; the threads hand it pushes through loop.call_soon_threadsafe (never blocking it)."""

    def __init__(self) -> None:
        self.page = model.Page()
        self.tabs: set[asyncio.Queue] = set()
        self.runs: list[dict[str, Any]] = []
        self.jobs: dict[str, dict[str, Any]] = {}

    def push(self, msg: dict[str, Any] | None) -> None:
        if msg is None:
            return
        data = json.dumps(msg, separators=(",", ":"))
        for q in list(self.tabs):
            if q.qsize() >= QUEUE_MAX:
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(self.hello_json())
            else:
                q.put_nowait(data)

    def close_tabs(self) -> None:
        for q in list(self.tabs):
            q.put_nowait(None)

    def hello_json(self) -> str:
        h = self.page.hello()
        h["runs"] = self.runs
        h["jobs"] = list(self.jobs.values())
        return json.dumps(h, separators=(",", ":"))


class Server:
    def __init__(self, run_dir: str, backtest_dir: str, host: str, port: int, token: str | None):
        self.run_dir, self.backtest_dir = run_dir, backtest_dir
        self.guard = model.Guard(host, port, token)
        self.hub = Hub()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.start_lock = threading.Lock()  # one supervisor start at a time
        self.children: list[subprocess.Popen] = []  # started supervisors and backtests, reaped when they exit
        self.configs = self._configs()

    # ------------------------------------------------------------------ threads
    def _send(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` in the event loop (from any thread)."""
        if self.loop is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass  # the loop closed meanwhile: shutting down

    def _push(self, msg: dict[str, Any] | None) -> None:
        if msg is not None:
            self._send(self.hub.push, msg)

    def start_threads(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        for fn in (self._clone_loop, self._status_loop, self._runs_loop):
            t = threading.Thread(target=fn, name=fn.__name__, daemon=True)
            t.start()
            self.threads.append(t)

    def stop_threads(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=3)

    def _page(self, fn: Any, *args: Any) -> None:
        """In the event loop: change the page model (the only thread that does, so a tab's
        hello never reads it half-changed) and push what it says to push."""
        self.hub.push(fn(*args))

    def _clone_loop(self) -> None:
        from bus.clone_client import CloneClient

        c = CloneClient(self.run_dir, name="dashboard")
        page = self.hub.page
        last_mono, last_wall, link = None, None, None
        try:
            while not self.stop.is_set():
                changed = c.step(STEP_S)
                if changed and c.state is not None:
                    pub_ms = c.last_ts / 1e6 if c.last_ts else None
                    # A delta replaces a top-level value whole, never changes one in place: a
                    # shallow copy is the state as of this step, whatever the client does next.
                    self._send(self._page, page.update, dict(c.state), c.seq, pub_ms, time.time())
                if c.last_msg != last_mono:  # the wall time of the last message, taken once
                    last_mono = c.last_msg
                    last_wall = round((time.time() - c.age) * 1000) if c.age is not None else None
                now_link = (c.connected, c.stale, last_wall, c.error, c.hb_s * 1000)
                if now_link != link:
                    link = now_link
                    self._send(self._page, page.set_link, *now_link)
        finally:
            c.close()

    def _status_loop(self) -> None:
        from actors.supervision.runfiles import lock_holder
        from scripts.ctl import request

        page = self.hub.page
        while not self.stop.wait(STATUS_EVERY_S):
            self._reap()
            if lock_holder(self.run_dir) is None:
                self._send(self._page, page.set_status, None, "no supervisor running")
                continue
            try:
                data = request(self.run_dir, "status", timeout=1.0).data
                # The actors' heartbeat period, so the page can mark a late one (status has the ages).
                from actors.rundir import read_json
                sup_cfg = read_json(os.path.join(self.run_dir, "config.json")).get("supervisor") or {}
                if isinstance(sup_cfg.get("heartbeat_ms"), (int, float)):
                    data["heartbeat_ms"] = sup_cfg["heartbeat_ms"]
                self._send(self._page, page.set_status, data)
            except RuntimeError as e:
                self._send(self._page, page.set_status, None, str(e))

    def _runs_sig(self) -> tuple:
        sig = []
        for d in (self.run_dir, self.backtest_dir):
            for name in ("runs.jsonl", "run.json", "supervisor.lock"):
                try:
                    st = os.stat(os.path.join(d, name))
                    sig.append((st.st_mtime_ns, st.st_size))
                except OSError:
                    sig.append(None)
            try:
                sig.append(os.stat(d).st_mtime_ns)
            except OSError:
                sig.append(None)
        from actors.supervision.runfiles import lock_holder
        sig.append(lock_holder(self.run_dir) is not None)
        sig.extend(j.get("state") for j in list(self.hub.jobs.values()))
        return tuple(sig)

    def current_runs(self) -> tuple[set[str], set[str]]:
        """(run ids not to delete, run ids running now)."""
        from actors.rundir import read_json
        from actors.supervision.runfiles import lock_holder

        running = set()
        if lock_holder(self.run_dir) is not None:
            rid = read_json(os.path.join(self.run_dir, "run.json")).get("run_id")
            if rid:
                running.add(rid)
        for j in list(self.hub.jobs.values()):
            if j.get("state") == "running" and j.get("run_id"):
                running.add(j["run_id"])
        current = set(running)
        live = self.hub.page.state.get("run_id")
        if live:
            current.add(live)
        return current, running

    def rows(self) -> list[dict[str, Any]]:
        current, running = self.current_runs()
        return model.run_rows([self.run_dir, self.backtest_dir], current, running)

    def _runs_loop(self) -> None:
        last = None
        while not self.stop.is_set():
            sig = self._runs_sig()
            if sig != last:
                last = sig
                rows = self.rows()
                self._send(self._set_runs, rows)
            self.stop.wait(RUNS_EVERY_S)

    def _set_runs(self, rows: list[dict[str, Any]]) -> None:
        if rows != self.hub.runs:
            self.hub.runs = rows
            self.hub.push({"t": "runs", "runs": rows})

    def _reap(self) -> None:
        for p in list(self.children):
            if p.poll() is not None:
                self.children.remove(p)

    # ------------------------------------------------------------------ actions
    def _configs(self) -> dict[str, dict[str, str]]:
        """The configs the page may start: config/*.toml by name, with their mode."""
        import config as config_mod

        out = {}
        for name in sorted(os.listdir(CONFIG_DIR)):
            if not name.endswith(".toml"):
                continue
            path = os.path.join(CONFIG_DIR, name)
            try:
                cfg = config_mod.load(path)
            except config_mod.ConfigError:
                continue
            if cfg.placement.groups:
                continue  # a placement config needs its other hosts: not started from here
            out[name[:-5]] = {"path": path, "mode": cfg.service.mode}
        return out

    def start_supervisor(self, name: str) -> dict[str, Any]:
        """Start ``supervisor.py --config NAME`` on the run directory, detached (own session, no
        terminal), unless one runs. Serialised, and the supervisor takes the run directory's
        lock itself: a second click while one starts or runs gets "already running (pid N)"."""
        from actors.supervision.runfiles import lock_holder

        cfg = self.configs[name]
        if cfg["mode"] != "live":
            raise model.BadRequest(f"start: {name} is a {cfg['mode']} config; start it from Backtests")
        with self.start_lock:
            held = lock_holder(self.run_dir)
            if held is not None:
                return {"ok": False, "error": f"already running (pid {held.get('pid', '?')})"}
            p, err = self._spawn([sys.executable, os.path.join(ROOT, "supervisor.py"), "--config", cfg["path"],
                                  "--run-dir", self.run_dir])
            try:
                deadline = time.monotonic() + START_WAIT_S
                while time.monotonic() < deadline:
                    held = lock_holder(self.run_dir)
                    if held is not None and held.get("pid") == p.pid:
                        return {"ok": True, "message": f"supervisor started (pid {p.pid}, config {name})"}
                    if p.poll() is not None:
                        err.seek(0)
                        text = err.read().decode(errors="replace").strip().splitlines()
                        return {"ok": False, "error": f"supervisor exited {p.returncode}: "
                                                      + (text[-1] if text else "(no output)")}
                    self.stop.wait(0.05)
                return {"ok": False,
                        "error": f"supervisor pid {p.pid} did not take the lock within {START_WAIT_S:g}s"}
            finally:
                err.close()  # ours only: the supervisor writes on through its own descriptor

    def _spawn(self, args: list[str]) -> tuple[subprocess.Popen, Any]:
        from scripts.testkit import child_env

        # stderr to an unlinked temporary file: read if it fails to start; it never blocks
        # the supervisor, and the dashboard may exit while it runs on (own session).
        err = tempfile.TemporaryFile()
        p = subprocess.Popen(args, cwd=ROOT, env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=err, start_new_session=True)
        self.children.append(p)
        return p, err

    def start_backtest(self, name: str, params: Any) -> dict[str, Any]:
        cfg = self.configs.get(name)
        if cfg is None or cfg["mode"] != "backtest":
            names = [n for n, c in self.configs.items() if c["mode"] == "backtest"]
            raise model.BadRequest(f"unknown backtest config {name!r}; one of: {', '.join(names)}")
        sets = model.backtest_sets(params)
        args = [sys.executable, os.path.join(ROOT, "supervisor.py"), "--config", cfg["path"],
                "--run-dir", self.backtest_dir]
        for s in sets:
            args += ["--set", s]
        # The progress bar is drawn only on a terminal: the backtest gets one (a pty) whose
        # other side this server reads, so the page shows the same progress as a terminal.
        import pty

        master, slave = pty.openpty()
        from scripts.testkit import child_env

        try:
            p = subprocess.Popen(args, cwd=ROOT, env=child_env(), stdin=subprocess.DEVNULL, stdout=slave,
                                 stderr=slave, start_new_session=True)
        except OSError:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.children.append(p)
        job = {"id": str(p.pid), "pid": p.pid, "config": name, "sets": sets, "state": "running", "done": 0,
               "total": 0, "run_id": None, "error": "", "started": time.time()}
        self._send(self._job_update, job)
        threading.Thread(target=self._watch_backtest, args=(p, master, job), daemon=True).start()
        return {"ok": True, "message": f"backtest started (pid {p.pid})", "job": job}

    def _watch_backtest(self, p: subprocess.Popen, master: int, job: dict[str, Any]) -> None:
        """Progress from the backtest's own progress bar (on its terminal), until it exits.

        The terminal is read until it closes (the backtest and anything it started are
        gone): a backtest never blocks on a full terminal."""
        import select

        from actors.rundir import read_json

        out = bytearray()
        eof = False
        while not eof:
            chunk = b""
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer closed its side
                    chunk = b""
                eof = not chunk
            out += chunk
            del out[:-65536]  # the tail is all the page shows
            upd = dict(job)
            prog = model.parse_progress(chunk) if chunk else None
            if prog:
                upd["done"], upd["total"] = prog
            if upd["run_id"] is None:
                rec = read_json(os.path.join(self.backtest_dir, "latest", "run.json"))
                if rec.get("pid") == p.pid:
                    upd["run_id"] = rec.get("run_id")
            if eof:
                os.close(master)
                rc = p.wait()
                text = out.decode(errors="replace").replace("\r", "\n")
                lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).splitlines() if ln.strip()]
                upd["state"] = "finished" if rc == 0 else "failed"
                upd["exit_code"] = rc
                if rc != 0:
                    upd["error"] = lines[-1] if lines else f"exit {rc}"
            if upd != job:
                self._send(self._job_update, upd)
                job = upd

    def _job_update(self, job: dict[str, Any]) -> None:
        self.hub.jobs[job["id"]] = job
        self.hub.push({"t": "job", "job": job})

    def shutdown_children(self) -> None:
        """Backtests started from the page end with the dashboard (they are its work); a live
        supervisor is detached on purpose and goes on."""
        for p in self.children:
            if p.poll() is None and any(j["pid"] == p.pid and j["state"] == "running" for j in list(self.hub.jobs.values())):
                p.terminate()
        for p in self.children:
            if p.poll() is None and any(j["pid"] == p.pid for j in self.hub.jobs.values()):
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


# ------------------------------------------------------------------------- app
def build_app(srv: Server) -> Any:
    import contextlib

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.responses import StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    guard = srv.guard
    with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
        index_html = f.read()

    def refuse(status: int, text: str) -> JSONResponse:
        return JSONResponse({"ok": False, "error": text}, status_code=status)

    class Checks:
        """Every request: Host (loopback binds), token (other binds); every POST: same origin + CSRF."""

        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            req = Request(scope)
            resp = self.check(req)
            if resp is not None:
                await resp(scope, receive, send)
                return
            await self.app(scope, receive, send)

        def check(self, req: Request) -> Response | None:
            if not guard.host_ok(req.headers.get("host")):
                return refuse(421, f"unknown Host {req.headers.get('host')!r}: use http://127.0.0.1:{guard.port}/")
            if guard.token is not None:
                auth = req.headers.get("authorization", "")
                tok = (auth[7:] if auth.lower().startswith("bearer ") else None) or req.cookies.get("pb_token") \
                    or req.query_params.get("token")
                if not guard.token_ok(tok):
                    return refuse(401, "token required: open the URL the dashboard printed (…/?token=TOKEN)")
            if req.method == "POST":
                why = guard.post_ok({k.lower(): v for k, v in req.headers.items()})
                if why:
                    return refuse(403, why)
            elif req.method not in ("GET", "HEAD"):
                return refuse(405, f"method {req.method} not allowed")
            return None

    async def index(req: Request) -> Response:
        if guard.token is not None and "token" in req.query_params:
            # The token from the printed URL becomes a cookie, and leaves the address bar.
            r = RedirectResponse("/", status_code=303)
            r.set_cookie("pb_token", req.query_params["token"], httponly=True, samesite="strict")
            return r
        html = index_html.replace("__CSRF__", guard.csrf)
        return HTMLResponse(html, headers={"Cache-Control": "no-store",
                                           "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                                                      "style-src 'self' 'unsafe-inline'"})

    async def events(req: Request) -> Response:
        q: asyncio.Queue = asyncio.Queue()
        srv.hub.tabs.add(q)
        q.put_nowait(srv.hub.hello_json())

        async def stream():  # type: ignore[no-untyped-def]
            try:
                while not srv.stop.is_set():
                    try:
                        data = await asyncio.wait_for(q.get(), PING_S)
                    except asyncio.TimeoutError:
                        data = json.dumps({"t": "ping", "ms": round(time.time() * 1000)})
                    if data is None:  # the server is stopping: end the stream, the tab reconnects later
                        return
                    yield f"data: {data}\n\n"
            finally:
                srv.hub.tabs.discard(q)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def body_json(req: Request) -> Any:
        if not req.headers.get("content-type", "").startswith("application/json"):
            raise model.BadRequest("the body must be JSON (Content-Type: application/json)")
        try:
            return json.loads(await req.body())
        except ValueError as e:
            raise model.BadRequest(f"the body is not valid JSON: {e}") from None

    async def control(req: Request) -> Response:
        from scripts.ctl import render_reply, request

        try:
            body = await body_json(req)
            actors = (srv.hub.page.state.get("actors") or {}).keys()
            cmd, arg = model.check_control(body, actors, srv.configs)
        except model.BadRequest as e:
            return refuse(400, str(e))
        if cmd == "start":
            try:
                out = await asyncio.to_thread(srv.start_supervisor, arg)
            except model.BadRequest as e:
                return refuse(400, str(e))
            return JSONResponse(out, status_code=200 if out["ok"] else 409)
        try:
            rep = await asyncio.to_thread(request, srv.run_dir, cmd, arg, 5.0)
        except RuntimeError as e:
            return refuse(503, str(e))
        if not rep.ok:
            return JSONResponse({"ok": False, "error": rep.error, "data": rep.data}, status_code=409)
        text = rep.data.get("message") if isinstance(rep.data, dict) and "message" in rep.data else \
            render_reply(cmd, rep.data)
        return JSONResponse({"ok": True, "message": text, "data": rep.data})

    async def configs(req: Request) -> Response:
        return JSONResponse({n: {"mode": c["mode"]} for n, c in srv.configs.items()})

    async def runs(req: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(srv.rows))

    async def logs(req: Request) -> Response:
        qp = req.query_params
        run_id = qp.get("run_id", "")
        d = srv.run_dir
        if run_id:
            row = next((r for r in await asyncio.to_thread(srv.rows) if r["run_id"] == run_id), None)
            if row is None:
                return refuse(404, f"no run {run_id!r}")
            d = row["dir"]
        try:
            n = int(qp.get("n", "200"))
        except ValueError:
            return refuse(400, f"n must be a number, not {qp.get('n')!r}")
        try:
            out = await asyncio.to_thread(model.log_tail, d, qp.get("process", ""), qp.get("level", ""), n)
        except model.BadRequest as e:
            return refuse(400, str(e))
        if run_id:  # a live directory's logs hold every run: keep this one's lines
            out["events"] = [e for e in out["events"] if e.get("run_id") in (None, run_id)]
        return JSONResponse(out)

    async def delete_plan(req: Request) -> Response:
        try:
            body = await body_json(req)
            plan = model.delete_plan(await asyncio.to_thread(srv.rows), (body or {}).get("run_ids"))
        except (model.BadRequest, AttributeError) as e:
            return refuse(400, str(e))
        return JSONResponse({"ok": True, **plan})

    async def delete(req: Request) -> Response:
        try:
            body = await body_json(req)
            if not isinstance(body, dict) or body.get("confirm") is not True or not isinstance(body.get("plan"), dict):
                raise model.BadRequest("send the plan from /api/runs/plan with confirm: true")
            done = await asyncio.to_thread(model.delete_runs, body["plan"], await asyncio.to_thread(srv.rows))
        except (model.BadRequest, KeyError, TypeError) as e:
            return refuse(400, str(e))
        return JSONResponse({"ok": True, "message": f"deleted {', '.join(done)}", "deleted": done})

    async def backtest(req: Request) -> Response:
        try:
            body = await body_json(req)
            if not isinstance(body, dict):
                raise model.BadRequest("the body must be {\"config\": NAME, \"params\": {...}}")
            out = await asyncio.to_thread(srv.start_backtest, body.get("config"), body.get("params"))
        except model.BadRequest as e:
            return refuse(400, str(e))
        return JSONResponse(out)

    async def result(req: Request) -> Response:
        rid = req.path_params["run_id"]
        row = next((r for r in await asyncio.to_thread(srv.rows) if r["run_id"] == rid), None)
        if row is None or row["kind"] != "backtest":
            return refuse(404, f"no backtest {rid!r}")
        return JSONResponse(await asyncio.to_thread(model.backtest_result, row["dir"]))

    async def favicon(req: Request) -> Response:
        return FileResponse(os.path.join(STATIC, "favicon.svg"), media_type="image/svg+xml")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):  # type: ignore[no-untyped-def]
        srv.start_threads(asyncio.get_running_loop())
        try:
            yield
        finally:
            srv.stop.set()
            await asyncio.to_thread(srv.stop_threads)
            await asyncio.to_thread(srv.shutdown_children)

    app = Starlette(routes=[
        Route("/", index), Route("/favicon.ico", favicon), Route("/events", events),
        Route("/api/control", control, methods=["POST"]), Route("/api/configs", configs),
        Route("/api/runs", runs), Route("/api/logs", logs),
        Route("/api/runs/plan", delete_plan, methods=["POST"]), Route("/api/runs/delete", delete, methods=["POST"]),
        Route("/api/backtest", backtest, methods=["POST"]), Route("/api/backtest/{run_id}", result),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], lifespan=lifespan)
    return Checks(app)


class Web:
    """The dashboard, listening: made by ``Web.open`` (which binds, so port 0 gets a free
    port and ``url`` is the one served), run by ``run`` (here) or ``start`` (a thread, as the
    supervised actor does), stopped by ``stop`` from any thread."""

    def __init__(self, srv: Server, sock: Any, url: str) -> None:
        import uvicorn

        self.srv, self.sock, self.url = srv, sock, url
        cfg = uvicorn.Config(build_app(srv), log_level="warning", lifespan="on", timeout_graceful_shutdown=2,
                             access_log=False)

        class DashServer(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                Web._closing(srv)
                super().handle_exit(sig, frame)

        self.server = DashServer(cfg)
        self.thread: threading.Thread | None = None

    @staticmethod
    def _closing(srv: Server) -> None:
        # Event streams never end by themselves: end them, or the stop would wait for
        # them until the graceful-shutdown timeout.
        srv.stop.set()
        srv._send(srv.hub.close_tabs)

    @classmethod
    def open(cls, run_dir: str, backtest_dir: str | None = None, host: str = "127.0.0.1", port: int = 8765,
             token_file: str | None = None, say: Any = print) -> "Web":
        """Raises OSError (the token file, the port) with a message naming what failed."""
        import socket

        run_dir = os.path.abspath(run_dir)
        backtest_dir = os.path.abspath(backtest_dir or run_dir.rstrip("/") + "-backtest")
        token, made = None, False
        if not model.is_loopback(host):
            path = os.path.abspath(token_file or os.path.join(run_dir, "dashboard.token"))
            try:
                token, made = model.load_or_make_token(path)
            except OSError as e:
                raise OSError(f"cannot make the token file {path}: {e}") from None
            say(f"dashboard: token made and stored in {path} (0600); it is printed only now: {token}" if made
                else f"dashboard: token from {path}")
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        sock.listen(128)  # before the URL is told: a client that connects at once waits in the backlog
        port = sock.getsockname()[1]
        host_txt = f"[{host}]" if ":" in host else host
        url = f"http://{host_txt}:{port}/"
        say(f"dashboard: {url}" + (f"?token={token}" if made else "") + f"  (run dir {run_dir}, backtests {backtest_dir})")
        return cls(Server(run_dir, backtest_dir, host, port, token), sock, url)

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.sock.close()

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="dashboard-web", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._closing(self.srv)
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dashboard.py", description="paperbus web dashboard")
    ap.add_argument("--run-dir", default="run", help="the live run directory (default ./run)")
    ap.add_argument("--backtest-dir", default=None, help="the backtest run directory (default RUN_DIR-backtest)")
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; others need a token)")
    ap.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    ap.add_argument("--token-file", default=None, help="where the token is kept (default RUN_DIR/dashboard.token)")
    args = ap.parse_args(argv)
    try:
        web = Web.open(args.run_dir, args.backtest_dir, args.host, args.port, args.token_file,
                       say=lambda s: print(s, flush=True))
    except OSError as e:
        print(f"dashboard: {e}", file=sys.stderr)
        return 1
    web.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
