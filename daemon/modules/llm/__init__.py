"""LLM backends behind one interface (``daemon.modules.llm.base.Backend``): the native engine, llama.cpp and Ollama.

The daemon's LLM module owns one backend at a time; chat and ``llm.generate`` talk to it only through the
interface, so a backend can be swapped per model in config without touching a handler.
"""
