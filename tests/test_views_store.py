"""The view storage layer without a broker: store, transaction, changelog restore and repair."""

from __future__ import annotations

import logging
import os
from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path

import pytest

import belvedere
from belvedere.tables.changelog import HEADER_END, Restorer, changelog_records
from belvedere.tables.store import PartitionStore, StoreBudget
from belvedere.tables.transaction import PartitionTransaction, WrongPartition
from belvedere.tables.view import NotLocal, PartitionStatus, View


class Row(belvedere.Record):
    owner: str
    total: int


@dataclass
class Rec:
    offset: int
    key: bytes
    value: bytes | None
    headers: list


@pytest.fixture
def budget() -> StoreBudget:
    return StoreBudget(8 << 20, 8 << 20)


def view(**kwargs: object) -> View:
    options = {
        "app_id": "app",
        "name": "rows",
        "value_type": Row,
        "indexes": ("owner",),
        "partitions": 1,
    }
    options.update(kwargs)
    return View(**options)  # type: ignore[arg-type]


def open_partition(v: View, path: Path, budget: StoreBudget, partition: int = 0) -> PartitionStore:
    store = PartitionStore(path / f"{partition}.db", budget)
    v.stores[partition] = store
    v.status[partition] = PartitionStatus(state="serving")
    return store


def flush(
    v: View, store: PartitionStore, txn: PartitionTransaction, offsets: dict
) -> dict[bytes, bytes | None]:
    rows = txn.encoded()
    changes, delta = store.plan(rows, lambda data: v.index_values(v.decode_value(data)))
    store.write(rows, changes, delta, offsets, None)
    txn.clear()
    return rows


def test_reads_see_their_own_writes_and_values_are_encoded_once_per_key(
    tmp_path: Path, budget: StoreBudget
) -> None:
    v = view()
    store = open_partition(v, tmp_path, budget)
    txn = PartitionTransaction(v, store, 0, 1)
    txn["a"] = Row(owner="x", total=1)
    txn["a"] = Row(owner="x", total=2)
    assert txn["a"].total == 2 and "a" in txn and "b" not in txn
    assert store.get(b"a") is None  # nothing written before the flush
    rows = flush(v, store, txn, {("src", 0): 2})
    assert rows == {b"a": b'{"owner":"x","total":2}'}
    assert v.get("a") == Row(owner="x", total=2)
    assert store.source_offsets() == {("src", 0): 2}


def test_savepoints_undo_a_failed_events_writes(tmp_path: Path, budget: StoreBudget) -> None:
    v = view()
    txn = PartitionTransaction(v, open_partition(v, tmp_path, budget), 0, 1)
    txn["a"] = Row(owner="x", total=1)
    txn.savepoint()
    txn["a"] = Row(owner="x", total=99)
    txn["b"] = Row(owner="y", total=1)
    del txn["a"]
    txn.rollback()
    assert txn["a"].total == 1 and "b" not in txn


def test_keys_of_another_partition_are_refused(tmp_path: Path, budget: StoreBudget) -> None:
    v = view(partitions=4)
    txn = PartitionTransaction(v, open_partition(v, tmp_path, budget, 0), 0, 4)
    other = next(k for k in (f"k{i}" for i in range(100)) if v.partition_of(k, 4) != 0)
    with pytest.raises(WrongPartition, match=f"key '{other}' lives in partition"):
        txn[other] = Row(owner="x", total=1)


def test_level_0_filters_and_indexes_are_pinned(tmp_path: Path, budget: StoreBudget) -> None:
    store = open_partition(view(), tmp_path, budget)
    store.close()
    (options,) = (tmp_path / "0.db").glob("OPTIONS-*")
    assert "pin_l0_filter_and_index_blocks_in_cache=true" in options.read_text()


