#!/usr/bin/env python3
r"""Generate tests/data/minilm_reference.json: reference token ids and embeddings
for sentence-transformers/all-MiniLM-L6-v2, computed with sentence-transformers
itself, so zerobatch's Rust tokenizer and model can be checked against them.

Not part of the build or CI; run by hand when the reference must be redone.

How it was run (a throwaway venv outside the repository; CPU only):

    scripts/fetch-model.sh                      # -> models/all-MiniLM-L6-v2
    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install \
        sentence-transformers==6.2.0 transformers==5.24.0 \
        tokenizers==0.23.3 torch==2.15.0 numpy==2.4.6
    HF_HUB_OFFLINE=1 /tmp/refvenv/bin/python scripts/make-reference.py models/all-MiniLM-L6-v2

(Python 3.11.7. The default torch wheel pulls the NVIDIA CUDA packages, about
3 GB; they are not used: everything runs on the CPU, in about 10 s.
HF_HUB_OFFLINE=1 keeps the libraries from trying to reach the hub.)

Last run 2026-11-27, when the "document/..." cases were added (issue 8), with
exactly the venv above (every pinned version installed as pinned; torch reports
2.15.0+cu132) and the model directory given as an absolute path:

    HF_HUB_OFFLINE=1 nice -n 15 /tmp/refvenv/bin/python scripts/make-reference.py \
        /work/main/models/all-MiniLM-L6-v2

The 36 older cases came out byte for byte as before (texts, ids, floats); the
only change to their lines in the JSON is the comma after the one that used to
be last. The ten document cases are appended after them.
(That venv also holds fastapi and uvicorn, for scripts/baseline-fastapi.py.)

Usage: make-reference.py [MODEL_DIR] [--output PATH]

MODEL_DIR defaults to models/all-MiniLM-L6-v2 and --output to
tests/data/minilm_reference.json, both relative to the repository root (this
script's ../).

Each case holds:
  name                    unique; "category/detail", the category first. The
                          "document/..." cases are passages of 40 to 269
                          tokens (the count ends the name), for the bf16/int8
                          accuracy checks at retrieval-chunk lengths
  text                    the input (never empty)
  token_ids               model.tokenize([text])["input_ids"][0] (named
                          model.preprocess in sentence-transformers 6) where the
                          attention mask is 1: with [CLS]/[SEP], truncated at
                          max_seq_length (256)
  untruncated_token_count number of ids (with [CLS]/[SEP]) before truncation
  embedding               model.encode(text, normalize_embeddings=False,
                          batch_size=1): the model's own modules.json ends with
                          a Normalize module, so this is unit length
  embedding_unnormalized  the mean-pooled vector, i.e. the output of the model's
                          modules run without the final Normalize module
Floats are rounded to 7 significant digits.
"""

import argparse
import json
import os
import sys

from reference_common import round7, sha256_of

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DIMENSIONS = 384
MAX_SEQ_LENGTH = 256

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LONG_ENGLISH = (
    "The history of computing is a story of steadily shrinking machines and "
    "steadily growing ambitions. Early electronic computers filled entire rooms, "
    "consumed enormous amounts of power, and required teams of engineers to keep "
    "them running. Programs were entered with switches, plugboards, or punched "
    "cards, and a single calculation could take hours. Over the following decades "
    "the transistor replaced the vacuum tube, the integrated circuit replaced "
    "discrete components, and the microprocessor put a complete central processing "
    "unit on a single chip. Each step made computers cheaper, faster, and more "
    "reliable, and each step opened the door to new applications that had "
    "previously been unthinkable. Personal computers brought word processing and "
    "spreadsheets to offices and homes; networks connected those machines to one "
    "another; and the web turned the network into a vast library, marketplace, and "
    "meeting place. Today, the same basic ideas power phones that fit in a pocket "
    "and data centers that span several city blocks. Machine learning has become "
    "one of the most important workloads running on this hardware. Models that "
    "translate languages, recognize speech, describe images, and answer questions "
    "are trained on huge collections of text and pictures, and then served to "
    "millions of users. Serving such models efficiently is an engineering problem "
    "in its own right: requests arrive at unpredictable times, inputs vary in "
    "length, and latency matters as much as throughput. Batching requests "
    "together makes better use of the hardware, but waiting too long to fill a "
    "batch hurts the users who are waiting for an answer. Good inference servers "
    "balance these concerns carefully, measuring queue depth, sequence length, and "
    "memory use, and adapting their behaviour as the load changes throughout the "
    "day. The story is far from over, and the next chapter is being written now."
)

