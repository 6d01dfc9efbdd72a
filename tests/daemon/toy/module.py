"""``toy``: the module recipe of ``docs/develop.md``, followed to the letter, so the recipe stays true.

One setting (``greeting``), one method (``toy.greet``), one event (``toy.greeted``), one core service used
(``Node``). ``tests/daemon/toy_daemon.py`` adds it to the registry; ``test_toy_module.py`` loads it through the
module manager of a real daemon and calls it over the bus.
"""

from __future__ import annotations

from typing import Any, Final

from bus.service import Call
from daemon.module import Module, method
from daemon.services import Node

TOY_GREETED: Final = "toy.greeted"  # {"name", "text", "node_id"}: someone was greeted

CONFIG_SCHEMA: Final = {
    "type": "object",
    "properties": {"greeting": {"type": "string", "minLength": 1, "maxLength": 64, "default": "hello"}},
    "additionalProperties": False,
}
GREET_SCHEMA: Final = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 64}},
    "required": ["name"],
}


class ToyModule(Module):
    name = "toy"
    description = "Greets whoever asks: the smallest module with a setting, a method and an event."
    config_schema = CONFIG_SCHEMA
    requires = (Node,)

    async def load(self) -> None:
        self.node = self.ctx.services.get(Node)
        self.ctx.serve(self)

    @method("toy.greet", access="device", schema=GREET_SCHEMA)
    async def greet(self, call: Call) -> dict[str, Any]:
        """``{"name"}`` → ``{"text"}``, the configured greeting; publishes ``toy.greeted``."""
        text = f"{self.ctx.config['greeting']}, {call.body['name']}"
        self.ctx.publish(TOY_GREETED, {"name": call.body["name"], "text": text, "node_id": self.node.node_id})
        return {"text": text}
