//! Tests of `tokenizer.rs`: the bounded (prefix) paths against encoding whole texts, on the
//! tiny BERT tokenizer and on XLM-R's SentencePiece Unigram one.
use super::*;

/// The tiny BERT's tokenizer, written to a directory of its own (tests call this at once)
/// that is removed once loaded.
fn tiny() -> TextTokenizer {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("zb-tok-{}-{call}", std::process::id()));
    crate::model::tiny::write_tiny_bert(&dir, &crate::model::tiny::TinySpec::default()).unwrap();
    let tokenizer = TextTokenizer::load(&dir.join("tokenizer.json"), 12).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    tokenizer
}

fn lcg_text(seed: u64, words: usize) -> String {
    const PIECES: &[&str] = &[
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "é",
        "naïve",
        "東京",
        "a.b",
        "x,y",
        "123",
        "hello",
        "world",
        "[SEP]",
        "[CLS]",
        "!!",
        "ü",
        "<pad>",
        "</s>",
        "\u{301}e",
        "ｆｕｌｌ",
        "①",
        "Ёжик",
    ];
    const SPACES: &[&str] = &[
        " ",
        "  ",
        "\n",
        "\t",
        " \u{3000}",
        "\r\n",
        "",
        "\u{a0}",
        "   ",
    ];
    let mut s = seed;
    let mut next = |n: usize| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as usize % n
    };
    let mut out = String::new();
    for _ in 0..words {
        out.push_str(PIECES[next(PIECES.len())]);
        out.push_str(SPACES[next(SPACES.len())]);
    }
    out
}

#[test]
fn the_bounded_path_gives_the_ids_of_the_whole_text() {
    let t = tiny();
    assert!(t.bounded(), "the tiny BERT tokenizer is prefix-safe");
    // The bounded path stops counting a too-long input early: only the variant must agree.
    let norm = |r: Result<Vec<u32>, TokenizeError>| {
        r.map_err(|e| match e {
            TokenizeError::TooLong { index, max, .. } => TokenizeError::TooLong {
                index,
                max,
                tokens: 0,
            },
            other => other,
        })
    };
    for seed in 0..200 {
        let words = [1, 5, 11, 12, 13, 50, 700, 3000][seed as usize % 8];
        let text = lcg_text(seed, words);
        for truncate in [true, false] {
            assert_eq!(
                norm(t.encode(0, &text, truncate)),
                norm(t.encode_unbounded(0, &text, truncate)),
                "seed {seed}, truncate {truncate}: {text:?}"
            );
        }
    }
}

/// For a pair short enough for it, the reference path's ids are those of the `tokenizers`
/// crate's own truncation and template (whose overflowing parts grow with the product of the
/// texts' lengths, so it is asked only for short pairs).
fn check_against_the_crate(t: &TextTokenizer, first: &str, second: &str) {
    if first.len() + second.len() > 800 {
        return;
    }
    let ours = t.encode_pair_unbounded(0, first, second, true).unwrap();
    let crate_ids = t.truncating.encode_fast((first, second), true).unwrap();
    assert_eq!(ours.ids, crate_ids.get_ids(), "{first:?} / {second:?}");
}

#[test]
fn the_bounded_pair_path_gives_the_ids_of_the_whole_texts() {
    let t = tiny();
    let norm = |r: Result<PairIds, TokenizeError>| {
        r.map_err(|e| match e {
            TokenizeError::TooLong { index, max, .. } => TokenizeError::TooLong {
                index,
                max,
                tokens: 0,
            },
            other => other,
        })
    };
    // 12 tokens at most: 9 for the texts, an odd room, so when both texts are cut the
    // longer one keeps the extra token, and which one is longer must be known.
    let lengths = [0, 1, 3, 4, 5, 9, 10, 11, 50, 700, 3000];
    let mut cut_both = 0;
    for seed in 0..300u64 {
        let first = lcg_text(seed, lengths[seed as usize % lengths.len()]);
        let second = lcg_text(
            seed + 1000,
            lengths[(seed as usize / lengths.len()) % lengths.len()],
        );
        for truncate in [true, false] {
            check_against_the_crate(&t, &first, &second);
            let want = t.encode_pair_unbounded(2, &first, &second, truncate);
            if let Ok(p) = &want {
                assert!(p.ids.len() <= 12 && p.second_from < p.ids.len());
                assert_eq!(p.ids[0], 2, "[CLS] first");
                if truncate && p.second_from >= 5 && p.ids.len() - p.second_from >= 5 {
                    cut_both += 1;
                }
            }
            assert_eq!(
                norm(t.encode_pair(2, &first, &second, truncate)),
                norm(want),
                "seed {seed}, truncate {truncate}: {first:?} / {second:?}"
            );
        }
    }
    assert!(cut_both > 10, "both texts cut in only {cut_both} cases");
    // The query is encoded once for all its pairs, with the same ids.
    let first = lcg_text(7, 40);
    let seconds: Vec<String> = (0..20).map(|i| lcg_text(i, i as usize * 37)).collect();
    let all = t.encode_pairs(&first, &seconds, true).unwrap();
    for (i, second) in seconds.iter().enumerate() {
        assert_eq!(all[i], t.encode_pair(i, &first, second, true).unwrap());
    }
    // An over-long pair names its index when not truncated.
    let long = lcg_text(3, 500);
    match t.encode_pairs("short", &["a".into(), long], false) {
        Err(TokenizeError::TooLong {
            index: 1,
            max: 12,
            tokens,
        }) => assert!(tokens > 12),
        other => panic!("{other:?}"),
    }
}

