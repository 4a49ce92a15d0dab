"""The replay pre-scan as a plain object: what a file must be to be replayed, what is
refused (naming file, row, column, value or both timestamps) and what is counted."""

import os

import pytest

import config as config_mod
from actors.replay import Replay, ReplayError
from bus.messages import Instrument

pytestmark = pytest.mark.timeout(60)

INST = {s: Instrument(symbol=s, kind="equity", tick_size=t) for s, t in (("AAA", 0.01), ("BBB", 0.05), ("X", 0.01))}
HDR = "date,open,high,low,close,volume\n"


def replay(run_dir, text, name="X.csv", **sets):
    path = os.path.join(run_dir, name)
    with open(path, "w") as f:
        f.write(text)
    args = ["market_data.feed=replay", f'market_data.path="{path}"'] + [f"market_data.{k}={v}" for k, v in sets.items()]
    return Replay(config_mod.load(None, args).market_data, INST), path


def rows_of(r):
    return [row for chunk in r.chunks() for row in chunk]


def refused(run_dir, text, **sets):
    with pytest.raises(ReplayError) as e:
        replay(run_dir, text, **sets)
    return str(e.value)


def test_time_going_back_is_refused_naming_file_rows_and_both_timestamps(run_dir):
    text = HDR + "2024-01-02,10,11,9,10,1\n2024-01-04,10,11,9,10,1\n2024-01-03,10,11,9,10,1\n"
    err = refused(run_dir, text)
    path = os.path.join(run_dir, "X.csv")
    assert err == (f"{path}: row 4: timestamp 2024-01-03T00:00:00Z of X is before row 3's 2024-01-04T00:00:00Z: "
                   "timestamps must increase; set market_data.sort = true to sort the file in memory")
    # ... or sorted in memory when asked (stable: file order kept for equal times)
    r, _ = replay(run_dir, text, sort="true")
    assert [row[1] for row in rows_of(r)] == sorted(row[1] for row in rows_of(r))
    assert r.total == 3 and r.warnings == []


@pytest.mark.parametrize("chunk_rows", [1, 2, 100])
def test_a_repeated_timestamp_is_refused_even_across_chunks_and_with_sort(run_dir, chunk_rows):
    text = ("date,symbol,open,high,low,close\n2024-01-02,AAA,1,1,1,1\n2024-01-02,BBB,1,1,1,1\n"
            "2024-01-02,AAA,2,2,2,2\n")
    for sort in ("false", "true"):
        err = refused(run_dir, text, chunk_rows=chunk_rows, sort=sort)
        assert err.endswith("row 4: timestamp 2024-01-02T00:00:00Z of AAA repeats row 2's 2024-01-02T00:00:00Z: "
                            "per symbol, timestamps must strictly increase (a duplicated row? sorting cannot fix that)")


def test_ticks_of_one_symbol_may_share_a_timestamp_but_never_go_back(run_dir):
    sets = {"kind": "ticks", "columns": '{ price = "px" }'}
    r, _ = replay(run_dir, "t,px\n1700000000000,10\n1700000000000,10.01\n1700000000001,10\n", **sets)
    assert [row[1:3] for row in rows_of(r)] == [(1_700_000_000_000_000_000, 10.0), (1_700_000_000_000_000_000, 10.01),
                                                (1_700_000_000_001_000_000, 10.0)]
    err = refused(run_dir, "t,px\n1700000000001,10\n1700000000000,10\n", **sets)
    assert "row 3: timestamp 2023-11-14T22:13:20Z of X is before row 2's 2023-11-14T22:13:20.001000Z" in err