def test_a_checked_key_is_remembered_a_refused_one_is_not(
    tmp_path: Path, budget: StoreBudget
) -> None:
    v = view(partitions=4)
    txn = PartitionTransaction(v, open_partition(v, tmp_path, budget, 0), 0, 4)
    keys = [f"k{i}" for i in range(100)]
    mine = next(k for k in keys if v.partition_of(k, 4) == 0)
    other = next(k for k in keys if v.partition_of(k, 4) != 0)
    txn[mine] = Row(owner="x", total=1)
    for _ in range(2):  # refused again: only keys that passed the check are remembered
        with pytest.raises(WrongPartition):
            txn[other] = Row(owner="x", total=1)
    del txn[mine]
    txn.clear()
    with pytest.raises(WrongPartition):
        txn[other] = Row(owner="x", total=1)
    with pytest.raises(TypeError):  # the key's type is still checked for a remembered key
        txn[1] = Row(owner="x", total=1)


def test_count_index_and_deletes_stay_consistent(tmp_path: Path, budget: StoreBudget) -> None:
    v = view()
    store = open_partition(v, tmp_path, budget)
    txn = PartitionTransaction(v, store, 0, 1)
    for i in range(10):
        txn[f"k{i}"] = Row(owner=f"o{i % 3}", total=i)
    flush(v, store, txn, {})
    txn["k0"] = Row(owner="o2", total=0)  # moves from o0 to o2
    del txn["k1"]
    flush(v, store, txn, {})
    assert v.count() == 9
    assert [k for k, _ in v.lookup("owner", "o0")] == ["k3", "k6", "k9"]
    assert [k for k, _ in v.lookup("owner", "o2")] == ["k0", "k2", "k5", "k8"]
    assert [k for k, _ in v.lookup("owner", "o1")] == ["k4", "k7"]
    with pytest.raises(KeyError, match="has no index 'total'"):
        v.lookup("total", 1)


def test_scans_page_through_every_partition_in_key_order(
    tmp_path: Path, budget: StoreBudget
) -> None:
    v = view(partitions=3, indexes=())
    txns = [PartitionTransaction(v, open_partition(v, tmp_path, budget, p), p, 3) for p in range(3)]
    keys = [f"user-{i:03d}" for i in range(50)] + ["admin-1", "admin-2"]
    for key in keys:
        txns[v.partition_of(key, 3)][key] = Row(owner="o", total=len(key))
    for p, txn in enumerate(txns):
        flush(v, v.stores[p], txn, {})

    seen, cursor = [], None
    while True:
        page, cursor = v.scan(prefix="user-", limit=7, after=cursor)
        seen += [k for k, _ in page]
        if cursor is None:
            break
    assert seen == sorted(k for k in keys if k.startswith("user-"))
    window, _ = v.scan(start="user-010", end="user-013")
    assert [k for k, _ in window] == ["user-010", "user-011", "user-012"]
    assert v.count() == 52


def test_int_keys_scan_in_numeric_order(tmp_path: Path, budget: StoreBudget) -> None:
    v = view(key_type=int, indexes=())
    store = open_partition(v, tmp_path, budget)
    txn = PartitionTransaction(v, store, 0, 1)
    for key in (10, -5, 2, 100, 9):
        txn[key] = Row(owner="o", total=key)
    flush(v, store, txn, {})
    rows, _ = v.scan()
    assert [k for k, _ in rows] == [-5, 2, 9, 10, 100]
    with pytest.raises(TypeError, match="keyed by int, not str"):
        v.get("10")


def test_partitions_not_served_here_say_so(tmp_path: Path, budget: StoreBudget) -> None:
    v = view(partitions=2, indexes=())
    open_partition(v, tmp_path, budget, 0)
    v.status[0].state = "recovering"
    with pytest.raises(NotLocal, match="partition 0 is recovering"):
        v.get(next(k for k in (f"k{i}" for i in range(50)) if v.partition_of(k, 2) == 0))
    with pytest.raises(NotLocal, match="partition 1 is not assigned here"):
        v.get(next(k for k in (f"k{i}" for i in range(50)) if v.partition_of(k, 2) == 1))


