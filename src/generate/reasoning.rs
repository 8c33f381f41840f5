//! Reasoning ("thinking") text: the part of an answer a reasoning model writes between its
//! chat template's thinking tags (Qwen3, QwQ, DeepSeek-R1: `<think>`…`</think>`), which the
//! chat route answers as `reasoning_content`, apart from `content` (as vLLM's reasoning
//! parsers and llama.cpp's server do).
//!
//! - The tags are the template's: a template that writes neither tag has no reasoning, and
//!   its answers are untouched ([`ThinkingTags::detect`]).
//! - A template may open the block itself at the end of the generation prompt (DeepSeek-R1's,
//!   Qwen3 thinking models', QwQ's): the answer then starts inside the reasoning
//!   ([`ThinkingTags::opened_by`], llama.cpp's `thinking_forced_open`), and everything up to
//!   the end tag is reasoning, all of it when the end tag never comes (a cut answer).
//! - Otherwise a block is reasoning only at the start of the answer (after whitespace), as
//!   llama.cpp reads it: a start tag after other text, or in a code sample, is content.
//! - The end tag ends the reasoning at its first occurrence. The reasoning is trimmed of
//!   the whitespace around it and the content of the whitespace after the end tag (the
//!   templates' newlines, which llama.cpp drops too); a block that holds only whitespace
//!   (Qwen3's `enable_thinking: false`) is no reasoning.
//!
//! [`ReasoningSplit`] reads an answer piece by piece (a stream's tokens), holding back only a
//! partial tag and whitespace that may be trimmed, so a streamed answer's pieces add up to
//! the whole answer's split exactly.

/// llama.cpp's `reasoning_format` (request field and `--reasoning-format`): `none` keeps
/// the reasoning inline in the content, tags and all; `deepseek` and `auto` (the default)
/// answer it as `reasoning_content`. llama.cpp's `deepseek-legacy` (both at once) is not
/// offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReasoningFormat {
    None,
    Deepseek,
    #[default]
    Auto,
}

impl ReasoningFormat {
    /// Whether the reasoning is answered apart.
    pub fn splits(self) -> bool {
        self != ReasoningFormat::None
    }
}

impl std::str::FromStr for ReasoningFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(ReasoningFormat::None),
            "deepseek" => Ok(ReasoningFormat::Deepseek),
            "auto" => Ok(ReasoningFormat::Auto),
            "deepseek-legacy" => Err("reasoning_format \"deepseek-legacy\" is not supported: use \"none\" (reasoning inline in content) or \"auto\" (reasoning in reasoning_content)".into()),
            other => Err(format!(
                "reasoning_format must be \"none\", \"deepseek\" or \"auto\" (got {other:?})"
            )),
        }
    }
}

/// The tag pairs recognised in templates, first match wins.
const TAGS: &[(&str, &str)] = &[("<think>", "</think>")];

/// A template's thinking tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThinkingTags {
    pub start: &'static str,
    pub end: &'static str,
}

impl ThinkingTags {
    /// The tags a chat template's source writes (both of a pair), if any.
    pub fn detect(template: &str) -> Option<Self> {
        TAGS.iter()
            .find(|(start, end)| template.contains(start) && template.contains(end))
            .map(|&(start, end)| Self { start, end })
    }

    /// Whether a rendered prompt ends inside an opened block (its last text, whitespace
    /// aside, is the start tag), so the answer begins in the reasoning.
    pub fn opened_by(&self, prompt: &str) -> bool {
        prompt.trim_end().ends_with(self.start)
    }
}

/// How one answer's reasoning is read: the tags, and whether the prompt opened the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasoningParsing {
    pub tags: ThinkingTags,
    pub open: bool,
}

/// Text split into its reasoning and its content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pieces {
    pub reasoning: String,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before anything but whitespace: a start tag here opens the reasoning.
    Start,
    Reasoning,
    /// Just past the end tag: whitespace is dropped.
    AfterEnd,
    Content,
}

/// Splits an answer, given piece by piece, into reasoning and content.
#[derive(Debug, Clone)]
pub struct ReasoningSplit {
    tags: ThinkingTags,
    state: State,
    /// Text read but not yet given out: a partial tag, or whitespace that may be trimmed.
    held: String,
    /// Some reasoning was given out (whitespace is trimmed only before the first).
    reasoning_begun: bool,
    /// Pieces read while the reasoning was open (a stream's tokens: `reasoning_tokens`).
    reasoning_pieces: usize,
}

impl ReasoningSplit {
    pub fn new(p: ReasoningParsing) -> Self {
        Self {
            tags: p.tags,
            state: if p.open {
                State::Reasoning
            } else {
                State::Start
            },
            held: String::new(),
            reasoning_begun: false,
            reasoning_pieces: 0,
        }
    }

