"""Issue 9, pre-trade bypasses: closes past the position (item 1), reused intent ids
(item 5), partial fills (item 6), junk intents creating state (minor), stale intents
(suspected: TTL) and decisions echoing what they answer (decisions R1-R5, N3)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tests.support.builders import T0, apply_all, control, engine, fill, intent, origin, outcome
from worker.core import Effects, Reservation, RiskEngine
from worker.core.intents import ENTRY_BYTES, IntentWindow
from worker.core.portfolio import MAX_RESERVATIONS
from worker.core.snapshot import ManualHalt, encode
from worker.messages import GateDecision, OrderIntent

TTL = 30_000

CAPPED = """
[defaults]
accept_unknown_bots = true
[bots.alpha.portfolio]
max_gross_exposure = 1000.0
"""


def decide(eng: RiskEngine, i: OrderIntent, now: int = T0) -> GateDecision:
    [decision] = eng.apply(i, now).decisions
    return decision


def halted_long(qty: float = 1.0) -> RiskEngine:
    """Long ``qty`` BTCUSDT @ 100, and the bot manually halted."""
    eng = engine(CAPPED)
    apply_all(eng, [fill("buy", qty, 100.0), control("halt", symbol=None)])
    return eng


# -- item 1: a close is capped at the position net of other closes ----------------------


def test_close_beyond_the_position_while_halted_is_denied_reduce_only_exceeds_position() -> None:
    eng = halted_long(1.0)
    d = decide(eng, intent("close", "sell", qty=500.0))
    assert (d.allowed, d.gate) == (False, "reduce_only_exceeds_position")
    assert d.reason == "close of 500 exceeds the 1 of the position not already being closed"
    assert d.reservation_expires_ts is None
    assert eng.bots["alpha"].portfolio.reservations == {}


def test_three_concurrent_closes_of_one_against_a_position_of_one_allow_only_the_first() -> None:
    eng = halted_long(1.0)
    out = Effects()
    for n in range(3):
        eng.apply(intent("close", "sell", qty=1.0, intent_id=f"c{n}"), T0, out=out)
    assert [(d.intent_id, d.allowed, d.gate) for d in out.decisions] == [
        ("c0", True, None),
        ("c1", False, "reduce_only_exceeds_position"),
        ("c2", False, "reduce_only_exceeds_position"),
    ]
    assert eng.bots["alpha"].portfolio.reservations == {
        "c0": Reservation("BTCUSDT", 0.0, T0 + TTL, qty=1.0, close=True)
    }


def test_close_within_the_position_while_halted_is_allowed_and_its_fill_leaves_it_flat() -> None:
    eng = halted_long(1.0)
    d = decide(eng, intent("close", "sell", qty=1.0, price=90.0, intent_id="c"))
    assert (d.allowed, d.gate, d.reason) == (True, None, "reduce-only exit: bypasses entry gates")
    assert d.reservation_expires_ts == T0 + TTL
    eng.apply(fill("sell", 1.0, 90.0, intent_id="c"), T0 + 1)
    bot = eng.bots["alpha"]
    assert bot.symbols["BTCUSDT"].position.qty == 0.0
    assert bot.account.gross_exposure() == 0.0
    assert bot.portfolio.reservations == {}
    # Flat now: any further close is no exit at all.
    assert decide(eng, intent("close", "sell"), T0 + 2).gate == "no_position"


def test_close_split_across_intents_may_not_exceed_the_position_in_sum() -> None:
    eng = halted_long(2.0)
    assert decide(eng, intent("close", "sell", qty=1.5, intent_id="a")).allowed
    d = decide(eng, intent("close", "sell", qty=1.0))
    assert (d.allowed, d.gate) == (False, "reduce_only_exceeds_position")
    assert d.reason == "close of 1 exceeds the 0.5 of the position not already being closed"
    assert decide(eng, intent("close", "sell", qty=0.5)).allowed


def test_partially_filled_close_keeps_holding_its_unfilled_quantity() -> None:
    eng = halted_long(2.0)
    assert decide(eng, intent("close", "sell", qty=2.0, intent_id="c")).allowed
    eng.apply(fill("sell", 1.5, 100.0, intent_id="c"), T0)
    bot = eng.bots["alpha"]
    assert bot.symbols["BTCUSDT"].position.qty == 0.5
    assert bot.portfolio.reservations["c"].qty == 0.5
    # The remaining 0.5 of the position is still being closed by "c".
    assert decide(eng, intent("close", "sell", qty=0.5)).gate == "reduce_only_exceeds_position"


def test_expired_close_reservation_frees_the_position_for_another_close() -> None:
    eng = halted_long(1.0)
    assert decide(eng, intent("close", "sell", qty=1.0)).allowed
    assert decide(eng, intent("close", "sell", qty=1.0)).gate == "reduce_only_exceeds_position"
    later = T0 + TTL
    eng.sweep(later)
    assert eng.bots["alpha"].portfolio.reservations == {}
    assert decide(eng, intent("close", "sell", qty=1.0, ts=later), later).allowed


def test_close_reservations_take_no_exposure_and_no_concurrency_slot() -> None:
    eng = engine(CAPPED + "max_concurrent_positions = 1\n")
    apply_all(eng, [fill("buy", 9.0, 100.0)])  # exposure 900 of 1000, the only slot
    assert decide(eng, intent("close", "sell", qty=9.0)).allowed
    assert decide(eng, intent("open", "buy", qty=1.0, price=100.0)).allowed  # 900 + 100


# -- item 5: reusing an intent_id -------------------------------------------------------


def test_reused_intent_id_with_different_content_after_a_halt_is_denied_duplicate_intent_id() -> (
    None
):
    eng = engine()
    first = decide(eng, intent(symbol="BTCUSDT", qty=1.0, price=100.0, intent_id="X"))
    assert first.allowed
    eng.apply(control("halt", symbol=None), T0)
    d = decide(eng, intent(symbol="ETHUSDT", qty=1000.0, price=3000.0, intent_id="X"), T0 + 1)
    assert (d.allowed, d.gate) == (False, "duplicate_intent_id")
    assert d.reason == "intent_id already used for a different intent"
    assert (d.symbol, d.qty, d.price) == ("ETHUSDT", 1000.0, 3000.0)
    bot = eng.bots["alpha"]
    assert bot.portfolio.reservations == {"X": Reservation("BTCUSDT", 100.0, T0 + TTL, qty=1.0)}
    assert "ETHUSDT" not in bot.symbols


def test_same_intent_again_gets_the_same_decision_and_reserves_nothing_more() -> None:
    eng = engine(CAPPED)
    i = intent(qty=6.0, intent_id="X")
    first = decide(eng, i)
    again = eng.apply(i, T0 + 10)
    assert again.decisions == [first]
    assert eng.bots["alpha"].portfolio.reserved_notional == 600.0
    assert list(eng.bots["alpha"].portfolio.reservations) == ["X"]


def test_same_denied_intent_again_is_denied_by_the_same_gate_after_the_gate_lifted() -> None:
    eng = engine()
    eng.apply(control("halt", symbol=None), T0)
    i = intent(intent_id="X")
    first = decide(eng, i)
    assert (first.allowed, first.gate) == (False, "manual_halt")
    eng.apply(control("resume", symbol=None, ts=T0 + 1), T0 + 1)
    again = decide(eng, i, T0 + 2)
    assert (again.allowed, again.gate, again.ts) == (False, "manual_halt", T0)
    assert again.reason == "repeat of an intent denied by manual_halt"
    assert eng.bots["alpha"].portfolio.reservations == {}


def test_intent_id_window_survives_a_restore() -> None:
    live = engine()
    x = intent(intent_id="X", qty=2.0)
    first = decide(live, x)
    restored = engine()
    restored.restore({"alpha/portfolio": encode(live.bots["alpha"].portfolio_snapshot())}, T0)
    assert decide(restored, x, T0 + 5) == first
    other = decide(restored, intent(intent_id="X", qty=3.0), T0 + 5)
    assert other.gate == "duplicate_intent_id"
    assert (
        restored.bots["alpha"].portfolio.reservations == live.bots["alpha"].portfolio.reservations
    )


def test_intent_id_window_forgets_oldest_first_and_a_forgotten_id_is_judged_afresh() -> None:
    window = IntentWindow(keep=3)
    for key in (1, 2, 3, 4):
        window.remember(key, key * 10, 0, None)
    assert window.get(1) is None
    assert [window.get(k) is not None for k in (2, 3, 4)] == [True, True, True]
    assert len(window.dump()) == 3 * ENTRY_BYTES
    copy = IntentWindow(keep=3)
    copy.load(window.dump())
    copy.remember(5, 50, 0, None)  # evicts 2, the oldest, in the copy as in the original
    window.remember(5, 50, 0, None)
    assert copy.dump() == window.dump()
    assert copy.get(2) is None


def test_forgotten_intent_id_still_reserved_is_denied_duplicate_intent_id() -> None:
    eng = engine()
    assert decide(eng, intent(intent_id="X")).allowed
    eng.bots["alpha"].portfolio.intents.load(b"")  # the window forgot X, its reservation holds
    assert decide(eng, intent(intent_id="X", qty=5.0)).gate == "duplicate_intent_id"


# -- item 6: partial fills release only what they filled --------------------------------


def test_first_partial_fill_releases_only_what_it_filled() -> None:
    eng = engine(CAPPED)
    assert decide(eng, intent(qty=9.0, price=100.0, intent_id="A")).allowed
    eng.apply(fill("buy", 1.0, 100.0, intent_id="A"), T0)
    bot = eng.bots["alpha"]
    assert bot.portfolio.reservations["A"] == Reservation("BTCUSDT", 800.0, T0 + TTL, qty=8.0)
    b = decide(eng, intent(qty=8.0, price=100.0, intent_id="B"))
    assert (b.allowed, b.gate) == (False, "gross_exposure")
    # The rest of A fills: exposure ends at 900, never above the cap.
    eng.apply(fill("buy", 8.0, 100.0, intent_id="A"), T0)
    assert bot.portfolio.reservations == {}
    assert bot.account.gross_exposure() == 900.0


def test_replayed_or_resent_partial_fill_releases_nothing_twice() -> None:
    eng = engine(CAPPED)
    assert decide(eng, intent(qty=9.0, price=100.0, intent_id="A")).allowed
    partial = fill("buy", 1.0, 100.0, intent_id="A", fill_id="f-1")
    eng.apply(partial, T0, origin(7, "trading.fills/0"))
    eng.apply(partial, T0, origin(7, "trading.fills/0"))  # replayed after a crash
    eng.apply(partial, T0, origin(8, "trading.fills/0"))  # re-sent by the producer
    assert eng.bots["alpha"].portfolio.reservations["A"].qty == 8.0


def test_replay_after_the_portfolio_persisted_releases_nothing_twice() -> None:
    """The portfolio record is written, the symbol record is not: the replayed fill
    rebuilds the position but must not release the reservation again."""
    eng = engine(CAPPED)
    assert decide(eng, intent(qty=9.0, price=100.0, intent_id="A")).allowed
    eng.apply(
        fill("buy", 1.0, 100.0, intent_id="A", fill_id="f-1"), T0, origin(7, "trading.fills/0")
    )
    persisted = encode(eng.bots["alpha"].portfolio_snapshot())
    after = engine(CAPPED)
    after.restore({"alpha/portfolio": persisted}, T0)
    after.apply(
        fill("buy", 1.0, 100.0, intent_id="A", fill_id="f-1"), T0, origin(7, "trading.fills/0")
    )
    bot = after.bots["alpha"]
    assert bot.symbols["BTCUSDT"].position.qty == 1.0
    assert bot.portfolio.reservations["A"].qty == 8.0


def test_fill_on_another_symbol_releases_nothing() -> None:
    eng = engine(CAPPED)
    assert decide(eng, intent(qty=9.0, intent_id="A")).allowed
    eng.apply(fill("buy", 9.0, 100.0, symbol="ETHUSDT", intent_id="A"), T0)
    assert eng.bots["alpha"].portfolio.reservations["A"].qty == 9.0


def test_reservation_from_an_older_snapshot_without_qty_is_released_whole() -> None:
    eng = engine(CAPPED)
    old = b'{"version":1,"halted":false,"last_reset_day":0,"reservations":{"A":%s}}' % (
        b'{"symbol":"BTCUSDT","notional":900.0,"expires_ts":%d}' % (T0 + TTL)
    )
    assert eng.restore({"alpha/portfolio": old}, T0) == []
    eng.apply(fill("buy", 1.0, 100.0, intent_id="A"), T0)
    assert eng.bots["alpha"].portfolio.reservations == {}


# -- minor: junk intents create no state; decisions stay cheap --------------------------


def test_denied_and_no_position_intents_create_no_per_symbol_state() -> None:
    eng = engine()
    eng.apply(control("halt", symbol=None), T0)
    bot = eng.bots["alpha"]
    out = Effects()
    for n in range(50_000):
        action = "close" if n % 2 else "open"
        eng.apply(intent(action, symbol=f"JUNK{n}", intent_id=f"j{n}"), T0, out=out)
    assert len(bot.symbols) == 0
    assert out.dirty_symbols == set()
    assert {d.gate for d in out.decisions} == {"manual_halt", "no_position"}
    assert len(bot.portfolio.intents) == 10_000  # the bounded window, nothing else grew


class _CountingScans(dict[str, Any]):
    """A bot's symbol table that counts every walk over it."""

    scans = 0

    def values(self) -> Any:
        self.scans += 1
        return super().values()

    def items(self) -> Any:
        self.scans += 1
        return super().items()

    def __iter__(self) -> Any:
        self.scans += 1
        return super().__iter__()


