"""Belvedere: event-driven services with materialized views, on faust."""

from belvedere.agents.aggregates import Aggregate, Rejected, Reply
from belvedere.agents.reactors import ReactorContext
from belvedere.agents.sagas import SagaState, Step
from belvedere.agents.testing import AggregateFixture, SagaFixture
from belvedere.app import App
from belvedere.streams.context import caused_by
from belvedere.streams.envelope import EventMeta
from belvedere.streams.records import Command, Document, Event, Record
from belvedere.streams.topics import EventTopic, Published
from belvedere.streams.upcasters import upcaster
from belvedere.tables.windows import Hopping, Session, Sliding, Tumbling

__all__ = [
    "Aggregate",
    "AggregateFixture",
    "App",
    "Command",
    "Document",
    "Event",
    "EventMeta",
    "EventTopic",
    "Hopping",
    "Published",
    "ReactorContext",
    "Record",
    "Rejected",
    "Reply",
    "SagaFixture",
    "SagaState",
    "Session",
    "Sliding",
    "Step",
    "Tumbling",
    "__version__",
    "caused_by",
    "upcaster",
]
__version__ = "0.1.0"
