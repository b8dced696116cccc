"""tests/apps/ledger.py with a production-length Kafka session, for the replicated cluster
test (tests/faults/test_cluster_faults.py): a worker's session must outlast the move of the
group's coordinator to another broker, or a broker's death rebalances the group
(docs/operations.md, "A replicated cluster")."""

from tests.apps.ledger import *  # noqa: F403 - the same app, views and projections
from tests.apps.ledger import app

app.conf.broker_session_timeout = 30.0