def test_decisions_do_not_walk_every_symbol_of_the_bot() -> None:
    """14 ms a decision once junk had created 50k symbols: exposure, concurrency and the
    daily loss read running sums and the open positions, never every symbol."""
    eng = engine(CAPPED + "max_concurrent_positions = 5\nmax_daily_loss = -1000.0\n")
    apply_all(eng, [fill("buy", 1.0, 100.0, symbol="ETHUSDT")])
    apply_all(eng, [outcome(-0.1, symbol=f"S{n}") for n in range(2_000)])  # flat symbols
    bot = eng.bots["alpha"]
    decide(eng, intent(intent_id="warm"))  # the running daily net is summed once a day
    table = bot.symbols = _CountingScans(bot.symbols)
    answers = [decide(eng, intent(intent_id=f"d{n}", qty=0.01)) for n in range(100)]
    assert all(d.allowed for d in answers)
    assert table.scans == 0
    assert (set(bot.account.open_symbols()), bot.account.gross_exposure()) == ({"ETHUSDT"}, 100.0)


def test_restored_positions_count_toward_exposure_and_concurrency() -> None:
    live = engine(CAPPED)
    apply_all(live, [fill("buy", 7.0, 100.0, symbol="ETHUSDT"), fill("buy", 1.0, 1.0)])
    apply_all(live, [fill("sell", 1.0, 1.0)])  # BTCUSDT flat again
    bot = live.bots["alpha"]
    records = {f"alpha/risk/{name}": encode(sym.snapshot()) for name, sym in bot.symbols.items()}
    restored = engine(CAPPED)
    restored.restore(records, T0)
    again = restored.bots["alpha"]
    opened = set(again.account.open_symbols())
    assert (opened, again.account.gross_exposure()) == ({"ETHUSDT"}, 700.0)
    assert decide(restored, intent(qty=4.0)).gate == "gross_exposure"  # 700 + 400 > 1000


