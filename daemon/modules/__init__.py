"""The registry of built-in modules: name → ``"module.path:ClassName"``.

The core never imports a concrete module by name; the manager imports a class from here only when it is
listed or loaded, so a module's heavy dependencies stay behind its ``load()``. Add one line per module.
"""

from __future__ import annotations

REGISTRY: dict[str, str] = {
    "echo": "daemon.modules.echo:EchoModule",
    "system": "daemon.modules.system:SystemModule",
    "llm": "daemon.modules.llm:NativeLLMModule",
    "ollama": "daemon.modules.llm:OllamaLLMModule",
    "llamacpp": "daemon.modules.llm:LlamaCppLLMModule",
    "chat": "daemon.modules.chat:ChatModule",
    "mqtt": "daemon.modules.mqtt:MqttModule",
    "robots": "daemon.modules.robots:RobotsModule",
    "peers": "daemon.modules.peers:PeersModule",
}
