#!/usr/bin/env python3
"""Reference encodings for qft's tokenizer, from Hugging Face `tokenizers`.

Builds a seeded corpus (the same on every run) and encodes it with the two tokenizers under
../shared/assets/tokenizers (llama3: byte-level BPE with a split regex; sp-bpe-32k: metaspace
BPE with byte fallback). Writes, under tests/fixtures/tok/:

  corpus.jsonl        line 1: {"meta": ...}; then one record per text:
                      {"i", "cat", "text"} for valid UTF-8;
                      {"i", "cat", "hex", "text"} for byte strings that are not valid UTF-8
                        ("text" is bytes.decode("utf-8", errors="replace"), what was encoded);
                      {"i", "cat", "src", "row", "field", "len"} for dataset texts, which stay in
                        ../shared (third-party data is not copied into the repository): the C
                        test rebuilds the text from the dataset file ("len" = its UTF-8 bytes).
  <tokenizer>.jsonl   line 1: {"meta": ...} (versions, command, special prefix/suffix ids);
                      then per text {"i", "ids"} (add_special_tokens=False), "ids_sp" only when
                      encode(add_special_tokens=True) != prefix + ids + suffix, "rt" = whether
                      decode(ids) == text, "dec" = decode(ids, skip_special_tokens=False) when
                      it differs from the text, "dec_skip" = decode(ids_sp,
                      skip_special_tokens=True) when it differs from "dec" (or the text).

It also builds three small synthetic tokenizers with the tokenizers API (our own data, so
they are committed: tests/fixtures/tok/synth-*/tokenizer.json) that exercise the components
the two real files do not use (Metaspace, Split behaviors, Replace/Regex normalizers,
lstrip/rstrip/single_word/normalized added tokens, unk fusing, subword prefix/suffix, no
decoder, tokenizer_config.json overrides), and writes synth-<name>.jsonl: line 1 meta, then
per text the same fields as above plus "text"/"hex" inline. Those fixtures need no ../shared.

Run: ~/.cache/qft-peers/bin/python tests/reference/tokenizer_reference.py
"""
import json
import os
import random
import sys
import unicodedata

import tokenizers
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "assets")
OUT = os.path.join(ROOT, "tests", "fixtures", "tok")
SEED = 20240917
COMMAND = "~/.cache/qft-peers/bin/python tests/reference/tokenizer_reference.py"

WORDS = ("the of and to in is was for on that with as by it at from his an were are which "
         "this be or has had not first one their its new after who they have her she two been "
         "other when there all during into school time may years more most only over city "
         "some world would where later up such used many can state about national out known "
         "university united then made system first people government house group number "
         "between under while both however music called being well through including "
         "model token training quantized adapter gradient learning rate batch weight "
         "Llama transformer attention embedding Hello HELLO hello World WORLD Internationalization "
         "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis").split()

ACCENTED = ("café naïve Zürich São Paulo Ångström straße œuvre Łódź façade jalapeño "
            "crème brûlée Dvořák Kraków Malmö Reykjavík Ærø Çağrı Ñandú İstanbul ıi "
            "Ünïcödé résumé coöperate fiancée señorita Æsir þorn ðæt ĳssel ǅemal").split()
GREEK = "Αλφάβητο ελληνικά Καλημέρα κόσμε ΣΊΣΥΦΟΣ ψυχή ω ΰ ς σ Ϊ ϋ Ωμέγα".split()
CYRILLIC = ("Привет мир Съешь же ещё этих мягких французских булок да выпей чаю "
            "Ёжик ЁЛКА україна Ґанок ђак Љубав Ћирилица").split()
CJK = ["你好，世界！", "汉字漢字", "東京都", "日本語のテキストです。", "ひらがな", "カタカナ",
       "ｶﾀｶﾅ", "한국어 텍스트", "안녕하세요", "ㄱㄴㄷ", "中文字符串测试", "「引用」", "（括号）",
       "ＡＢＣ１２３", "𠀀𠀁𪚥", "龘", "〇一二三", "ー", "々", "㍿", "　"]
