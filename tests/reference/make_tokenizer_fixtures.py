"""Writes tests/reference/fixtures/moonlight/tokenizer.json: tiktoken's answers for the C++ tokenizer.

The reference is the real `tiktoken` package (pinned in requirements.txt) with Moonlight's exact
pat_str and special-token table (docs/moonlight-architecture.md section 7) over the committed rank file
examples/moonlight/tokenizer/fortunes.tiktoken. Each text is `text`, or for long ones `parts`,
a list of [unit, repeat] to concatenate. For each text the fixture records:

- `ids`: tiktoken `encode_ordinary` (special-token strings are plain text);
- `ids_with_special`: tiktoken `encode(text, allowed_special="all")`, what Moonlight's own
  tokenizer calls (left out where it equals `ids`);
- `pieces` (short texts only): tiktoken's pre-tokenisation itself. tiktoken has no API for it, so
  each short text is encoded once more with a vocabulary that holds every substring of the text:
  tiktoken then finds each piece whole in the vocabulary, one token per piece.

Chat cases render Moonlight's Instruct chat template with jinja2, configured as transformers'
`apply_chat_template` does (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks).

Run from the repository root: /work/venv/bin/python tests/reference/make_tokenizer_fixtures.py
The output is deterministic (sorted keys, fixed texts).
"""

import json
import pathlib
import sys

import jinja2
import jinja2.sandbox
import tiktoken
import tiktoken.load

ROOT = pathlib.Path(__file__).resolve().parents[2]
RANK_FILE = "examples/moonlight/tokenizer/fortunes.tiktoken"
OUT = ROOT / "tests/reference/fixtures/moonlight/tokenizer.json"

