"""Test support shared by the unit, integration and chaos suites.

``support.model`` is the independent reference model of ``docs/spec.md``: the
oracle every state-comparing integration and chaos test checks the worker
against (never the engine itself, which would make the comparison circular).
"""