def test_a_partition_being_restored_answers_reads_that_accept_its_lag(
    tmp_path: Path, budget: StoreBudget
) -> None:
    v = view(indexes=())
    enc = v.encode_value
    log = as_log(
        [({b"a": enc(Row(owner="x", total=1))}, {("src", 0): 1})]
        + [({b"b": enc(Row(owner="y", total=i))}, {("src", 0): 1 + i}) for i in range(1, 4)]
    )
    status = v.status[0] = PartitionStatus(restore_total=len(log))
    building = PartitionStatus(generation=2, restore_total=len(log))
    v.restoring(0, PartitionStore(tmp_path / "g2.db", budget), building)
    assert v.stores == {}, "a new generation's store is not what reads of the view see"
    store = PartitionStore(tmp_path / "0.db", budget)
    v.restoring(0, store, status)

    restorer = Restorer(v, store)
    restorer.feed(log[:2])  # the first checkpoint
    status.restore_done = 2
    local = v.local(0, max_behind=len(log) - 2)
    assert (local.state, local.behind) == ("recovering", len(log) - 2)
    assert v.decode_value(local.store.get(b"a")) == Row(owner="x", total=1)
    with pytest.raises(NotLocal, match="partition 0 is recovering"):
        v.local(0, max_behind=len(log) - 3)  # more behind than the caller accepts
    with pytest.raises(NotLocal, match="partition 0 is recovering"):
        v.get("a")  # a plain read waits for it to serve
    assert v.count() == 0 and v.scan() == ([], None)  # local queries: served partitions only

    replaced = PartitionStore(tmp_path / "0-again.db", budget)  # found stale: started again
    v.replace_store(0, store, replaced)
    assert v.local(0, max_behind=len(log)).store is replaced


def as_log(
    checkpoints: list[tuple[dict[bytes, bytes | None], dict]], *, torn_tail: dict | None = None
) -> list[Rec]:
    log: list[Rec] = []
    for rows, offsets in checkpoints:
        for key, value, headers in changelog_records(rows, offsets):
            log.append(Rec(len(log), key, value, headers))
    for key, value in (torn_tail or {}).items():
        log.append(Rec(len(log), key, value, []))
    return log


def test_restore_applies_complete_checkpoints_and_drops_a_torn_tail(
    tmp_path: Path, budget: StoreBudget
) -> None:
    v = view()
    enc = v.encode_value
    log = as_log(
        [
            (
                {b"a": enc(Row(owner="x", total=1)), b"b": enc(Row(owner="y", total=1))},
                {("src", 0): 10},
            ),
            ({b"a": enc(Row(owner="x", total=2)), b"b": None}, {("src", 0): 20}),
        ],
        torn_tail={b"c": enc(Row(owner="z", total=1)), b"a": enc(Row(owner="x", total=3))},
    )
    assert [r.headers != [] for r in log] == [False, True, False, True, False, False]

    store = open_partition(v, tmp_path, budget)
    restorer = Restorer(v, store)
    restorer.feed(log)
    dropped = restorer.finish()
    assert dropped == {b"c", b"a"}
    assert v.get("a") == Row(owner="x", total=2) and v.get("b") is None and v.get("c") is None
    assert store.source_offsets() == {("src", 0): 20}
    assert store.changelog_offset() == 3
    assert v.count() == 1
    assert [k for k, _ in v.lookup("owner", "x")] == ["a"]


def test_a_repair_after_a_torn_tail_makes_a_later_restore_right(
    tmp_path: Path, budget: StoreBudget
) -> None:
    """The torn records stay in the log; the repair checkpoint written after them wins."""
    v = view(indexes=())
    enc = v.encode_value
    first = [({b"a": enc(Row(owner="x", total=1))}, {("src", 0): 5})]
    log = as_log(first, torn_tail={b"b": enc(Row(owner="y", total=7))})
    store = open_partition(v, tmp_path / "one", budget)
    restorer = Restorer(v, store)
    restorer.feed(log)
    repair = {key: store.get(key) for key in restorer.finish()}
    assert repair == {b"b": None}
    for key, value, headers in changelog_records(repair, {("src", 0): 5}):
        log.append(Rec(len(log), key, value, headers))
    assert log[-1].headers[0] == (HEADER_END, b"1")

    fresh = open_partition(v, tmp_path / "two", budget)
    again = Restorer(v, fresh)
    again.feed(log)
    assert again.finish() == set()
    assert fresh.get(b"b") is None and v.decode_value(fresh.get(b"a")) == Row(owner="x", total=1)
    assert fresh.source_offsets() == {("src", 0): 5}