EMOJI = ["😀", "😂", "🤖", "🦙", "🚀", "❤️", "👍", "👍🏽", "👍🏿", "👨‍👩‍👧‍👦", "👩🏽‍💻",
         "🏳️‍🌈", "🇺🇸", "🇯🇵🇫🇷", "1️⃣", "#️⃣", "☺︎", "✌🏻", "🧑‍🤝‍🧑", "👁‍🗨", "🫠", "🥲",
         "©", "™", "♥", "★", "🀄", "🃏", "🈶"]
COMBINING = ["e\u0301", "a\u0300\u0301", "n\u0303", "Z\u0351\u0364\u0315a\u0342\u0489l\u0359g\u036Co",
             "\u0301", "\u0308\u0308", "ก\u0e49", "क\u094d\u0937", "नमस्ते", "हिन्दी", "مرحبا",
             "العربية", "שָׁלוֹם", "עברית", "ไทย", "ภาษาไทย", "ᄀ\u1161\u11A8", "o\u0338",
             "\u20dd", "x\u20e3", "ა", "Ꭰ", "ᚠ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟘𝟙", "ﬁ", "ﬀ", "Å", "Å"]
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["…", "—", "–", "«", "»", "“", "”", "‘", "’",
                                                     "¿", "¡", "·", "•", "§", "¶", "†", "‰", "€",
                                                     "£", "¥", "¢", "°", "±", "×", "÷", "→", "←",
                                                     "∞", "≈", "≠", "≤", "√", "∑", "∫"]
SPACES = [" ", " ", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\r", "\v", "\f", "\u00a0", "\u2000",
          "\u2003", "\u2009", "\u200a", "\u3000", "\u1680", "\u180e", "\u0085", "\u2028",
          "\u2029", "\u202f", "\u205f", "\u200b", "\ufeff", " \n ", "\t\t", "    ", "\n \n"]
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|reserved_special_token_5|>", "<|reserved_special_token_250|>",
            "<s>", "</s>", "<unk>", "<|begin_of", "<|", "|>", "<s", "s>", "<<s>>", "</s >",
            "<|BEGIN_OF_TEXT|>", "<pad>"]
CONTRACTIONS = ["it's", "IT'S", "It'S", "don't", "DON'T", "we're", "WE'RE", "They'Re", "I've",
                "I'VE", "I'm", "I'M", "we'll", "WE'LL", "She'Ll", "I'd", "I'D", "'s", "'t",
                "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'x", "it\u2019s", "'ſ", "o'clock",
                "rock'n'roll", "'''", "''s", " 's", "y'all'd've"]
