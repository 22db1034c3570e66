#!/usr/bin/env python3
"""Tiny tokenizers for the conformance suite, in Hugging Face cache layout.

The engines load their tokenizers by Hub repository id (sd-scripts:
library/strategy_sdxl.py, strategy_flux.py; musubi-tuner: wan/modules/t5.py,
flux/flux_utils.py).
Nothing here can reach the Hub, so this writes small stand-ins with the same
loader classes, special tokens and maximum lengths under

    <out>/hub/models--<org>--<name>/{refs/main, snapshots/<rev>/...}

which is what `huggingface_hub` resolves with HF_HUB_OFFLINE=1. Standard
library only: it runs on a bare host before any engine image exists (the image
build then proves each one loads offline with the engine's own loader class).

Token ids stay far below the real text encoders' vocabulary sizes (CLIP 49408,
T5 32128, umT5 256384), so the random-weight encoders accept every id.

Usage: make_tokenizers.py <out-dir>
"""
import json
import os
import string
import struct
import sys

REVISION = "0000000000000000000000000000000000c0ffee"


def bytes_to_unicode():
    """GPT-2/CLIP byte-to-unicode table (same as transformers' clip tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write(folder, name, content):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
        f.write(content if isinstance(content, str) else json.dumps(content, indent=1, ensure_ascii=False))


def snapshot(out, repo, subfolder=None):
    org, name = repo.split("/")
    base = os.path.join(out, "hub", f"models--{org}--{name}")
    write(os.path.join(base, "refs"), "main", REVISION)
    folder = os.path.join(base, "snapshots", REVISION)
    return os.path.join(folder, subfolder) if subfolder else folder


def clip_tokenizer(folder, pad_token):
    """CLIPTokenizer (slow): vocab.json + merges.txt. With no merges every word
    splits into byte characters, the last one with the `</w>` suffix, so the
    vocabulary holds all 256 byte characters in both forms. The special tokens
    come last, as in CLIP, so the end-of-text id is the largest id (the
    legacy pooled-output rule takes the argmax of the ids)."""
    chars = list(bytes_to_unicode().values())
    vocab = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    write(folder, "vocab.json", vocab)
    write(folder, "merges.txt", "#version: 0.2\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad_token}
    write(folder, "special_tokens_map.json", special)
    write(folder, "tokenizer_config.json", {**special, "model_max_length": 77, "do_lower_case": True, "errors": "replace", "tokenizer_class": "CLIPTokenizer", "add_prefix_space": False, "clean_up_tokenization_spaces": True})


def _varint(n):
    n &= (1 << 64) - 1  # negative int32 fields are sign-extended to 64 bits
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number, value):
    """One protobuf field: int -> varint, float -> fixed32, str/bytes -> length-delimited."""
    if isinstance(value, bool) or isinstance(value, int):
        return _varint(number << 3) + _varint(int(value))
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw


def sentencepiece_model(folder, pieces):
    """spiece.model for the slow T5Tokenizer (sentencepiece's ModelProto, protobuf
    written by hand: sentencepiece_model.proto field numbers). Unigram over the
    same pieces as tokenizer.json; <pad>=0, </s>=1, <unk>=2 as in T5, no <s>.
    The slow tokenizer is what musubi-tuner's flux_utils.load_t5xxl loads
    (T5Tokenizer.from_pretrained), and google/t5-v1_1-xxl ships this file."""
    normal, unknown, control = 1, 2, 3
    kinds = {"<pad>": control, "</s>": control, "<unk>": unknown}
    model = b"".join(_field(1, _field(1, piece) + _field(2, float(score)) + _field(3, kinds.get(piece, normal))) for piece, score in pieces)
    # TrainerSpec: model_type UNIGRAM, vocab_size, unk/bos/eos/pad ids and pieces.
    trainer = b"".join([_field(3, 1), _field(4, len(pieces)), _field(40, 2), _field(41, -1), _field(42, 1), _field(43, 0), _field(45, "<unk>"), _field(46, "<s>"), _field(47, "</s>"), _field(48, "<pad>")])
    # NormalizerSpec: no character map; dummy prefix, whitespace folding and escaping as T5's.
    normalizer = b"".join([_field(1, "identity"), _field(3, True), _field(4, True), _field(5, True)])
    model += _field(2, trainer) + _field(3, normalizer)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "spiece.model"), "wb") as f:
        f.write(model)


def t5_tokenizer(folder, tokenizer_class, with_sentencepiece=False):
    """T5-style fast tokenizer (tokenizer.json, Unigram over single characters):
    <pad>=0, </s>=1, <unk>=2 as in T5 and umT5, `</s>` appended to every text.
    with_sentencepiece: also spiece.model, the same vocabulary for the slow tokenizer."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    alphabet = string.ascii_letters + string.digits + string.punctuation
    for c in alphabet:
        pieces.append(("\u2581" + c, -3.0))
    for c in alphabet:
        pieces.append((c, -4.0))
    if with_sentencepiece:
        sentencepiece_model(folder, pieces)
    added = [
        {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, tok in enumerate(["<pad>", "</s>", "<unk>"])
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}},
        },
        "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
        "model": {"type": "Unigram", "unk_id": 2, "vocab": [list(p) for p in pieces], "byte_fallback": False},
    }
    write(folder, "tokenizer.json", tokenizer)
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    write(folder, "special_tokens_map.json", special)
    write(folder, "tokenizer_config.json", {**special, "extra_ids": 0, "additional_special_tokens": [], "model_max_length": 512, "tokenizer_class": tokenizer_class, "legacy": True, "clean_up_tokenization_spaces": True})


