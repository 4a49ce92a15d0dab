"""The web dashboard as an optional supervised actor (scripts/dashboard.py, run by the supervisor).

Add to a config (or with --set actors.dashboard.module=actors.dashboard):

    [actors.dashboard]
    module = "actors.dashboard"
    restart = "transient"
    params = { port = 8765 }

It serves the dashboard of its own run directory: the web server (uvicorn, asyncio) runs in a
thread of its own, so the actor's poll loop never waits on the network; the supervisor
restarts it like any actor, and `ctl status` shows its URL and how many tabs are open. Not
needed for the dashboard: `scripts/dashboard.py` does the same as a process of its own,
which also outlives the supervisor (and can start one).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

import config
from actors.base import Actor, main


class DashboardParams(config.Params):
    host: str = "127.0.0.1"  # any other interface requires the token (docs/SECURITY.md)
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8765  # 0: a free port (ctl status shows it)
    backtest_dir: str = ""  # default: <run-dir>-backtest
    token_file: str = ""  # default: <run-dir>/dashboard.token


class Dashboard(Actor):
    name = "dashboard"
    Params = DashboardParams

    def init(self) -> dict[str, Any]:
        from scripts.dashboard import Web

        p = self.params
        lines: list[str] = []
        self.web = Web.open(self.run_dir, p.backtest_dir or None, p.host, p.port, p.token_file or None,
                            say=lines.append)
        for line in lines:  # the token is printed once, on the console, never into the log file
            if "token made" not in line:
                self.log.info("dashboard", line=line)
            else:
                import sys
                print(line, file=sys.stderr, flush=True)
        self.web.start()
        return {"url": self.web.url}

    def status(self) -> dict[str, Any]:
        return {"url": self.web.url, "tabs": len(self.web.srv.hub.tabs)}

    def work(self) -> bool:
        if self.web.thread is not None and not self.web.thread.is_alive():
            self.request_stop("the web server stopped", code=1)
        return False

    def on_stop(self) -> None:
        self.web.stop()


if __name__ == "__main__":
    main(Dashboard)