CODE = [
    "def f(x):\n    return x * 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "{\"key\": [1, 2.5, null, true], \"nested\": {\"a\": \"b\"}}",
    "<div class=\"x\"><p>Hello &amp; bye</p></div>",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "x = [i**2 for i in range(10) if i % 2 == 0]  # squares",
    "    if (a && b || !c) { return -1; }\r\n",
    "const f = async (a, b) => { await g(a ?? b); };",
    "$ ls -la | grep '^d' > /tmp/out.txt 2>&1",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
    "\\begin{equation} e^{i\\pi} + 1 = 0 \\end{equation}",
    "a_b__c___d ____init____ self.__dict__",
    "0x1F 0b1010 0o777 1_000_000 3.14e-10 .5 5.",
    "/* comment */ // another\n#define MAX(a,b) ((a)>(b)?(a):(b))",
]


def rand_from(rng, items, k):
    return [rng.choice(items) for _ in range(k)]


def prose(rng):
    n = rng.randint(1, 25)
    words = rand_from(rng, WORDS, n)
    if rng.random() < 0.5:
        words[0] = words[0].capitalize()
    s = ""
    for w in words:
        s += w + rng.choice([" ", " ", " ", " ", ", ", ". ", "; ", " - ", "  "])
    return s.rstrip() + rng.choice([".", "!", "?", "", "...", ".\n"])


def spaces(rng):
    parts = []
    for _ in range(rng.randint(1, 8)):
        r = rng.random()
        if r < 0.4:
            parts.append("".join(rand_from(rng, SPACES, rng.randint(1, 4))))
        elif r < 0.8:
            parts.append(rng.choice(WORDS))
        else:
            parts.append(rng.choice(PUNCT + ["123", "4", "é", "日本"]))
    return "".join(parts)


def number(rng):
    forms = [
        lambda: f"{rng.randint(0, 10**rng.randint(1, 12)):,}",
        lambda: f"{rng.uniform(-1e6, 1e6):,.2f}",
        lambda: str(rng.randint(0, 10**rng.randint(1, 20))),
        lambda: f"{rng.random():.{rng.randint(1, 9)}f}",
        lambda: f"${rng.randint(1, 9999)}.{rng.randint(0, 99):02d}",
        lambda: f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d}",
        lambda: f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        lambda: f"+1 ({rng.randint(100, 999)}) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
        lambda: f"{rng.randint(1, 99)}%",
        lambda: f"{rng.uniform(0, 100):.3e}",
        lambda: f"1.234.567,89",
        lambda: "".join(rng.choice("٠١٢٣٤٥٦٧٨٩") for _ in range(rng.randint(1, 6))),
        lambda: "".join(rng.choice("０１２３４５６７８９") for _ in range(rng.randint(1, 6))),
        lambda: rng.choice(["²", "³", "½", "¾", "Ⅻ", "ⅷ", "①", "⑳", "𝟙𝟚", "〸"]) * rng.randint(1, 3),
        lambda: f"{rng.randint(0, 999)}x{rng.randint(0, 999)}={rng.randint(0, 10**6)}",
        lambda: f"<<{rng.randint(1, 99)}*{rng.randint(1, 99)}={rng.randint(1, 9999)}>>",
    ]
    k = rng.randint(1, 4)
    return " ".join(rng.choice(forms)() for _ in range(k)) + rng.choice(["", " apples", ".", "\n"])


def punct(rng):
    return "".join(rand_from(rng, PUNCT + [" ", "a", "1"], rng.randint(1, 20)))


def code(rng):
    s = rng.choice(CODE)
    if rng.random() < 0.5:
        s = " " * rng.randint(1, 8) + s
    if rng.random() < 0.3:
        s = s.replace("    ", "\t")
    return s


def contraction(rng):
    words = [rng.choice(CONTRACTIONS if rng.random() < 0.5 else WORDS) for _ in range(rng.randint(1, 8))]
    return rng.choice([" ", "", "  "]).join(words)


def from_list(lst):
    def gen(rng):
        words = rand_from(rng, lst, rng.randint(1, 8))
        return rng.choice([" ", "", ", ", "\n"]).join(words)
    return gen


def emoji(rng):
    parts = rand_from(rng, EMOJI, rng.randint(1, 6))
    if rng.random() < 0.5:
        parts.insert(rng.randint(0, len(parts)), rng.choice(WORDS))
    return rng.choice(["", " "]).join(parts)


def combining(rng):
    parts = rand_from(rng, COMBINING, rng.randint(1, 5))
    s = rng.choice(["", " "]).join(parts)
    if rng.random() < 0.3:
        s = unicodedata.normalize(rng.choice(["NFC", "NFD", "NFKC", "NFKD"]), s)
    return s


def special(rng):
    parts = []
    for _ in range(rng.randint(1, 6)):
        r = rng.random()
        if r < 0.45:
            parts.append(rng.choice(SPECIALS))
        elif r < 0.8:
            parts.append(rng.choice(WORDS))
        else:
            parts.append(rng.choice(SPACES[:8]))
    return rng.choice(["", " ", "\n"]).join(parts)