LONG_MIXED = (
    "Release notes, version 2.4.1 (2024-03-15): Fixed a crash when the input "
    "contained more than 65,536 characters; improved throughput by 37% on 8-core "
    "machines; the /v1/embeddings endpoint now accepts up to 2048 inputs per "
    "request. Known issues: café, naïve, résumé, Zürich, São Paulo and Łódź are "
    "tokenized into several word pieces; 東京, 서울 and 北京 are split into single "
    "characters; emoji such as 🚀 and 🎉 become [UNK]. Configuration keys: "
    "max_batch_size=32, max_wait_ms=5, queue_capacity=1024, threads=auto. "
    "Example request: {\"model\": \"all-MiniLM-L6-v2\", \"input\": [\"hello "
    "world\", \"good morning\"]}. Example response: {\"data\": [{\"index\": 0, "
    "\"embedding\": [0.0123, -0.0456, 0.0789]}], \"usage\": {\"prompt_tokens\": "
    "8, \"total_tokens\": 8}}. Benchmarks were run on a 2.1 GHz processor with "
    "24 GiB of memory; p50 latency was 3.2 ms, p95 latency was 7.9 ms, and p99 "
    "latency was 12.4 ms at 1,500 requests per second. Contributors: Ana María "
    "García-López, Jürgen Müller, Nguyễn Văn An, 田中太郎, 김민준, and O'Brien-Smith. "
    "Thanks to everyone who reported bugs, wrote documentation, translated the "
    "user interface into Français, Deutsch, Español, Português, Tiếng Việt, 中文, "
    "日本語 and 한국어, and reviewed pull requests #1024, #1031, #1057 and #1099. "
    "The next release will add streaming responses, request priorities, and "
    "per-tenant rate limits of 100/s, 1,000/min and 50,000/day."
)

# Document-length inputs (issue 8): passages of different topics whose token counts
# (with [CLS]/[SEP]) spread from 40 to past the 256 limit. Each name ends with that count,
# which main() checks. The retrieval chunk is the 107-token body of the benchmarks:
# the sentence below three times, byte for byte, trailing space included (BERT's
# tokenizer drops the trailing space, so the ids are the same with or without it).
RETRIEVAL_CHUNK_SENTENCE = (
    "The quick brown fox jumps over the lazy dog while the committee debated the budget for next "
    "year's infrastructure projects, including bridges, tunnels and a new light-rail line. "
)
RETRIEVAL_CHUNK_107 = RETRIEVAL_CHUNK_SENTENCE * 3

