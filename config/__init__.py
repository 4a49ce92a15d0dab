"""Configuration: TOML files loaded with tomllib into msgspec Structs.

A wrong type, a missing required key or an unknown key is a ``ConfigError``
naming the key and the file; programs exit with code 2 on it.
``--set section.key=value`` overrides are applied before validation; the value
is parsed as a TOML value (``42``, ``true``, ``"x"``, ``[1, 2]``) and taken as
a bare string when it is not one.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec
from msgspec import Meta, Struct
from typing import Annotated

DEFAULT_PATH = Path(__file__).with_name("default.toml")
# ``base = "default"`` (a name with no directory and no extension) names one of
# the configs shipped here, whichever directory the file that says it is in.
BUILTIN = {p.stem: p for p in sorted(DEFAULT_PATH.parent.glob("*.toml"))}
EXIT_CONFIG = 2

PosFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
PosInt = Annotated[int, Meta(gt=0)]


class ConfigError(Exception):
    """A configuration problem; message names the file and the key."""


class _S(Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class Params(_S):
    """Base of an actor's ``Params``: keyword-only, and an unknown key is an error."""


class ServiceCfg(_S):
    run_dir: str = "run"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    mode: Literal["live", "backtest"] = "live"
    # What runs a backtest: "inprocess" (one process: feed, strategy host and exchange
    # core in turn; config/backtest.toml) or "actors" (the four actor processes, as live
    # trading runs). Live trading always runs the actors. docs/ARCHITECTURE.md, "Two kernels".
    kernel: Literal["inprocess", "actors"] = "actors"


class BusCfg(_S):
    transport: Literal["ipc", "tcp"] = "ipc"
    tcp_host: str = "127.0.0.1"
    tcp_base_port: Annotated[int, Meta(ge=1024, le=65000)] = 47100
    endpoints: dict[str, str] = {}
    # CurveZMQ, required as soon as any endpoint is tcp (docs/SECURITY.md). Paths;
    # load() makes them absolute (relative to the config file's directory, a
    # --set value to the current directory) so actors reading config.json agree.
    curve_server_key: str = ""  # server certificate (.key); binders also read <it>_secret
    curve_client_key: str = ""  # this installation's client secret certificate (.key_secret)
    curve_allowed_clients: str = ""  # directory of allowed client public certificates (*.key)


CURVE_KEYS = ("curve_server_key", "curve_client_key", "curve_allowed_clients")


class SupervisorCfg(_S):
    heartbeat_ms: Annotated[int, Meta(ge=10, le=60_000)] = 250
    heartbeat_misses: Annotated[int, Meta(ge=2, le=100)] = 8
    max_restarts: Annotated[int, Meta(ge=0)] = 5
    max_seconds: PosFloat = 60.0
    backoff_initial_ms: Annotated[int, Meta(ge=0)] = 100
    backoff_max_ms: Annotated[int, Meta(ge=0)] = 5_000
    stable_seconds: PosFloat = 30.0
    # Actors restarted together with the key actor (see docs/ARCHITECTURE.md).
    restart_with: dict[str, list[str]] = {}


class ActorCfg(_S):
    module: str
    after: list[str] = []
    restart: Literal["permanent", "transient", "temporary"] = "permanent"
    start_timeout: PosFloat = 10.0
    stop_timeout: PosFloat = 5.0
    enabled: bool = True
    # Restart intensity exceeded by this actor: "shutdown" stops everything
    # (exit 1); "disable" leaves it failed and the others running (only for an
    # actor no other is `after`). A disabled strategy's open orders are
    # cancelled at the exchange; flatten_on_disable closes its positions too.
    on_give_up: Literal["shutdown", "disable"] = "shutdown"
    flatten_on_disable: bool = False
    # The actor's own settings, checked against the Params struct its class
    # declares (actors/base.py; docs/ARCHITECTURE.md "Anatomy of an actor").
    params: dict[str, Any] = {}