def test_allowed_open_on_a_new_symbol_creates_no_symbol_state_until_its_fill() -> None:
    eng = engine()
    assert decide(eng, intent(symbol="NEW", intent_id="n")).allowed
    assert "NEW" not in eng.bots["alpha"].symbols


# -- suspected: intents older than their TTL ----------------------------------------------


def test_intent_older_than_its_ttl_by_record_time_is_expired_and_reserves_nothing() -> None:
    eng = engine()
    now = T0 + TTL + 1
    d = decide(eng, intent(ts=T0, intent_id="old"), now)
    assert (d.allowed, d.gate) == (False, "expired")
    assert d.reason == "intent is 30001 ms old; reservations last 30000 ms"
    assert d.reservation_expires_ts is None
    assert eng.bots["alpha"].portfolio.reservations == {}
    # Exactly TTL old is still decided on its merits.
    assert decide(eng, intent(ts=T0 + 1, intent_id="edge"), now).allowed


# -- R5: decisions echo the intent they answer ---------------------------------------------


def test_decision_echoes_action_side_qty_and_price_of_its_intent() -> None:
    eng = halted_long(2.0)
    d = decide(eng, intent("close", "sell", qty=1.5, price=95.5))
    assert (d.action, d.side, d.qty, d.price) == ("close", "sell", 1.5, 95.5)
    d = decide(eng, intent("open", "buy", qty=3.0, price=7.0))
    assert (d.action, d.side, d.qty, d.price, d.gate) == ("open", "buy", 3.0, 7.0, "manual_halt")


