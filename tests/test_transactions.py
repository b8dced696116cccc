"""The fencing under zombie protection (belvedere.streams.transactions), on a real Kafka
broker: the next owner of a source partition starting its producer aborts the last owner's
open transaction and refuses everything the last owner writes or commits afterwards."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from faust.types import TP

import belvedere
from belvedere.streams.clients import KafkaClient
from belvedere.streams.readers import KafkaReader
from belvedere.streams.transactions import Fenced, Transactions

pytestmark = pytest.mark.kafka


def test_the_next_owner_fences_the_last_owners_transaction(kafka_bootstrap: str) -> None:
    name = f"t{uuid.uuid4().hex[:10]}"
    client = KafkaClient(kafka_bootstrap)
    client.create_topic(f"{name}-out", 1)
    app = belvedere.App(name, broker=f"kafka://{kafka_bootstrap}")
    source = TP(f"{name}-source", 0)
    out = TP(f"{name}-out", 0)

    async def body() -> list[Any]:
        zombie, owner = Transactions(app), Transactions(app)
        reader = KafkaReader(kafka_bootstrap)
        try:
            await zombie.open([source])
            old = zombie.get(source)
            assert old is not None
            await (await old.send(out.topic, b"k", b"committed", 0, None, []))
            await old.commit({})
            await (await old.send(out.topic, b"k", b"open when fenced", 0, None, []))
            await owner.open([source])  # the partition's next owner
            with pytest.raises(Fenced):
                await (await old.send(out.topic, b"k", b"after", 0, None, []))
            with pytest.raises(Fenced):
                await old.commit({source: 10})
            assert old.fenced
            new = owner.get(source)
            assert new is not None
            await (await new.send(out.topic, b"k", b"new owner", 0, None, []))
            await new.commit({})
            start, end = (await reader.offsets([out]))[out]
            return [r.value async for _, batch in reader.read({out: (start, end)}) for r in batch]
        finally:
            await reader.close()
            await zombie.close_all()
            await owner.close_all()

    assert asyncio.run(asyncio.wait_for(body(), 120)) == [b"committed", b"new owner"]
    assert [r.value for r in client.read(out.topic)] == [b"committed", b"new owner"]
