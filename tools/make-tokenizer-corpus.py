#!/usr/bin/env python3
"""A corpus of varied strings with their token ids from the reference tokenizer.

Encodes each string with Python `sentencepiece` 0.2.0 (newer versions may reject the NUL
piece of this file) and InternLM2's tokenizer.model, and writes
tests/fixtures/tokenizer-corpus.json: [{"text": ..., "ids": [...]}, ...] (ids without BOS).
Deterministic (seeded); rerun only to extend the corpus:

  python3 -m venv /tmp/spm && /tmp/spm/bin/pip install sentencepiece==0.2.0
  /tmp/spm/bin/python tools/make-tokenizer-corpus.py

Control-token names (`<s>`, `<|im_start|>`…) are left out on purpose: SentencePiece treats
them as plain text while HF (and puyu) parse them as special tokens. So are the names the
file gives ids 92538-92543 (`[UNUSED_TOKEN_141]`-`[UNUSED_TOKEN_146]`): InternLM2-Chat
renames them to its chat tokens, and puyu follows the chat models.
"""

import json
import os
import random

import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "crate", "assets", "internlm2-tokenizer", "tokenizer.model")
OUT = os.path.join(HERE, "..", "tests", "fixtures", "tokenizer-corpus.json")

WORDS = """the of and to in is was for on that with as by at from his her an were are which this be or
has had not but it they their have one also its after new first two who been all other more time
when into he she during there only years would most some city world people state over can such up
about these year between where many out them then so both under may three later national known used
part made than film like while high government through well any each best large being music early
before school house water model token language learning neural network attention transformer layer
weight matrix vector kernel shader buffer device memory bandwidth cache context prompt inference
Shanghai Beijing InternLM Laboratory artificial intelligence quantum physics chemistry biology
don't won't it's I'm you're we'll they've can't shouldn't isn't""".split()

CHINESE_PHRASES = """你好 世界 人工智能 上海人工智能实验室 书生 浦语 大语言模型 机器学习 深度学习 神经网络
今天天气很好 我们一起去公园 这个问题很有意思 请问你叫什么名字 中华人民共和国 北京大学 清华大学
计算机科学 自然语言处理 开源 模型 训练 推理 显卡 内存 速度 长上下文 支持 工具调用 代码解释器
春眠不觉晓 处处闻啼鸟 夜来风雨声 花落知多少 床前明月光 疑是地上霜 举头望明月 低头思故乡
经济 社会 文化 历史 科学 技术 发展 研究 教育 学生 老师 学校 医院 医生 银行 公司 市场""".split()

EMOJI = ["😀", "😂", "🥲", "👍", "👍🏽", "🐉", "🐼", "🚀", "❤️", "🇨🇳", "🇺🇸", "👨‍👩‍👧‍👦",
         "🏳️‍🌈", "👩🏻‍💻", "🧑‍🚀", "✨", "🔥", "🙏", "🤖", "☕", "⚡", "🎉", "👁️‍🗨️", "🫠"]

CODE = [
    "def {f}({a}, {b}):\n    return {a} + {b} * {n}\n",
    "for i in range({n}):\n\tif i % 2 == 0:\n\t\tprint(i)\n",
    "fn {f}({a}: u32, {b}: &[f32]) -> Vec<f32> {{\n    {b}.iter().map(|x| x * {n}.0).collect()\n}}\n",
    "const {f} = ({a}, {b}) => {{ return `${{{a}}}-${{{b}}}`; }};\r\n",
    "#include <stdio.h>\nint main(void) {{ printf(\"%d\\n\", {n}); return 0; }}\n",
    "SELECT {a}, COUNT(*) FROM {f} WHERE {b} > {n} GROUP BY {a};",
    "<div class=\"{f}\"><span id='{a}'>{n}</span></div>",
    "{{\"{a}\": {n}, \"{b}\": [true, false, null], \"{f}\": \"值\"}}",
    "    # {f}: {a} -> {b}\n    x = [{n}, {n}.5, -{n}e-3]\n",
    "if ({a} != {b} && {f}[{n}] >= 0) {{\n\t\t{a}++;\n}}",
]


def rand_cjk(r, n):
    # Mostly common CJK, some from the whole BMP block (rare ones fall back to bytes).
    out = []
    for _ in range(n):
        if r.random() < 0.7:
            out.append(r.choice("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明"))
        else:
            out.append(chr(r.randint(0x4E00, 0x9FA5)))
    return "".join(out)