def test_rows_written_locally_stay_pending_until_the_changelog_confirms(
    tmp_path: Path, budget: StoreBudget
) -> None:
    v = view(indexes=())
    store = PartitionStore(tmp_path / "p.db", budget)
    store.write(
        {b"a": v.encode_value(Row(owner="x", total=1))}, {}, 1, {("src", 0): 1}, None, pending=True
    )
    assert store.pending_keys() == [b"a"]
    store.close()
    reopened = PartitionStore(tmp_path / "p.db", budget)  # as after a crash
    assert reopened.pending_keys() == [b"a"]
    reopened.confirm(41)
    assert reopened.pending_keys() == [] and reopened.changelog_offset() == 41


def test_a_views_definition_stays_as_declared_and_only_its_state_changes() -> None:
    """A view is shared by the app's declarations, every reader and the engine: the
    definition cannot be changed under them, and the worker's holdings are its state."""
    v = view(partitions=None)
    for name, value in (
        ("name", "other"),
        ("indexes", ()),
        ("value_type", dict),
        ("internal", True),
    ):
        with pytest.raises(FrozenInstanceError):
            setattr(v, name, value)
    assert (v.name, v.indexes, v.partitions, v.generation) == ("rows", ("owner",), None, 1)
    v.partitions, v.generation = 4, 2  # the engine learns them as the worker starts
    assert (v.state.partitions, v.state.generation, v.declared_partitions) == (4, 2, None)
    assert (v.partitions, v.generation) == (4, 2)
    assert v.stores is v.state.stores and v.status is v.state.status
    app = belvedere.App("declared")
    balances = app.view("balances", value=int, partitions=3)
    assert balances.partitions == 3 and not balances.internal and app.views["balances"] is balances

    class Noted(belvedere.Event):
        text: str

    app.trace_flows(app.event_topic("notes", Noted))
    assert app.views["trace"].internal and app.views["trace"].value_type is dict


def test_restore_progress_gives_rate_and_eta() -> None:
    status = PartitionStatus(restore_total=1_000, restore_done=250, restore_started=100.0)
    assert status.restore_rate(now=102.0) == 125.0
    assert status.restore_eta(now=102.0) == 6.0
    assert PartitionStatus(restore_started=100.0).restore_rate(now=101.0) is None
    status.state, status.restore_done, status.restore_finished = "serving", 1_000, 104.0
    assert status.restore_rate(now=500.0) == 250.0 and status.restore_eta() == 0.0


def test_a_pending_checkpoint_the_log_holds_whole_is_confirmed_by_the_restore(
    tmp_path: Path, budget: StoreBudget
) -> None:
    """A crash after the changelog acknowledged a checkpoint but before the local confirm:
    the restore finds the checkpoint complete, so nothing is written again (a change feed
    would otherwise show the same change twice). Had it been torn, its rows stay pending."""
    v = view(indexes=())
    enc = v.encode_value
    first = {b"a": enc(Row(owner="x", total=1))}
    second = {b"a": enc(Row(owner="x", total=2)), b"b": enc(Row(owner="y", total=1))}
    whole = as_log([(first, {("src", 0): 4}), (second, {("src", 0): 6})])
    for name, log in (("whole", whole), ("torn", whole[:2])):
        store = PartitionStore(tmp_path / f"{name}.db", budget)
        store.write(first, {}, 1, {("src", 0): 4}, None, pending=True)
        store.confirm(0, first)
        store.write(second, {}, 1, {("src", 0): 6}, None, pending=True)
        restorer = Restorer(v, store)
        restorer.feed(log[1:])  # a restore reads on from the confirmed changelog offset
        if name == "whole":
            assert restorer.finish() == set()
            assert store.pending_keys() == [] and store.changelog_offset() == 2
        else:
            assert restorer.finish() == {b"a"}
            assert sorted(store.pending_keys()) == [b"a", b"b"]
        assert store.source_offsets() == {("src", 0): 6}
        store.close()


