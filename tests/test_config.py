"""Config loading: defaults, overrides, and clear errors with exit code 2."""

import subprocess

import msgspec
import pytest

import config
from config import ConfigError, load, parse_set, start_order
from tests.harness import PY, ROOT


def test_default_config_loads_and_orders_actors():
    cfg = load()
    assert start_order(cfg) == ["market-data", "paper-exchange", "state-publisher", "strategy"]
    assert cfg.market_data.feed == "synthetic"
    # a crash-looping strategy is disabled; the books and the feed stop everything if they crash-loop
    assert {n: a.on_give_up for n, a in cfg.actors.items()} == {
        "market-data": "shutdown", "paper-exchange": "shutdown", "state-publisher": "shutdown", "strategy": "disable"}


def test_set_overrides_types():
    cfg = load(None, ["supervisor.heartbeat_ms=100", "market_data.symbols=[\"A\"]", "strategy.plugin=x.y:Z",
                      "actors.strategy.restart=temporary"])
    assert cfg.supervisor.heartbeat_ms == 100
    assert cfg.market_data.symbols == ["A"]
    assert cfg.strategy.plugin == "x.y:Z"
    assert cfg.actors["strategy"].restart == "temporary"


@pytest.mark.parametrize("sets,needle", [
    (["supervisor.heartbeat_ms=fast"], "key supervisor.heartbeat_ms: Expected `int`, got `str`"),
    (["supervisor.bogus=1"], "unknown key"),
    (["nosuchsection.x=1"], "unknown key"),
    (["heartbeat_ms"], "expected section.key=value"),
    (["=3"], "must look like section.key"),
    (["actors.strategy.restart=sometimes"], "key actors.strategy.restart"),
    (["actors.strategy.after=[\"nobody\"]"], "unknown actor 'nobody'"),
    (["actors.market-data.after=[\"strategy\"]"], "cycle"),
    (["actors.strategy.on_give_up=retry"], "key actors.strategy.on_give_up: Invalid enum value 'retry'"),
    (["actors.market-data.on_give_up=disable"], 'key actors.market-data.on_give_up: "disable" is only for an actor no '
                                                "other actor is after, and paper-exchange, state-publisher, strategy "
                                                "are after market-data"),
    (["actors.paper-exchange.flatten_on_disable=true"],
     'key actors.paper-exchange.flatten_on_disable: only applies with on_give_up = "disable"'),
])
def test_bad_overrides_name_the_key(sets, needle):
    with pytest.raises(ConfigError) as ei:
        load(None, sets)
    assert needle in str(ei.value)
    if not str(ei.value).startswith("--set"):
        assert "default.toml" in str(ei.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.toml"):
        load(tmp_path / "nope.toml")


def test_bad_toml_and_wrong_type_in_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[supervisor\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(p)
    p.write_text("[exchange]\ninitial_cash = \"lots\"\n")
    with pytest.raises(ConfigError, match=r"c.toml: key exchange.initial_cash: Expected `float`"):
        load(p)
    p.write_text("[exchange]\ninitial_cashh = 5.0\n")
    with pytest.raises(ConfigError, match=r"c.toml: unknown key exchange.initial_cashh"):
        load(p)


def test_missing_required_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[actors.x]\nafter = []\n")
    with pytest.raises(ConfigError, match="missing required field `module`"):
        load(p)


def test_parse_set_values():
    assert parse_set("a.b=1") == (["a", "b"], 1)
    assert parse_set("a.b=true") == (["a", "b"], True)
    assert parse_set("a.b=hello world") == (["a", "b"], "hello world")
    assert parse_set('a.b="q"') == (["a", "b"], "q")


def test_effective_config_round_trips_through_json(tmp_path):
    cfg = load(None, ["exchange.commission_pct=0.002"])
    p = tmp_path / "c.json"
    p.write_bytes(config.to_json_bytes(cfg))
    assert load(p) == cfg


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args,needle", [
    (["--config", "/nonexistent/x.toml"], "config file not found"),
    (["--set", "supervisor.heartbeat_ms=abc"], "key supervisor.heartbeat_ms"),
    (["--set", "oops"], "expected section.key=value"),
])
def test_actor_process_exits_2_on_config_error(run_dir, args, needle):
    r = subprocess.run([PY, "-m", "tests.fixtures.dummy_actor", "--run-dir", run_dir, *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert r.returncode == 2
    assert needle in r.stderr


def test_base_file_is_merged_and_overridden(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text('[exchange]\ninitial_cash = 5.0\ncommission_pct = 0.1\n[actors.a]\nmodule = "m"\n')
    child = tmp_path / "child.toml"
    child.write_text('base = "base.toml"\n[exchange]\ncommission_pct = 0.2\n')
    cfg = load(child)
    assert cfg.exchange.initial_cash == 5.0 and cfg.exchange.commission_pct == 0.2 and list(cfg.actors) == ["a"]
    loop = tmp_path / "loop.toml"
    loop.write_text('base = "loop.toml"\n')
    with pytest.raises(ConfigError, match="includes itself"):
        load(loop)


def test_backtest_config_loads():
    cfg = load(config.DEFAULT_PATH.with_name("backtest.toml"))
    assert cfg.service.mode == "backtest" and cfg.market_data.feed == "replay"
    assert list(cfg.actors) == ["market-data", "paper-exchange", "state-publisher", "strategy"]


def test_base_not_found_names_the_key_and_the_file(tmp_path):
    child = tmp_path / "child.toml"
    child.write_text('base = "default.toml"\n')
    with pytest.raises(ConfigError) as ei:
        load(child)
    assert str(ei.value) == (f"{child}: key base: 'default.toml': file not found: {tmp_path / 'default.toml'} "
                             f"(a path is relative to {tmp_path}; built-in configs: 'backtest', 'default', "
                             "'live-crypto', 'options-backtest', 'options-intraday', 'placement')")


@pytest.mark.parametrize("name", ["default", "backtest"])
def test_base_names_a_built_in_config_from_anywhere(tmp_path, name):
    child = tmp_path / "mine.toml"
    child.write_text(f'base = "{name}"\n[exchange]\ncommission_pct = 0.5\n')
    cfg = load(child)
    builtin = load(config.DEFAULT_PATH.with_name(f"{name}.toml"))
    assert cfg.exchange.commission_pct == 0.5
    assert msgspec.structs.replace(cfg, exchange=builtin.exchange) == builtin


def test_params_go_with_their_plugin(tmp_path):
    """A new plugin does not inherit the base's params (SmaCross's fast/slow would be bad params to it)."""
    child = tmp_path / "mine.toml"
    child.write_text('base = "default"\n[strategy]\nplugin = "mystrats.breakout:Breakout"\n'
                     'params = { lookback = 20 }\n')
    assert load(child).strategy.params == {"lookback": 20}
    child.write_text('base = "default"\n[strategy]\nplugin = "mystrats.breakout:Breakout"\n')
    assert load(child).strategy.params == {}
    # The same plugin: params merge key by key, as every other table does.
    child.write_text('base = "backtest"\n[strategy]\nplugin = "actors.strategies.sma_cross:SmaCross"\n'
                     'params = { qty = 5 }\n')
    assert load(child).strategy.params == {"fast": 10, "slow": 20, "qty": 5}
    # --set does the same, whichever order the plugin and its params come in.
    assert load(None, ["strategy.plugin=x.y:Z"]).strategy.params == {}
    assert load(None, ["strategy.params.n=3", "strategy.plugin=x.y:Z"]).strategy.params == {"n": 3}
    assert load(None, ["strategy.params.qty=3"]).strategy.params == {"fast": 10, "slow": 30, "qty": 3}


def test_session_and_options_tables():
    cfg = load(None)
    assert cfg.session is None and cfg.options.expiry_days == []  # the default: 24/7, no synthetic chain
    cfg = load(None, ['session.timezone="Asia/Kolkata"', 'session.square_off="15:20"', "options.strikes=3"])
    assert cfg.session.timezone == "Asia/Kolkata" and cfg.session.open == "09:30" and cfg.options.strikes == 3
    with pytest.raises(ConfigError, match="session.nope"):
        load(None, ["session.nope=1"])
    with pytest.raises(ConfigError, match="options.strikes"):
        load(None, ["options.strikes=-1"])


def test_the_live_crypto_config_is_a_long_only_cash_account_in_fractions_of_a_coin():
    """config/live-crypto.toml is spot: a cash account (no short sales) and a long-only SmaCross
    of 0.01 coin (SmaCross takes fractional sizes; the step is checked at each order)."""
    import config as config_mod
    from actors.strategies.sma_cross import SmaCross

    cfg = config_mod.load("config/live-crypto.toml")
    assert cfg.exchange.account == "cash"
    s = SmaCross(**cfg.strategy.params)
    assert s.qty == 0.01 and s.long_only
    with pytest.raises(TypeError, match="qty must be a positive number"):
        SmaCross(fast=2, slow=3, qty=float("nan"))