class MarketDataCfg(_S):
    instruments: str = "synthetic"  # path to CSV/TOML, or "synthetic" (live adapters: the venue's master)
    # synthetic | replay | ccxt | package.module:Class (a feed adapter, actors/feed_api.py)
    feed: str = "synthetic"
    # live adapters (ccxt and plugins; docs/ARCHITECTURE.md "Feed adapters")
    venue: str = ""  # ccxt: exchange id (binance, kraken, ...)
    timeframe: str = "1m"  # ccxt: candle interval of md.bar
    urls: dict[str, str] = {}  # ccxt: { rest = "http://...", ws = "ws://..." } overrides (testnet, fake venue)
    params: dict[str, Any] = {}  # a plugin adapter's own settings (given to its constructor)
    stale_after_s: PosFloat = 10.0  # no data this long: FeedStatus stale (the exchange fills nothing)
    instruments_max_age_s: NonNegFloat = 86_400.0  # a cached master this young stands in for a failed download
    reconnect_initial_s: PosFloat = 0.5  # first reconnect delay; doubles per failed attempt ...
    reconnect_max_s: PosFloat = 30.0  # ... up to this
    rate_limit_backoff_s: PosFloat = 10.0  # at least this long after HTTP 429/418 from the venue
    reconnect_silent_s: PosFloat = 60.0  # a connection silent this long is re-made (half-open TCP never closes)
    poll_s: PosFloat = 2.0  # REST polling period where the venue lacks a WebSocket method
    request_timeout_s: PosFloat = 10.0  # one REST request to the venue
    record: bool = False  # write what a live feed received (trades, quotes, bars) into the run dir
    record_format: Literal["parquet", "csv"] = "parquet"
    record_rows: Annotated[int, Meta(ge=100, le=1_000_000)] = 10_000  # rows per Parquet row group / CSV flush
    # synthetic feed
    symbols: list[str] = msgspec.field(default_factory=lambda: ["SYN1", "SYN2"])
    start_price: PosFloat = 100.0
    drift: float = 0.0
    volatility: NonNegFloat = 5.0  # annualised, over real time: lively enough to trade within seconds
    rate_hz: Annotated[float, Meta(gt=0, le=1000)] = 10.0  # bars per second: each covers 1/rate_hz s of wall clock
    seed: int = 1
    # replay feed
    path: str = ""
    format: Literal["auto", "csv", "parquet"] = "auto"
    kind: Literal["bars", "ticks", "all"] = "bars"  # all: every message of a recording (quotes, trades, bars)
    symbol: str = ""
    timestamp_column: str = ""
    columns: dict[str, str] = {}
    speed: NonNegFloat = 0.0  # 0 = as fast as possible, N = real time x N
    chunk_rows: PosInt = 50_000
    sort: bool = False  # sort the file by time in memory before the run (else out-of-order rows refuse it)
    on_bad_row: Literal["skip", "error"] = "skip"  # a row with a bad value: skipped and counted, or refuse the file
    batch_bars: PosInt = 512


class ExchangeCfg(_S):
    initial_cash: PosFloat = 1_000_000.0
    fill_on: Literal["next_open", "close"] = "next_open"
    commission_pct: NonNegFloat = 0.0
    commission_per_unit: NonNegFloat = 0.0
    commission_min: NonNegFloat = 0.0
    slippage_bps: NonNegFloat = 0.0
    max_position: PosInt = 1_000_000
    max_order_notional: PosFloat = 10_000_000.0
    max_open_orders: PosInt = 1_000
    export_every_ms: Annotated[int, Meta(ge=0)] = 1000
    # Buying power (actors/exchange_core.py, "Buying power"). margin (the default) allows
    # shorts, as every strategy written before this key did; cash never goes short or below 0.
    account: Literal["cash", "margin"] = "margin"
    leverage: Annotated[float, Meta(ge=1.0, le=100.0)] = 1.0  # margin: initial margin is at least 1/leverage
    initial_margin: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0  # margin: fraction of notional; 0 = 1/leverage
    maintenance_margin: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.25  # margin: below it, positions are liquidated


