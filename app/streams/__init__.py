"""Redis Streams: the envelope, the producer and the consumer process (key names: :mod:`app.keys`)."""
