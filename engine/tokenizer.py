"""The engine's tokenizer: a Hugging Face ``tokenizers.Tokenizer`` plus what generation needs around it.

Every tokenizer here is a ``tokenizers`` object (never a hand-written BPE): built from a ``tokenizer.json``,
rebuilt from the vocabulary a GGUF file carries in its metadata (the way llama.cpp reads it), or trained
from scratch for a new model. Around it sit the ids generation needs (BOS, EOS, the set of ids that end a
turn) and the chat template, so one object answers "what text does this conversation become, and when does
the answer stop".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.chat_template import render_chat_template
from engine.errors import TokenizerError

if TYPE_CHECKING:
    import tokenizers

# Tokens that end an assistant turn in the chat formats we meet; whichever the vocabulary has become stop ids.
END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
)

# llama.cpp token types (``tokenizer.ggml.token_type``).
_CONTROL, _USER_DEFINED = 3, 4

# Pre-tokenizer split expressions by ``tokenizer.ggml.pre``, as llama.cpp's llama-vocab.cpp applies them.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_BY_PRE = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx", "pixtral"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2_SPLIT),
    **dict.fromkeys(("gpt-4o", "llama4"), _GPT4O_SPLIT),
}
# These split every digit apart before the GPT-2 byte-level regex (SmolLM, StarCoder).
_DIGITS_THEN_GPT2 = frozenset(("smollm", "starcoder", "refact"))


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _token_id(hf: tokenizers.Tokenizer, token: Any) -> int | None:
    if isinstance(token, Mapping):  # tokenizer_config.json may spell a token as an AddedToken dict
        token = token.get("content")
    return hf.token_to_id(token) if isinstance(token, str) else None


class Tokenizer:
    """A ``tokenizers.Tokenizer`` (``.hf``) with BOS/EOS/stop ids and the model's chat template."""

    def __init__(
        self,
        hf: tokenizers.Tokenizer,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        stop_ids: Iterable[int] = (),
        chat_template: str | None = None,
        add_bos: bool = False,
        pad_id: int | None = None,
    ) -> None:
        self.hf = hf
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.add_bos = add_bos  # whether the model expects BOS before a prompt (pass it to ``encode``)
        self.chat_template = chat_template
        stops = set(stop_ids)
        if eos_id is not None:
            stops.add(eos_id)
        # Only special tokens: a vocabulary may hold "</s>" as ordinary text, which must not end a reply.
        special = {tok.content: tid for tid, tok in hf.get_added_tokens_decoder().items() if tok.special}
        stops.update(special[text] for text in END_OF_TURN_TOKENS if text in special)
        self.stop_ids: set[int] = stops

    # -- core ----------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self.hf.get_vocab_size(with_added_tokens=True))

    @property
    def bos_token(self) -> str | None:
        return self.hf.id_to_token(self.bos_id) if self.bos_id is not None else None

    @property
    def eos_token(self) -> str | None:
        return self.hf.id_to_token(self.eos_id) if self.eos_id is not None else None

    @property
    def special_ids(self) -> set[int]:
        """Ids of special (control) tokens; ``decode(skip_special=True)`` drops these."""
        return {tid for tid, tok in self.hf.get_added_tokens_decoder().items() if tok.special}

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of ``text``; special tokens written in the text (``<|im_start|>``) map to their ids."""
        ids: list[int] = self.hf.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=skip_special))

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, tid: int) -> str | None:
        return self.hf.id_to_token(tid)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        """The prompt text for ``messages`` in the model's chat format (ChatML when it has none)."""
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            **extra,
        )

    # -- persistence -----------------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """The ``tokenizer_config.json`` that ``from_file`` reads back."""
        return {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.hf.id_to_token(self.pad_id) if self.pad_id is not None else None,
            "add_bos_token": self.add_bos,
            "chat_template": self.chat_template,
            "stop_tokens": sorted(t for t in (self.hf.id_to_token(i) for i in self.stop_ids) if t is not None),
        }

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(d / "tokenizer.json"))
        (d / "tokenizer_config.json").write_text(json.dumps(self.config_dict(), indent=2, ensure_ascii=False))

    # -- constructors ----------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, tokenizer_json: str | Path, config: Mapping[str, Any] | str | Path | None = None) -> Tokenizer:
        """From a ``tokenizer.json``; ``config`` is the ``tokenizer_config.json`` (dict or path) if any."""
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(tokenizer_json)
        try:
            hf = HFTokenizer.from_file(str(path))
        except FileNotFoundError as exc:
            raise TokenizerError(f"no tokenizer file at {path}") from exc
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerError(f"cannot read tokenizer {path}: {exc}") from exc
        if isinstance(config, str | Path):
            cpath = Path(config)
            try:
                config = json.loads(cpath.read_text()) if cpath.exists() else {}
            except (OSError, ValueError) as exc:
                raise TokenizerError(f"cannot read tokenizer config {cpath}: {exc}") from exc
        cfg = dict(config or {})
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
            template = named.get("default") or next(iter(named.values()), None)
        stop_ids = {i for i in (_token_id(hf, t) for t in cfg.get("stop_tokens", ())) if i is not None}
        stop_ids.update(int(i) for i in cfg.get("stop_token_ids", ()))
        bos_id = _token_id(hf, cfg.get("bos_token")) if cfg.get("bos_token_id") is None else cfg["bos_token_id"]
        add_bos = cfg.get("add_bos_token")
        if add_bos is None:  # Llama 3 style: the tokenizer.json post-processor is what adds BOS
            add_bos = bos_id is not None and hf.encode("", add_special_tokens=True).ids[:1] == [bos_id]
        return cls(
            hf,
            bos_id=bos_id,
            eos_id=_token_id(hf, cfg.get("eos_token")) if cfg.get("eos_token_id") is None else cfg["eos_token_id"],
            pad_id=_token_id(hf, cfg.get("pad_token")),
            stop_ids=stop_ids,
            chat_template=template if isinstance(template, str) else None,
            add_bos=bool(add_bos),
        )

    @classmethod
    def from_gguf_fields(cls, fields: Mapping[str, Any]) -> Tokenizer:
        """From GGUF metadata (``tokenizer.ggml.*`` keys as plain Python values), as llama.cpp builds it."""
        kind = fields.get("tokenizer.ggml.model")
        tokens = fields.get("tokenizer.ggml.tokens")
        if not tokens:
            raise TokenizerError("the GGUF file carries no tokenizer vocabulary (tokenizer.ggml.tokens)")
        types = list(fields.get("tokenizer.ggml.token_type") or [1] * len(tokens))
        if kind == "gpt2":
            hf = _gguf_byte_level_bpe(fields, tokens, types)
            add_bos_default = False
        elif kind == "llama":
            hf = _gguf_sentencepiece_bpe(fields, tokens, types)
            add_bos_default = True
        else:
            raise TokenizerError(
                f"unsupported GGUF tokenizer model {kind!r} (supported: 'gpt2' byte-level BPE, 'llama' sentencepiece)"
            )

        def opt_id(key: str) -> int | None:
            v = fields.get(key)
            return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

        stops = {i for i in (opt_id("tokenizer.ggml.eot_token_id"), opt_id("tokenizer.ggml.eom_token_id")) if i}
        add_bos = fields.get("tokenizer.ggml.add_bos_token")
        return cls(
            hf,
            bos_id=opt_id("tokenizer.ggml.bos_token_id"),
            eos_id=opt_id("tokenizer.ggml.eos_token_id"),
            pad_id=opt_id("tokenizer.ggml.padding_token_id"),
            stop_ids=stops,
            chat_template=fields.get("tokenizer.chat_template"),
            add_bos=add_bos_default if add_bos is None else bool(add_bos),
        )

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        *,
        chat_template: str | None = None,
    ) -> Tokenizer:
        """Train a byte-level BPE (GPT-2 style, so any text encodes) for a model trained from scratch.

        The first special token is EOS (document separator); with the default specials the model speaks
        ChatML, whose ``<|im_end|>`` ends a turn.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 256 + len(special_tokens):
            raise TokenizerError(f"vocab_size {vocab_size} is below the 256 byte tokens plus the special tokens")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(special_tokens),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer)
        eos = hf.token_to_id(special_tokens[0]) if special_tokens else None
        return cls(hf, bos_id=None, eos_id=eos, chat_template=chat_template)


def _added_tokens(tokens: Sequence[str], types: Sequence[int], keep: Any) -> list[Any]:
    from tokenizers import AddedToken

    out = []
    for tok, typ in zip(tokens, types, strict=False):
        if typ == _CONTROL and keep(tok):
            out.append(AddedToken(tok, normalized=False, special=True))
        elif typ == _USER_DEFINED and keep(tok):
            out.append(AddedToken(tok, normalized=False, special=False))
    return out


def _gguf_byte_level_bpe(fields: Mapping[str, Any], tokens: Sequence[str], types: Sequence[int]) -> Any:
    """GPT-2 style byte-level BPE from the vocabulary + merges, with the pre-tokenizer ``tokenizer.ggml.pre`` names."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    spelling = _byte_to_unicode()
    alphabet = set(spelling.values())
    vocab = {
        (t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))): i for i, t in enumerate(tokens)
    }
    merges = []
    for m in fields.get("tokenizer.ggml.merges") or ():
        parts = m.split(" ")
        if len(parts) != 2:
            raise TokenizerError(f"malformed BPE merge in the GGUF vocabulary: {m!r}")
        merges.append((parts[0], parts[1]))
    try:
        hf = HFTokenizer(
            models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
        )
    except Exception as exc:
        raise TokenizerError(f"the GGUF BPE vocabulary is inconsistent: {exc}") from exc
    pre = fields.get("tokenizer.ggml.pre") or "default"
    if pre in _SPLIT_BY_PRE:
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLIT_BY_PRE[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pre in _DIGITS_THEN_GPT2:
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    else:  # "default", "gpt2" and the many GPT-2-regex variants
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    # A control token spelled outside the byte alphabet is a llama.cpp mislabel; adding it would grow the vocab.
    hf.add_tokens(_added_tokens(tokens, types, keep=lambda t: set(t) <= alphabet))
    return hf


def _sentencepiece_merges(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """Merges implied by a scored sentencepiece vocabulary: every split of a piece into two known pieces, best
    piece score first — the order llama.cpp's SPM tokenizer merges in."""
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for piece, score in zip(tokens, scores, strict=True):
        local = [
            (piece[:k], piece[k:], score) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab
        ]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        found.extend(local)
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in found]


def _gguf_sentencepiece_bpe(fields: Mapping[str, Any], tokens: Sequence[str], types: Sequence[int]) -> Any:
    """Llama/sentencepiece vocabulary (tokens + scores) as BPE with byte fallback, as llama.cpp tokenizes it."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    scores = fields.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise TokenizerError("a sentencepiece GGUF vocabulary needs one score per token (tokenizer.ggml.scores)")
    unk = fields.get("tokenizer.ggml.unknown_token_id")
    vocab = {t: i for i, t in enumerate(tokens)}
    try:
        hf = HFTokenizer(
            models.BPE(
                vocab=vocab,
                merges=_sentencepiece_merges(tokens, [float(s) for s in scores]),
                unk_token=tokens[int(unk)] if unk is not None else None,
                fuse_unk=True,
                byte_fallback=True,
            )
        )
    except Exception as exc:
        raise TokenizerError(f"the GGUF sentencepiece vocabulary is inconsistent: {exc}") from exc
    prefix = fields.get("tokenizer.ggml.add_space_prefix")
    prefix = True if prefix is None else bool(prefix)
    hf.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    hf.decoder = decoders.Sequence(steps)
    hf.add_tokens(_added_tokens(tokens, types, keep=lambda t: True))
    return hf
