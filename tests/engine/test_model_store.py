"""The model store: add (link or copy), list, show, remove, resolve, and its refusals."""

from __future__ import annotations

import json
import os

import pytest

from engine.errors import InvalidArgument, ModelExists, ModelFileError, ModelNotFound, ProtectedModel, UnsupportedModel
from engine.loader import DEFAULT_MODEL_NAME, load_model
from engine.model_store import ModelStore


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "data")


def test_added_gguf_is_hard_linked_and_listed_with_its_facts(store, tiny_ggufs):
    src = tiny_ggufs("qwen2")
    entry = store.add(src, "tiny-qwen")
    stored = store.path_of("tiny-qwen")
    assert stored.parent == store.root / "tiny-qwen"
    assert os.stat(stored).st_ino == os.stat(src).st_ino  # same filesystem: linked, not copied
    listed = {e["name"]: e for e in store.list()}
    assert listed["tiny-qwen"] == entry | {"default": False}
    assert (entry["format"], entry["arch"], entry["quant"]) == ("gguf", "qwen2", "F32")
    assert entry["size"] == src.stat().st_size
    assert entry["params"] == load_model(stored).meta["params"]


def test_copy_flag_copies_instead_of_linking(store, tiny_ggufs):
    src = tiny_ggufs("qwen2")
    store.add(src, "copied", copy=True)
    assert os.stat(store.path_of("copied")).st_ino != os.stat(src).st_ino


def test_added_hf_directory_is_stored_and_loads(store, tiny_models):
    tiny = tiny_models("llama_tied")
    entry = store.add(tiny.path, "tiny-llama")
    assert entry["format"] == "hf"
    assert entry["arch"] == "llama"
    assert (store.root / "tiny-llama" / "config.json").is_file()
    assert load_model(store.resolve("tiny-llama")).config.n_layers == 2


def test_name_defaults_to_the_file_stem(store, tiny_ggufs):
    entry = store.add(tiny_ggufs("qwen2_untied"))
    assert entry["name"] == "qwen2_untied"


def test_index_survives_a_new_store_object(store, tiny_ggufs, tmp_path):
    store.add(tiny_ggufs("qwen2"), "persisted")
    again = ModelStore(tmp_path / "data")
    assert "persisted" in {e["name"] for e in again.list()}
    assert json.loads(again.index_path.read_text())["models"]["persisted"]["format"] == "gguf"


def test_show_gives_config_and_file_metadata(store, tiny_ggufs):
    store.add(tiny_ggufs("qwen2"), "shown")
    info = store.show("shown")
    assert info["config"]["n_kv_heads"] == 2
    assert info["config"]["attn_bias"] is True
    assert info["metadata"]["general.architecture"] == "qwen2"
    assert info["metadata"]["tokenizer.ggml.tokens"].startswith("<")  # big arrays are summarised


def test_remove_deletes_the_files_and_the_entry(store, tiny_ggufs):
    src = tiny_ggufs("qwen2")
    store.add(src, "gone")
    store.remove("gone")
    assert not (store.root / "gone").exists()
    assert "gone" not in {e["name"] for e in store.list()}
    assert src.is_file()  # the original is untouched


def test_default_model_is_listed_without_being_copied(store, smollm2_path):
    default = store.list()[0]
    assert default["name"] == DEFAULT_MODEL_NAME
    assert default["default"] is True
    assert default["path"] == str(smollm2_path)
    assert (default["arch"], default["quant"], default["params"]) == ("llama", "Q4_1", 134_515_008)
    assert not store.root.exists() or not any(store.root.iterdir())
    assert store.resolve(DEFAULT_MODEL_NAME) == smollm2_path


def test_resolve_accepts_a_path_on_disk(store, tiny_ggufs):
    assert store.resolve(str(tiny_ggufs("qwen2"))) == tiny_ggufs("qwen2")


# -- refusals --------------------------------------------------------------------------------------------------------
def test_adding_a_taken_name_is_a_conflict(store, tiny_ggufs):
    store.add(tiny_ggufs("qwen2"), "taken")
    with pytest.raises(ModelExists) as err:
        store.add(tiny_ggufs("qwen2_untied"), "taken")
    assert err.value.code == "conflict"
    assert "'taken'" in err.value.message


def test_the_default_name_cannot_be_taken(store, tiny_ggufs):
    with pytest.raises(ModelExists):
        store.add(tiny_ggufs("qwen2"), DEFAULT_MODEL_NAME)


@pytest.mark.parametrize("name", ["Has Space", "../escape", "", "-lead", "x" * 65, "UPPER"])
def test_invalid_names_are_refused(store, tiny_ggufs, name):
    with pytest.raises(InvalidArgument) as err:
        store.add(tiny_ggufs("qwen2"), name)
    assert err.value.code == "bad_request"
    assert "invalid model name" in err.value.message


def test_corrupt_file_is_refused_before_anything_is_stored(store, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 10)
    with pytest.raises(ModelFileError):
        store.add(bad, "bad")
    assert not (store.root / "bad").exists()
    assert [e["name"] for e in store.list() if not e["default"]] == []


def test_unsupported_architecture_is_refused_before_anything_is_stored(store, tiny_models, tmp_path):
    import shutil

    d = tmp_path / "neox"
    shutil.copytree(tiny_models("qwen2").path, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModel):
        store.add(d, "neox")
    assert not (store.root / "neox").exists()


def test_missing_source_is_not_found(store, tmp_path):
    with pytest.raises(ModelNotFound) as err:
        store.add(tmp_path / "nothing.gguf", "x")
    assert err.value.code == "not_found"


def test_removing_the_default_is_forbidden(store):
    with pytest.raises(ProtectedModel) as err:
        store.remove(DEFAULT_MODEL_NAME)
    assert err.value.code == "forbidden"


@pytest.mark.parametrize("op", ["remove", "show", "path_of", "resolve"])
def test_unknown_name_is_not_found(store, op):
    with pytest.raises(ModelNotFound) as err:
        getattr(store, op)("nobody")
    assert err.value.code == "not_found"
    assert "'nobody'" in err.value.message


def test_hf_directory_without_tokenizer_is_refused_before_anything_is_stored(store, tiny_models, tmp_path):
    import shutil

    from engine.errors import TokenizerError

    d = tmp_path / "notok"
    shutil.copytree(tiny_models("qwen2").path, d)
    (d / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError):
        store.add(d, "notok")
    assert not (store.root / "notok").exists()


def test_concurrent_adds_of_one_name_admit_exactly_one(store, tiny_ggufs):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    source = tiny_ggufs("qwen2")  # built once, before the threads race
    barrier = threading.Barrier(4)

    def add() -> str:
        barrier.wait(timeout=10)
        try:
            store.add(source, "raced")
        except ModelExists:
            return "conflict"
        return "added"

    with ThreadPoolExecutor(4) as pool:
        outcomes = sorted(pool.map(lambda _: add(), range(4)))
    assert outcomes == ["added", "conflict", "conflict", "conflict"]
    assert [e["name"] for e in store.list() if not e["default"]] == ["raced"]
