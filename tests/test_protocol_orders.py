"""Nothing becomes a market order by omission: order_type is required everywhere."""

from __future__ import annotations

import pytest

from actors.strategies.base import Context
from bus.messages import Instrument, SubmitOrder


def _ctx():
    sent = []
    return Context([Instrument(symbol="AAA", kind="equity", tick_size=0.01)], send=sent.append, cl_prefix="t"), sent


def test_a_strategy_must_name_the_order_type():
    ctx, sent = _ctx()
    with pytest.raises(TypeError, match="order_type"):
        ctx.submit("AAA", "buy", 1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="submit: order_type must be one of market, limit, stop, not 'lmt'"):
        ctx.submit("AAA", "buy", 1, "lmt")
    with pytest.raises(ValueError, match="submit: tif must be one of GTC, IOC, DAY, not 'GTD'"):
        ctx.submit("AAA", "buy", 1, "limit", 10.0, "GTD")
    assert sent == [] and ctx.orders == {}
    ctx.submit("AAA", "sell", 2, "limit", 10.5)
    assert sent[-1] == SubmitOrder(cl_id="t-1", symbol="AAA", side="sell", qty=2, order_type="limit", price=10.5)
    # target_position trades with market orders, and says so
    ctx.target_position("AAA", 5)
    assert (sent[-1].order_type, sent[-1].price, sent[-1].tif, sent[-1].qty) == ("market", None, "GTC", 7)


def test_the_message_itself_has_no_default_order_type():
    with pytest.raises(TypeError, match="order_type"):
        SubmitOrder(cl_id="c", symbol="AAA", side="buy", qty=1)  # type: ignore[call-arg]