class StrategyCfg(_S):
    plugin: str = "actors.strategies.sma_cross:SmaCross"
    symbols: list[str] = []  # empty: every instrument
    params: dict[str, Any] = {}


class StateCfg(_S):
    status_every_ms: Annotated[int, Meta(ge=0)] = 250
    last_trades: PosInt = 50
    heartbeat_ms: Annotated[int, Meta(ge=10)] = 1000
    pub_hwm: PosInt = 10_000


class SessionCfg(_S):
    """``[session]``: trading hours (actors/sessions.py). Absent: the market never closes."""
    timezone: str = "UTC"  # IANA zone of the times below (America/New_York): DST-correct
    open: str = "09:30"  # HH:MM local
    close: str = "16:00"
    square_off: str = ""  # HH:MM: the exchange flattens and takes only reducing orders; "" = none
    pre_open: str = ""  # HH:MM: market data (warm-up) from here, orders from the open; "" = none
    days: list[str] = msgspec.field(default_factory=lambda: ["Mon", "Tue", "Wed", "Thu", "Fri"])
    calendar: str = ""  # exchange_calendars name (XNYS, XLON...): its holidays and early closes
    holidays: list[str] = []  # YYYY-MM-DD days without a session
    holiday_file: str = ""  # one YYYY-MM-DD a line (# comments)
    flatten_at_square_off: bool = True  # the exchange closes every position at square-off


class OptionsCfg(_S):
    """``[options]``: the synthetic option chain and the option model (actors/options.py)."""
    expiry_days: list[Annotated[int, Meta(ge=0, le=3650)]] = []  # synthetic chain: expiries N days from today
    expiries: list[str] = []  # synthetic chain: expiry dates YYYY-MM-DD (with expiry_days; none: no chain)
    underlyings: list[str] = []  # synthetic chain on these symbols ([] = every synthetic symbol)
    strikes: Annotated[int, Meta(ge=0, le=200)] = 5  # strikes each side of the start price
    strike_step: PosFloat = 1.0
    multiplier: PosFloat = 100.0
    settlement: Literal["cash", "physical"] = "cash"  # synthetic chain's settlement at expiry
    expiry_time: str = "16:00"  # HH:MM in session.timezone (UTC without a [session]): the expiry instant
    volatility: PosFloat = 0.3  # implied volatility at the money (annualised)
    skew: float = 0.0  # d vol / d ln(K/F): < 0 makes puts dearer
    curvature: NonNegFloat = 0.0  # d2 vol / d ln(K/F)^2: lifts the wings
    rate: float = 0.0  # risk-free rate, continuous
    spread_pct: NonNegFloat = 0.01  # synthetic quotes: half-spread as a fraction of the model price (>= 1 tick)


class PlacementCfg(_S):
    # Actors split between supervisors (hosts) that talk over tcp; see
    # docs/ARCHITECTURE.md "Placement across hosts". No groups: one supervisor runs all.
    here: str = ""  # the group this supervisor runs (--set placement.here=NAME)
    groups: dict[str, list[str]] = {}  # group -> actors it runs
    control: dict[str, str] = {}  # group -> its supervisor's control endpoint (tcp://)


class Config(_S):
    service: ServiceCfg = msgspec.field(default_factory=ServiceCfg)
    bus: BusCfg = msgspec.field(default_factory=BusCfg)
    supervisor: SupervisorCfg = msgspec.field(default_factory=SupervisorCfg)
    actors: dict[str, ActorCfg] = {}
    market_data: MarketDataCfg = msgspec.field(default_factory=MarketDataCfg)
    exchange: ExchangeCfg = msgspec.field(default_factory=ExchangeCfg)
    strategy: StrategyCfg = msgspec.field(default_factory=StrategyCfg)
    state: StateCfg = msgspec.field(default_factory=StateCfg)
    placement: PlacementCfg = msgspec.field(default_factory=PlacementCfg)
    session: SessionCfg | None = None  # no [session]: 24/7, no square-off, no market-closed
    options: OptionsCfg = msgspec.field(default_factory=OptionsCfg)


