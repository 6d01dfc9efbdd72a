"""A backup taken while the real default model is generating a chat reply restores the history as it stood."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.sdk import Cancelled, Client
from tests.conftest import DaemonProcess, StartDaemon
from tests.ops.conftest import chat_to_end, restore, take_backup

pytestmark = [pytest.mark.model, pytest.mark.slow]


async def test_backup_during_a_real_generation_restores_the_history_so_far(
    serving_daemon: DaemonProcess, daemon_factory: StartDaemon, tmp_path: Path
) -> None:
    src = serving_daemon  # a backup only reads; the assertions look at this test's session alone
    async with Client(src.rpc, src.events, timeout=120.0) as c:
        sid = (await chat_to_end(c, {"text": "What is the capital of France?", "temperature": 0, "max_tokens": 24}))[
            "session_id"
        ]
        story = {"session_id": sid, "text": "Tell me a long story about Paris.", "temperature": 0, "max_tokens": 200}
        async with c.stream("chat.send", story) as s:
            first = (await s.__anext__())["text"]
            data, _ = await take_backup(c)
            # The reply was still growing while the backup ran; the rest of the story would only cost time.
            await s.cancel()
            with pytest.raises(Cancelled):
                async for _ in s:
                    pass
        final = (await c.call("session.history", {"id": sid}))["messages"]

    dst = daemon_factory(config='[modules]\nautoload = ["chat"]\n', data_dir=tmp_path / "dst")
    async with Client(dst.rpc, dst.events, timeout=60.0) as c:
        await restore(c, data)
        restored = (await c.call("session.history", {"id": sid}))["messages"]

    assert [(m["role"], m["text"]) for m in restored[:3]] == [(m["role"], m["text"]) for m in final[:3]]
    assert len(restored) == 4
    partial = restored[3]
    assert partial["role"] == "assistant"
    assert partial["text"].startswith(first)  # what had been streamed when the backup started is there
    assert final[3]["text"].startswith(partial["text"])  # a consistent snapshot of the reply as it grew
    assert not partial["complete"] or partial["text"] == final[3]["text"]  # only a finished reply is complete
