"""TEMPORARY alias of :mod:`worker.core.snapshot` while imports move (removed before the final commit)."""

import sys

from worker.core import snapshot

sys.modules[__name__] = snapshot