# Ranges of assigned, printable code points from several blocks (Unicode 14 or older, the
# version both Oniguruma 6.9.8 and PCRE2 10.42 carry).
RANGES = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x530, 0x58F),
          (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE5B), (0x10A0, 0x10FF),
          (0x1100, 0x11FF), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x2070, 0x209F), (0x20A0, 0x20BF),
          (0x2100, 0x218B), (0x2190, 0x23FF), (0x2460, 0x24FF), (0x2500, 0x27BF), (0x3000, 0x30FF),
          (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xE0FF), (0xF900, 0xFAFF),
          (0xFB00, 0xFB4F), (0xFE00, 0xFE0F), (0xFF00, 0xFFEF), (0x1D400, 0x1D7FF),
          (0x1F300, 0x1F6FF), (0x1F900, 0x1F9FF), (0x20000, 0x2A6DF), (0xE0001, 0xE007F)]


def random_unicode(rng):
    out = []
    for _ in range(rng.randint(1, 30)):
        lo, hi = rng.choice(RANGES)
        c = chr(rng.randint(lo, hi))
        if 0xD800 <= ord(c) <= 0xDFFF:
            continue
        out.append(c)
        if rng.random() < 0.1:
            out.append(rng.choice(SPACES))
    return "".join(out)


def control(rng):
    s = "".join(chr(rng.randint(0, 0x1F)) if rng.random() < 0.5 else rng.choice("ab \x7f\x80\x9f")
                for _ in range(rng.randint(1, 12)))
    return s


def invalid(rng):
    """Byte strings that are not valid UTF-8, and UTF-8-encoded lone surrogates."""
    pieces = [b"\xff", b"\xfe", b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf",
              b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xed\xa0\x80\xed\xb0\x80", b"\xf4\x90\x80\x80",
              b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98",
              b"\xe2\x28\xa1", b"\xf0\x28\x8c\xbc", b"\xc3\x28", b"\xa0\xa1", b"\xef\xbf\xbe",
              b"\xf0\x9f\x98\x80", "é".encode(), b"abc", b" ", b"\n", b"hello world"]
    return b"".join(rand_from(rng, pieces, rng.randint(1, 8)))


def edge_cases():
    out = ["", " ", "  ", "\n", "\n\n\n", "\t", "a", "A", "0", "00", "000", "0000", "12345678",
           "\x00", "a\x00b", "\ufffd", "\uffff", "\U0010ffff", "\U000e0001", "\u00ad",
           "a" * 3000, " " * 1000, "\n" * 500, "ab" * 700, "😀" * 200, "é" * 500,
           "hello" + " " * 17 + "world", "word\n \n\tword", " leading", "trailing ", "  both  ",
           "\u0130", "\u017f", "'\u017f", "K\u212a", "ǈ", "ß", "ẞ", "ﬆ", "I'M 'S",
           "Hello world", " Hello world", "Hello  world", "Hello\tworld", "Hello\nworld",
           "<s>", "</s>", "<unk>", "<s> </s>", " <s>", "<s> ", "<|begin_of_text|>",
           "<|begin_of_text|>Hello", "Hello<|end_of_text|>", "<|eot_id|><|eot_id|>",
           "▁", "▁▁", "▁hello", "hello▁world", "<0x41>", "<0x0A>", "Ġ", "Ċ", "ĠĠ"]
    for b in range(0x20, 0x7F):
        out.append(chr(b))
    for b in range(0x00, 0x20):
        out.append("x" + chr(b) + "y")
    return out


CATEGORIES = [
    ("prose", prose, 300), ("spaces", spaces, 250), ("number", number, 250),
    ("punct", punct, 150), ("code", code, 120), ("contraction", contraction, 150),
    ("accented", from_list(ACCENTED), 130), ("greek_cyrillic", from_list(GREEK + CYRILLIC), 130),
    ("cjk", from_list(CJK), 130), ("emoji", emoji, 150), ("combining", combining, 130),
    ("special", special, 150), ("unicode", random_unicode, 200), ("control", control, 60),
    ("invalid", invalid, 100),
]

