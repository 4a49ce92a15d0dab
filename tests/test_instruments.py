"""Instrument master: counts, option mappings, and every error names the file and the row."""

import os

import pytest

from actors.instruments import InstrumentError, load
from tests.harness import ROOT

pytestmark = pytest.mark.timeout(20)

HEADER = "symbol,kind,tick_size,lot_size,multiplier,currency,underlying,strike,expiry,right\n"


def write(run_dir, name, text):
    p = os.path.join(run_dir, name)
    with open(p, "w") as f:
        f.write(text)
    return p


def test_shipped_goog_master():
    insts, maps = load(str(ROOT / "data/sample/instruments.csv"))
    assert [(i.symbol, i.kind, i.tick_size, i.lot_size) for i in insts] == [("GOOG", "equity", 0.01, 1)]
    assert maps == 0


@pytest.mark.parametrize("name,n,maps", [("instruments_options.csv", 4, 2), ("instruments_options.toml", 2, 1)])
def test_option_mappings_counted(name, n, maps):
    insts, m = load(str(ROOT / "data/sample" / name))
    assert len(insts) == n and m == maps
    opt = [i for i in insts if i.kind == "option"][0]
    assert opt.underlying == "GOOG" and opt.strike == 150.0 and opt.right in ("C", "P") and opt.multiplier == 100.0


def test_synthetic_master():
    insts, m = load("synthetic", ["AAA", "BBB"])
    assert [i.symbol for i in insts] == ["AAA", "BBB"] and all(i.tick_size == 0.01 for i in insts) and m == 0
    with pytest.raises(InstrumentError, match="zero instruments"):
        load("synthetic", [])


@pytest.mark.parametrize("body,row,needle", [
    ("GOOG,equity,0.01,1,1,USD,,,,\nX,option,0.01,1,100,USD,NOPE,100,2025-01-17,C\n", 3, "unknown underlying 'NOPE'"),
    ("GOOG,equity,0.01,1,1,USD,,,,\nGOOG,equity,0.01,1,1,USD,,,,\n", 3, "duplicate symbol GOOG"),
    ("GOOG,equity,-0.01,1,1,USD,,,,\n", 2, "tick_size"),
    ("GOOG,equity,abc,1,1,USD,,,,\n", 2, "tick_size"),
    ("A,equity,0.01,1,1,USD,,,,\nGOOG,stock,0.01,1,1,USD,,,,\n", 3, "kind"),
    ("GOOG,equity,0.01,-1.5,1,USD,,,,\n", 2, "lot_size"),
    ("GOOG,equity,0.01,0.0000000001,1,USD,,,,\n", 2, "lot_size"),
    ("GOOG,equity,0.01,0,1,USD,,,,\n", 2, "lot_size"),
    ("GOOG,equity,0.01,1,1\n", 2, "5 cells, header has 10"),
    (",equity,0.01,1,1,USD,,,,\n", 2, "missing symbol"),
    ("GOOG,equity,0.01,1,1,USD,,,,\nC1,option,0.01,1,100,USD,GOOG,,2025-01-17,C\n", 3, "needs strike"),
    ("GOOG,equity,0.01,1,1,USD,,,,\nC1,option,0.01,1,100,USD,GOOG,10,17/01/2025,C\n", 3, "expiry"),
    ("GOOG,equity,0.01,1,1,USD,SPY,,,\n", 2, "only options"),
    ("GOOG,equity,nan,1,1,USD,,,,\n", 2, "tick_size"),
])
def test_csv_errors_name_file_and_row(run_dir, body, row, needle):
    p = write(run_dir, "bad.csv", HEADER + body)
    with pytest.raises(InstrumentError) as ei:
        load(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: row {row}:"), msg
    assert needle in msg, msg


def test_zero_instruments_is_an_error(run_dir):
    for name, text in (("empty.csv", HEADER), ("nothing.csv", ""), ("empty.toml", "# no instruments\n")):
        p = write(run_dir, name, text)
        with pytest.raises(InstrumentError, match=f"^{p}: zero instruments"):
            load(p)


def test_toml_errors_name_file_and_entry(run_dir):
    p = write(run_dir, "bad.toml", '[[instruments]]\nsymbol = "GOOG"\nkind = "equity"\ntick_size = 0.01\n'
                                   '[[instruments]]\nsymbol = "C1"\nkind = "option"\ntick_size = 0.01\n'
                                   'underlying = "MSFT"\nstrike = 10.0\nexpiry = "2025-01-17"\nright = "C"\n')
    with pytest.raises(InstrumentError, match=r"bad.toml: row 2 .*unknown underlying 'MSFT'"):
        load(p)
    p = write(run_dir, "typo.toml", '[[instruments]]\nsymbol = "GOOG"\nkind = "equity"\ntick = 0.01\n')
    with pytest.raises(InstrumentError, match=r"typo.toml: row 1 .*missing tick_size"):
        load(p)
    p = write(run_dir, "broken.toml", '[[instruments]\n')
    with pytest.raises(InstrumentError, match=r"broken.toml: not valid TOML"):
        load(p)


def test_missing_and_unknown_type_files(run_dir):
    with pytest.raises(InstrumentError, match="instrument file not found: /nonexistent/x.csv"):
        load("/nonexistent/x.csv")
    p = write(run_dir, "inst.xml", "{}")
    with pytest.raises(InstrumentError, match="unknown instrument file type"):
        load(p)