    /// The pieces read that belong to the reasoning: read while it was open, or that opened
    /// it (the one that closes it counts).
    pub fn reasoning_pieces(&self) -> usize {
        self.reasoning_pieces
    }

    /// Reads the next piece; gives out what can be told apart already.
    pub fn push(&mut self, text: &str) -> Pieces {
        self.read(text, true)
    }

    /// Reads text that is not a piece of its own (held back elsewhere, e.g. as the start of
    /// a stop sequence): not counted in [`Self::reasoning_pieces`].
    pub fn push_uncounted(&mut self, text: &str) -> Pieces {
        self.read(text, false)
    }

    fn read(&mut self, text: &str, count: bool) -> Pieces {
        self.held.push_str(text);
        let mut out = Pieces::default();
        let mut reasoning_piece = false;
        loop {
            match self.state {
                State::Start => {
                    let rest = self.held.trim_start();
                    if let Some(after) = rest.strip_prefix(self.tags.start) {
                        self.held = after.to_string();
                        self.state = State::Reasoning;
                    } else if self.tags.start.starts_with(rest) {
                        break;
                    } else {
                        self.state = State::Content;
                    }
                }
                State::Reasoning => {
                    reasoning_piece = true;
                    if !self.reasoning_begun {
                        let skip = self.held.len() - self.held.trim_start().len();
                        self.held.drain(..skip);
                    }
                    if let Some(at) = self.held.find(self.tags.end) {
                        let tail = self.held[at + self.tags.end.len()..].to_string();
                        let upto = self.held[..at].trim_end().len();
                        self.give_reasoning(upto, &mut out);
                        self.held = tail;
                        self.state = State::AfterEnd;
                        continue;
                    }
                    // Hold a tail that may begin the end tag, and the whitespace before it.
                    let partial = self
                        .held
                        .char_indices()
                        .map(|(i, _)| i)
                        .find(|&i| self.tags.end.starts_with(&self.held[i..]))
                        .unwrap_or(self.held.len());
                    let upto = self.held[..partial].trim_end().len();
                    self.give_reasoning(upto, &mut out);
                    break;
                }
                State::AfterEnd => {
                    let skip = self.held.len() - self.held.trim_start().len();
                    self.held.drain(..skip);
                    if self.held.is_empty() {
                        break;
                    }
                    self.state = State::Content;
                }
                State::Content => {
                    out.content.push_str(&self.held);
                    self.held.clear();
                    break;
                }
            }
        }
        if reasoning_piece && count {
            self.reasoning_pieces += 1;
        }
        out
    }

    /// Gives out the first `upto` bytes held as reasoning.
    fn give_reasoning(&mut self, upto: usize, out: &mut Pieces) {
        if upto == 0 {
            return;
        }
        out.reasoning.push_str(&self.held[..upto]);
        self.held.drain(..upto);
        self.reasoning_begun = true;
    }

    /// Ends the answer: what was held is given out (a partial start tag is content; inside
    /// the reasoning, what was held is reasoning, trailing whitespace trimmed).
    pub fn finish(&mut self) -> Pieces {
        let mut out = Pieces::default();
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Start | State::Content => out.content = held,
            State::Reasoning => {
                let text = if self.reasoning_begun {
                    held.trim_end()
                } else {
                    held.trim()
                };
                out.reasoning = text.to_string();
            }
            State::AfterEnd => {}
        }
        out
    }
}

/// A whole answer split: its reasoning and its content.
pub fn split(p: ReasoningParsing, text: &str) -> Pieces {
    let mut s = ReasoningSplit::new(p);
    let mut out = s.push(text);
    let end = s.finish();
    out.reasoning.push_str(&end.reasoning);
    out.content.push_str(&end.content);
    out
}

