"""The native backend's options are checked when the module is configured, before any model is read."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from daemon.modules.llm.native import NativeBackend, compile_cache_dir
from engine.errors import ModelFileError


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantize": "int3"}, "quantize must be auto, float, int8, int4 or none, got 'int3'"),
        ({"kernels": "int3"}, "kernels must be auto, float, int8, int4 or none, got 'int3'"),
        ({"compile": "fast"}, "compile must be auto, on or off, got 'fast'"),
        ({"compile": True}, "compile must be auto, on or off, got 'True'"),
    ],
)
def test_bad_native_options_are_refused(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NativeBackend("default", options, tmp_path)


def test_defaults_are_auto_quantize_and_auto_compile(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend = NativeBackend("default", {}, tmp_path)
    assert (backend.quantize, backend.compile, backend.max_batch) == ("auto", "auto", 8)
    assert caplog.records == []


def test_kernels_is_a_deprecated_name_for_quantize(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "enigma.llm.native"):
        assert NativeBackend("default", {"kernels": "int8"}, tmp_path).quantize == "int8"
    assert [r.getMessage() for r in caplog.records] == [
        "[modules.llm] kernels is deprecated: it picks the quantization, so it is now named quantize"
    ]


def test_quantize_wins_over_its_deprecated_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "enigma.llm.native"):
        assert NativeBackend("default", {"kernels": "int3", "quantize": "none"}, tmp_path).quantize == "none"
    assert [r.getMessage() for r in caplog.records] == [
        "[modules.llm] has both quantize and its deprecated name kernels: kernels is ignored"
    ]


def test_compiled_kernels_live_in_systemds_cache_directory_or_the_xdg_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHE_DIRECTORY", f"{tmp_path}/sys:{tmp_path}/other")
    assert compile_cache_dir() == tmp_path / "sys" / "inductor"
    monkeypatch.delenv("CACHE_DIRECTORY")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache_dir() == tmp_path / "xdg" / "enigma" / "inductor"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache_dir() == tmp_path / "home" / ".cache" / "enigma" / "inductor"


@pytest.mark.model
async def test_default_context_is_capped_and_the_engine_thread_ends_with_unload(tmp_path: Path) -> None:
    backend = NativeBackend("default", {"compile": "off", "max_batch": 2}, tmp_path)
    await backend.load()
    thread = backend._thread
    assert thread is not None
    assert thread.is_alive()
    assert backend.scheduler is not None
    assert backend.context_length == 4096  # SmolLM2 says 8192: the cache would be twice as large
    assert backend.scheduler.model.cache_info.max_seq == 4096
    assert backend.meta["compiled"] is False
    await backend.unload()
    assert not thread.is_alive()


async def test_a_load_failure_on_the_engine_thread_reaches_the_caller(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF but not really")
    backend = NativeBackend(str(bad), {"compile": "off"}, tmp_path)
    with pytest.raises(ModelFileError, match=r"bad\.gguf is truncated or corrupt"):
        await backend.load()
    assert backend.scheduler is None