ORCA = "###Question:\n{question}\n###Answer:\n"
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that "
                   "appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
                   "### Response:")
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that "
                "provides further context. Write a response that appropriately completes the "
                "request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
                "### Response:")


def dataset_texts(rng):
    """(record, text) for a seeded sample of GSM8K rows and all Alpaca rows, when present."""
    out = []
    gsm = os.path.join(SHARED, "datasets", "gsm8k", "train.jsonl")
    if os.path.exists(gsm):
        with open(gsm, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        for row in sorted(rng.sample(range(len(rows)), 250)):
            r = rows[row]
            for field, text in (("question", r["question"]), ("answer", r["answer"]),
                                ("orca", ORCA.format(**r) + r["answer"])):
                out.append(({"cat": "gsm8k", "src": "gsm8k", "row": row, "field": field}, text))
    alp = os.path.join(SHARED, "datasets", "alpaca", "alpaca_200.json")
    if os.path.exists(alp):
        with open(alp, encoding="utf-8") as f:
            rows = json.load(f)
        for row, r in enumerate(rows):
            tmpl = ALPACA_INPUT if r.get("input") else ALPACA_NO_INPUT
            out.append(({"cat": "alpaca", "src": "alpaca", "row": row, "field": "prompt"},
                        tmpl.format(**r)))
            out.append(({"cat": "alpaca", "src": "alpaca", "row": row, "field": "full"},
                        tmpl.format(**r) + r["output"]))
    return out


def build_corpus():
    rng = random.Random(SEED)
    recs = []  # (record without "i", text to encode, raw bytes or None)
    for s in edge_cases():
        recs.append(({"cat": "edge", "text": s}, s))
    for cat, gen, n in CATEGORIES:
        for _ in range(n):
            v = gen(rng)
            if isinstance(v, bytes):
                text = v.decode("utf-8", errors="replace")
                try:
                    v.decode("utf-8")
                    recs.append(({"cat": cat, "text": text}, text))
                except UnicodeDecodeError:
                    recs.append(({"cat": cat, "hex": v.hex(), "text": text}, text))
            else:
                recs.append(({"cat": cat, "text": v}, v))
    for rec, text in dataset_texts(rng):
        rec["len"] = len(text.encode("utf-8"))
        recs.append((rec, text))
    return recs


def versions():
    import platform
    v = {"tokenizers": tokenizers.__version__, "python": platform.python_version()}
    try:
        import transformers
        v["transformers"] = transformers.__version__
    except ImportError:
        pass
    return v


def encode_records(tok, corpus, prefix, suffix):
    """Per text: ids, ids_sp when not prefix + ids + suffix, rt, dec, dec_skip (see above)."""
    lines, n_rt = [], 0
    for i, (rec, text) in enumerate(corpus):
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_sp = tok.encode(text, add_special_tokens=True).ids
        dec = tok.decode(ids, skip_special_tokens=False)
        dec_skip = tok.decode(ids_sp, skip_special_tokens=True)
        out = {"i": i, "ids": ids}
        if ids_sp != prefix + ids + suffix:
            out["ids_sp"] = ids_sp
        out["rt"] = dec == text
        n_rt += out["rt"]
        if dec != text:
            out["dec"] = dec
        if dec_skip != dec:
            out["dec_skip"] = dec_skip
        lines.append(out)
    return lines, n_rt


def template_ids(tok):
    probe = tok.encode("x", add_special_tokens=False).ids
    probe_sp = tok.encode("x", add_special_tokens=True).ids
    k = next(j for j in range(len(probe_sp)) if probe_sp[j:j + len(probe)] == probe)
    return probe_sp[:k], probe_sp[k + len(probe):]


def synth_texts(rng):
    """Texts for the synthetic tokenizers: targeted cases, then a seeded sample of the
    corpus generators (never dataset text)."""
    texts = ["", " ", "hello world", "Hello world!", "  two  spaces  ", "a-b-c", "x--y", "AbCdEf",
             "ABC def GHI", "123 4567 1234567 12-34", "a,b ; c", "tab\there", "new\nline",
             "[MASK]", " [MASK] ", "a [MASK] b", "a[MASK]b", "\t[MASK]\n", "<tool>", "a <tool> b",
             "x<tool>y", "<tool>s", "é<tool>", "<tool>\u0301", "_<tool>_", "hello world hello",
             "HELLO WORLD", "say hello world now", "hello  world", "<s>", "a<s>b", "</s> <s>",
             "日本語", "a日b", "😀😀", "\u00e9", "\u4e00\u4e8c", "<|im_start|>user", "u<|im_start|>",
             "<|im_start|><|im_start|>", "##", "</w>", "▁", "▁▁x", " ▁ ", "Ġ", "\x00", "\ufffd"]
    gens = [prose, spaces, number, punct, code, contraction, emoji, combining, special, random_unicode]
    for k in range(150):
        texts.append(gens[k % len(gens)](rng))
    for _ in range(10):
        texts.append(invalid(rng))
    out = []
    for v in texts:
        if isinstance(v, bytes):
            text = v.decode("utf-8", errors="replace")
            rec = {"cat": "invalid", "hex": v.hex(), "text": text}
        else:
            text, rec = v, {"cat": "synth", "text": v}
        out.append((rec, text))
    return out


def train_texts(rng):
    return [prose(rng) for _ in range(400)] + [number(rng) for _ in range(100)] + \
        [code(rng) for _ in range(50)] + [from_list(ACCENTED + GREEK)(rng) for _ in range(50)]


def suffix_bpe(texts, n_merges):
    """A deterministic BPE learner for the prefix/suffix model: ("##" marks a non-initial
    symbol, "</w>" the word's last one; a merge a + b yields a + b without its "##")."""
    from collections import Counter
    words = Counter(w for t in texts for w in t.split())
    seqs = {}
    for w in words:
        chars = list(w)
        syms = [c if i == 0 else "##" + c for i, c in enumerate(chars)]
        syms[-1] += "</w>"
        seqs[w] = syms
    vocab = {"[UNK]": 0, "[CLS]": 1}
    for syms in seqs.values():
        for x in syms:
            vocab.setdefault(x, None)
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, syms in seqs.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        new = a + b[2:] if b.startswith("##") else a + b
        merges.append((a, b))
        vocab.setdefault(new, None)
        for w, syms in seqs.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            seqs[w] = out
    ordered = {k: i for i, k in enumerate(["[UNK]", "[CLS]"] + sorted(k for k in vocab if k not in ("[UNK]", "[CLS]")))}
    return ordered, merges


def build_synth(name, rng):
    from tokenizers import models, normalizers, pre_tokenizers, decoders, processors, trainers
    from tokenizers import AddedToken
    config = None
    if name == "meta":
        # Llama-2-like with a Metaspace pre-tokenizer (Mistral v3 style), byte fallback with
        # some byte tokens missing (so unknown bytes fall back to a fused <unk>).
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
        trainer = trainers.BpeTrainer(vocab_size=420, show_progress=False,
                                      special_tokens=["<unk>", "<s>", "</s>"])
        tok.train_from_iterator(train_texts(rng), trainer)
        j = json.loads(tok.to_str())
        vocab = j["model"]["vocab"]
        for b in range(256):
            if b in (0xE6, 0x97, 0xF0):  # leave a few out: those bytes become <unk>
                continue
            vocab.setdefault(f"<0x{b:02X}>", len(vocab))
        tok = Tokenizer.from_str(json.dumps(j))
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Metaspace(replacement="\u2581", prepend_scheme="first")])
        tok.add_special_tokens([AddedToken("[MASK]", lstrip=True, rstrip=True, special=True, normalized=False)])
        tok.add_tokens([AddedToken("<tool>", single_word=True, normalized=False),
                        AddedToken("hello world", normalized=True)])
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    elif name == "bytelevel":
        # Byte-level BPE behind a normalizer chain and a sequence of Split behaviors.
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([
            normalizers.Replace("\t", "    "),
            normalizers.Replace(__import__("tokenizers").Regex(r"\d{5,}"), "#"),
            normalizers.Prepend("^")])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(__import__("tokenizers").Regex(r"\s*[,;]\s*"), behavior="removed"),
            pre_tokenizers.Split("-", behavior="merged_with_next"),
            pre_tokenizers.Split(__import__("tokenizers").Regex(r"\d"), behavior="contiguous"),
            pre_tokenizers.Split(__import__("tokenizers").Regex(r"[A-Z]"), behavior="merged_with_previous", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)])
        trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=["<|endoftext|>", "<|im_start|>"])
        tok.train_from_iterator(train_texts(rng), trainer)
        tok.decoder = decoders.ByteLevel()
        tok.add_tokens([AddedToken("hello world", normalized=True), AddedToken("<tool>", normalized=False)])
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        config = {"bos_token": "<|im_start|>", "eos_token": {"content": "<|endoftext|>", "__type": "AddedToken"},
                  "add_bos_token": True, "add_eos_token": True, "pad_token": None,
                  "model_max_length": 10**30}
    else:  # "suffix": subword prefix/suffix, no decoder, tokens split on whitespace
        # BpeTrainer breaks count ties in hash order with these options, so the merges are
        # learnt here instead: most frequent pair first, ties to the smallest pair.
        vocab, merges = suffix_bpe(train_texts(rng), 300)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="[UNK]",
                                   continuing_subword_prefix="##", end_of_word_suffix="</w>"))
        tok.pre_tokenizer = pre_tokenizers.Split(__import__("tokenizers").Regex(r"\s+"), behavior="removed")
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", 1)])
    return tok, config


