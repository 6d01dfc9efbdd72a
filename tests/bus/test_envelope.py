"""The codec's two ways of building an envelope — the dataclass and the hot-path maps — give the same bytes."""

from __future__ import annotations

from typing import Any

import pytest

from bus.envelope import (
    Envelope,
    answer_map,
    cancel_map,
    chunk_map,
    decode,
    encode,
    encode_map,
    error_map,
    event_map,
    request_map,
)
from bus.errors import NotFound

BODY = {"x": [1, 2.5, "three", b"four", None]}


@pytest.mark.parametrize(
    ("built", "reference"),
    [
        (request_map("i1", "sys.ping", BODY, 1.5), Envelope("request", "i1", BODY, method="sys.ping", ts=1.5)),
        (request_map("i1", "sys.ping", BODY), Envelope("request", "i1", BODY, method="sys.ping")),
        (answer_map("reply", "i2", "r", BODY), Envelope("reply", "i2", BODY, ref="r")),
        (answer_map("end", "i3", "r", BODY), Envelope("end", "i3", BODY, ref="r")),
        (chunk_map("i4", "r", 7, BODY), Envelope("chunk", "i4", BODY, ref="r", seq=7)),
        (event_map("i5", "t.x", BODY, 2.0), Envelope("event", "i5", BODY, topic="t.x", ts=2.0)),
        (cancel_map("i6", "r"), Envelope("cancel", "i6", {}, ref="r")),
        (error_map("i7", "r", NotFound("gone")), Envelope("error", "i7", NotFound("gone").to_body(), ref="r")),
    ],
)
def test_hot_path_maps_encode_like_the_dataclass_and_decode_back(built: dict[str, Any], reference: Envelope) -> None:
    assert encode_map(built) == encode(reference)
    assert decode(encode_map(built)) == reference