DOC_GARDENING = (
    "Tomatoes grow best in full sun and well-drained soil. Water them deeply twice a week "
    "rather than a little every day, and tie the stems to a stake as the fruit ripens."
)
DOC_COOKING = (
    "To make a simple risotto, warm the stock in a separate pot and keep it at a gentle simmer. "
    "Toast the rice in butter with a chopped onion for two minutes, add a glass of wine, "
    "then ladle in the stock a little at a time, stirring until each addition is absorbed."
)
DOC_SLEEP_HEALTH = (
    "Adults who regularly sleep fewer than seven hours a night are more likely to report "
    "headaches, poor concentration and irritability. Over months and years, short sleep is also "
    "associated with weight gain, high blood pressure and a weaker immune response. Doctors "
    "recommend keeping a fixed wake-up time, even at weekends, avoiding caffeine after lunch, and "
    "keeping the bedroom cool, dark and quiet. Phones, tablets and televisions should be switched off an hour before bed."
)
DOC_ASTRONOMY = (
    "A total solar eclipse happens when the Moon passes directly between the Sun and the Earth "
    "and covers the bright disk of the Sun completely. For a few minutes the sky darkens, the "
    "temperature drops, birds fall silent, and the pale outer atmosphere of the Sun, the corona, "
    "becomes visible as a glowing halo. Because the Moon's shadow is narrow, totality can only be "
    "seen from a strip of land a few hundred kilometres wide, and any given place on Earth sees "
    "one on average only once every few centuries. Astronomers use these rare minutes to study "
    "the corona, the solar wind and the way light bends around the Sun."
)
DOC_INFLATION_HISTORY = (
    "In the early 1920s Germany experienced one of the most severe episodes of hyperinflation in "
    "modern history. The government had financed the First World War largely by borrowing, and "
    "after the war it faced heavy reparation payments that had to be made in gold or foreign "
    "currency. When the occupation of the Ruhr in 1923 cut industrial output, the central bank "
    "printed money at an ever faster pace to pay workers and creditors. Prices doubled every few "
    "days; workers were paid twice a day and rushed to spend their wages before they lost their "
    "value. Savings that families had built over generations were wiped out within months. The "
    "crisis ended only when a new currency, the Rentenmark, was introduced and the supply of money "
    "was strictly limited. Historians still debate where most of the blame for it lay."
)
DOC_CORAL_REEFS = (
    "Coral reefs cover less than one percent of the ocean floor, yet they shelter roughly a quarter "
    "of all known marine species. A reef is built by tiny animals called polyps, which live in "
    "colonies and secrete skeletons of calcium carbonate. Inside their tissues live microscopic "
    "algae that capture sunlight and share the sugars they produce, giving the coral most of its "
    "energy and much of its colour. When the water becomes too warm for several weeks, the polyps "
    "expel the algae and turn white, a process known as bleaching. A bleached coral is not dead, "
    "but it is starving, and if temperatures do not fall it may die within a few months. Marine "
    "heatwaves have become more frequent over the past three decades, and mass bleaching events "
    "have now been recorded on reefs in every tropical ocean. Scientists are testing heat-tolerant "
    "corals, shading and reef restoration to buy time for reefs while emissions are brought down."
)
DOC_CODE_REVIEW = (
    "Code review is one of the most effective ways for a software team to catch defects before they "
    "reach production, but only when it is done with care. A good reviewer starts by reading the "
    "description of the change and asking whether the problem it solves is real and whether the "
    "approach is reasonable, before looking at individual lines. Small changes are reviewed far "
    "more thoroughly than large ones: studies of open-source projects suggest that the number of "
    "comments per line drops sharply once a change grows past a few hundred lines, so authors should "
    "split their work into pieces that can be understood in one sitting. Reviewers should look for "
    "missing tests, unclear names, error cases that are silently ignored, and behaviour that will "
    "surprise the next person who reads the code. Comments should be specific and kind, explaining "
    "why something matters instead of simply demanding a change. Finally, teams that measure how "
    "long changes wait for review often find that speeding up the first response does more for "
    "quality than adding more rules. A review that arrives within an hour keeps the author's context fresh; one that arrives after three days usually means a painful rebase later."
)
DOC_POWER_GRID = (
    "An electricity grid must balance supply and demand every second of every day, because large "
    "amounts of electrical energy cannot easily be stored. When demand rises faster than supply, "
    "the frequency of the alternating current falls slightly below its nominal value of fifty or "
    "sixty hertz; when supply exceeds demand, it rises. Grid operators watch this frequency "
    "constantly and ask power stations to increase or reduce their output to keep it within a "
    "narrow band. Traditional coal, gas and nuclear plants help by their very nature: their heavy "
    "spinning turbines store kinetic energy and resist sudden changes in frequency, giving operators "
    "a few precious seconds to react. Wind turbines and solar panels are connected through power "
    "electronics instead and provide no such inertia unless they are specially designed to. As their "
    "share of generation grows, operators are turning to large batteries that can respond within "
    "milliseconds, to demand response programmes that pay factories to pause energy-hungry "
    "processes, and to stronger links between neighbouring countries. Pumped hydroelectric storage, "
    "which moves water uphill when power is cheap and lets it flow back through turbines when it is "
    "expensive, remains the largest form of storage in use today, with more than a hundred and sixty gigawatts of capacity installed around the world, much of it built decades ago."
)
DOC_RAILWAY_HISTORY = (
    "The first public railway to carry passengers in steam-hauled trains opened between Stockton and "
    "Darlington in the north of England in 1825, and within twenty years railways had spread across "
    "Britain, continental Europe and the eastern United States. Their effect on daily life was "
    "enormous. Journeys that had taken several days by stagecoach could now be made in a few hours, "
    "fresh milk, fish and newspapers reached cities from distant regions every morning, and ordinary "
    "people began to travel for pleasure, giving rise to seaside resorts and the modern tourist "
    "industry. Railways also forced the adoption of standard time: before them, every town kept its "
    "own local time based on the position of the Sun, which made timetables confusing and sometimes "
    "dangerous. In 1847 most British railway companies adopted Greenwich Mean Time, and the rest of "
    "the country soon followed. Building the lines required vast amounts of capital, and the speculative "
    "railway mania of the 1840s ruined many investors when the boom collapsed. Engineers such as "
    "George Stephenson and Isambard Kingdom Brunel became national celebrities, and their bridges, "
    "tunnels and viaducts are still in use. By the end of the century a traveller could cross entire "
    "continents by train, and the telegraph wires strung beside the tracks carried news faster still. Many of the routes laid out in that first great age of construction remain the backbone of national networks, now carrying fast electric trains."
)