def english(r):
    n = r.randint(1, 18)
    words = [r.choice(WORDS) for _ in range(n)]
    if r.random() < 0.5:
        words[0] = words[0].capitalize()
    s = " ".join(words)
    return s + r.choice(["", ".", "!", "?", ",", ";", ":", " ...", "\n"])


def number(r):
    return r.choice([
        str(r.randint(0, 10 ** r.randint(1, 12))),
        f"{r.uniform(-1e4, 1e4):.{r.randint(1, 6)}f}",
        f"{r.randint(1900, 2100)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
        f"+86 {r.randint(130, 199)} {r.randint(1000, 9999)} {r.randint(1000, 9999)}",
        f"{r.randint(1, 999)}%", f"v{r.randint(0, 9)}.{r.randint(0, 99)}.{r.randint(0, 999)}",
        f"{r.randint(1, 9)}.{r.randint(0, 9)}e{r.randint(-20, 20)}",
    ])


def whitespace(r):
    return "".join(r.choice([" ", "  ", "    ", "\t", "\n", "\r\n", "\n\n", "\t\t", " \n"]) for _ in range(r.randint(1, 6)))


def fullwidth(r):
    s = "".join(chr(r.randint(0xFF01, 0xFF5E)) for _ in range(r.randint(1, 8)))
    return s + r.choice(["", "——", "……", "，", "。", "、", "「」", "《》"])


def rare(r):
    # CJK Extension B and other planes: not in the vocabulary, so byte fallback.
    return "".join(chr(r.choice([r.randint(0x20000, 0x2A6DF), r.randint(0x3400, 0x4DBF), r.randint(0x1D400, 0x1D7FF)]))
                   for _ in range(r.randint(1, 4)))


def code(r):
    ident = lambda: r.choice(["x", "y", "foo", "bar_baz", "camelCase", "数据", "i", "n_tokens", "kv_cache"])
    return r.choice(CODE).format(f=ident(), a=ident(), b=ident(), n=r.randint(0, 4096))


def mixed(r, pieces):
    parts = []
    for _ in range(r.randint(2, 7)):
        kind = r.random()
        if kind < 0.2: parts.append(english(r))
        elif kind < 0.35: parts.append(r.choice(CHINESE_PHRASES))
        elif kind < 0.45: parts.append(rand_cjk(r, r.randint(1, 12)))
        elif kind < 0.52: parts.append(r.choice(EMOJI))
        elif kind < 0.6: parts.append(number(r))
        elif kind < 0.68: parts.append(whitespace(r))
        elif kind < 0.74: parts.append(fullwidth(r))
        elif kind < 0.78: parts.append(rare(r))
        elif kind < 0.88: parts.append(r.choice(pieces))
        else: parts.append(code(r))
    sep = r.choice(["", " ", "\n", "，", ", "])
    return sep.join(parts)


def main():
    sp = spm.SentencePieceProcessor(model_file=MODEL)
    r = random.Random(20261130)
    special = {"<s>", "</s>", "<unk>"}
    pieces = [sp.id_to_piece(i).replace("\u2581", " ") for i in range(259, 92352)
              if sp.id_to_piece(i) not in special]

    texts = ["", " ", "\n", "\t", "\r\n", "a", "\x00", "a\x00b", "<0x41>", "▁", "▁▁x", "  ", "\u3000", "\ufeffBOM",
             "Ｅ", "[UNUSED_TOKEN_5]", "[UNUSED_TOKEN_140]x", "——", "……", "·", "é", "e\u0301", "ﬁ", "Å", "Ω", "𝔘𝔫𝔦"]
    gens = [
        (english, 300), (lambda r: r.choice(CHINESE_PHRASES) * r.randint(1, 3), 120),
        (lambda r: rand_cjk(r, r.randint(1, 40)), 250), (code, 200), (whitespace, 120),
        (lambda r: "".join(r.choice(EMOJI) for _ in range(r.randint(1, 5))), 120),
        (number, 150), (fullwidth, 100), (rare, 80),
        (lambda r: r.choice(pieces), 300), (lambda r: r.choice(pieces) + r.choice(pieces), 150),
        (lambda r: mixed(r, pieces), 400),
    ]
    for gen, count in gens:
        texts.extend(gen(r) for _ in range(count))

    seen, corpus = set(), []
    for t in texts:
        if t in seen:
            continue
        seen.add(t)
        corpus.append({"text": t, "ids": sp.encode(t)})
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"generator": f"tools/make-tokenizer-corpus.py, sentencepiece {spm.__version__}",
                   "corpus": corpus}, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"{len(corpus)} strings -> {OUT}")


if __name__ == "__main__":
    main()
