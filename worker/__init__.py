"""riskgate: trading-risk state and pre-trade gates for a fleet of bots, over Kafka."""

__version__ = "0.1.0"
