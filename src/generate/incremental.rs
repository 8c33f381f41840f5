//! Turning generated ids into text pieces as they come: each piece is the text the new id
//! adds, held back while the text would end in an incomplete UTF-8 character (byte tokens can
//! split one).
//!
//! The rule is the usual one (Hugging Face's streamers and TGI use it): decode the ids from
//! the start of the last piece emitted (its ids are context, so that decoders which treat the
//! first token specially do not) and emit what the new ids add once the text grows, does not
//! end in U+FFFD and keeps the context's text whole. Done naively, every step decodes every
//! held-back id again, so a long run of ids that add no text (end-of-text with `ignore_eos`,
//! bytes that never make a character) costs each step the length of the run. Here:
//! - ids that decoding drops (special tokens, ids without a token) are not kept at all, which
//!   changes nothing, since decoding drops them before its decoder runs;
//! - for the decoders this server builds (byte-level, and SentencePiece's byte fallback) the
//!   window's text is kept up to date a token at a time, so a step costs its token's bytes
//!   (amortized: a piece's ids are decoded once more when they become the context);
//! - for any other decoder (a `tokenizer.json` may name one) the window is decoded each step,
//!   as before.
//!
//! The pieces are the same as the naive rule's, step for step
//! (tests/incremental_decoding.rs checks this on random id streams).

use super::tokenizer::{DecoderKind, GenTokenizer};

/// U+FFFD, what decoding puts for bytes that are not UTF-8.
const REPLACEMENT: char = '\u{FFFD}';
/// Its length in UTF-8.
const REPLACEMENT_LEN: usize = 3;

/// The incremental decoder of one sequence.
pub struct IncrementalDecoder {
    /// The window: the ids of the last piece emitted (the context, `ids[..read]`), then the
    /// ids held back since; only ids that decoding keeps.
    ids: Vec<u32>,
    read: usize,
    /// The length of the context's text.
    before: usize,
    /// The window's text, kept a token at a time (for the decoders it knows).
    text: Option<WindowText>,
}

impl IncrementalDecoder {
    /// A decoder with nothing decoded yet.
    pub fn new() -> Self {
        Self {
            ids: Vec::new(),
            read: 0,
            before: 0,
            text: None,
        }
    }

    /// Adds `id`; returns the new text (possibly empty while a character is incomplete).
    pub fn push(&mut self, tokenizer: &GenTokenizer, id: u32) -> String {
        let Some(token) = tokenizer.decoded_token(id) else {
            return String::new();
        };
        self.ids.push(id);
        if self.text.is_none() {
            // The first id (or a decoder this module does not know, which stays `None`).
            self.text = WindowText::for_decoder(tokenizer.decoder_kind());
        }
        let before = self.before;
        let piece = match &mut self.text {
            Some(text) => {
                text.push(&token);
                let ready = text.len() > before
                    && !text.ends_with_replacement()
                    && text.is_char_boundary(before);
                ready.then(|| text.tail(before))
            }
            None => {
                let now = tokenizer.decode(&self.ids);
                let ready = now.len() > before
                    && !now.ends_with(REPLACEMENT)
                    && now.is_char_boundary(before);
                ready.then(|| now[before..].to_string())
            }
        };
        let Some(piece) = piece else {
            return String::new();
        };
        // The held-back ids become the context of the next piece.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        self.text = WindowText::for_decoder(tokenizer.decoder_kind());
        self.before = match &mut self.text {
            Some(text) => {
                for &id in &self.ids {
                    if let Some(token) = tokenizer.decoded_token(id) {
                        text.push(&token);
                    }
                }
                text.len()
            }
            None => tokenizer.decode(&self.ids).len(),
        };
        piece
    }
}

impl Default for IncrementalDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// The text decoding gives for the window's tokens, kept as they are added.
enum WindowText {
    ByteLevel(ByteLevelText),
    SentencePiece(SentencePieceText),
}

impl WindowText {
    /// Empty, for a decoder of `kind`; `None` for one this module does not know.
    fn for_decoder(kind: DecoderKind) -> Option<Self> {
        match kind {
            DecoderKind::ByteLevel => Some(Self::ByteLevel(ByteLevelText::default())),
            DecoderKind::SentencePiece => Some(Self::SentencePiece(SentencePieceText::default())),
            DecoderKind::Other => None,
        }
    }

    fn push(&mut self, token: &str) {
        match self {
            Self::ByteLevel(t) => t.push(token),
            Self::SentencePiece(t) => t.push(token),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::ByteLevel(t) => t.len(),
            Self::SentencePiece(t) => t.len(),
        }
    }