def write_synth(meta):
    rng = random.Random(SEED + 1)
    for name in ("meta", "bytelevel", "suffix"):
        tok, config = build_synth(name, rng)
        d = os.path.join(OUT, f"synth-{name}")
        os.makedirs(d, exist_ok=True)
        tok.save(os.path.join(d, "tokenizer.json"), pretty=False)
        if config is not None:
            with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                json.dump(config, f, ensure_ascii=False)
        # What HF loads from the file is the reference, not the object built above.
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        prefix, suffix = template_ids(tok)
        if config is not None:  # transformers' rule: add_bos/eos_token replace the template
            prefix = [tok.token_to_id(config["bos_token"])] if config.get("add_bos_token") else []
            eos = config["eos_token"]["content"] if isinstance(config["eos_token"], dict) else config["eos_token"]
            suffix = [tok.token_to_id(eos)] if config.get("add_eos_token") else []
            tok.post_processor = __import__("tokenizers").processors.TemplateProcessing(
                single=" ".join(([config["bos_token"]] if prefix else []) + ["$A"] + ([eos] if suffix else [])),
                special_tokens=[(config["bos_token"], prefix[0])] * bool(prefix) + [(eos, suffix[0])] * bool(suffix))
        texts = synth_texts(rng)
        lines, n_rt = encode_records(tok, texts, prefix, suffix)
        tmeta = dict(meta)
        tmeta.update({"tokenizer": f"synth-{name}", "count": len(texts), "special_prefix": prefix,
                      "special_suffix": suffix, "roundtrip": n_rt})
        with open(os.path.join(OUT, f"synth-{name}.jsonl"), "w", encoding="utf-8") as f:
            f.write(json.dumps({"meta": tmeta}, ensure_ascii=False) + "\n")
            for (rec, _), out in zip(texts, lines):
                out.update(rec)
                f.write(json.dumps(out, ensure_ascii=False) + "\n")
        print(f"synth-{name}: {len(texts)} texts, prefix {prefix} suffix {suffix}, round trip {n_rt}")


