"""Tokenizers built from GGUF metadata, tokenizer.json and training, against transformers' own; chat templates."""

from __future__ import annotations

import pytest

from engine.chat_template import CHATML_TEMPLATE, render_chat_template
from engine.errors import TokenizerError
from engine.tokenizer import Tokenizer

TEXTS = [
    "Hello, world!",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # recursion\n",
    'x = {"key": [1, 2, 3]};\tconsole.log(x?.key ?? null);',
    "naïve café résumé — “quotes” and ‘apostrophes’ … ≠ ∞",
    "日本語のテキストと中文文本，한국어 텍스트도 있습니다。",
    "emoji 😀🚀👩‍👩‍👧‍👦 flags 🇫🇷 and skin tones 👍🏽",
    "   leading spaces, trailing spaces   ",
    "tabs\t\tand\n\n\nnewlines\r\n and \u00a0 non-breaking",
    "numbers 1234567890 3.14159 1e-10 0xFF",
    "I'm sure they'll say we've done it, won't they?",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>plain text after a special token",
    "",
    " ",
    "a" * 300,
]
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 日本語 😀?"},
    ],
]


@pytest.fixture(scope="module")
def smollm2_tokenizers(smollm2_path, smollm2_dir):
    """(ours built from the GGUF metadata, transformers' built from the same GGUF)."""
    from transformers import AutoTokenizer

    from engine.gguf_loader import gguf_metadata, open_gguf

    ours = Tokenizer.from_gguf_fields(gguf_metadata(open_gguf(smollm2_path)))
    theirs = AutoTokenizer.from_pretrained(smollm2_dir, gguf_file=smollm2_path.name)
    return ours, theirs


@pytest.mark.model
@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_gguf_tokenizer_encodes_like_transformers(smollm2_tokenizers, text):
    ours, theirs = smollm2_tokenizers
    assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]


@pytest.mark.model
@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_gguf_tokenizer_round_trips(smollm2_tokenizers, text):
    ours, _ = smollm2_tokenizers
    assert ours.decode(ours.encode(text), skip_special=False) == text


@pytest.mark.model
def test_smollm2_digits_are_split_one_per_token(smollm2_tokenizers):
    ours, _ = smollm2_tokenizers
    ids = ours.encode("2024")
    assert [ours.decode([i]) for i in ids] == ["2", "0", "2", "4"]


@pytest.mark.model
def test_smollm2_numeric_characters_are_isolated_as_llamacpp_does(smollm2_tokenizers):
    """llama.cpp's "smollm" pre-tokenizer (and SmolLM2's own tokenizer.json) isolate every \\p{N} character, so
    " ½" is two pieces. transformers' GGUF converter ignores ``tokenizer.ggml.pre`` here and merges "Ġ½"; we follow
    llama.cpp and the original tokenizer, which is why "½" is not in the comparison set above."""
    ours, _ = smollm2_tokenizers
    assert [ours.decode([i]) for i in ours.encode("a ½")] == ["a", " ", "½"]


@pytest.mark.model
def test_smollm2_special_ids_and_stops(smollm2_tokenizers):
    ours, _ = smollm2_tokenizers
    assert ours.vocab_size == 49152
    assert (ours.bos_id, ours.eos_id) == (1, 2)
    assert ours.token_to_id("<|im_end|>") in ours.stop_ids
    assert ours.token_to_id("<|endoftext|>") in ours.stop_ids
    assert ours.encode("<|im_start|>") == [1]
    assert ours.decode([1, 28120, 2]) == "hello"


@pytest.mark.model
@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_smollm2_chat_template_renders_like_transformers(smollm2_tokenizers, conversation, generation_prompt):
    ours, theirs = smollm2_tokenizers
    messages = CONVERSATIONS[conversation]
    want = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert ours.apply_chat_template(messages, add_generation_prompt=generation_prompt) == want