    fn ends_with_replacement(&self) -> bool {
        match self {
            Self::ByteLevel(t) => t.ends_with_replacement(),
            Self::SentencePiece(t) => t.ends_with_replacement(),
        }
    }

    fn is_char_boundary(&self, at: usize) -> bool {
        match self {
            Self::ByteLevel(t) => t.is_char_boundary(at),
            Self::SentencePiece(t) => t.is_char_boundary(at),
        }
    }

    /// The text from byte `at` on.
    fn tail(&self, at: usize) -> String {
        let whole = match self {
            Self::ByteLevel(t) => t.text(),
            Self::SentencePiece(t) => t.text(),
        };
        whole.get(at..).unwrap_or_default().to_string()
    }
}

/// Byte-level decoding (GPT-2's): each token's characters stand for bytes, and the bytes of
/// all tokens are read as UTF-8 with every invalid sequence replaced by one U+FFFD
/// (`String::from_utf8_lossy`).
#[derive(Default)]
struct ByteLevelText {
    /// The text of the bytes up to the last point where a character or an invalid sequence
    /// ended.
    done: String,
    /// The bytes after it: the start of a character, valid so far (at most 3 bytes); the
    /// text shows them as one U+FFFD.
    pending: Vec<u8>,
}

impl ByteLevelText {
    fn push(&mut self, token: &str) {
        // As the byte-level decoder reads a token: its characters' bytes, or, when one of
        // them is not a byte character, the token's own UTF-8.
        let mapped: Option<Vec<u8>> = token.chars().map(byte_of_char).collect();
        match mapped {
            Some(bytes) => self.pending.extend_from_slice(&bytes),
            None => self.pending.extend_from_slice(token.as_bytes()),
        }
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    self.done.push_str(s);
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The valid part is UTF-8 (`valid_up_to` says so).
                    self.done
                        .push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        Some(invalid) => {
                            self.done.push(REPLACEMENT);
                            self.pending.drain(..valid + invalid);
                        }
                        None => {
                            self.pending.drain(..valid);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.done.len()
            + if self.pending.is_empty() {
                0
            } else {
                REPLACEMENT_LEN
            }
    }

    fn ends_with_replacement(&self) -> bool {
        !self.pending.is_empty() || self.done.ends_with(REPLACEMENT)
    }

    fn is_char_boundary(&self, at: usize) -> bool {
        if at <= self.done.len() {
            self.done.is_char_boundary(at)
        } else {
            at == self.len()
        }
    }

    fn text(&self) -> String {
        let mut text = self.done.clone();
        if !self.pending.is_empty() {
            text.push(REPLACEMENT);
        }
        text
    }
}

/// The byte a byte-level character stands for (GPT-2's table: printable bytes stand for
/// themselves, the others for the characters from U+0100 on, in byte order).
fn byte_of_char(c: char) -> Option<u8> {
    static TABLE: std::sync::OnceLock<Vec<Option<u8>>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let printable = |b: &u8| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut table = vec![None; 0x100 + 68];
        for b in (0..=255u8).filter(printable) {
            table[b as usize] = Some(b);
        }
        for (n, b) in (0..=255u8).filter(|b| !printable(b)).enumerate() {
            table[0x100 + n] = Some(b);
        }
        table
    });
    table.get(c as usize).copied().flatten()
}

/// SentencePiece decoding as this server builds it: `▁` becomes a space, then each run of
/// byte tokens (`<0xXX>`) becomes its bytes as UTF-8 if they are valid, else one U+FFFD per
/// byte, and everything is joined.
#[derive(Default)]
struct SentencePieceText {
    /// The text up to the current run of byte tokens.
    done: String,
    /// The run's bytes.
    run: Vec<u8>,
    /// Bytes of the run known to be whole characters.
    valid: usize,
    /// The run holds an invalid sequence (it can no longer become valid).
    broken: bool,
}

impl SentencePieceText {
    fn push(&mut self, token: &str) {
        let token = token.replace('\u{2581}', " ");
        match byte_token(&token) {
            Some(b) => {
                self.run.push(b);
                if !self.broken {
                    match std::str::from_utf8(&self.run[self.valid..]) {
                        Ok(_) => self.valid = self.run.len(),
                        Err(e) if e.error_len().is_some() => self.broken = true,
                        Err(e) => self.valid += e.valid_up_to(),
                    }
                }
            }
            None => {
                self.flush();
                self.done.push_str(&token);
            }
        }
    }