_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")


def parse_set(item: str) -> tuple[list[str], Any]:
    """Parse one ``--set a.b.c=value`` into (["a","b","c"], value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not _KEY_RE.match(key) or "." not in key:
        raise ConfigError(f"--set {item!r}: key {key!r} must look like section.key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    return key.split("."), value


def _apply(doc: dict, path: list[str], value: Any, item: str) -> None:
    cur = doc
    for part in path[:-1]:
        nxt = cur.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is not a table")
        cur = nxt
    cur[path[-1]] = value


def _humanize(err: msgspec.ValidationError) -> str:
    text = str(err)
    m = re.search(r" - at `\$\.?(.*)`$", text)
    key, reason = "", text
    if m:
        key = m.group(1).replace("[", ".").replace("]", "").replace("'", "").replace('"', "")
        reason = text[: m.start()]
    u = re.match(r"Object contains unknown field `(.+)`$", reason)
    if u:
        return f"unknown key {key + '.' if key else ''}{u.group(1)}"
    return f"key {key}: {reason}" if key else reason


def _merge(base: dict, over: dict) -> dict:
    """Deep merge: tables merge key by key, anything else in ``over`` replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _plugin_of(doc: dict) -> Any:
    st = doc.get("strategy")
    return st.get("plugin", StrategyCfg().plugin) if isinstance(st, dict) else StrategyCfg().plugin


def _drop_params(doc: dict) -> dict:
    """``doc`` without strategy.params: they are another plugin's (SmaCross's fast/slow
    would be bad params to any other strategy), so a new plugin starts from its own defaults."""
    st = doc.get("strategy")
    if not isinstance(st, dict) or "params" not in st:
        return doc
    return {**doc, "strategy": {k: v for k, v in st.items() if k != "params"}}


def _merge_over_base(base: dict, over: dict) -> dict:
    """A file over its base: _merge, except that strategy.params goes with its plugin."""
    st = over.get("strategy")
    if isinstance(st, dict) and "plugin" in st and st["plugin"] != _plugin_of(base):
        base = _drop_params(base)
    return _merge(base, over)


def _base_path(p: Path, base: str) -> Path:
    """A built-in name ("default", "backtest") or a path relative to the file ``p``."""
    if base in BUILTIN and os.sep not in base and "/" not in base:
        return BUILTIN[base]
    return (p.parent / base).resolve()


def load_raw(path: str | os.PathLike | None, _seen: tuple[str, ...] = (),
             _named_by: tuple[Path, str] | None = None) -> tuple[dict, str]:
    """Read one config file; a top-level ``base = "default"`` (a built-in config) or
    ``base = "other.toml"`` (relative to this file) is read first and this file's
    keys override it, so a config need only say what differs. A ``[strategy]``
    that names another plugin than its base's also replaces the base's params."""
    p = Path(path) if path is not None else DEFAULT_PATH
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        if _named_by is not None:
            by, base = _named_by
            raise ConfigError(f"{by}: key base: {base!r}: file not found: {p} (a path is relative to "
                              f"{by.resolve().parent}; built-in configs: {', '.join(repr(n) for n in BUILTIN)})") from None
        raise ConfigError(f"config file not found: {p}") from None
    except OSError as e:
        where = f"{_named_by[0]}: key base: " if _named_by is not None else ""
        raise ConfigError(f"{where}cannot read config file {p}: {e.strerror}") from None
    try:
        if p.suffix == ".json":
            doc = json.loads(data)
        else:
            doc = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: top level must be a table")
    bus = doc.get("bus")
    if isinstance(bus, dict):  # key paths: relative to the file that names them (a base file too)
        for k in CURVE_KEYS:
            if isinstance(bus.get(k), str) and bus[k]:
                bus[k] = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(p)), bus[k]))
    base = doc.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{p}: key base: expected a file name, got {type(base).__name__}")
        bp = _base_path(p, base)
        if str(bp) in _seen or bp == p.resolve():
            raise ConfigError(f"{p}: key base: {base} includes itself")
        base_doc, _ = load_raw(bp, _seen + (str(p.resolve()),), (p, base))
        doc = _merge_over_base(base_doc, doc)
    return doc, str(p)