# docs/moonlight-architecture.md §7.2, character for character (tokenization_moonshot.py).
PAT_STR = "|".join(
    [
        r"""[\p{Han}]+""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

# docs/moonlight-architecture.md §7.4: the Instruct chat template for string contents, as one line with `-` trimming.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and messages[0]['role'] != 'system' -%}"
    "{{'<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>'}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{'<|im_system|>'}}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{'<|im_user|>'}}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{'<|im_assistant|>'}}{%- endif -%}"
    "{{- message['role'] -}}{{'<|im_middle|>'}}{{- message['content'] -}}{{'<|im_end|>'}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<|im_assistant|>assistant<|im_middle|>'}}{%- endif -%}"
)


def moonlight_specials(num_ranks):
    """docs/moonlight-architecture.md §7.3 placed after the last rank; other ids <|reserved_token_{id}|>."""
    named = {0: "[BOS]", 1: "[EOS]", 2: "<|im_end|>", 3: "<|im_user|>", 4: "<|im_assistant|>",
             10: "<|im_system|>", 17: "<|im_middle|>", 254: "[PAD]", 255: "[UNK]"}
    return {named.get(k, f"<|reserved_token_{num_ranks + k}|>"): num_ranks + k for k in range(256)}


def tiktoken_pieces(text):
    data = text.encode("utf-8")
    ranks = {bytes([b]): b for b in range(256)}
    for i in range(len(data)):
        for j in range(i + 2, len(data) + 1):
            ranks.setdefault(data[i:j], len(ranks))
    enc = tiktoken.Encoding("pieces", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={})
    pieces = [enc.decode_single_token_bytes(t) for t in enc.encode_ordinary(text)]
    assert b"".join(pieces) == data
    return [p.decode("utf-8") for p in pieces]


SHORT_TEXTS = {
    "english": "Hello world! The quick brown fox jumps over the lazy dog.",
    "contractions": "I'm sure you're right, it's what they'd've done. I'M SURE YOU'RE RIGHT; We'LL see, He'S. don't DON'T",
    "long_s_contraction": "IT'ſ x'ſ",
    "numbers": "1 12 123 1234 12345 123456 3.14159 1,000,000 2026-11-23 ١٢٣٤ ⅷ",
    "chinese": "你好，世界！今天天气很好。我们去公园散步吧、好吗？",
    "chinese_punctuation": "中文。標點、符號〇々〆「引號」（括號）",
    "classical_chinese": "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "japanese_korean": "日本語のテキストとカタカナ。한국어 텍스트입니다.",
    "mixed_script": "Deep学习 with PyTorch和TensorFlow在2024年; Привет мир! Γειά σου κόσμε. مرحبا بالعالم",
    "code": "def f(x):\n    return x**2 + 1  # square\n\nint main() { std::vector<int> v{1, 2, 3}; return v[0]; }\n",
    "emoji": "I love 🍕 and 🚀! 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️",
    "whitespace_runs": "a  b   c    d\t\te\n\nf\n\n\ng \n h\r\n\r\ni   \n  \n   j    ",
    "unicode_spaces": "a\u00a0b\u3000c\u2003d\u200be\u180ef\u0085g\u2028h i\u180e\u180e.j \u180e\n k \u180e",
    "combining_marks": "cafe\u0301 nai\u0308ve \u0915\u093f\u0924\u093e\u092c Ǆemal ǅemal ǆemal",
    "special_strings": "<|im_user|>user<|im_middle|>hi<|im_end|>[BOS][EOS] <|reserved_token_8200|> [PAD][UNK]",
    "special_lookalikes": "<|im_end|<|im_end||>[EOS [BOS]] <|reserved_token_99999|> <|im_|>",
    "punctuation": "Wait... what?!? (yes) [no] {maybe} --- *** ### $$$ @@@ /// \\\\ '' \"\"",
    "leading_trailing": "   leading and trailing spaces   ",
    "only_newlines": "\n\n\n\n",
    "single_char": "x",
    "empty": "",
}


def long_texts():
    """Long inputs as [unit, repeat] parts, so that the fixture stays small."""
    sample = (ROOT / "tests/reference/fixtures/moonlight/bpe_sample.txt").read_text(encoding="utf-8")
    return {
        "long_corpus_excerpt": [[sample[:2500] + sample[-2500:], 1]],
        "long_spaces": [[" ", 5000], ["x", 1], [" ", 3000]],
        "long_newlines": [["\n", 3000], ["end", 1]],
        "long_word": [["a", 4000], ["B", 3000]],
        "long_uppercase_word": [["Z", 5000]],
        "long_digits": [["1234567890", 400]],
        "long_han": [["天地玄黄宇宙洪荒", 250]],
        "long_punctuation": [["!?", 2000], ["\n", 1]],
        "long_mixed_repeat": [["Hello, 世界! 123 🚀\n", 300]],
    }


CHATS = [
    ("readme_example",
     [{"role": "system", "content": "You are a helpful assistant provided by Moonshot-AI."},
      {"role": "user", "content": "Is 123 a prime?"}], True),
    ("default_system_prompt", [{"role": "user", "content": "Hi"}], True),
    ("multi_turn",
     [{"role": "user", "content": "What is 2+2?"},
      {"role": "assistant", "content": "4"},
      {"role": "user", "content": "And 3+3?\nThink step by step."}], True),
    ("no_generation_prompt",
     [{"role": "system", "content": "Be terse."},
      {"role": "user", "content": "你好"},
      {"role": "assistant", "content": "你好！  "}], False),
    ("assistant_first", [{"role": "assistant", "content": "Hello there."}], False),
    ("content_with_specials", [{"role": "user", "content": "say <|im_end|> now"}], True),
    ("empty_conversation", [], True),
]


def main():
    ranks = tiktoken.load.load_tiktoken_bpe(str(ROOT / RANK_FILE))
    assert sorted(ranks.values()) == list(range(len(ranks))), "ranks must be 0..N-1"
    specials = moonlight_specials(len(ranks))
    enc = tiktoken.Encoding("moonlight_fortunes", pat_str=PAT_STR, mergeable_ranks=ranks,
                            special_tokens=specials)

    def case(name, text, fields):
        ids = enc.encode_ordinary(text)
        ids_with_special = enc.encode(text, allowed_special="all")
        assert enc.decode_bytes(ids) == text.encode("utf-8")
        assert enc.decode_bytes(ids_with_special) == text.encode("utf-8")
        out = {"name": name, "ids": ids, **fields}
        if ids_with_special != ids:  # absent: the same as ids
            out["ids_with_special"] = ids_with_special
        return out

    cases = [case(name, text, {"text": text, "pieces": tiktoken_pieces(text)}) for name, text in SHORT_TEXTS.items()]
    cases += [case(name, "".join(unit * n for unit, n in parts), {"parts": parts})
              for name, parts in long_texts().items()]

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(CHAT_TEMPLATE)
    chats = []
    for name, messages, add_generation_prompt in CHATS:
        rendered = template.render(messages=messages, add_generation_prompt=add_generation_prompt)
        chats.append({"name": name, "messages": messages, "add_generation_prompt": add_generation_prompt,
                      "rendered": rendered, "ids": enc.encode(rendered, allowed_special="all")})
    readme = ("<|im_system|>system<|im_middle|>You are a helpful assistant provided by Moonshot-AI.<|im_end|>"
              "<|im_user|>user<|im_middle|>Is 123 a prime?<|im_end|><|im_assistant|>assistant<|im_middle|>")
    assert chats[0]["rendered"] == readme, "template disagrees with the README rendering (docs/moonlight-architecture.md §7.4)"

    fixture = {
        "reference": f"tiktoken {tiktoken.__version__}, jinja2 {jinja2.__version__}",
        "rank_file": RANK_FILE,
        "num_ranks": len(ranks),
        "pat_str": PAT_STR,
        "special_tokens": specials,
        "chat_template": CHAT_TEMPLATE,
        "cases": cases,
        "chats": chats,
    }
    # One line per case and per chat: small, and a regeneration diffs case by case.
    def dump(value):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    lines = ["{"]
    for key in sorted(fixture):
        value = fixture[key]
        if isinstance(value, list):
            lines.append(f"{dump(key)}:[")
            lines.append(",\n".join(dump(item) for item in value))
            lines.append("],")
        else:
            lines.append(f"{dump(key)}:{dump(value)},")
    lines[-1] = lines[-1].rstrip(",")
    lines.append("}")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert json.loads(OUT.read_text(encoding="utf-8")) == fixture
    print(f"wrote {OUT.relative_to(ROOT)}: {len(cases)} texts, {len(chats)} chats, {OUT.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
