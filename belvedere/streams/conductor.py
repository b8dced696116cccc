"""faust's Conductor, made to create topics with their declared partition counts first.

faust declares only its internal topics before subscribing, so a source topic declared with
``partitions=4`` is auto-created by the broker with its default count instead, and a table
on it then fails with PartitionsMismatch (trap P6). This declares every topic that names
its partition count, on any broker, before the consumer subscribes.
"""

from collections.abc import Iterable

from faust.transport.conductor import Conductor as FaustConductor

__all__ = ["Conductor"]


class Conductor(FaustConductor):
    async def _update_indices(self) -> Iterable[str]:
        for channel in list(self._topics):
            if not channel.internal and getattr(channel, "partitions", None):
                await channel.maybe_declare()
        return await super()._update_indices()
