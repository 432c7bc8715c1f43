"""Reliability suite: crash loops, broker stalls, hostile input and soak runs.

The long-running scripts live here and run from the repository root
(``python -m tests.chaos.crash_loop``, ``python -m tests.chaos.soak``); the
short variants that run with the default test suite are
``tests/integration/test_reliability_*.py``. Both import the shared pieces from
``tests.support`` (``reliability``, ``harness``, ``model``), so they check the
same way.
"""