def test_decision_json_written_before_the_echo_fields_still_decodes() -> None:
    old = (
        b'{"intent_id":"i","bot":"alpha","symbol":"BTCUSDT","allowed":true,"gate":null,'
        b'"reason":"entries allowed","ts":1,"reservation_expires_ts":30001}'
    )
    d = msgspec.json.decode(old, type=GateDecision)
    assert (d.allowed, d.action, d.side, d.qty, d.price) == (True, None, None, None, None)


@pytest.mark.parametrize("intent_id", ["x" * 65, 'a"b', "a\\b", "a b", "abc\n", "é", ""])
def test_intent_ids_are_bounded_printable_ascii(intent_id: str) -> None:
    doc = msgspec.json.encode(intent(intent_id="ok"))
    bad = doc.replace(b'"ok"', msgspec.json.encode(intent_id))
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(bad, type=OrderIntent)


def test_reservations_have_a_hard_ceiling_whatever_the_config_says() -> None:
    eng = engine(
        "[defaults]\naccept_unknown_bots = true\n[worker]\nmax_reservations_per_bot = 5000\n"
    )
    answers = [decide(eng, intent(intent_id=f"i{n}")) for n in range(MAX_RESERVATIONS + 1)]
    assert sum(d.allowed for d in answers) == MAX_RESERVATIONS
    assert (answers[-1].gate, answers[-1].reason) == (
        "max_concurrent_positions",
        "1000 reservations outstanding; report fills with their intent_id",
    )


