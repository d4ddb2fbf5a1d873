"""Redis Streams: key names, the envelope, the producer and the consumer process."""