CASES = [
    ("short/eating_food", "A man is eating food."),
    ("short/eating_bread", "A man is eating a piece of bread."),
    ("short/carrying_baby", "The girl is carrying a baby."),
    ("short/riding_horse", "A man is riding a horse."),
    ("typical/pangram", "The quick brown fox jumps over the lazy dog."),
    ("typical/embeddings", "Sentence embeddings map text to dense vectors that capture its meaning."),
    ("typical/bank_ambiguity", "I went to the bank to deposit my paycheck, then walked along the river bank."),
    ("typical/question", "How do I reset my password if I no longer have access to my email account?"),
    ("long/english", LONG_ENGLISH),
    ("long/mixed", LONG_MIXED),
    # 254 words + [CLS] + [SEP] = exactly 256 ids: no truncation.
    ("long/boundary_256", " ".join(["hello"] * 254)),
    # 255 words + 2 = 257 ids: the last word is cut.
    ("long/boundary_257", " ".join(["hello"] * 255)),
    ("accents/french", "Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter en canoë au-delà des îles."),
    ("accents/german", "Falsches Üben von Xylophonmusik quält jeden größeren Zwerg."),
    ("accents/vietnamese", "Tôi yêu tiếng Việt vì nó có nhiều dấu thanh điệu."),
    ("accents/spanish", "¿Dónde está la estación? ¡Mañana será un día increíble!"),
    ("cjk/chinese", "我喜欢在周末和朋友一起吃饭。"),
    ("cjk/japanese", "今日はいい天気ですね。東京タワーに行きましょう。"),
    ("cjk/korean", "안녕하세요, 만나서 반갑습니다."),
    ("mixed_script/four_scripts", "Hello 世界, Привет мир, Γειά σου κόσμε, مرحبا بالعالم"),
    ("emoji/in_text", "I love pizza 🍕🍕 and tacos 🌮! 😀👍🏽 ❤️"),
    ("emoji/only", "🎉🎉🎉"),
    ("whitespace/leading_trailing", "   padded sentence with spaces   "),
    ("whitespace/repeated", "many     spaces    between     the      words"),
    ("whitespace/tabs_newlines", "line one\n\tline two\r\n\n  line three\t\t"),
    ("whitespace/unicode", "no\u00a0break\u2003em\u200bzero\u00adsoft\u3000ideographic"),
    ("single_word/hello", "hello"),
    ("single_word/char", "a"),
    ("single_word/long_wordpiece", "antidisestablishmentarianism"),
    ("punctuation_only/ascii", "?!... ,;:--()[]{}"),
    ("numbers/mixed_formats", "3.14159 2,718 42 1e-9 -17 2024-06-01 $1,234.56 50% 0x1F"),
    ("mixed_case/alternating", "ThIs Is MiXeD cAsE tExT wItH iPhone, NASA and McDonald's"),
    ("url/https_query", "Visit https://example.com/path/to/page?query=embedding&lang=en#section for details."),
    ("code/rust", 'fn main() { let v: Vec<i32> = (0..10).map(|x| x * x).collect(); println!("{:?}", v); }'),
    ("code/python", "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"),
    ("email/contact", "Contact me at jane.doe+test@example.org or call +1 (555) 010-9999."),
    # Appended after the older cases, so that their order (and the first case over 256
    # tokens, which tests/minilm_reference.rs picks) stays as it was.
    ("document/gardening_40", DOC_GARDENING),
    ("document/cooking_64", DOC_COOKING),
    ("document/sleep_health_96", DOC_SLEEP_HEALTH),
    ("document/retrieval_chunk_107", RETRIEVAL_CHUNK_107),
    ("document/astronomy_128", DOC_ASTRONOMY),
    ("document/inflation_history_160", DOC_INFLATION_HISTORY),
    ("document/coral_reefs_192", DOC_CORAL_REEFS),
    ("document/code_review_224", DOC_CODE_REVIEW),
    ("document/power_grid_250", DOC_POWER_GRID),
    # 269 ids before truncation: cut to 256.
    ("document/railway_history_269", DOC_RAILWAY_HISTORY),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", nargs="?", default=os.path.join(REPO_ROOT, "models", "all-MiniLM-L6-v2"))
    ap.add_argument("--output", default=os.path.join(REPO_ROOT, "tests", "data", "minilm_reference.json"))
    args = ap.parse_args()

    import numpy as np
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    torch.manual_seed(0)

    sha = sha256_of(os.path.join(args.model_dir, "model.safetensors"))
    if sha != MODEL_SHA256:
        sys.exit(f"model.safetensors sha256 is {sha}, expected {MODEL_SHA256}")

    model = SentenceTransformer(args.model_dir, device="cpu")
    model.eval()
    max_seq_length = model.max_seq_length
    if max_seq_length != MAX_SEQ_LENGTH:
        print(f"warning: max_seq_length is {max_seq_length}, expected {MAX_SEQ_LENGTH}", file=sys.stderr)

    modules = list(model.children())
    names = [type(m).__name__ for m in modules]
    print(f"modules: {names}", file=sys.stderr)
    if names[-1] != "Normalize":
        sys.exit(f"expected the last module to be Normalize, got {names}")
    pre_normalize = modules[:-1]

    tokenizer = model.tokenizer
    names_seen = [n for n, _ in CASES]
    assert len(set(names_seen)) == len(names_seen), "case names must be unique"
    cases = []
    for name, text in CASES:
        assert text, "empty text"

        # model.tokenize() was renamed preprocess() in sentence-transformers 6.
        features = (model.preprocess if hasattr(model, "preprocess") else model.tokenize)([text])
        mask = features["attention_mask"][0].tolist()
        ids = [int(t) for t, m in zip(features["input_ids"][0].tolist(), mask) if m]
        untruncated = len(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])
        assert len(ids) == min(untruncated, max_seq_length), (name, len(ids), untruncated)
        if name.startswith("document/"):
            # The name ends with the untruncated token count it was written for.
            assert int(name.rsplit("_", 1)[1]) == untruncated, (name, untruncated)

        with torch.no_grad():
            emb = model.encode(
                [text],
                batch_size=1,
                normalize_embeddings=False,
                convert_to_numpy=True,
                show_progress_bar=False,
            )[0]
            feats = dict(features)  # already on the CPU; may hold non-tensors ("modality")
            for module in pre_normalize:
                feats = module(feats)
            unnorm = feats["sentence_embedding"][0].cpu().numpy()

        assert emb.shape == (DIMENSIONS,) and unnorm.shape == (DIMENSIONS,)
        norm = float(np.linalg.norm(unnorm))
        diff = float(np.max(np.abs(unnorm / norm - emb)))
        assert diff < 1e-5, (name, diff)

        cases.append(
            {
                "name": name,
                "text": text,
                "token_ids": ids,
                "untruncated_token_count": untruncated,
                "embedding": [round7(x) for x in emb.tolist()],
                "embedding_unnormalized": [round7(x) for x in unnorm.tolist()],
            }
        )
        print(f"{name:32s} tokens={len(ids):3d} (untruncated {untruncated:3d}) |unnorm|={norm:.4f}", file=sys.stderr)

    long_cases = [c for c in cases if c["untruncated_token_count"] > max_seq_length]
    if len(long_cases) < 2:
        sys.exit(f"need at least 2 cases longer than {max_seq_length} tokens, got {len(long_cases)}")

    header = {
        "model": MODEL_ID,
        "model_sha256": sha,
        "generator": (
            f"sentence-transformers {sentence_transformers.__version__}, "
            f"transformers {transformers.__version__}, torch {torch.__version__}"
        ),
        "max_seq_length": max_seq_length,
        "dimensions": DIMENSIONS,
    }
    dump = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    lines = ["{" + ",".join(f"{dump(k)}:{dump(v)}" for k, v in header.items()) + ',"cases":[']
    lines += [dump(c) + ("," if i + 1 < len(cases) else "") for i, c in enumerate(cases)]
    lines.append("]}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    json.load(open(tmp, encoding="utf-8"))  # must parse
    os.replace(tmp, args.output)
    print(f"wrote {len(cases)} cases to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
