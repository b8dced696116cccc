"""The embedded broker: a durable, single-process stand-in for Kafka, as a faust transport.

Registered under the ``faust.transports`` entry point as ``embedded``.
"""

from belvedere.streams.embedded.log import Log, NewRecord, StoredRecord
from belvedere.streams.embedded.transport import Transport, log_path

__all__ = ["Log", "NewRecord", "StoredRecord", "Transport", "log_path"]
