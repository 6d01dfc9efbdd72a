"""The chat tables on a real SQLite file through the daemon's Store (migrations included)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus.errors import Conflict, NotFound
from daemon.modules.chat.store import MIGRATIONS, ChatStore
from daemon.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ChatStore]:
    Store.register_migrations("chat", MIGRATIONS)
    s = await Store.open(tmp_path)
    try:
        yield ChatStore(s)
    finally:
        await s.close()


async def test_messages_come_back_in_order_with_their_fields(store: ChatStore) -> None:
    s = await store.new_session("t")
    await store.add_message(s["id"], "user", "hi")
    m = await store.add_message(s["id"], "assistant", "", model="m", complete=False)
    await store.update_message(m["id"], "hello", 2, complete=True, timings={"ttft_ms": 5.0}, finish_reason="stop")
    history = await store.history(s["id"])
    assert [(x["role"], x["text"], x["complete"]) for x in history] == [
        ("user", "hi", True),
        ("assistant", "hello", True),
    ]
    assert (history[1]["tokens"], history[1]["model"], history[1]["timings"], history[1]["finish_reason"]) == (
        2,
        "m",
        {"ttft_ms": 5.0},
        "stop",
    )


async def test_a_growing_reply_stays_incomplete_until_finalised(store: ChatStore) -> None:
    s = await store.new_session()
    m = await store.add_message(s["id"], "assistant", "", complete=False)
    await store.update_message(m["id"], "partial", 1)
    got = await store.get_message(m["id"])
    assert (got["text"], got["complete"]) == ("partial", False)


async def test_history_limit_returns_the_latest_oldest_first(store: ChatStore) -> None:
    s = await store.new_session()
    for i in range(5):
        await store.add_message(s["id"], "user", str(i))
    assert [m["text"] for m in await store.history(s["id"], limit=2)] == ["3", "4"]


async def test_data_survives_reopening_the_database(tmp_path: Path) -> None:
    Store.register_migrations("chat", MIGRATIONS)
    db = await Store.open(tmp_path)
    sid = (await ChatStore(db).new_session("kept"))["id"]
    await db.close()
    db = await Store.open(tmp_path)
    try:
        assert (await ChatStore(db).get_session(sid))["title"] == "kept"
        assert (await db.versions())["chat"] == len(MIGRATIONS)
    finally:
        await db.close()


async def test_session_counts_messages(store: ChatStore) -> None:
    s = await store.new_session()
    await store.add_message(s["id"], "user", "a")
    assert (await store.get_session(s["id"]))["messages"] == 1
    assert [x["messages"] for x in await store.list_sessions()] == [1]


async def test_persona_upsert_keeps_created_time(store: ChatStore) -> None:
    first = await store.set_persona("p", "one", sampling={"temperature": 0.5})
    second = await store.set_persona("p", "two")
    assert (second.system_prompt, second.sampling, second.created) == ("two", {}, first.created)
    assert [p.name for p in await store.list_personas()] == ["p"]


async def test_deleting_a_persona_in_use_is_refused(store: ChatStore) -> None:
    await store.set_persona("p", "x")
    await store.new_session(persona="p")
    with pytest.raises(Conflict):
        await store.delete_persona("p")


async def test_unknown_rows_are_not_found(store: ChatStore) -> None:
    with pytest.raises(NotFound, match="no such session: x"):
        await store.rename_session("x", "t")
    with pytest.raises(NotFound, match="no such message: 99"):
        await store.get_message(99)
    with pytest.raises(NotFound, match="no such persona: q"):
        await store.delete_persona("q")
