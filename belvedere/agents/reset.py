"""``belvedere reset``: make a view start over from its source topic, with workers stopped.

Only the named view is touched: its changelog is recreated (with a reset marker naming a
new epoch, so that a stale local copy on any machine is recognised and dropped), its
projection's committed source offsets go back to the start, and this machine's local
files of the view are removed. The next worker to start rebuilds it from the source.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from belvedere.streams.clients import BrokerClient, Record
from belvedere.tables.changelog import CHANGELOG_CONFIG, HEADER_RESET, RESET_KEY

__all__ = ["ResetReport", "reset_view"]


@dataclass(frozen=True)
class ResetReport:
    view: str
    changelog: str
    source: str
    partitions: int
    removed_local: bool


def reset_view(app: Any, name: str, client: BrokerClient) -> ResetReport:
    view = app.views.get(name)
    if view is None:
        known = ", ".join(sorted(app.views)) or "none"
        raise LookupError(f"{app.conf.id} has no view {name!r} (its views: {known})")
    projection = app.projections.projections.get(name)
    if projection is None:
        raise LookupError(f"view {name!r} has no projection to rebuild it from")
    source = projection.source.get_topic_name()
    partitions = view.partitions or projection.source.partitions or app.conf.topic_partitions
    source_partitions = client.partitions(source) or partitions

    client.delete_topic(view.changelog_topic)
    client.create_topic(view.changelog_topic, partitions, compacted=True, config=CHANGELOG_CONFIG)
    epoch = uuid.uuid4().hex.encode()
    marker = Record(RESET_KEY, epoch, 0, ((HEADER_RESET, epoch),))
    for partition in range(partitions):
        client.produce(view.changelog_topic, [marker], partition=partition)
    client.commit(app.conf.id, {(source, p): 0 for p in range(source_partitions)})
    if projection.repartition is not None:  # its copies would be applied again otherwise
        repartition = projection.repartition.get_topic_name()
        client.delete_topic(repartition)
        client.create_topic(repartition, partitions)
        client.commit(app.conf.id, {(repartition, p): 0 for p in range(partitions)})

    local = Path(app.conf.datadir) / "views" / f"{view.name}-g{view.generation}"
    removed = local.exists()
    shutil.rmtree(local, ignore_errors=True)
    return ResetReport(name, view.changelog_topic, source, partitions, removed)
