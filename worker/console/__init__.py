"""``riskgate console``: the operators' live view of every gate, and their actions.

- :mod:`worker.console.auth` — users, roles, tokens, session cookies, CSRF;
- :mod:`worker.console.live` — the board: a GateView turned into one document;
- :mod:`worker.console.actions` — signed, audited control commands;
- :mod:`worker.console.server` — the aiohttp routes; ``static/`` — the page;
- :mod:`worker.console.service` — all of it running (CLI and demo).
"""

from worker.console.service import open_console, serve

__all__ = ["open_console", "serve"]
