"""riskgate's tests: one package, imported as ``tests.*`` from the repository root.

pytest puts the root on ``sys.path`` (``pythonpath = ["."]`` in pyproject.toml),
as ``python -m`` does for the chaos scripts and benchmarks run from the root, so
shared code is always ``from tests.support.<module> import ...``.
"""
