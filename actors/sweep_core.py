"""Parameter sweeps without Dask or Optuna: the space file, its constraints, walk-forward
folds, the objective, one trial (an in-process backtest) and the results table.

scripts/sweep.py is the thin driver that asks Optuna for points and runs ``run_trial`` on
Dask workers; everything it decides is here, so it is tested without a cluster.

The space file (TOML; config/sweeps/sma.toml is one)::

    [search]
    sampler = "grid"            # grid | random | tpe
    trials = 20                 # trials to run (a grid: at most its size)
    seed = 1
    objective = "sharpe"        # a number of summary.json (OBJECTIVES)
    direction = "maximize"      # default: the objective's own (max_drawdown: minimize)
    constraints = ["fast < slow"]

    [params.fast]               # strategy.params.fast
    type = "int"                # int | float | categorical
    low = 5
    high = 20
    step = 5

    [config."exchange.commission_pct"]   # any config key
    type = "float"
    low = 0.0
    high = 0.002
    step = 0.001                # a grid needs it for a float

A parameter is named in constraints, the trials table and Optuna by its name
(``fast``) or its config key (``exchange.commission_pct``). A bad file is a SpaceError
naming the file and the key; nothing is created before it is checked.

The data: ``load_data`` reads the replay file once, with the replay's own checks, into a
``DataPack`` of plain arrays (the instruments beside them); the driver sends it to each
worker once (``client.scatter``) and every trial there reads its bars from memory, so a
trial costs its backtest and no file parsing. A walk-forward fold's window is a slice of
the same bars, the bars before it fed to the strategy as warm-up history (they never
trade), so an out-of-sample fold trades from its first bar as it would have live.
"""

from __future__ import annotations

import ast
import inspect
import math
import os
import shutil
import tempfile
import tomllib
from dataclasses import dataclass, field
from typing import Any, Iterator

import msgspec

import config as config_mod
from actors import kernel
from actors.base import UserError, exit_reason
from actors.strategy_host import StrategyHost
from bus.messages import Bar, EndOfData, Instrument

SAMPLERS = ("grid", "random", "tpe")
# summary.json numbers a sweep can optimise, with the direction that is better.
OBJECTIVES = {
    "sharpe": "maximize", "sortino": "maximize", "total_return": "maximize", "cagr": "maximize",
    "final_equity": "maximize", "net_trade_pnl": "maximize", "avg_trade_pnl": "maximize",
    "win_rate": "maximize", "profit_factor": "maximize", "gross_profit": "maximize",
    "best_trade_pnl": "maximize", "worst_trade_pnl": "maximize", "exposure": "maximize", "trades": "maximize",
    "max_drawdown": "minimize", "max_drawdown_duration_bars": "minimize", "max_drawdown_duration_days": "minimize",
    "volatility": "minimize", "fees": "minimize", "gross_loss": "minimize", "fills": "minimize",
}
# The summary figures the trials table keeps beside the objective.
TABLE_METRICS = ("total_return", "sharpe", "sortino", "cagr", "max_drawdown", "trades", "win_rate",
                 "profit_factor", "final_equity", "fees")
_PARAM_KEYS = {"int": {"type", "low", "high", "step", "log"}, "float": {"type", "low", "high", "step", "log"},
               "categorical": {"type", "choices"}}
_SEARCH_KEYS = {"sampler", "trials", "seed", "objective", "direction", "constraints"}
MAX_GRID = 1_000_000  # points: a grid beyond this is a mistake in the file, not a sweep


class SpaceError(UserError, ValueError):
    """The space file is wrong; the message names the file and the key."""


class TrialError(UserError):
    """A trial's backtest failed (bad params for the plugin, a strategy that raised)."""


