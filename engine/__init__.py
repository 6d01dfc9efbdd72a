"""Enigma's AI engine: a Llama-family transformer in PyTorch with loaders, tokenizers, sampling and
batched generation. Plain library code: it knows nothing of the bus, the daemon or asyncio transports.
Importing the package is cheap; torch is imported by the submodules that need it.
"""
