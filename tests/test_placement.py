"""Placement across hosts: two supervisors, two run directories, one config.

"books" runs the exchange and the state-publisher, "feed" runs market-data and
the strategy; actors reach each other's endpoints over tcp, and each supervisor
waits for the peer's actors its own depend on (asking the peer's control
endpoint) before starting them. Shown here on one machine, in two run dirs.
"""

from __future__ import annotations

import os
import signal

import pytest

from scripts.ctl import request
from tests.harness import curve_sets, free_ports, wait_for
from tests.sup_util import field, log_events, phase, start_supervisor, status

pytestmark = pytest.mark.timeout(120)

CONFIG = "config/placement.toml"


def sets_for(base: int) -> list[str]:
    return [f"bus.tcp_base_port={base}",
            f'placement.control={{ feed = "tcp://127.0.0.1:{base + 9}", books = "tcp://127.0.0.1:{base + 10}" }}',
            "market_data.rate_hz=50", "exchange.fill_on=close", "strategy.params={ fast = 2, slow = 4, qty = 10 }"]


def start(procs, run_dir, here, sets):
    return start_supervisor(procs, run_dir, config=CONFIG, sets=[f"placement.here={here}", *sets],
                            wait_running=False)


def remote(run_dir):
    """The peer actors' states a supervisor reports (None while ctl status does not answer: a loaded machine)."""
    return ((status(run_dir) or {}).get("placement") or {}).get("remote")


@pytest.fixture(scope="module")
def curve(tmp_path_factory):
    """One deployment's CurveZMQ keys (tcp endpoints require them), shared by both supervisors."""
    return curve_sets(str(tmp_path_factory.mktemp("keys")))


@pytest.fixture
def two_dirs(run_dir):
    a, b = os.path.join(run_dir, "feed"), os.path.join(run_dir, "books")
    os.mkdir(a, 0o700)
    os.mkdir(b, 0o700)
    return a, b


@pytest.mark.parametrize("first", ["books", "feed"])
def test_two_supervisors_split_the_actors_and_trade_together(procs, two_dirs, curve, first):
    """Either supervisor may start first: each waits for the peer's actors its own depend on."""
    feed_dir, books_dir = two_dirs
    sets = sets_for(free_ports(11)) + curve
    if first == "books":
        # Its exchange waits for market-data, which the feed supervisor runs.
        books = start(procs, books_dir, "books", sets)
        wait_for(lambda: books.poll() is not None or (status(books_dir) or {}).get("phase") == "starting", 20,
                 "books supervisor up")
        # Loaded (imports done), but not initialised: it waits on the remote market-data.
        wait_for(lambda: field(books_dir, "actors", "paper-exchange", "state") == "loaded", 20, "exchange loaded")
        assert field(books_dir, "placement", "remote", "market-data", "state") == "unknown"
        assert not any(e["event"] == "actor started" for e in log_events(books_dir))
        feed = start(procs, feed_dir, "feed", sets)
    else:
        # market-data becomes READY on its own; the strategy waits for the remote exchange
        # and state-publisher, so market-data is held before RUN and publishes nothing yet.
        feed = start(procs, feed_dir, "feed", sets)
        wait_for(lambda: feed.poll() is not None or field(feed_dir, "actors", "market-data", "state") == "ready", 20,
                 "market-data READY")
        assert field(feed_dir, "actors", "strategy", "state") in ("loading", "loaded")  # not initialised
        assert field(feed_dir, "phase") == "starting"
        books = start(procs, books_dir, "books", sets)
    for p, d in ((feed, feed_dir), (books, books_dir)):
        wait_for(lambda: p.poll() is not None or phase(d) == "running", 40, f"{d} running")
        assert p.poll() is None, p.stderr.read().decode()
    sf, sb = status(feed_dir), status(books_dir)
    assert set(sf["actors"]) == {"market-data", "strategy"}
    assert set(sb["actors"]) == {"paper-exchange", "state-publisher"}
    # Peers are asked every 0.2 s: the last answer may still say READY for a moment.
    wait_for(lambda: remote(feed_dir) == {
        "paper-exchange": {"group": "books", "state": "running"},
        "state-publisher": {"group": "books", "state": "running"}}, 10, "feed sees the books actors running")
    wait_for(lambda: (remote(books_dir) or {}).get("market-data", {}).get("state") == "running", 10,
             "books sees market-data running")
    # Bars cross from feed to books, orders from feed to books, fills back: trading works.
    wait_for(lambda: (status(books_dir) or {"actors": {}})["actors"].get("paper-exchange", {}).get("status", {})
             .get("fills", 0) >= 3, 30,
             "fills on the books host")
    # (the strategy's status reaches its supervisor with its next heartbeat)
    wait_for(lambda: field(feed_dir, "actors", "strategy", "status", "orders_sent", default=0) >= 3, 10,
             "the strategy's orders counted on the feed host")
    # Commands go to the supervisor that runs the actor; the other part is skipped, not failed.
    r = request(feed_dir, "pause", timeout=5)
    assert r.ok, r.error
    assert r.data["actors"]["paper-exchange"]["skipped"] == "runs under group books"
    r = request(feed_dir, "restart", "paper-exchange", timeout=5)
    assert not r.ok and "group books" in r.error
    # Each shuts down its own actors, in order.
    for p in (feed, books):
        p.send_signal(signal.SIGINT)
    assert feed.wait(20) == 0
    assert books.wait(20) == 0


@pytest.mark.parametrize("extra, needle", [
    (["bus.transport=ipc"], "endpoint md (bound by market-data) is ipc://"),
    (["placement.here=nowhere"], "placement.here: 'nowhere' is not a group"),
    (['placement.groups={ feed = ["market-data", "strategy"], books = ["paper-exchange"] }'],
     "actor state-publisher is not placed"),
    (['placement.control={ feed = "tcp://127.0.0.1:47320", books = "ipc:///tmp/x" }'],
     "placement.control.books"),
])
def test_bad_placement_is_a_config_error(procs, run_dir, extra, needle, curve):
    p = start(procs, run_dir, "feed", sets_for(47300) + curve + extra)
    assert p.wait(20) == 2
    err = p.stderr.read().decode()
    assert "config error" in err and needle in err, err