# ------------------------------------------------------------------- the space
@dataclass
class Param:
    name: str  # in Optuna, the table and constraints: "fast" or "exchange.commission_pct"
    key: str  # the config key it overrides: "strategy.params.fast"
    type: str  # int | float | categorical
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: list[Any] = field(default_factory=list)
    where: str = ""  # the key in the space file: params.fast, config."exchange.commission_pct"

    def grid(self) -> list[Any]:
        """Every value a grid visits, low to high (or the choices in order)."""
        if self.type == "categorical":
            return list(self.choices)
        assert self.low is not None and self.high is not None and self.step is not None
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        if self.type == "int":
            return [int(self.low + i * self.step) for i in range(n)]
        # Rounded: 0.1 * 3 is 0.30000000000000004, and the table should say 0.3.
        return [round(self.low + i * self.step, 12) for i in range(n)]

    def distribution(self) -> Any:
        import optuna.distributions as d

        if self.type == "int":
            return d.IntDistribution(int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.type == "float":
            return d.FloatDistribution(float(self.low), float(self.high), step=self.step, log=self.log)
        return d.CategoricalDistribution(self.choices)


@dataclass
class Space:
    path: str
    params: list[Param]
    sampler: str = "tpe"
    trials: int = 20
    seed: int = 1
    objective: str = "sharpe"
    direction: str = "maximize"
    constraints: list[Constraint] = field(default_factory=list)

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def grid_size(self) -> int:
        return math.prod(len(p.grid()) for p in self.params)

    def feasible(self, values: dict[str, Any]) -> bool:
        return all(c.holds(values) for c in self.constraints)

    def overrides(self, values: dict[str, Any]) -> dict[str, Any]:
        """A point as config overrides: {"strategy.params.fast": 5, ...}."""
        return {p.key: values[p.name] for p in self.params}

    def fingerprint(self) -> dict[str, Any]:
        """What makes two sweeps the same study (a resumed sweep must match it)."""
        return {"params": [{k: v for k, v in p.__dict__.items() if k != "where"} for p in self.params],
                "sampler": self.sampler, "seed": self.seed, "objective": self.objective,
                "direction": self.direction, "constraints": [c.text for c in self.constraints]}


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _param(space_path: str, where: str, name: str, key: str, table: Any) -> Param:
    err = f"{space_path}: key {where}"
    if not isinstance(table, dict):
        raise SpaceError(f"{err}: expected a table such as {{ type = \"int\", low = 1, high = 10 }}")
    kind = table.get("type")
    if kind not in _PARAM_KEYS:
        raise SpaceError(f"{err}.type: expected one of int, float, categorical, got {kind!r}")
    unknown = sorted(set(table) - _PARAM_KEYS[kind])
    if unknown:
        raise SpaceError(f"{err}.{unknown[0]}: unknown key for a {kind} parameter "
                         f"(known: {', '.join(sorted(_PARAM_KEYS[kind]))})")
    if kind == "categorical":
        choices = table.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{err}.choices: expected a non-empty list of values")
        if any(not isinstance(c, (int, float, str, bool)) for c in choices):
            raise SpaceError(f"{err}.choices: values must be numbers, strings or booleans")
        if len({repr(c) for c in choices}) != len(choices):
            raise SpaceError(f"{err}.choices: a value is listed twice")
        return Param(name, key, kind, choices=list(choices), where=where)
    p = Param(name, key, kind, where=where, log=bool(table.get("log", False)))
    for k in ("low", "high"):
        v = table.get(k)
        if v is None:
            raise SpaceError(f"{err}.{k}: missing (a {kind} parameter needs low and high)")
        if not _num(v) or (kind == "int" and not isinstance(v, int)) or not math.isfinite(v):
            raise SpaceError(f"{err}.{k}: expected {'an integer' if kind == 'int' else 'a finite number'}, got {v!r}")
        setattr(p, k, v)
    if "log" in table and not isinstance(table["log"], bool):
        raise SpaceError(f"{err}.log: expected true or false, got {table['log']!r}")
    if p.low > p.high:  # type: ignore[operator]
        raise SpaceError(f"{err}: low ({p.low}) is above high ({p.high})")
    step = table.get("step", 1 if kind == "int" else None)
    if step is not None:
        if not _num(step) or step <= 0 or (kind == "int" and not isinstance(step, int)) or not math.isfinite(step):
            raise SpaceError(f"{err}.step: expected a {'positive integer' if kind == 'int' else 'positive number'}, "
                             f"got {step!r}")
        if p.log and (kind == "float" or step != 1):
            raise SpaceError(f"{err}.step: a log-scaled parameter takes no step")
    p.step = step
    if p.log and p.low <= 0:  # type: ignore[operator]
        raise SpaceError(f"{err}.low: a log-scaled parameter needs low > 0")
    return p


def parse_space(path: str) -> Space:
    """The space file at ``path``, checked whole; SpaceError names the file and the key."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise SpaceError(f"space file not found: {path}") from None
    except OSError as e:
        raise SpaceError(f"cannot read space file {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpaceError(f"{path}: not valid TOML: {e}") from None
    unknown = sorted(set(doc) - {"search", "params", "config"})
    if unknown:
        raise SpaceError(f"{path}: key {unknown[0]}: unknown section (known: search, params, config)")
    params: list[Param] = []
    for section, prefix in (("params", "strategy.params."), ("config", "")):
        tables = doc.get(section, {})
        if not isinstance(tables, dict):
            raise SpaceError(f"{path}: key {section}: expected tables such as [{section}.NAME]")
        for name, table in tables.items():
            where = f"{section}.{name}" if section == "params" else f'{section}."{name}"'
            if section == "params" and not name.isidentifier():
                raise SpaceError(f"{path}: key {where}: a strategy parameter is a plain name (letters, digits, _)")
            if section == "config":
                parts = name.split(".")
                if len(parts) < 2 or not all(x.replace("_", "a").replace("-", "a").isalnum() for x in parts):
                    raise SpaceError(f"{path}: key {where}: expected a config key such as \"exchange.commission_pct\"")
                if parts[:2] == ["strategy", "params"]:
                    raise SpaceError(f"{path}: key {where}: a strategy parameter goes in [params.{parts[-1]}]")
            params.append(_param(path, where, name, prefix + name, table))
    if not params:
        raise SpaceError(f"{path}: key params: no parameter to search ([params.NAME] or [config.\"section.key\"])")
    names = [p.name for p in params]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SpaceError(f"{path}: key {sorted(dup)[0]}: named twice")
    search = doc.get("search", {})
    if not isinstance(search, dict):
        raise SpaceError(f"{path}: key search: expected a table")
    unknown = sorted(set(search) - _SEARCH_KEYS)
    if unknown:
        raise SpaceError(f"{path}: key search.{unknown[0]}: unknown key (known: {', '.join(sorted(_SEARCH_KEYS))})")
    sp = Space(path, params)
    sp.sampler = search.get("sampler", "tpe")
    if sp.sampler not in SAMPLERS:
        raise SpaceError(f"{path}: key search.sampler: expected one of {', '.join(SAMPLERS)}, got {sp.sampler!r}")
    for k in ("trials", "seed"):
        v = search.get(k, getattr(sp, k))
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if k == "trials" else 0):
            raise SpaceError(f"{path}: key search.{k}: expected an integer >= {1 if k == 'trials' else 0}, got {v!r}")
        setattr(sp, k, v)
    sp.objective = check_objective(search.get("objective", "sharpe"), f"{path}: key search.objective")
    sp.direction = search.get("direction", OBJECTIVES[sp.objective])
    if sp.direction not in ("maximize", "minimize"):
        raise SpaceError(f"{path}: key search.direction: expected maximize or minimize, got {sp.direction!r}")
    cons = search.get("constraints", [])
    if not isinstance(cons, list) or not all(isinstance(c, str) for c in cons):
        raise SpaceError(f"{path}: key search.constraints: expected a list of strings such as [\"fast < slow\"]")
    for i, text in enumerate(cons):
        try:
            sp.constraints.append(Constraint(text, set(names)))
        except ValueError as e:
            raise SpaceError(f"{path}: key search.constraints[{i}]: {text!r}: {e}") from None
    if sp.sampler == "grid":
        for p in params:
            if p.type == "float" and p.step is None:
                raise SpaceError(f"{path}: key {p.where}.step: a grid needs a step for a float parameter")
        if sp.grid_size() > MAX_GRID:
            raise SpaceError(f"{path}: key params: the grid has {sp.grid_size():,} points (at most {MAX_GRID:,})")
    return sp


def check_objective(name: Any, where: str) -> str:
    if name not in OBJECTIVES:
        raise SpaceError(f"{where}: unknown objective {name!r} (one of {', '.join(sorted(OBJECTIVES))})")
    return name


# --------------------------------------------------------------- constraints
_CMP = {ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b,
        ast.GtE: lambda a, b: a >= b, ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b}
_ARITH = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
          ast.Div: lambda a, b: a / b}


class Constraint:
    """``fast < slow``, ``2 * fast <= slow``, ``a < b <= c``: comparisons of sums and
    products of parameters and numbers. Parsed into a tree that only these operations
    walk (Python's parser, never eval), so a space file cannot run code."""

    def __init__(self, text: str, names: set[str]):
        self.text = text
        try:
            tree = ast.parse(text.strip(), mode="eval").body
        except SyntaxError:
            raise ValueError("not a comparison such as \"fast < slow\"") from None
        if not isinstance(tree, ast.Compare):
            raise ValueError("not a comparison such as \"fast < slow\"")
        self.names: set[str] = set()
        for node in [tree.left, *tree.comparators]:
            self._check(node, names)
        for op in tree.ops:
            if type(op) not in _CMP:
                raise ValueError(f"unsupported comparison {type(op).__name__} (use < <= > >= == !=)")
        self.tree = tree

    def _check(self, node: ast.AST, names: set[str]) -> None:
        if isinstance(node, (ast.Name, ast.Attribute)):
            n = _dotted(node)
            if n is None or n not in names:
                raise ValueError(f"{n or ast.unparse(node)!r} is not a parameter of the space "
                                 f"({', '.join(sorted(names))})")
            self.names.add(n)
        elif isinstance(node, ast.Constant):
            if not _num(node.value):
                raise ValueError(f"{node.value!r} is not a number")
        elif isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            self._check(node.left, names)
            self._check(node.right, names)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            self._check(node.operand, names)
        else:
            raise ValueError(f"{ast.unparse(node)!r}: only parameters, numbers and + - * / are allowed")

    def _value(self, node: ast.AST, values: dict[str, Any]) -> Any:
        if isinstance(node, (ast.Name, ast.Attribute)):
            return values[_dotted(node)]  # type: ignore[index]
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp):
            return -self._value(node.operand, values)
        assert isinstance(node, ast.BinOp)
        return _ARITH[type(node.op)](self._value(node.left, values), self._value(node.right, values))

    def holds(self, values: dict[str, Any]) -> bool:
        left = self._value(self.tree.left, values)
        for op, node in zip(self.tree.ops, self.tree.comparators):
            right = self._value(node, values)
            try:
                if not _CMP[type(op)](left, right):
                    return False
            except TypeError:  # a categorical string against a number: not satisfied
                return False
            left = right
        return True


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


# ----------------------------------------------------------------- overrides
def toml_value(v: Any) -> str:
    """A value as ``--set`` parses it back (config.parse_set reads TOML)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot set a config key to {v!r}")


def sets_of(overrides: dict[str, Any]) -> list[str]:
    return [f"{k}={toml_value(v)}" for k, v in overrides.items()]


def check_against_config(space: Space, cfg_doc: dict, where: str, base_sets: list[str]) -> None:
    """Each parameter names something the config and the plugin take: a config key is
    checked by loading the config with it set (the config's own validation), a strategy
    parameter against the plugin's constructor. SpaceError names the space key."""
    for p in space.params:
        if p.key.startswith("strategy.params."):
            continue
        value = p.grid()[0] if (p.type == "categorical" or p.step is not None) else p.low
        try:
            config_mod.load_doc(cfg_doc, where, base_sets + sets_of({p.key: value}))
        except config_mod.ConfigError as e:
            raise SpaceError(f"{space.path}: key {p.where}: the config refuses it: {e}") from None
    cfg = config_mod.load_doc(cfg_doc, where, base_sets)
    cls = _plugin_class(cfg.strategy.plugin)
    if cls is None:
        return
    sig = inspect.signature(cls.__init__)
    takes_any = any(x.kind is inspect.Parameter.VAR_KEYWORD for x in sig.parameters.values())
    known = [n for n, x in sig.parameters.items() if n != "self" and
             x.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for p in space.params:
        if p.key.startswith("strategy.params.") and not takes_any and p.name not in known:
            raise SpaceError(f"{space.path}: key {p.where}: the strategy {cfg.strategy.plugin} has no parameter "
                             f"{p.name!r} (it takes {', '.join(known) or 'none'})")


def _plugin_class(spec: str) -> Any:
    import importlib

    mod, _, cls = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), cls, None)
    except Exception:  # the backtest itself reports a plugin that cannot load, in its own words
        return None


# ---------------------------------------------------------------------- data
class DataPack(msgspec.Struct):
    """A replay file's bars as columns, and its instruments: what a worker needs to run
    any trial, sent to it once. ``bars()`` makes the Bar objects once per process."""

    name: str
    instruments: list[Instrument]
    symbols: list[str]
    code: bytes  # int32 symbol index per bar
    ts: bytes  # int64 ns
    ohlcv: bytes  # float64, 5 per bar
    rows_skipped: int = 0
    warnings: list[str] = []

    def __len__(self) -> int:
        return len(self.ts) // 8

    def bars(self) -> list[Bar]:
        cached = _BARS.get(id(self))
        if cached is not None and cached[0] is self:
            return cached[1]
        import numpy as np

        code = np.frombuffer(self.code, dtype=np.int32).tolist()
        ts = np.frombuffer(self.ts, dtype=np.int64).tolist()
        px = np.frombuffer(self.ohlcv, dtype=np.float64).reshape(-1, 5).tolist()
        names = self.symbols
        out = [Bar(symbol=names[c], ts=t, open=o, high=h, low=lo, close=cl, volume=v, fseq=i + 1)
               for i, (c, t, (o, h, lo, cl, v)) in enumerate(zip(code, ts, px))]
        _BARS.clear()  # one pack at a time per process: a worker holds one sweep's data
        _BARS[id(self)] = (self, out)
        return out


_BARS: dict[int, tuple[DataPack, list[Bar]]] = {}


def load_data(cfg: config_mod.Config) -> DataPack:
    """The configured replay file, read and checked once by the replay itself."""
    import numpy as np

    from actors.feeds import ReplayFeed, load_instruments

    md = cfg.market_data
    if md.feed != "replay" or md.kind != "bars":
        raise UserError(f"a sweep replays a file of bars (market_data.feed = \"replay\", kind = \"bars\"); "
                        f"the config has feed = {md.feed!r}, kind = {md.kind!r}")
    instruments, _, _ = load_instruments(md)
    feed = ReplayFeed(md, {i.symbol: i for i in instruments})
    names: list[str] = []
    index: dict[str, int] = {}
    code, ts, px = [], [], []
    for batch in feed.batches(4096):
        for b in batch:
            c = index.get(b.symbol)
            if c is None:
                c = index[b.symbol] = len(names)
                names.append(b.symbol)
            code.append(c)
            ts.append(b.ts)
            px.append((b.open, b.high, b.low, b.close, float(b.volume)))
    eod = feed.end()
    return DataPack(name=feed.name, instruments=instruments, symbols=names,
                    code=np.asarray(code, dtype=np.int32).tobytes(), ts=np.asarray(ts, dtype=np.int64).tobytes(),
                    ohlcv=np.asarray(px, dtype=np.float64).reshape(-1, 5).tobytes(),
                    rows_skipped=eod.rows_skipped, warnings=list(feed.warnings))


def folds(n: int, k: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Walk-forward: ``n`` bars in k + 1 equal consecutive segments; fold i (1..k) is
    in-sample on segment i - 1 and out-of-sample on segment i, so every out-of-sample
    window follows the window its parameters were chosen on and none overlap.
    [(in-sample [a, b), out-of-sample [b, c)), ...] as bar indexes."""
    if k < 1:
        raise ValueError(f"walk-forward needs at least 1 fold, got {k}")
    if n < 2 * (k + 1):
        raise ValueError(f"{n} bars cannot be split into {k + 1} walk-forward segments")
    b = [round(i * n / (k + 1)) for i in range(k + 2)]
    return [((b[i - 1], b[i]), (b[i], b[i + 1])) for i in range(1, k + 1)]


class MemoryFeed:
    """Bars ``[a, b)`` of a DataPack as the kernel's feed, numbered from 1; ``history``:
    the bars before them that warm the strategy up."""

    kind = "bars"

    def __init__(self, pack: DataPack, window: tuple[int, int] | None):
        bars = pack.bars()
        a, b = window or (0, len(bars))
        if not 0 <= a < b <= len(bars):
            raise UserError(f"window {a}..{b} is outside the data's {len(bars)} bars")
        self.bars = bars if (a, b) == (0, len(bars)) else [
            msgspec.structs.replace(x, fseq=i + 1) for i, x in enumerate(bars[a:b])]
        self.start = a
        self.all = bars
        self.total = len(self.bars)
        self.name = pack.name
        self.rows_skipped = pack.rows_skipped if window is None else 0
        self.warnings = list(pack.warnings)

    def history(self, n: int) -> list[Bar]:
        # fseq 0: before the window's bar 1 (the host drops a live bar numbered at or
        # below the last history bar's, as one it was already fed).
        return [msgspec.structs.replace(x, fseq=0) for x in self.all[max(0, self.start - n):self.start]]

    def batches(self, n: int) -> Iterator[list[Bar]]:
        for i in range(0, self.total, n):
            yield self.bars[i:i + n]

    def end(self) -> EndOfData:
        return EndOfData(feed=self.name, count=self.total, last_fseq=self.total, rows_skipped=self.rows_skipped)


# ---------------------------------------------------------------------- trial
class _QuietLog:
    """A trial's logger: its many backtests log nothing (the sweep logs each trial's
    outcome); a failure reaches the caller as an exception."""

    def bind(self, **_: Any) -> "_QuietLog":
        return self

    def _nothing(self, *_: Any, **__: Any) -> None:
        return None

    debug = info = warning = error = exception = _nothing


def run_trial(config: str | dict, overrides: dict[str, Any], data: str | DataPack | None = None,
              out_dir: str | None = None, *, window: tuple[int, int] | None = None, png: bool = False,
              where: str = "") -> dict[str, Any]:
    """One in-process backtest of ``config`` (a path, or a config document) with
    ``overrides`` ({"strategy.params.fast": 5, "exchange.commission_pct": 0.001}) on
    ``data`` (a DataPack, or a replay file path; None: the config's own), bars
    ``window`` only; returns its summary (the figures of summary.json).

    ``out_dir``: the run's files (ledger, fills.csv, summary.json, report.png if ``png``)
    are kept there; None: a scratch directory, removed after. A bad config or override
    is a ConfigError, a failed backtest a TrialError naming the component and why."""
    sets = sets_of(overrides)
    if isinstance(config, dict):
        cfg = config_mod.load_doc(config, where or "the sweep's config", sets)
    else:
        cfg = config_mod.load(config, (["market_data.path=" + toml_value(data)] if isinstance(data, str) else [])
                              + sets)
    pack = data if isinstance(data, DataPack) else load_data(cfg)
    scratch = out_dir is None
    run_dir = tempfile.mkdtemp(prefix="paperbus-trial-") if out_dir is None else out_dir
    os.makedirs(run_dir, exist_ok=True)
    bt = TrialBacktest(cfg, run_dir, os.path.basename(run_dir.rstrip("/")) or "trial", _QuietLog(), pack, window)
    bt.png = png
    try:
        try:
            bt.start()
            _, summary = bt.run()
            bt.close()
        except kernel.Failed as f:
            try:
                bt.close(failed=f.component)
            except kernel.Failed:
                pass
            raise TrialError(f"{f.component} failed {f.when}: {exit_reason(f.exc)}") from None
    finally:
        if scratch:
            shutil.rmtree(run_dir, ignore_errors=True)
    return summary


class TrialBacktest(kernel.Backtest):
    """The kernel's Backtest reading a DataPack window from memory instead of a file."""

    def __init__(self, cfg: Any, run_dir: str, run_id: str, log: Any, pack: DataPack,
                 window: tuple[int, int] | None):
        super().__init__(cfg, run_dir, run_id, log)
        self.pack, self.window = pack, window

    def _init_feed(self) -> dict[str, Any]:
        self.instruments = list(self.pack.instruments)
        self.feed = MemoryFeed(self.pack, self.window)
        return {"instruments": len(self.instruments), "total": self.feed.total}

    def _init_strategy(self) -> dict[str, Any]:
        assert self.ex is not None
        host = self.host = StrategyHost(self.cfg.strategy, self.instruments, send=self._order, cl_prefix="bt",
                                        log=self.log, log_orders=False)
        host.seed(self.ex.query("all"))
        # The bars before the window warm the plugin up (never traded), as a live start would.
        history = self.feed.history(host.plugin.warmup_bars)
        if history:
            host.warm_up(history)
        host.start()
        self._deliver()
        return {"plugin": host.spec}


def trial_task(config: dict, overrides: dict[str, Any], pack: DataPack, window: tuple[int, int] | None
               ) -> dict[str, Any]:
    """What a sweep's worker runs: ``run_trial`` with its time and outcome as a value.
    The trial's own failure (bad params, a plugin that raised) is a result, ``error``,
    not an exception: a retry would fail the same way. Anything else (the worker
    died, a bug) raises, and Dask runs the trial again elsewhere."""
    import time

    t0 = time.perf_counter()
    try:
        summary = run_trial(config, overrides, pack, window=window)
    except (TrialError, config_mod.ConfigError) as e:
        return {"error": str(e), "duration_s": round(time.perf_counter() - t0, 6)}
    return {"metrics": {k: v for k, v in summary.items() if k in OBJECTIVES or k in TABLE_METRICS},
            "duration_s": round(time.perf_counter() - t0, 6)}


def objective_value(summary: dict[str, Any], objective: str) -> float | None:
    """The objective's number, or None when the backtest cannot define it (no trade:
    no Sharpe)."""
    v = summary.get(objective)
    if not _num(v) or not math.isfinite(v):
        return None
    return float(v)


# ----------------------------------------------------------------- the table
def table_columns(space: Space) -> list[str]:
    return ["study", "trial", "state", *space.names(), "value", *TABLE_METRICS, "duration_s", "error"]


def write_table(rows: list[dict[str, Any]], columns: list[str], csv_path: str, parquet_path: str) -> None:
    """The trials as CSV and Parquet, atomically (a reader never sees half a table)."""
    import pandas as pd

    from bus.fileio import atomic_write

    df = pd.DataFrame(rows, columns=columns)
    for c in columns:  # integers stay integers beside missing values (an infeasible trial has no trades)
        vals = [r.get(c) for r in rows if r.get(c) is not None]
        if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            df[c] = df[c].astype("Int64")
    atomic_write(csv_path, df.to_csv(index=False).encode())
    tmp = parquet_path + ".tmp"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, parquet_path)


def write_heatmap(path: str, rows: list[dict[str, Any]], x: str, y: str, objective: str,
                  direction: str = "maximize") -> bool:
    """The objective over two parameters (the best value per cell when others vary too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pts = [(r[x], r[y], r["value"]) for r in rows if r.get("value") is not None]
    if not pts:
        return False
    xs = sorted({p[0] for p in pts}, key=_sort_key)
    ys = sorted({p[1] for p in pts}, key=_sort_key)
    grid = np.full((len(ys), len(xs)), np.nan)
    for a, b, v in pts:
        i, j = ys.index(b), xs.index(a)
        better = max if direction == "maximize" else min
        grid[i, j] = v if np.isnan(grid[i, j]) else better(grid[i, j], v)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(xs), 1.2 + 0.45 * len(ys)), dpi=100)
    im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(xs)), [str(v) for v in xs], rotation=45 if len(xs) > 8 else 0)
    ax.set_yticks(range(len(ys)), [str(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{objective} (best per cell)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_parallel(path: str, rows: list[dict[str, Any]], names: list[str], objective: str) -> bool:
    """Parallel coordinates: each trial a line through its (scaled) params and objective,
    coloured by the objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    done = [r for r in rows if r.get("value") is not None]
    if not done:
        return False
    axes = [*names, "value"]
    cols = []
    labels = []
    for a in axes:
        vals = [r[a] for r in done]
        if all(_num(v) for v in vals):
            arr = np.asarray(vals, dtype=float)
            lo, hi = float(arr.min()), float(arr.max())
            labels.append(f"{a if a != 'value' else objective}\n{lo:.4g}..{hi:.4g}")
        else:  # categorical: its choices in order
            order = sorted({repr(v) for v in vals})
            arr = np.asarray([order.index(repr(v)) for v in vals], dtype=float)
            lo, hi = 0.0, float(max(len(order) - 1, 1))
            labels.append(a)
        cols.append((arr - lo) / (hi - lo) if hi > lo else np.full(len(arr), 0.5))
    data = np.vstack(cols).T
    value = np.asarray([r["value"] for r in done], dtype=float)
    span = float(value.max() - value.min()) or 1.0
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(axes), 4.5), dpi=100)
    for row, v in zip(data, value):
        ax.plot(range(len(axes)), row, color=cmap((v - value.min()) / span), alpha=0.6, lw=1)
    ax.set_xticks(range(len(axes)), labels)
    ax.set_yticks([])
    for i in range(len(axes)):
        ax.axvline(i, color="grey", lw=0.5)
    ax.set_title(f"{len(done)} trials, coloured by {objective}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, v) if _num(v) else (1, repr(v))
