"""The worker process without faust's fixed waits: the table manager registers the tables at
once, and a stopping worker waits for its cancelled tasks only as long as they take (at
most its grace). That what a stop commits survives, and that restored tables are there, is
tested with real workers (tests/test_brokers.py, tests/test_projections.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

import belvedere
from belvedere.compat import mode as worker_module
from belvedere.worker import TableManager, Worker


def test_belvedere_apps_use_belvedere_s_worker_and_table_manager(tmp_path) -> None:
    app = belvedere.App("w", data_dir=tmp_path)
    assert app.conf.Worker is Worker
    assert isinstance(app.tables, TableManager)


async def test_the_table_manager_registers_the_tables_without_sleeping(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = belvedere.App("w", data_dir=tmp_path).tables
    calls: list[str] = []

    async def record(what: str) -> None:
        calls.append(what)

    monkeypatch.setattr(manager, "sleep", lambda seconds: record(f"sleep {seconds}"))
    monkeypatch.setattr(manager, "_update_channels", lambda: record("register"))
    monkeypatch.setattr(manager.recovery, "start", lambda: record("recovery"))
    await manager.on_start()
    assert calls == ["register", "recovery"]


def _exit_grace(*, task_takes: float | None) -> tuple[float, bool]:
    """Run the worker's last step on a loop holding one cancelled task that ends after
    ``task_takes`` seconds (None: never); how long it took, and whether the task ended."""
    loop = asyncio.new_event_loop()
    try:

        async def stubborn() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if task_takes is None:
                    await asyncio.Event().wait()  # ignores the cancel
                await asyncio.sleep(task_takes)

        task = loop.create_task(stubborn())
        loop.run_until_complete(asyncio.sleep(0))
        task.cancel()
        began = time.monotonic()
        loop.run_until_complete(Worker._sentinel_task(None))  # type: ignore[arg-type]
        took = time.monotonic() - began
        ended = task.done()
        if not ended:
            task.cancel()
            loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        return took, ended
    finally:
        loop.close()


def test_a_stopping_worker_waits_for_its_cancelled_tasks_only_as_long_as_they_take(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_module, "EXIT_GRACE", 5.0)
    took, ended = _exit_grace(task_takes=0.05)
    assert ended and 0.05 <= took < 0.9  # mode waited a second whatever the tasks did


def test_a_task_that_ignores_its_cancel_holds_the_exit_for_the_grace_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_module, "EXIT_GRACE", 0.2)
    took, ended = _exit_grace(task_takes=None)
    assert not ended and 0.2 <= took < 2.0