def source(path: str | os.PathLike | None, sets: list[str] | None = None) -> str:
    """How errors name the config: its file, and whether --set changed it."""
    return str(Path(path) if path is not None else DEFAULT_PATH) + (" (with --set overrides)" if sets else "")


def actor_params(cfg: Config, name: str, params_type: type, where: str) -> Any:
    """``[actors.NAME.params]`` checked against the actor's ``Params`` struct. Raises
    ConfigError naming the file and the key (``actors.NAME.params.KEY``)."""
    table = cfg.actors[name].params if name in cfg.actors else {}
    try:
        return msgspec.convert(table, params_type)
    except msgspec.ValidationError as e:
        err = _humanize(e)
        prefix = f"actors.{name}.params"
        if err.startswith("unknown key "):
            err = f"unknown key {prefix}.{err[len('unknown key '):]}"
        elif err.startswith("key "):
            err = f"key {prefix}.{err[len('key '):]}"
        else:
            err = f"key {prefix}: {err}"
        raise ConfigError(f"{where}: {err}") from None


def load(path: str | os.PathLike | None = None, sets: list[str] | None = None) -> Config:
    """Load, apply overrides, validate. Raises ConfigError."""
    doc, where = load_raw(path)
    return load_doc(doc, where, sets)


def load_doc(doc: dict, where: str, sets: list[str] | None = None) -> Config:
    """A config document already read (``load_raw``, or a Config's ``msgspec.to_builtins``
    shipped to another process: a sweep's workers) with ``sets`` applied, validated;
    ``where`` names it in errors. Raises ConfigError."""
    doc = copy.deepcopy(doc)  # a deep copy: the overrides never change the caller's document
    parsed = [(item, *parse_set(item)) for item in sets or []]
    # --set strategy.plugin=X drops the file's params as a file over its base does;
    # --set strategy.params... (before or after it) then gives X its own.
    if any(keys == ["strategy", "plugin"] and value != _plugin_of(doc) for _, keys, value in parsed):
        doc = _drop_params(doc)
    for item, keys, value in parsed:
        if keys[0] == "bus" and keys[-1] in CURVE_KEYS and isinstance(value, str) and value:
            value = os.path.abspath(value)
        _apply(doc, keys, value, item)
    src = source(where, sets)
    actors = doc.get("actors")
    if isinstance(actors, dict):
        # Checked one by one: msgspec names a dict key only as "[...]".
        for name, table in actors.items():
            try:
                msgspec.convert(table, ActorCfg)
            except msgspec.ValidationError as e:
                err = _humanize(e).replace("key ", f"key actors.{name}.", 1).replace(
                    "unknown key ", f"unknown key actors.{name}.", 1)
                if not err.startswith(("key ", "unknown key ")):
                    err = f"key actors.{name}: {err}"
                raise ConfigError(f"{src}: {err}") from None
    try:
        cfg = msgspec.convert(doc, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{src}: {_humanize(e)}") from None
    validate(cfg, where)
    return cfg


def validate(cfg: Config, where: str) -> None:
    """Cross-field checks msgspec cannot express."""
    names = set(cfg.actors)
    for name, a in cfg.actors.items():
        if not re.match(r"^[a-z0-9][a-z0-9_\-]*$", name):
            raise ConfigError(f"{where}: key actors.{name}: actor names are lowercase letters, digits, - and _")
        for dep in a.after:
            if dep not in names:
                raise ConfigError(f"{where}: key actors.{name}.after: unknown actor {dep!r}")
    for key, group in cfg.supervisor.restart_with.items():
        for n in [key, *group]:
            if n not in names:
                raise ConfigError(f"{where}: key supervisor.restart_with.{key}: unknown actor {n!r}")
    tcp = [a for a in [*cfg.bus.endpoints.values(), *cfg.placement.control.values()] if a.startswith("tcp://")]
    if cfg.bus.transport == "tcp" or tcp:
        why = "bus.transport = tcp" if cfg.bus.transport == "tcp" else tcp[0]
        for k in CURVE_KEYS:
            if not getattr(cfg.bus, k):
                raise ConfigError(
                    f"{where}: key bus.{k}: endpoints on tcp ({why}) need CurveZMQ keys: run "
                    f"`python scripts/ctl.py keygen` and set bus.curve_server_key, bus.curve_client_key "
                    f"and bus.curve_allowed_clients (docs/SECURITY.md)")
    _validate_feed(cfg.market_data, where)
    if cfg.service.kernel == "inprocess":
        if cfg.service.mode != "backtest":
            raise ConfigError(f"{where}: key service.kernel: \"inprocess\" runs backtests only "
                              f"(service.mode = \"backtest\"); live trading runs the actors (kernel = \"actors\")")
        if cfg.market_data.feed != "replay":
            raise ConfigError(f"{where}: key service.kernel: \"inprocess\" replays a file (market_data.feed = "
                              f"\"replay\"), not the {cfg.market_data.feed} feed")
        if cfg.placement.groups:
            raise ConfigError(f"{where}: key service.kernel: \"inprocess\" runs in one process; placement.groups "
                              f"splits actors between supervisors (use kernel = \"actors\")")
    ex = cfg.exchange
    if ex.account == "margin":
        im = max(ex.initial_margin, 1.0 / ex.leverage)
        if ex.initial_margin and ex.initial_margin < 1.0 / ex.leverage:
            raise ConfigError(f"{where}: key exchange.initial_margin: {ex.initial_margin} allows leverage "
                              f"{1.0 / ex.initial_margin:g}, beyond exchange.leverage {ex.leverage:g}")
        if ex.maintenance_margin > im:
            raise ConfigError(f"{where}: key exchange.maintenance_margin: {ex.maintenance_margin} is above the "
                              f"initial margin {im:g}: every new position would be liquidated at once")
    if cfg.supervisor.backoff_max_ms < cfg.supervisor.backoff_initial_ms:
        raise ConfigError(f"{where}: key supervisor.backoff_max_ms: must be >= backoff_initial_ms")
    start_order(cfg, where)
    for name, a in cfg.actors.items():
        if a.on_give_up == "disable":
            # A disabled actor stays down: nothing may need it running.
            needed_by = [n for n, o in cfg.actors.items() if name in o.after and o.enabled]
            if needed_by:
                raise ConfigError(f"{where}: key actors.{name}.on_give_up: \"disable\" is only for an actor no "
                                  f"other actor is after, and {', '.join(needed_by)} "
                                  f"{'is' if len(needed_by) == 1 else 'are'} after {name} (use \"shutdown\")")
        elif a.flatten_on_disable:
            raise ConfigError(f"{where}: key actors.{name}.flatten_on_disable: only applies with "
                              f"on_give_up = \"disable\"")
    _validate_placement(cfg, where)


FEEDS = ("synthetic", "replay", "ccxt")
_PLUGIN_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_]\w*$")