def test_multi_symbol_files_share_timestamps_but_never_go_back(run_dir):
    ok = ("date,symbol,open,high,low,close\n2024-01-02,AAA,1,1,1,1\n2024-01-02,BBB,2,2,2,2\n"
          "2024-01-03,BBB,2,2,2,2\n2024-01-03,AAA,1,1,1,1\n")
    r, _ = replay(run_dir, ok, chunk_rows=1)
    assert [(s, ts // 10**9) for s, ts, *_ in rows_of(r)] == [
        ("AAA", 1704153600), ("BBB", 1704153600), ("BBB", 1704240000), ("AAA", 1704240000)]
    # sorted by symbol, then time: each symbol increases, but the stream would go back in time
    by_symbol = ("date,symbol,open,high,low,close\n2024-01-02,AAA,1,1,1,1\n2024-01-03,AAA,1,1,1,1\n"
                 "2024-01-02,BBB,2,2,2,2\n2024-01-03,BBB,2,2,2,2\n")
    err = refused(run_dir, by_symbol)
    assert err.endswith("row 4: timestamp 2024-01-02T00:00:00Z (BBB) is before row 3's 2024-01-03T00:00:00Z (AAA): "
                        "the replay needs the rows in time order across symbols (rows of one timestamp may come in "
                        "any symbol order); set market_data.sort = true to sort the file in memory")
    r, _ = replay(run_dir, by_symbol, sort="true", chunk_rows=3)
    assert [(s, ts // 10**9) for s, ts, *_ in rows_of(r)] == [
        ("AAA", 1704153600), ("BBB", 1704153600), ("AAA", 1704240000), ("BBB", 1704240000)]


def test_bad_rows_are_counted_with_their_line_numbers(run_dir):
    text = (HDR + "2024-01-02,10,11,9,10.5,100\n"   # line 2: good
            "2024-01-03,10,,9,10.5,100\n"           # 3: empty high
            "\n"                                     # 4: a blank line is a row too (line numbers stay true)
            "2024-01-05,-1,11,9,10.5,100\n"         # 5: not a price
            "2024-01-06,10,9,11,10.5,100\n"         # 6: high below low
            "2024-01-07,10,12,9,11.5,\n"            # 7: no volume: 0, kept
            "2024-01-08,abc,12,9,11.5,1\n"          # 8: not a number
            "yesterday,10,12,9,11.5,1\n"            # 9: not a timestamp
            "2024-01-10,10,12,9,11.5,-5\n")         # 10: a negative volume
    r, path = replay(run_dir, text, chunk_rows=3)
    assert r.total == 2 and r.skipped == 7
    assert [(row[1] // 10**9, row[-1]) for row in rows_of(r)] == [(1704153600, 100), (1704585600, 0)]
    assert r.warnings == [
        f"{path}: 7 rows of 9 skipped: rows 3, 4, 5, 6, 8, ...; the first: row 3, column 'high' is empty "
        '(market_data.on_bad_row = "error" refuses such a file)']
    # The same problems, one at a time, with on_bad_row = "error": refused before the run.
    for bad, want in [("2024-01-03,10,,9,10.5,100", "row 3, column 'high' is empty"),
                      ("2024-01-03,-1,11,9,10.5,100", "row 3, column 'open': -1 is not a price (> 0 and < 1e12)"),
                      ("2024-01-03,10,9,11,10.5,100", "row 3, column 'high': 9 is below the row's low"),
                      ("2024-01-03,abc,12,9,11.5,1", "row 3, column 'open': 'abc' is not a number"),
                      ("yesterday,10,12,9,11.5,1", "row 3, column 'date': 'yesterday' is not a timestamp"),
                      ("2024-01-03,10,12,9,11.5,many", "row 3, column 'volume': 'many' is not a volume (a number >= 0)")]:
        err = refused(run_dir, HDR + "2024-01-02,10,11,9,10.5,100\n" + bad + "\n", on_bad_row="error")
        assert err == f'{path}: {want} (market_data.on_bad_row = "error")'


def test_unknown_symbols_are_bad_rows(run_dir):
    text = "t,symbol,open,high,low,close\n1700000000000,AAA,1,1,1,1\n1700000060000,ZZZ,1,1,1,1\n"
    r, path = replay(run_dir, text)
    assert r.total == 1 and "row 3, column 'symbol': 'ZZZ' is not a symbol of the instrument master" in r.warnings[0]
    assert "row 3, column 'symbol': 'ZZZ'" in refused(run_dir, text, on_bad_row="error")


def test_epoch_timestamps_keep_one_unit_for_the_whole_file(run_dir):
    # Epoch milliseconds with a bad cell in the first chunk: still read as epoch ms in every chunk.
    text = "t,open,high,low,close\n1700000000000,1,1,1,1\nnope,1,1,1,1\n1700000060000,1,1,1,1\n1700000120000,1,1,1,1\n"
    r, _ = replay(run_dir, text, chunk_rows=2)
    assert [row[1] for row in rows_of(r)] == [1_700_000_000_000 * 10**6, 1_700_000_060_000 * 10**6,
                                              1_700_000_120_000 * 10**6]
    assert r.skipped == 1 and "row 3, column 't': 'nope' is not a timestamp" in r.warnings[0]


@pytest.mark.parametrize("text,want", [
    ("", "the file is empty (no header, no rows)"),
    (HDR, "no data rows (only a header)"),
    (HDR + "2024-01-02,x,1,1,1,1\n2024-01-03,,1,1,1,1\n",
     "none of its 2 rows can be replayed; the first: row 2, column 'open': 'x' is not a number"),
])
def test_a_file_with_nothing_to_replay_is_refused(run_dir, text, want):
    assert refused(run_dir, text) == f"{os.path.join(run_dir, 'X.csv')}: {want}"


def test_prices_off_the_tick_grid_are_one_warning_with_the_count(run_dir):
    text = ("date,symbol,open,high,low,close\n2024-01-02,AAA,10.005,11,9,10\n2024-01-02,BBB,10.05,11,9,10\n"
            "2024-01-03,BBB,10.02,11,9,10\n2024-01-03,AAA,10,11,9,10\n2024-01-04,AAA,10,11.001,9,10\n")
    r, path = replay(run_dir, text)
    assert r.total == 5 and r.skipped == 0  # replayed as they are
    assert r.warnings == [f"{path}: 3 rows with prices off their instrument's tick grid, the first: row 2, "
                          "AAA open 10.005 (tick 0.01); replayed as they are"]


def test_the_sample_file_is_clean():
    from tests.harness import ROOT

    cfg = config_mod.load(ROOT / "config/backtest.toml").market_data
    r = Replay(cfg, {"GOOG": Instrument(symbol="GOOG", kind="equity", tick_size=0.01)})
    assert (r.total, r.skipped, r.warnings) == (2148, 0, [])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_fractional_volumes_and_sizes_are_kept(run_dir, fmt):
    text = HDR + "2024-01-02,10,11,9,10.5,0.00123\n2024-01-03,10,11,9,10.5,1500.25\n2024-01-04,10,11,9,10.5,\n"
    if fmt == "parquet":
        import pandas as pd
        csv_path = os.path.join(run_dir, "X.csv")
        with open(csv_path, "w") as f:
            f.write(text)
        pd.read_csv(csv_path).to_parquet(os.path.join(run_dir, "X.parquet"))
        args = ["market_data.feed=replay", f'market_data.path="{os.path.join(run_dir, "X.parquet")}"']
        r = Replay(config_mod.load(None, args).market_data, INST)
    else:
        r, _ = replay(run_dir, text)
    assert [row[-1] for row in rows_of(r)] == [0.00123, 1500.25, 0.0]
    ticks, _ = replay(run_dir, "ts,price,size\n2024-01-02,10.5,0.25\n", name="T.csv", kind="ticks", symbol='"X"')
    assert [row[-1] for row in rows_of(ticks)] == [0.25]
