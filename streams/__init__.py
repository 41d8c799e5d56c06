"""Stream processing: topics, agents and the two transports (Faust on Kafka, in-process)."""
