"""``belvedere reset``: make a view start over from its source topic, with workers stopped.

Only the named view is touched: its changelog is recreated (with a reset marker naming a
new epoch, so that a stale local copy on any machine is recognised and dropped), its
projection's committed source offsets go back to the start, and this machine's local
files of the view are removed. A rebuild under way is abandoned, and its changelog
deleted. The next worker to start rebuilds the view from the source.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from belvedere.agents.surface import AgentsApp
from belvedere.streams.clients import BrokerClient, NewRecord
from belvedere.tables.changelog import CHANGELOG_CONFIG, HEADER_RESET, RESET_KEY
from belvedere.tables.generations import Generation, Generations, control_topic, gen_key

__all__ = ["ResetReport", "reset_view"]


@dataclass(frozen=True)
class ResetReport:
    view: str
    changelog: str
    source: str
    partitions: int
    removed_local: bool


def reset_view(app: AgentsApp, name: str, client: BrokerClient) -> ResetReport:
    view = app.views.get(name)
    if view is None:
        known = ", ".join(sorted(app.views)) or "none"
        raise LookupError(f"{app.conf.id} has no view {name!r} (its views: {known})")
    projection = app.engine.projections.get(name)
    if projection is None:
        raise LookupError(f"view {name!r} has no projection to rebuild it from")
    if projection.not_rebuildable:
        raise LookupError(f"view {name!r} cannot be reset: {projection.not_rebuildable}")
    source = projection.source.get_topic_name()
    partitions = view.partitions or projection.source.partitions or app.conf.topic_partitions
    source_partitions = client.partitions(source) or partitions

    control = control_topic(app.conf.id)
    generations = Generations()
    generations.apply((r.key, r.value) for r in client.read(control) if r.key is not None)
    gen = generations.of(name)
    changelog = view.changelog_topic_for(gen.active)
    for other in (gen.building, gen.previous):
        if other is not None:
            client.delete_topic(view.changelog_topic_for(other))
    client.delete_topic(changelog)
    replicas = app.conf.topic_replication_factor or 1
    client.create_topic(
        changelog, partitions, compacted=True, config=CHANGELOG_CONFIG, replication=replicas
    )
    epoch = uuid.uuid4().hex.encode()
    marker = NewRecord(RESET_KEY, epoch, 0, ((HEADER_RESET, epoch),))
    for partition in range(partitions):
        client.produce(changelog, [marker], partition=partition)
    if gen.building is not None or gen.previous is not None:
        settled = Generation(active=gen.active, highest=gen.highest)
        client.produce(control, [NewRecord(gen_key(name), settled.encode(), 0)], partition=0)
    client.commit(app.conf.id, {(source, p): 0 for p in range(source_partitions)})
    if projection.repartition is not None:  # its copies would be applied again otherwise
        repartition = projection.repartition.get_topic_name()
        client.delete_topic(repartition)
        client.create_topic(repartition, partitions, replication=replicas)
        client.commit(app.conf.id, {(repartition, p): 0 for p in range(partitions)})

    removed = False
    for local in (Path(app.conf.datadir) / "views").glob(f"{view.name}-g*"):
        if local.name[len(view.name) + 2 :].isdigit():
            removed = True
            shutil.rmtree(local, ignore_errors=True)
    return ResetReport(name, changelog, source, partitions, removed)
