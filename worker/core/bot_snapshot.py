"""A bot's portfolio record: what :class:`~worker.core.bot.BotRisk` persists of itself
beyond its symbols, and how a restart takes it back.

The record carries the latch and reservations, the manual halt, the controls,
the event numbering and the id windows (whole, the older self-contained format,
or by reference to their chunk records). The latch, unlike the seed's, survives
restarts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.core.idlog import IdLogRef
from worker.core.snapshot import PortfolioSnapshot

if TYPE_CHECKING:
    from worker.core.bot import BotRisk


def portfolio_snapshot(
    bot: BotRisk, id_logs: dict[str, IdLogRef] | None = None
) -> PortfolioSnapshot:
    """The portfolio state, id windows whole (a self-contained record, the older format)
    or, given ``id_logs`` (:meth:`BotRisk.persist`), by reference to their chunk records."""
    whole = id_logs is None
    return PortfolioSnapshot(
        manual_halt=bot.manual_halt,
        **bot.account.portfolio.persisted(whole=whole),
        outcome_ids=bot.ids.outcomes.dump() if whole else None,
        fill_ids=bot.ids.fills.dump() if whole else None,
        id_logs=id_logs,
        controls=bot.controls.snapshot(),
        **bot.numbering(),
    )


def restore_portfolio(bot: BotRisk, snap: PortfolioSnapshot, now_ms: int) -> None:
    """Take ``snap`` back into ``bot``; its next sweep is due at once (``now_ms``)."""
    bot.account.portfolio.restore(snap)
    bot.manual_halt = snap.manual_halt
    if snap.controls is not None:
        bot.controls.restore(snap.controls)
    bot.restore_numbering(snap)
    bot.ids.load(snap)
    bot.deadline = min(bot.deadline, now_ms)