def _validate_feed(md: MarketDataCfg, where: str) -> None:
    if md.feed not in FEEDS and not _PLUGIN_RE.match(md.feed):
        raise ConfigError(f"{where}: key market_data.feed: {md.feed!r} is not one of {', '.join(FEEDS)} "
                          f"nor a 'package.module:Class' adapter")
    if md.feed == "ccxt" and not md.venue:
        raise ConfigError(f"{where}: key market_data.venue: required with feed = \"ccxt\" (a ccxt exchange id, "
                          f"e.g. \"binance\")")
    if md.feed not in ("synthetic", "replay") and md.instruments != "synthetic":
        raise ConfigError(f"{where}: key market_data.instruments: the {md.feed} feed takes its symbol master from "
                          f"the venue; leave instruments = \"synthetic\" (the default)")
    bad = sorted(set(md.urls) - {"rest", "ws"})
    if bad:
        raise ConfigError(f"{where}: unknown key market_data.urls.{bad[0]} (known: rest, ws)")
    if md.record and md.feed in ("synthetic", "replay"):
        raise ConfigError(f"{where}: key market_data.record: records a live adapter's data (feed = \"ccxt\" or a "
                          f"plugin), not the {md.feed} feed")
    if md.reconnect_silent_s <= md.stale_after_s:
        raise ConfigError(f"{where}: key market_data.reconnect_silent_s: must be > stale_after_s (a silent feed is "
                          f"stale first, then reconnected)")
    if md.reconnect_max_s < md.reconnect_initial_s:
        raise ConfigError(f"{where}: key market_data.reconnect_max_s: must be >= reconnect_initial_s")


