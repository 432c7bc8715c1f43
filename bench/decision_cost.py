"""Cost of one in-engine decision: an open intent through every configured gate.

Every gate is configured (session loss limit, breaker, portfolio daily loss,
max concurrent positions, max gross exposure, the reservation cap, the intent
id window) and the state is warm: 8 bots x 50 symbols, a third of them holding
a position, every bot's intent window full. Each timed call is one
``RiskEngine.apply(intent, now, origin)`` — validation, the id window, every
gate, the reservation — for a new open that every gate allows (the longest
path: a denial stops at its gate). Between timed calls, untimed, a fill
carrying the intent id consumes the reservation, so the reservation count
stays realistic instead of reaching the cap.

Each call is timed alone with ``time.perf_counter_ns`` (wall) and
``time.thread_time_ns`` (this thread's CPU time: on a shared machine it leaves
out the time other processes held the core); each timer's own cost, measured
on an empty call, is printed, not subtracted. The garbage collector
stays on, as in the worker (``--gc freeze`` moves the warm state out of its
reach first, ``--gc off`` disables it: the difference is what full collections
of a big heap cost the tail).

    .venv/bin/python -m bench.decision_cost [--calls 200000] [--controls]

``--controls`` adds issue 11's controls, every one on: order size and notional
caps, a price collar against a fresh mark of every symbol, an order rate and a
duplicate window (intents then carry record times 1 ms apart, so neither denies),
equity-based daily loss, a drawdown, a daily notional budget and an after-loss
cooldown (ended by a sweep before timing).

Target: p99 <= 30 us.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time

import msgspec

from worker.config import load_config
from worker.core import Effects, Origin, RiskEngine
from worker.messages import Fill, Mark, OrderIntent, TradeOutcome

TARGET_P99_US = 30.0
BOTS = [f"bot{i}" for i in range(8)]
SYMBOLS = [f"SYM{i:02d}USDT" for i in range(50)]
T0 = 1_750_000_000_000  # 2025-06-15T15:06:40Z; every event inside that UTC day

CONFIG = "\n".join(
    [
        "[worker]",
        "dedupe_ids_per_bot = 10000",
        "max_reservations_per_bot = 1000",
        "reservation_ttl_ms = 30000",
        "[defaults.session]",
        "loss_limit = -1000000.0",
        "[defaults.breaker]",
        "loss_limit = 1000000",
        "window_secs = 14400",
        "cooldown_secs = 3600",
        "[defaults.portfolio]",
        "max_daily_loss = -1000000.0",
        "max_concurrent_positions = 50",
        "max_gross_exposure = 1e12",
        *(f"[bots.{bot}]\nsymbols = [{', '.join(repr(s) for s in SYMBOLS)}]" for bot in BOTS),
    ]
).replace("'", '"')
CONTROL_TABLES = """
[defaults.orders]
max_qty = 1000000.0
max_notional = 1e12
price_collar_bps = 1000.0
max_orders_per_sec = 1000
duplicate_window_ms = 500
[defaults.cooldown]
after_loss_secs = 1
"""
CONTROL_PORTFOLIO = "max_drawdown = 1e12\nmax_daily_notional = 1e15"


def config_text(controls: bool) -> str:
    """The bench's config, with issue 11's controls all on when ``controls``."""
    if not controls:
        return CONFIG
    portfolio = "[defaults.portfolio]"
    return CONFIG.replace(portfolio, f"{portfolio}\n{CONTROL_PORTFOLIO}") + CONTROL_TABLES


def warm_engine(now: int, controls: bool = False) -> RiskEngine:
    """8 x 50 symbols with outcomes booked, a third holding a position, id windows full
    (with ``controls``: a mark of every symbol, the warm-up's cooldowns swept away)."""
    engine = RiskEngine(load_config(text=config_text(controls), env={}))
    if controls:
        for symbol in SYMBOLS:
            engine.apply_mark(Mark(symbol, 100.0, now))
    offsets = {"outcomes": 0, "fills": 0, "intents": 0}

    def origin(topic: str) -> Origin:
        offsets[topic] += 1
        return Origin(f"trading.{topic}/0", offsets[topic])

    for b, bot in enumerate(BOTS):
        for s, symbol in enumerate(SYMBOLS):
            for k in range(3):
                outcome = TradeOutcome(f"o-{bot}-{s}-{k}", bot, symbol, 2.0 - k, 0.1, now - 1000)
                engine.apply(outcome, now, origin("outcomes"))
            if (s + b) % 3 == 0:
                fill = Fill(f"f-{bot}-{s}", bot, symbol, "buy", 2.0, 100.0, 0.0, now - 1000)
                engine.apply(fill, now, origin("fills"))
    # Fill every bot's intent window (decided and consumed, as in the timed loop).
    for n in range(engine.config.worker.dedupe_ids_per_bot):
        for bot in BOTS:
            intent, fill = pair(n, bot, now)
            engine.apply(intent, now, origin("intents"))
            engine.apply(fill, now, origin("fills"))
    if controls:
        engine.sweep(now)  # the warm-up's losses started cooldowns ending now
    return engine


def pair(n: int, bot: str, now: int) -> tuple[OrderIntent, Fill]:
    """An open intent and the fill that consumes its reservation (sides alternate)."""
    symbol = SYMBOLS[(n * 7) % len(SYMBOLS)]
    side = "buy" if (n // len(SYMBOLS)) % 2 == 0 else "sell"
    intent = OrderIntent(f"i-{bot}-{n:09d}", bot, symbol, "open", side, 1.0, 100.0, now)
    fill = Fill(
        f"fi-{bot}-{n:09d}", bot, symbol, side, 1.0, 100.0, 0.0, now, intent_id=intent.intent_id
    )
    return intent, fill


def percentile(values: list[int], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument(
        "--gc",
        choices=("on", "freeze", "off"),
        default="on",
        help="collector as in the worker today / warm state frozen out of it / off",
    )
    parser.add_argument("--controls", action="store_true", help="issue 11's controls, all on")
    args = parser.parse_args()

    now = T0
    started = time.perf_counter()
    engine = warm_engine(now, args.controls)
    print(f"warm state built in {time.perf_counter() - started:.1f} s")
    first = engine.config.worker.dedupe_ids_per_bot
    pairs = [pair(first + n // len(BOTS), BOTS[n % len(BOTS)], now) for n in range(args.calls)]
    raw = [msgspec.json.encode(intent) for intent, _ in pairs]
    decode = msgspec.json.Decoder(OrderIntent).decode
    apply = engine.apply
    wall, cpu = time.perf_counter_ns, time.thread_time_ns

    if args.gc == "freeze":
        gc.collect()
        gc.freeze()  # the warm state is never traversed again by a collection
    elif args.gc == "off":
        gc.disable()
    timers: dict[str, list[int]] = {"wall": [], "cpu": []}
    for _ in range(100_000):
        c, w = cpu(), wall()
        w, c = wall() - w, cpu() - c
        timers["wall"].append(w)
        timers["cpu"].append(c)

    # (wall, thread CPU) ns of each call: CPU time leaves out the time other
    # processes had the core, which on a shared machine is most of the tail.
    timed: dict[str, dict[str, list[int]]] = {
        name: {"wall": [], "cpu": []} for name in ("apply(intent)", "decode + apply(intent)")
    }
    denied = 0
    out = Effects()
    offset = 10**9
    for n, (intent, fill) in enumerate(pairs):
        offset += 1
        origin = Origin("trading.intents/0", offset)
        # 1 ms apart (under the rate), after the warm-up's second (its duplicates lapsed).
        record_ts = now + 1_000 + n if args.controls else None
        if n % 2:
            into = timed["apply(intent)"]
            c, w = cpu(), wall()
            apply(intent, now, origin, out, record_ts=record_ts)
        else:
            into = timed["decode + apply(intent)"]
            c, w = cpu(), wall()
            apply(decode(raw[n]), now, origin, out, record_ts=record_ts)
        w, c = wall() - w, cpu() - c
        into["wall"].append(w)
        into["cpu"].append(c)
        if not out.decisions[-1].allowed:
            denied += 1
        apply(fill, now, Origin("trading.fills/0", offset), out)
        if len(out.decisions) >= 1000:  # the worker collects one batch per Effects
            out = Effects()
    if denied:
        raise SystemExit(f"{denied} intents were denied: the bench must time the allowed path")

    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f}; {args.calls:,} decisions over {len(BOTS)} bots x "
        f"{len(SYMBOLS)} symbols, every gate configured"
        f"{' (issue 11 controls on)' if args.controls else ''}, all allowed; gc {args.gc}"
    )
    for clock, values in timers.items():
        values.sort()
        print(
            f"{clock} timer alone: p50 {percentile(values, 0.5):.3f} us, "
            f"p99 {percentile(values, 0.99):.3f} us"
        )
    for name, clocks in timed.items():
        for clock, values in clocks.items():
            values.sort()
            print(
                f"{name:<24} {clock:<4} n={len(values):,} p50 {percentile(values, 0.5):.2f} us  "
                f"p90 {percentile(values, 0.9):.2f} us  p99 {percentile(values, 0.99):.2f} us  "
                f"p99.9 {percentile(values, 0.999):.2f} us  max {values[-1] / 1000:.1f} us  "
                f"mean {statistics.fmean(values) / 1000:.2f} us"
            )
    for clock in ("wall", "cpu"):
        p99 = percentile(timed["apply(intent)"][clock], 0.99)
        verdict = "PASS" if p99 <= TARGET_P99_US else "BELOW TARGET"
        print(
            f"apply(intent) p99 by {clock} clock {p99:.1f} us "
            f"(target <= {TARGET_P99_US}): {verdict}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
