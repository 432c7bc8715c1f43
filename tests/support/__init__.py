"""Test support shared by the unit, integration, chaos and benchmark code.

Imported as ``tests.support.<module>`` (the repository root is on ``sys.path``:
pytest's ``pythonpath = ["."]``, or ``python -m`` from the root).

- ``builders``: config, engine and event builders for the pure-core unit tests;
- ``transport``: crashes at any record, held/refused acks and worker processes (``Shell``)
  over the in-memory Kafka of ``worker.runtime.memory``;
- ``harness``: a real broker end to end: topics, produce, read, run the worker;
- ``gate_env``: one in-process worker, GateClient and GateView per test module;
- ``ops``: HTTP probes, metrics, JSON logs, a throwaway PKI, a TLS/SASL gateway;
- ``reliability``: worker processes, workloads and verdicts of the chaos suite;
- ``model``: the independent reference model of ``docs/spec.md``, the oracle every
  state-comparing integration and chaos test checks the worker against (never the
  engine itself, which would make the comparison circular);
- ``compare``: the views that compare the worker's records with the model.
"""