def _validate_placement(cfg: Config, where: str) -> None:
    pl = cfg.placement
    if not pl.groups:
        if pl.here:
            raise ConfigError(f"{where}: key placement.here: set, but placement.groups is empty")
        return
    placed: dict[str, str] = {}
    for group, members in pl.groups.items():
        for n in members:
            if n not in cfg.actors:
                raise ConfigError(f"{where}: key placement.groups.{group}: unknown actor {n!r}")
            if n in placed:
                raise ConfigError(f"{where}: key placement.groups.{group}: {n} is already placed in {placed[n]}")
            placed[n] = group
        addr = pl.control.get(group, "")
        if not addr.startswith("tcp://"):
            raise ConfigError(f"{where}: key placement.control.{group}: the supervisor of group {group} needs a "
                              f"tcp:// control endpoint (got {addr!r})")
    for n, a in cfg.actors.items():
        if a.enabled and n not in placed:
            raise ConfigError(f"{where}: key placement.groups: actor {n} is not placed in any group")
    for g in pl.control:
        if g not in pl.groups:
            raise ConfigError(f"{where}: key placement.control.{g}: no such group in placement.groups")
    if pl.here not in pl.groups:
        raise ConfigError(f"{where}: key placement.here: {pl.here!r} is not a group "
                          f"({', '.join(pl.groups)}); start each supervisor with --set placement.here=GROUP")


def start_order(cfg: Config, where: str = "config") -> list[str]:
    """Topological order of enabled actors by ``after``; a cycle is a ConfigError.

    Ties are broken by the order actors appear in the file, so the order is stable.
    """
    enabled = [n for n, a in cfg.actors.items() if a.enabled]
    deps = {n: [d for d in cfg.actors[n].after if d in enabled] for n in enabled}
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        s = state.get(n, 0)
        if s == 2:
            return
        if s == 1:
            cyc = stack[stack.index(n):] + [n]
            raise ConfigError(f"{where}: key actors: start-order cycle {' -> '.join(cyc)}")
        state[n] = 1
        for d in deps[n]:
            visit(d, stack + [n])
        state[n] = 2
        order.append(n)

    for n in enabled:
        visit(n, [])
    return order


def to_json_bytes(cfg: Config) -> bytes:
    """The effective config, as handed to actors (``--config run/config.json``)."""
    return msgspec.json.format(msgspec.json.encode(cfg), indent=2)