def test_sentencepiece_gguf_vocabulary_encodes_like_transformers(tmp_path):
    """A llama-style (tokens + scores, byte fallback) vocabulary, as llama.cpp stores Llama 2 / Mistral ones."""
    import gguf
    from transformers import AutoTokenizer

    from engine.gguf_loader import gguf_metadata, open_gguf

    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "hello",
        "world",
        "code",
        "def",
        "return",
        "value",
        "wörld",
        "你好",
    ]
    counts: dict[str, int] = {}
    for word in words:
        s = "▁" + word
        for i in range(len(s)):
            for j in range(i + 1, len(s) + 1):
                counts[s[i:j]] = counts.get(s[i:j], 0) + 1
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [2, 3, 3] + [6] * 256
    pieces = sorted(counts, key=lambda p: (-counts[p], p))
    tokens += pieces
    types += [1] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    w = gguf.GGUFWriter(str(tmp_path / "sp.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = Tokenizer.from_gguf_fields(gguf_metadata(open_gguf(tmp_path / "sp.gguf")))
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file="sp.gguf")
    for text in ["the quick brown fox", "hello wörld 你好 😀", "return value\n\tdef", "<s>the</s>", "xyz QQQ"]:
        assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"], text
        assert ours.decode(ours.encode(text)) == theirs.decode(
            theirs(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True
        )
    assert ours.add_bos
    assert ours.encode("the", add_bos=True)[0] == 1


def test_sentencepiece_vocabulary_without_scores_is_refused():
    with pytest.raises(TokenizerError) as err:
        Tokenizer.from_gguf_fields({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<unk>", "a"]})
    assert "scores" in err.value.message


# -- trained tokenizers and tokenizer.json --------------------------------------------------------------------------
def test_trained_tokenizer_round_trips_any_text(trained_tokenizer):
    for text in TEXTS:
        assert trained_tokenizer.decode(trained_tokenizer.encode(text), skip_special=False) == text


def test_trained_tokenizer_keeps_special_tokens_whole(trained_tokenizer):
    end = trained_tokenizer.token_to_id("<|im_end|>")
    assert trained_tokenizer.encode("hi<|im_end|>")[-1] == end
    assert trained_tokenizer.decode(trained_tokenizer.encode("hi<|im_end|>")) == "hi"
    assert end in trained_tokenizer.stop_ids
    assert trained_tokenizer.eos_id == trained_tokenizer.token_to_id("<|endoftext|>")
    assert trained_tokenizer.vocab_size <= 400


def test_trained_tokenizer_saves_and_loads_from_file(trained_tokenizer, tmp_path):
    trained_tokenizer.save(tmp_path)
    again = Tokenizer.from_file(tmp_path / "tokenizer.json", tmp_path / "tokenizer_config.json")
    assert again.encode(TEXTS[5]) == trained_tokenizer.encode(TEXTS[5])
    assert (again.eos_id, again.stop_ids) == (trained_tokenizer.eos_id, trained_tokenizer.stop_ids)


def test_too_small_vocabulary_is_refused():
    with pytest.raises(TokenizerError) as err:
        Tokenizer.train(["abc"], vocab_size=100)
    assert "vocab_size 100" in err.value.message


def test_missing_tokenizer_file_is_a_tokenizer_error(tmp_path):
    with pytest.raises(TokenizerError) as err:
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert err.value.code == "bad_request"
    assert "tokenizer.json" in err.value.message


def test_corrupt_tokenizer_file_is_a_tokenizer_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError) as err:
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert "cannot read tokenizer" in err.value.message


def test_add_bos_prepends_once(trained_tokenizer, tmp_path):
    trained_tokenizer.save(tmp_path)
    tok = Tokenizer.from_file(tmp_path / "tokenizer.json", {"bos_token": "<|im_start|>"})
    bos = tok.token_to_id("<|im_start|>")
    assert tok.encode("hi", add_bos=True)[0] == bos
    assert tok.encode("<|im_start|>hi", add_bos=True).count(bos) == 1
    assert tok.encode("hi")[0] != bos


# -- chat templates -------------------------------------------------------------------------------------------------
def test_model_without_template_speaks_chatml(trained_tokenizer):
    out = trained_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat_template(None, [{"role": "user", "content": "hi"}]) == out
    assert CHATML_TEMPLATE


def test_template_sees_bos_eos_and_generation_flag():
    template = (
        "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}{{ add_generation_prompt }}"
    )
    out = render_chat_template(
        template, [{"role": "user", "content": "x"}], bos_token="<s>", eos_token="</s>", add_generation_prompt=False
    )
    assert out == "<s>x</s>False"


def test_template_tojson_keeps_unicode_and_html_characters():
    out = render_chat_template("{{ messages[0] | tojson }}", [{"role": "user", "content": "<b>日本</b> & 😀"}])
    assert out == '{"role": "user", "content": "<b>日本</b> & 😀"}'


def test_template_raise_exception_becomes_a_tokenizer_error():
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with user') }}{% endif %}"
    )
    with pytest.raises(TokenizerError) as err:
        render_chat_template(template, [{"role": "assistant", "content": "x"}])
    assert err.value.code == "bad_request"
    assert "Conversations must start with user" in err.value.message


def test_template_with_syntax_error_is_a_tokenizer_error():
    with pytest.raises(TokenizerError) as err:
        render_chat_template("{% for m in messages %}", [{"role": "user", "content": "x"}])
    assert "does not parse" in err.value.message


def test_template_cannot_escape_the_sandbox():
    with pytest.raises(TokenizerError) as err:
        render_chat_template(
            "{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", [{"role": "user", "content": "x"}]
        )
    assert "rejected" in err.value.message


def test_template_cannot_mutate_its_input():
    with pytest.raises(TokenizerError):
        render_chat_template("{{ messages.append(1) }}", [{"role": "user", "content": "x"}])


def test_message_without_role_is_refused():
    with pytest.raises(TokenizerError) as err:
        render_chat_template(None, [{"content": "x"}])
    assert "message 0" in err.value.message


@pytest.mark.parametrize("pre", ["default", "llama-bpe", "qwen2", "gpt-4o"])
def test_byte_level_gguf_pre_tokenizers_split_like_transformers(tmp_path, trained_tokenizer, pre):
    """Each ``tokenizer.ggml.pre`` family splits text with its own regex before BPE (Llama 3, Qwen2, GPT-4o …)."""
    import gguf
    from transformers import AutoTokenizer

    from engine.gguf_loader import gguf_metadata, open_gguf

    from .conftest import add_gguf_tokenizer

    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    add_gguf_tokenizer(w, trained_tokenizer, pre=pre)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = Tokenizer.from_gguf_fields(gguf_metadata(open_gguf(tmp_path / "t.gguf")))
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
    for text in [*TEXTS, "HTTPServer's camelCaseWord ISN'T", "x\r\n\r\n  y"]:
        assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"], text
        # The splits themselves, since a small vocabulary hides most differences between the regexes.
        pieces = [p for p, _ in ours.hf.pre_tokenizer.pre_tokenize_str(text)]
        assert pieces == [p for p, _ in theirs.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)], text


def test_only_special_end_tokens_become_stop_ids():
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel

    plain = HFTokenizer(WordLevel({"</s>": 0, "<|im_end|>": 1, "a": 2, "[UNK]": 3}, unk_token="[UNK]"))
    assert Tokenizer(plain).stop_ids == set()
    plain.add_special_tokens([AddedToken("<|im_end|>", special=True)])
    assert Tokenizer(plain, eos_id=2).stop_ids == {1, 2}


def test_bos_wanted_by_a_tokenizer_json_post_processor_sets_add_bos(trained_tokenizer, tmp_path):
    """Llama 3 checkpoints say "prepend BOS" only through tokenizer.json's post-processor."""
    from tokenizers import processors

    hf = Tokenizer.from_file(_saved(trained_tokenizer, tmp_path)).hf
    bos = hf.token_to_id("<|im_start|>")
    hf.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_file(tmp_path / "tokenizer.json", {"bos_token": "<|im_start|>"})
    assert tok.add_bos
    assert tok.encode("hi", add_bos=tok.add_bos)[0] == bos
    assert not Tokenizer.from_file(tmp_path / "tokenizer.json", {"bos_token": "<|im_end|>"}).add_bos


def _saved(tokenizer, directory):
    tokenizer.save(directory)
    return directory / "tokenizer.json"