# -- snapshot bound: the worst-case portfolio record --------------------------------------

RECORD_LIMIT = 1 << 20


def test_worst_case_portfolio_snapshot_stays_well_under_the_record_limit() -> None:
    """Reservations up to the caps, each at its longest encoding (64-char id, a symbol
    of four-byte characters sized so the count and the name budget bind together,
    23-character floats), a full intent-id window and the longest manual halt."""
    eng = engine(
        "[defaults]\naccept_unknown_bots = true\n[worker]\nmax_reservations_per_bot = 100000\n"
    )
    bot = eng.bot("alpha")
    portfolio = bot.portfolio
    n = 0
    while not portfolio.full(100_000):
        portfolio.reserve(
            f"{n:064d}",
            chr(0x1F300 + n // 32) + chr(0x1F300 + n % 32) + "\U0001f600" * 6,
            1.2345678901234567e-300,
            4_102_444_800_000,
            qty=1.2345678901234567e-300,
        )
        n += 1
    for k in range(10_000):
        portfolio.intents.remember((1 << 63) + k, (1 << 64) - 1 - k, -(2**31), "expired")
    # The caps hold whatever the config says.
    assert decide(eng, intent(intent_id="one-more")).gate == "max_concurrent_positions"
    bot.manual_halt = ManualHalt(reason="\x00" * 1024, issued_by="\x01" * 128, ts=T0)
    assert n == 984  # the name budget binds just before the count cap
    assert len(encode(portfolio.reservations)) == 984 * 205 + 1  # 205 bytes each
    assert len(encode(portfolio.intents.dump())) == 280_002  # base64 of 10,000 x 21 bytes
    assert len(encode(bot.portfolio_snapshot())) < 0.6 * RECORD_LIMIT
