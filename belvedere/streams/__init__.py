"""streams: brokers, topics and the wire; the bottom layer that nothing else here imports."""
