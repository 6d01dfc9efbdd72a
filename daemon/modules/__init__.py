"""The registry of built-in modules: name → ``"module.path:ClassName"``.

The core never imports a concrete module by name; the manager imports a class from here only when it is
listed or loaded, so a module's heavy dependencies stay behind its ``load()``. Add one line per module.
"""

from __future__ import annotations

REGISTRY: dict[str, str] = {
    "echo": "daemon.modules.echo.module:EchoModule",
    "system": "daemon.modules.system.module:SystemModule",
    "llm": "daemon.modules.llm.module:NativeLLMModule",
    "ollama": "daemon.modules.llm.module:OllamaLLMModule",
    "llamacpp": "daemon.modules.llm.module:LlamaCppLLMModule",
    "chat": "daemon.modules.chat.module:ChatModule",
    "mqtt": "daemon.modules.mqtt.module:MqttModule",
    "robots": "daemon.modules.robots.module:RobotsModule",
    "peers": "daemon.modules.peers.module:PeersModule",
}
