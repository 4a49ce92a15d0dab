"""Feeds as iterators (actors/feeds.py): no process, no socket. The actor's publishing,
pacing and history are tested on the real process in tests/test_market_data.py."""

import os

import pytest

import config as config_mod
from actors.feeds import ReplayFeed, load_instruments
from actors.replay import ReplayError
from bus.messages import Bar, EndOfData, Instrument, Tick

pytestmark = pytest.mark.timeout(60)

INST = {s: Instrument(symbol=s, kind="equity", tick_size=0.01) for s in ("AAA", "BBB", "X")}


def md(run_dir, text, name="X.csv", *sets):
    path = os.path.join(run_dir, name)
    with open(path, "w") as f:
        f.write(text)
    return config_mod.load(None, ["market_data.feed=replay", f'market_data.path="{path}"', *sets]).market_data


def rows(n):
    return "".join(f"2024-01-{1 + i // 24:02d}T{i % 24:02d}:00:00Z,{10 + i},{11 + i},{9 + i},{10.5 + i},{100 + i}\n"
                   for i in range(n))


def test_batches_number_bars_from_one_whatever_the_file_chunks(run_dir):
    text = "date,open,high,low,close,volume\n" + rows(23)
    for chunk in (4, 7, 50):
        feed = ReplayFeed(md(run_dir, text, "X.csv", f"market_data.chunk_rows={chunk}"), INST)
        assert feed.total == 23 and feed.name == "replay:X.csv"
        got = list(feed.batches(5))
        assert [len(b) for b in got] == [5, 5, 5, 5, 3]
        bars = [b for batch in got for b in batch]
        assert all(isinstance(b, Bar) and b.symbol == "X" for b in bars)
        assert [b.fseq for b in bars] == list(range(1, 24)) and bars[-1].close == 32.5 and bars[-1].volume == 122
        assert feed.done and feed.end() == EndOfData(feed="replay:X.csv", count=23, last_fseq=23, rows_skipped=0)


def test_messages_and_the_end_count_skipped_rows(run_dir):
    text = "date,open,high,low,close,volume\n" + rows(3) + "2024-01-02T00:00:00Z,10,,9,10.5,1\n"
    feed = ReplayFeed(md(run_dir, text), INST)
    assert feed.skipped == 1 and len(feed.warnings) == 1 and "1 row of 4 skipped: row 5" in feed.warnings[0]
    got = list(feed.messages())
    assert [m.fseq for m in got] == [1, 2, 3] and feed.end().rows_skipped == 1 and feed.end().count == 3


def test_ticks_of_a_symbol_column(run_dir):
    text = "t,sym,px,qty\n1700000000000,AAA,10.5,3\n1700000001000,BBB,20.25,1\n"
    feed = ReplayFeed(md(run_dir, text, "ticks.csv", "market_data.kind=ticks",
                         'market_data.columns={symbol="sym", price="px", size="qty"}'), INST)
    got = list(feed.messages())
    assert got == [Tick(symbol="AAA", ts=1_700_000_000_000 * 10**6, price=10.5, size=3, fseq=1),
                   Tick(symbol="BBB", ts=1_700_000_001_000 * 10**6, price=20.25, size=1, fseq=2)]


def test_a_bad_file_is_refused_when_the_feed_is_made(run_dir):
    with pytest.raises(ReplayError, match="no data rows"):
        ReplayFeed(md(run_dir, "date,open,high,low,close,volume\n"), INST)


def test_instrument_master(run_dir):
    cfg = config_mod.load(None, []).market_data
    inst, mappings, src = load_instruments(cfg)
    assert [i.symbol for i in inst] == ["SYN1", "SYN2"] and mappings == 0 and src == "synthetic"
    bad = config_mod.load(None, ['market_data.instruments="/nonexistent/inst.csv"']).market_data
    with pytest.raises(Exception, match="instrument file not found: /nonexistent/inst.csv") as e:
        load_instruments(bad)
    from actors.base import UserError
    assert isinstance(e.value, UserError)