def _corrupt_middle_of_an_sst(db: Path) -> None:
    sst = next(db.glob("*.sst"))
    with open(sst, "r+b") as f:
        f.seek(sst.stat().st_size // 3)
        f.write(b"\xa5" * 64)


def _overwrite_manifest(db: Path) -> None:
    manifest = next(db.glob("MANIFEST-*"))
    with open(manifest, "r+b") as f:
        f.seek(10)
        f.write(b"\xa5" * 64)


DAMAGE = {
    "sst bytes": _corrupt_middle_of_an_sst,
    "sst truncated": lambda db: os.truncate(next(db.glob("*.sst")), 100),
    "sst deleted": lambda db: next(db.glob("*.sst")).unlink(),
    "MANIFEST bytes": _overwrite_manifest,
    "MANIFEST deleted": lambda db: next(db.glob("MANIFEST-*")).unlink(),
    "CURRENT garbage": lambda db: (db / "CURRENT").write_text("garbage\n"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_store_is_moved_aside_and_restored_from_its_changelog(
    tmp_path: Path, budget: StoreBudget, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    v = view(indexes=())
    rows = {b"k%05d" % i: v.encode_value(Row(owner="o", total=i)) for i in range(5_000)}
    log = as_log([(rows, {("src", 0): 5_000})])
    store = PartitionStore(tmp_path / "0.db", budget)
    store.write(rows, {}, len(rows), {("src", 0): 5_000}, len(log) - 1)
    store.close()  # flushed: the rows are in an .sst
    DAMAGE[damage](tmp_path / "0.db")

    with caplog.at_level(logging.WARNING, logger="belvedere.tables.store"):
        store = open_partition(v, tmp_path, budget)
    assert store.moved_aside == tmp_path / "0.db.corrupt" and store.moved_aside.is_dir()
    assert "is damaged" in caplog.text and "rebuilding it from the changelog" in caplog.text
    assert store.count() == 0 and store.changelog_offset() is None  # nothing half-read
    restorer = Restorer(v, store)
    restorer.feed(log)
    assert restorer.finish() == set()
    assert dict(store.rows()) == rows and store.count() == 5_000
    assert store.source_offsets() == {("src", 0): 5_000}


def test_an_intact_store_opens_as_it_was_and_a_locked_one_is_not_taken_for_damaged(
    tmp_path: Path, budget: StoreBudget
) -> None:
    store = PartitionStore(tmp_path / "0.db", budget)
    store.write({b"a": b"1"}, {}, 1, {("src", 0): 1}, 0)
    with pytest.raises(Exception, match="lock"):  # held by the open one: an error, not damage
        PartitionStore(tmp_path / "0.db", budget)
    assert not (tmp_path / "0.db.corrupt").exists()
    store.close()
    again = PartitionStore(tmp_path / "0.db", budget)
    assert again.moved_aside is None and again.get(b"a") == b"1" and again.count() == 1


def test_a_scan_that_meets_a_damaged_block_raises_instead_of_stopping_short(
    tmp_path: Path, budget: StoreBudget
) -> None:
    import rocksdict

    from belvedere.streams.rocksdb_scan import scan_prefix

    path = tmp_path / "raw.db"
    db = rocksdict.Rdict(str(path), options=budget.options())
    for i in range(20_000):
        db.put(b"r%05d" % i, b"v" * 50)
    db.close()
    _corrupt_middle_of_an_sst(path)
    db = rocksdict.Rdict(str(path), options=budget.options())  # opens: blocks are read lazily
    try:
        with pytest.raises(Exception, match="Corruption"):
            for _ in scan_prefix(db, b"r"):
                pass
    finally:
        db.close()
