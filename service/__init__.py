"""sessionpulse: live session state from Kafka, kept in Redis, summarised back to Kafka."""

__version__ = "0.1.0"
