"""The pytest plugin costs a run that does not use it nothing, and its names cannot
clash with a suite's own fixtures."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import worker.testing
import worker.testing.plugin


def test_importing_the_plugin_imports_no_kafka_docker_or_worker_code() -> None:
    probe = (
        "import sys, worker.testing.plugin\n"
        "heavy = ('aiokafka', 'docker', 'testcontainers', 'msgspec', 'worker.')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "['worker.testing', 'worker.testing.plugin']"


def test_every_plugin_fixture_is_named_riskgate_something() -> None:
    fixtures = {
        name
        for name, value in vars(worker.testing.plugin).items()
        # pytest >= 8.4 wraps fixtures in FixtureFunctionDefinition; older ones mark functions
        if type(value).__name__ == "FixtureFunctionDefinition"
        or hasattr(value, "_pytestfixturefunction")
    }
    assert fixtures == {"riskgate_kafka", "riskgate_worker"}


def test_package_exports_resolve_lazily_and_unknown_names_fail() -> None:
    from worker.testing.running import RiskgateWorker

    assert worker.testing.RiskgateWorker is RiskgateWorker
    assert set(worker.testing.__all__) == {
        "ANY",
        "RiskgateIO",
        "RiskgateWorker",
        "WorkerDied",
        "worker_config",
    }
    for name in worker.testing.__all__:
        module = importlib.import_module(worker.testing._EXPORTS[name])
        assert getattr(worker.testing, name) is getattr(module, name)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = worker.testing.Nope