def main():
    os.makedirs(OUT, exist_ok=True)
    write_synth({"generator": COMMAND, "seed": SEED + 1, "versions": versions()})
    tok_root = os.path.join(SHARED, "tokenizers")
    if not os.path.isdir(tok_root):
        print(f"skip: {tok_root} is absent", file=sys.stderr)
        return 0
    corpus = build_corpus()
    meta = {"generator": COMMAND, "seed": SEED, "versions": versions(), "count": len(corpus),
            "encode_input": "text; records with hex hold invalid UTF-8 and text = "
                            "bytes.decode('utf-8', errors='replace')"}
    with open(os.path.join(OUT, "corpus.jsonl"), "w", encoding="utf-8") as f:
        f.write(json.dumps({"meta": meta}, ensure_ascii=False) + "\n")
        for i, (rec, _) in enumerate(corpus):
            out = {"i": i}
            out.update(rec)
            if "src" in rec:
                out.pop("text", None)
            f.write(json.dumps(out, ensure_ascii=False) + "\n")

    for name in ("llama3", "sp-bpe-32k"):
        path = os.path.join(tok_root, name, "tokenizer.json")
        tok = Tokenizer.from_file(path)
        empty = tok.encode("", add_special_tokens=True).ids
        # The template's prefix/suffix: what add_special_tokens=True adds around the text.
        probe = tok.encode("x", add_special_tokens=False).ids
        probe_sp = tok.encode("x", add_special_tokens=True).ids
        k = next(j for j in range(len(probe_sp)) if probe_sp[j:j + len(probe)] == probe)
        prefix, suffix = probe_sp[:k], probe_sp[k + len(probe):]
        assert empty == prefix + suffix, (empty, prefix, suffix)
        n_rt = n_sp_exc = 0
        lines = []
        for i, (rec, text) in enumerate(corpus):
            ids = tok.encode(text, add_special_tokens=False).ids
            ids_sp = tok.encode(text, add_special_tokens=True).ids
            dec = tok.decode(ids, skip_special_tokens=False)
            dec_skip = tok.decode(ids_sp, skip_special_tokens=True)
            out = {"i": i, "ids": ids}
            if ids_sp != prefix + ids + suffix:
                out["ids_sp"] = ids_sp
                n_sp_exc += 1
            out["rt"] = dec == text
            n_rt += out["rt"]
            if dec != text:
                out["dec"] = dec
            if dec_skip != dec:
                out["dec_skip"] = dec_skip
            lines.append(json.dumps(out, ensure_ascii=False))
        tmeta = dict(meta)
        tmeta.update({"tokenizer": name, "tokenizer_file": f"../shared/assets/tokenizers/{name}/tokenizer.json",
                      "special_prefix": prefix, "special_suffix": suffix, "roundtrip": n_rt})
        with open(os.path.join(OUT, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.write(json.dumps({"meta": tmeta}, ensure_ascii=False) + "\n")
            f.write("\n".join(lines) + "\n")
        print(f"{name}: {len(corpus)} texts, prefix {prefix} suffix {suffix}, "
              f"round trip {n_rt}/{len(corpus)}, ids_sp exceptions {n_sp_exc}")
        compare_transformers(name, tok, corpus)
    return 0


def compare_transformers(name, tok, corpus):
    """For information only: how often transformers' AutoTokenizer disagrees with tokenizers."""
    try:
        from transformers import AutoTokenizer
        import transformers.utils.logging as tl
        tl.set_verbosity_error()
        at = AutoTokenizer.from_pretrained(os.path.join(SHARED, "tokenizers", name))
    except Exception as e:  # transformers absent or refusing the directory
        print(f"  transformers comparison skipped: {e}")
        return
    diff = [i for i, (_, text) in enumerate(corpus)
            if at(text, add_special_tokens=True)["input_ids"] != tok.encode(text).ids]
    print(f"  transformers {type(at).__name__} differs from tokenizers on {len(diff)} texts"
          + (f" (first: {diff[:5]})" if diff else ""))


if __name__ == "__main__":
    sys.exit(main())