    /// Whether the run reads as its bytes (else as U+FFFDs).
    fn run_is_text(&self) -> bool {
        !self.broken && self.valid == self.run.len()
    }

    fn run_len(&self) -> usize {
        if self.run_is_text() {
            self.run.len()
        } else {
            REPLACEMENT_LEN * self.run.len()
        }
    }

    fn run_text(&self) -> String {
        match std::str::from_utf8(&self.run) {
            Ok(s) if self.run_is_text() => s.to_string(),
            _ => REPLACEMENT.to_string().repeat(self.run.len()),
        }
    }

    fn flush(&mut self) {
        let text = self.run_text();
        self.done.push_str(&text);
        self.run.clear();
        self.valid = 0;
        self.broken = false;
    }

    fn len(&self) -> usize {
        self.done.len() + self.run_len()
    }

    fn ends_with_replacement(&self) -> bool {
        if self.run.is_empty() {
            self.done.ends_with(REPLACEMENT)
        } else {
            !self.run_is_text() || self.run.ends_with("\u{FFFD}".as_bytes())
        }
    }

    fn is_char_boundary(&self, at: usize) -> bool {
        if at <= self.done.len() {
            return self.done.is_char_boundary(at);
        }
        let at = at - self.done.len();
        if self.run_is_text() {
            // In valid UTF-8, a character starts at every byte that is not a continuation.
            at == self.run.len() || self.run.get(at).is_some_and(|&b| b & 0xC0 != 0x80)
        } else {
            at.is_multiple_of(REPLACEMENT_LEN) && at <= self.run_len()
        }
    }

    fn text(&self) -> String {
        self.done.clone() + &self.run_text()
    }
}

/// The bytes one (non-special) token adds to decoded text, as the decoders above read it:
/// for byte-level BPE its characters' bytes (or its own UTF-8 when one of them is not a byte
/// character); for SentencePiece (and, as the closest reading, any other decoder) `▁` as a
/// space and a `<0xXX>` token as its byte. What the grammar's token trie is built from
/// ([`super::grammar`]), so that the bytes a mask allows are the bytes the client receives.
pub fn token_bytes(kind: DecoderKind, token: &str) -> Vec<u8> {
    match kind {
        DecoderKind::ByteLevel => {
            let mapped: Option<Vec<u8>> = token.chars().map(byte_of_char).collect();
            mapped.unwrap_or_else(|| token.as_bytes().to_vec())
        }
        DecoderKind::SentencePiece | DecoderKind::Other => {
            let token = token.replace('\u{2581}', " ");
            match byte_token(&token) {
                Some(b) => vec![b],
                None => token.into_bytes(),
            }
        }
    }
}

/// The byte a `<0xXX>` token stands for, read as the byte-fallback decoder reads it.
fn byte_token(token: &str) -> Option<u8> {
    if token.len() == 6 && token.starts_with("<0x") && token.ends_with('>') {
        token.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_characters_map_back_to_their_bytes() {
        assert_eq!(byte_of_char('!'), Some(b'!'));
        assert_eq!(byte_of_char('\u{120}'), Some(b' ')); // Ġ
        assert_eq!(byte_of_char('\u{10A}'), Some(b'\n')); // Ċ
        assert_eq!(byte_of_char('\u{100}'), Some(0));
        assert_eq!(byte_of_char('\u{143}'), Some(0xAD));
        assert_eq!(byte_of_char('\u{144}'), None);
        assert_eq!(byte_of_char(' '), None);
        let all: std::collections::HashSet<u8> = (0..0x144u32)
            .filter_map(char::from_u32)
            .filter_map(byte_of_char)
            .collect();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn byte_level_text_reads_bytes_as_lossy_utf8() {
        // Every split of some bytes into tokens gives the text of the whole.
        let bytes: &[u8] = b"a\xE2\x82\xACb\xE2\x82c\x80\xF0\x9F\x98\x80\xFF\xEF\xBF\xBD\xE2";
        let spell = |bs: &[u8]| -> String {
            bs.iter()
                .map(|&b| {
                    (0..0x144u32)
                        .filter_map(char::from_u32)
                        .find(|&c| byte_of_char(c) == Some(b))
                        .unwrap()
                })
                .collect()
        };
        for split in 1..bytes.len() {
            let mut t = ByteLevelText::default();
            for chunk in bytes.chunks(split) {
                t.push(&spell(chunk));
            }
            assert_eq!(
                t.text(),
                String::from_utf8_lossy(bytes),
                "chunks of {split}"
            );
            assert_eq!(t.len(), t.text().len());
        }
    }
}