#[test]
fn whitespace_the_normalizer_drops_is_not_a_cut() {
    // Found by fuzz/fuzz_targets/tokenize.rs: BertNormalizer drops the form feed (and the
    // U+FFFD after it), so the whole text is one 499-letter word, [UNK]; a prefix cut at a
    // form feed saw ~100 letters, "s ##s ##s ...", and answered with those tokens (or 413).
    let t = tiny();
    let text = format!("s\u{c}{}", "\u{fffd}".repeat(13)).repeat(499);
    assert_eq!(t.encode_unbounded(0, &text, false).unwrap(), vec![2, 1, 3]);
    for truncate in [true, false] {
        assert_eq!(
            t.encode(0, &text, truncate).unwrap(),
            vec![2, 1, 3],
            "truncate {truncate}"
        );
    }
}

#[test]
fn text_without_spaces_is_cut_at_ideographs_with_the_same_ids() {
    let t = tiny();
    let text = "東京都庁舎の展望室から見る夜景は美しい。".repeat(2_000);
    for truncate in [true, false] {
        assert_eq!(
            t.encode(0, &text, truncate)
                .map_err(|e| matches!(e, TokenizeError::TooLong { .. })),
            t.encode_unbounded(0, &text, truncate)
                .map_err(|e| matches!(e, TokenizeError::TooLong { .. })),
            "truncate {truncate}"
        );
    }
}