# Qwen3's chat template, reduced to what musubi's FLUX.2 / Z-Image embedders use: user turns,
# add_generation_prompt, and enable_thinking (false: the empty think block Qwen3's template writes).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def qwen2_tokenizer(folder):
    """Qwen2Tokenizer (slow, byte-level BPE): vocab.json + merges.txt with no merges,
    so every text splits into byte characters; Qwen's special tokens follow the 256
    byte characters, `<|endoftext|>` pads (as Qwen3's config), and the chat template
    musubi's Qwen3 embedders apply (tokenizer.apply_chat_template) is in tokenizer_config.json."""
    byte_chars = list(bytes_to_unicode().values())
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    vocab = {c: i for i, c in enumerate(byte_chars)}
    for tok in specials:
        vocab[tok] = len(vocab)
    write(folder, "vocab.json", vocab)
    write(folder, "merges.txt", "#version: 0.2\n")
    added = {
        str(vocab[tok]): {"content": tok, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": tok.startswith("<|")}
        for tok in specials
    }
    write(folder, "tokenizer_config.json", {
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "model_max_length": 131072,
        "split_special_tokens": False,
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "chat_template": QWEN3_CHAT_TEMPLATE,
    })


def main(out):
    # sd-scripts: SDXL text encoder 1 and FLUX CLIP-L (pad = end-of-text, as openai's config).
    clip_tokenizer(snapshot(out, "openai/clip-vit-large-patch14"), pad_token="<|endoftext|>")
    # sd-scripts: SDXL text encoder 2 (laion's config pads with "!"; strategy_sdxl.py then forces pad id 0).
    clip_tokenizer(snapshot(out, "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"), pad_token="!")
    # sd-scripts: FLUX T5-XXL (T5TokenizerFast); musubi-tuner: Kontext T5-XXL (T5Tokenizer, slow: spiece.model).
    t5_tokenizer(snapshot(out, "google/t5-v1_1-xxl"), "T5Tokenizer", with_sentencepiece=True)
    # musubi-tuner: WAN umT5, from the WAN repository's subfolder (AutoTokenizer).
    t5_tokenizer(snapshot(out, "Wan-AI/Wan2.1-T2V-14B", "google/umt5-xxl"), "T5Tokenizer")
    # musubi-tuner: FLUX.2 [klein] 4B's Qwen3 4B (zimage_utils.load_qwen3: Qwen2Tokenizer.from_pretrained("Qwen/Qwen3-4B")).
    qwen2_tokenizer(snapshot(out, "Qwen/Qwen3-4B"))
    print(f"tokenizers written under {os.path.join(out, 'hub')}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_tokenizers.py <out-dir>")
    main(sys.argv[1])
