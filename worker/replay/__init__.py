"""``riskgate replay``: what-if replay of history through the pure engine (issue 12).

inputs (files and topics) -> run (the engine on an event-time clock) ->
counterfactual (what the limits prevented) -> report (JSON, HTML, terminal);
sweep runs the same over combinations of limits in parallel processes.
"""