#[test]
fn too_long_inputs_are_refused_without_truncation() {
    let t = tiny();
    let long = "hello world ".repeat(10_000);
    match t.encode(3, &long, false) {
        Err(TokenizeError::TooLong { index, tokens, max }) => {
            assert_eq!((index, max), (3, 12));
            assert!(tokens > 12);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.encode(0, &long, true).unwrap().len(), 12);
    assert_eq!(t.tokens(0, &long, true, true).unwrap().len(), 12);
    assert!(t.tokens(0, &long, true, false).is_err());
}

#[test]
fn the_prefix_path_stops_early_and_trusts_only_tokens_before_the_last_word() {
    let t = tiny();
    // 12 tokens kept of 10 content tokens: a 100 kB text needs one 4 kB prefix.
    let text = "hello world ".repeat(10_000);
    assert_eq!(t.encode(0, &text, true), t.encode_unbounded(0, &text, true));
    // A last word that continues past the cut must not count: only the words that end
    // before the prefix's last whitespace are trusted (offsets, not a count of tokens).
    let prefix = "hello ".repeat(700);
    let (cut, trusted) = prefix_cut(&prefix, 4096, Cuts { cjk: true }).unwrap();
    let raw = t.whole.encode(&prefix[..cut], false).unwrap();
    let kept = raw
        .get_offsets()
        .iter()
        .take_while(|&&(_, end)| end <= trusted)
        .count();
    assert_eq!(kept + 1, raw.len(), "all but the last word's token");
}

#[test]
fn prefix_cuts_fall_before_whitespace_and_distrust_the_last_word() {
    let spaces = Cuts { cjk: false };
    let cjk = Cuts { cjk: true };
    assert_eq!(prefix_cut("hello big world", 13, spaces), Some((9, 6)));
    assert_eq!(prefix_cut("hello   big world", 15, spaces), Some((11, 8)));
    assert_eq!(prefix_cut("hello world", 4, spaces), None);
    assert_eq!(prefix_cut("abcdefgh", 100, spaces), None);
    // Ideographs start words when the normalizer isolates them.
    let jp = "東京の夜景";
    assert_eq!(prefix_cut(jp, jp.len(), spaces), None);
    // Cut before 景 (byte 12); the prefix's last word is 夜 (byte 9).
    assert_eq!(prefix_cut(jp, jp.len(), cjk), Some((12, 9)));
    // With 12 bytes: before 夜 (byte 9); the prefix's last word is "京の" (byte 3).
    assert_eq!(prefix_cut(jp, 12, cjk), Some((9, 3)));
    // Never inside a character.
    let text = "aé é 東é 京 é";
    for b in 0..text.len() {
        for cuts in [spaces, cjk] {
            if let Some((cut, trusted)) = prefix_cut(text, b, cuts) {
                assert!(text.is_char_boundary(cut) && text.is_char_boundary(trusted));
                assert!(trusted <= cut && cut <= b);
            }
        }
    }
}

#[test]
fn regex_splitting_tokenizers_are_not_prefix_safe() {
    let json = serde_json::json!({
        "version": "1.0",
        "pre_tokenizer": { "type": "Split", "pattern": { "Regex": "." }, "behavior": "Isolated", "invert": false },
        "model": { "type": "WordLevel", "vocab": { "[UNK]": 0, "a": 1 }, "unk_token": "[UNK]" }
    });
    let t = TextTokenizer::from_json(json.to_string().as_bytes(), 8).unwrap();
    assert!(!t.bounded());
}

/// XLM-R's SentencePiece Unigram tokenizer (Precompiled, Strip, Replace of space runs,
/// Metaspace: the one scripts/make-xlmr-reference.py trained) is prefix-safe, and its bounded
/// paths give the ids of encoding whole texts and pairs.
#[test]
fn xlm_r_unigram_bounded_paths_give_the_ids_of_the_whole_texts() {
    let json = include_bytes!("../../tests/data/tiny_xlmr_tokenizer.json");
    let t = TextTokenizer::from_json(json, 12).unwrap();
    assert!(t.bounded(), "XLM-R's tokenizer.json is prefix-safe");
    assert_eq!(t.cuts, Some(Cuts { cjk: false }));
    let kind = |e: TokenizeError| matches!(e, TokenizeError::TooLong { .. });
    for seed in 0..200 {
        let words = [1, 5, 11, 12, 13, 50, 700, 3000][seed as usize % 8];
        let text = lcg_text(seed, words);
        for truncate in [true, false] {
            assert_eq!(
                t.encode(0, &text, truncate).map_err(kind),
                t.encode_unbounded(0, &text, truncate).map_err(kind),
                "seed {seed}, truncate {truncate}: {text:?}"
            );
        }
    }
    let lengths = [0, 1, 3, 5, 9, 11, 50, 700, 3000];
    for seed in 0..200u64 {
        let first = lcg_text(seed, lengths[seed as usize % lengths.len()]);
        let second = lcg_text(seed + 1000, lengths[(seed as usize / 9) % lengths.len()]);
        for truncate in [true, false] {
            check_against_the_crate(&t, &first, &second);
            assert_eq!(
                t.encode_pair(0, &first, &second, truncate).map_err(kind),
                t.encode_pair_unbounded(0, &first, &second, truncate)
                    .map_err(kind),
                "seed {seed}, truncate {truncate}: {first:?} / {second:?}"
            );
        }
    }
    // Another Replace (here: of every space) may join words across a cut: not prefix-safe.
    let mut other: serde_json::Value = serde_json::from_slice(json).unwrap();
    other["normalizer"]["normalizers"][2]["pattern"]["Regex"] = " ".into();
    let t = TextTokenizer::from_json(other.to_string().as_bytes(), 12).unwrap();
    assert!(!t.bounded());
}

/// A long query with a long passage, both cut to XLM-R's pair template `<s> A </s></s> B
/// </s>` (the pairs that took the `tokenizers` crate's own pair truncation gigabytes, the
/// product of their overflowing parts, are in the test above, seed 71 among them).
#[test]
fn long_pairs_are_cut_without_the_crates_overflowing_parts() {
    let json = include_bytes!("../../tests/data/tiny_xlmr_tokenizer.json");
    let t = TextTokenizer::from_json(json, 12).unwrap();
    let first = "the quick brown fox ".repeat(1_000);
    let second = "naïve dog jumps over ".repeat(200);
    for p in [
        t.encode_pair(0, &first, &second, true).unwrap(),
        t.encode_pair_unbounded(0, &first, &second, true).unwrap(),
        t.encode_pairs(&first, std::slice::from_ref(&second), true)
            .unwrap()
            .remove(0),
    ] {
        // <s> 4 of the first </s></s> 4 of the second </s>.
        assert_eq!(p.ids.len(), 12);
        assert_eq!((p.ids[0], p.ids[5], p.ids[6], p.ids[11]), (0, 2, 2, 2));
    }
}