/// A whole answer given as its tokens' texts, cut after `limit` bytes (where a stop
/// sequence begins): its split, and how many tokens were reasoning.
pub fn split_tokens<'a>(
    p: ReasoningParsing,
    texts: impl IntoIterator<Item = &'a str>,
    limit: usize,
) -> (Pieces, usize) {
    let mut s = ReasoningSplit::new(p);
    let mut out = Pieces::default();
    let mut left = limit;
    for text in texts {
        // The cut is a character boundary of the whole text, so of the token's too.
        let piece = &text[..left.min(text.len())];
        left -= piece.len();
        let got = s.push(piece);
        out.reasoning.push_str(&got.reasoning);
        out.content.push_str(&got.content);
        if left == 0 {
            break;
        }
    }
    let end = s.finish();
    out.reasoning.push_str(&end.reasoning);
    out.content.push_str(&end.content);
    (out, s.reasoning_pieces())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAGS: ThinkingTags = ThinkingTags {
        start: "<think>",
        end: "</think>",
    };
    const OPEN: ReasoningParsing = ReasoningParsing {
        tags: TAGS,
        open: true,
    };
    const CLOSED: ReasoningParsing = ReasoningParsing {
        tags: TAGS,
        open: false,
    };

    fn pieces(reasoning: &str, content: &str) -> Pieces {
        Pieces {
            reasoning: reasoning.into(),
            content: content.into(),
        }
    }

    /// The split of `pieces` read one by one, and how many were reasoning.
    fn streamed(p: ReasoningParsing, parts: &[&str]) -> (Pieces, usize) {
        let mut s = ReasoningSplit::new(p);
        let mut out = Pieces::default();
        for part in parts {
            let got = s.push(part);
            out.reasoning.push_str(&got.reasoning);
            out.content.push_str(&got.content);
        }
        let end = s.finish();
        out.reasoning.push_str(&end.reasoning);
        out.content.push_str(&end.content);
        (out, s.reasoning_pieces())
    }

    /// Every way of cutting `text` into two and three pieces splits as the whole does.
    fn same_in_pieces(p: ReasoningParsing, text: &str) -> Pieces {
        let whole = split(p, text);
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for &a in &cuts {
            for &b in cuts.iter().filter(|&&b| b >= a) {
                let parts = [&text[..a], &text[a..b], &text[b..]];
                assert_eq!(streamed(p, &parts).0, whole, "{parts:?}");
            }
        }
        whole
    }

    #[test]
    fn templates_with_both_tags_have_reasoning() {
        let qwen3 = "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}";
        assert_eq!(ThinkingTags::detect(qwen3), Some(TAGS));
        assert_eq!(ThinkingTags::detect("<|im_start|>assistant\n"), None);
        assert_eq!(ThinkingTags::detect("only <think> opened"), None);
        assert!(TAGS.opened_by("<|im_start|>assistant\n<think>\n"));
        assert!(!TAGS.opened_by("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
        assert!(!TAGS.opened_by("<|im_start|>assistant\n"));
    }

    #[test]
    fn a_block_at_the_start_is_reasoning_and_the_rest_content() {
        let text = "<think>\nLet me see.\n2 + 2 = 4.\n</think>\n\nIt is 4.";
        assert_eq!(
            same_in_pieces(CLOSED, text),
            pieces("Let me see.\n2 + 2 = 4.", "It is 4.")
        );
        // Whitespace before the block is not content.
        assert_eq!(
            same_in_pieces(CLOSED, "\n <think>a</think>b"),
            pieces("a", "b")
        );
        // Tags split across tokens, one character at a time.
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let parts: Vec<&str> = chars.iter().map(String::as_str).collect();
        let (got, n) = streamed(CLOSED, &parts);
        assert_eq!(got, split(CLOSED, text));
        // From the piece that completes `<think>` to the one that completes `</think>`.
        assert_eq!(n, text.find("</think>").unwrap() + 2);
    }

    #[test]
    fn a_prompt_that_opened_the_block_makes_the_answer_start_inside() {
        let text = "\nhmm, 4.\n</think>\n\n4";
        assert_eq!(same_in_pieces(OPEN, text), pieces("hmm, 4.", "4"));
        // No end tag (a cut answer): all reasoning, trimmed; a partial end tag is text.
        assert_eq!(
            same_in_pieces(OPEN, "\nstill thinking </thi"),
            pieces("still thinking </thi", "")
        );
        let (_, n) = streamed(OPEN, &["a", "b", "</think>", "\n\n", "c"]);
        assert_eq!(n, 3);
    }

    #[test]
    fn text_before_the_tag_or_tags_in_code_are_content() {
        for text in [
            "Use <think> tags like this: <think>x</think>",
            "```html\n<think>x</think>\n```",
            "plain answer",
            "<thinker>not a tag</thinker>",
        ] {
            assert_eq!(same_in_pieces(CLOSED, text), pieces("", text), "{text}");
        }
        // A partial start tag at the end of a short answer is content.
        assert_eq!(same_in_pieces(CLOSED, " <thi"), pieces("", " <thi"));
    }

    #[test]
    fn the_first_end_tag_ends_the_reasoning_and_code_inside_it_stays() {
        let text = "<think>code: `a < b` and <think> again</think>answer </think> more";
        assert_eq!(
            same_in_pieces(CLOSED, text),
            pieces("code: `a < b` and <think> again", "answer </think> more")
        );
    }

    #[test]
    fn an_empty_block_is_no_reasoning() {
        // Qwen3 answering with thinking off may still write the empty block.
        assert_eq!(
            same_in_pieces(CLOSED, "<think>\n\n</think>\n\nHi"),
            pieces("", "Hi")
        );
        assert_eq!(same_in_pieces(OPEN, "\n\n"), pieces("", ""));
        assert_eq!(same_in_pieces(OPEN, "</think>x"), pieces("", "x"));
    }
}
