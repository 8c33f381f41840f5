//! A SentencePiece vocabulary's score order as BPE merges (the way Hugging Face's converter
//! builds `LlamaTokenizerFast`): every split of a piece into two pieces of the vocabulary is
//! a merge, ranked by the whole piece's score.
//!
//! Built in time linear in the vocabulary's bytes. Looking both halves of a split up hashes
//! them, which costs a piece's length per split: nothing for real pieces (a few to a few
//! dozen bytes), but for one 2 MiB piece 2 Mi splits of 2 MiB each (~4·10¹² bytes). So
//! pieces longer than [`SHORT_PIECE`] bytes hash their prefixes and suffixes incrementally (a
//! polynomial hash modulo the prime 2⁶¹ − 1 with a random base, so no file can be made to
//! collide on purpose), and only splits whose two hashes are both in the vocabulary's set of
//! (length, hash) are looked up for real. What is built is bounded too: a vocabulary that
//! splits into more than [`MAX_MERGES`] merges, or more than [`MAX_MERGE_BYTES`] of their
//! text, is refused.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};

/// Most merges built: 4 Mi (the 1,000-piece vocabulary of tests/spm_tokenizer.rs makes 640).
pub const MAX_MERGES: usize = 1 << 22;
/// Most bytes of merge text built (the merged pieces' lengths, summed): 64 MiB.
pub const MAX_MERGE_BYTES: usize = 64 << 20;

/// Pieces up to this many bytes are split by direct lookups (at most this many bytes hashed
/// per split), longer ones through the incremental hashes.
pub const SHORT_PIECE: usize = 64;

const MODULUS: u64 = (1 << 61) - 1;

fn mul(a: u64, b: u64) -> u64 {
    let p = a as u128 * b as u128;
    // 2⁶¹ ≡ 1: fold the high bits onto the low ones, twice, then at most one subtraction
    // leaves the value fully reduced (equal hashes must be equal numbers).
    let r = (p as u64 & MODULUS) + (p >> 61) as u64;
    let r = (r & MODULUS) + (r >> 61);
    if r >= MODULUS {
        r - MODULUS
    } else {
        r
    }
}

fn add(a: u64, b: u64) -> u64 {
    let r = a + b;
    if r >= MODULUS {
        r - MODULUS
    } else {
        r
    }
}

/// The hash of `bytes`: Σ (byte + 1)·baseⁱ.
fn hash(bytes: &[u8], base: u64) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0, |h, &b| add(b as u64 + 1, mul(h, base)))
}

/// A base in [256, 2⁶¹ − 1), random per process.
fn random_base() -> u64 {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    256 + r % (MODULUS - 256)
}

/// Where `piece` may split into two pieces of the vocabulary whose (length, hash) pairs are
/// `hashes`: every such split, and (with a chance of about a piece's length in 2⁶¹) others.
/// `suffix` is scratch space.
fn likely_splits(
    piece: &[u8],
    base: u64,
    hashes: &HashSet<(usize, u64)>,
    suffix: &mut Vec<u64>,
    splits: &mut Vec<usize>,
) {
    // suffix[at]: the hash of piece[at..].
    suffix.clear();
    suffix.resize(piece.len() + 1, 0);
    for at in (0..piece.len()).rev() {
        suffix[at] = add(piece[at] as u64 + 1, mul(suffix[at + 1], base));
    }
    let (mut prefix, mut power) = (0u64, 1u64);
    for at in 1..piece.len() {
        prefix = add(prefix, mul(piece[at - 1] as u64 + 1, power));
        power = mul(power, base);
        if hashes.contains(&(at, prefix)) && hashes.contains(&(piece.len() - at, suffix[at])) {
            splits.push(at);
        }
    }
}

/// The merges of the pieces `tokens` for which `mergeable(id)` holds, ranked by their
/// `scores` (highest first, then by id, then by where the piece splits), as (left, right).
///
/// # Errors
///
/// When they would pass [`MAX_MERGES`] or [`MAX_MERGE_BYTES`].
pub fn merges<'a>(
    tokens: &'a [String],
    scores: &[f32],
    mergeable: impl Fn(usize) -> bool,
) -> Result<Vec<(&'a str, &'a str)>, String> {
    merges_splitting(tokens, scores, mergeable, SHORT_PIECE)
}

/// [`merges`], with pieces up to `short` bytes split by direct lookups.
fn merges_splitting<'a>(
    tokens: &'a [String],
    scores: &[f32],
    mergeable: impl Fn(usize) -> bool,
    short: usize,
) -> Result<Vec<(&'a str, &'a str)>, String> {
    let index: HashSet<&str> = tokens.iter().map(String::as_str).collect();
    let base = random_base();
    let hashes: HashSet<(usize, u64)> = if tokens.iter().any(|t| t.len() > short) {
        tokens
            .iter()
            .map(|t| (t.len(), hash(t.as_bytes(), base)))
            .collect()
    } else {
        HashSet::new()
    };
    // (score of the merged piece, its id, left, right).
    let mut ranked: Vec<(f32, usize, &str, &str)> = Vec::new();
    let mut bytes = 0usize;
    let mut splits = Vec::new();
    let mut suffix = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if !mergeable(id) {
            continue;
        }
        let mut try_split = |at: usize| -> Result<(), String> {
            let (Some(left), Some(right)) = (piece.get(..at), piece.get(at..)) else {
                return Ok(());
            };
            if index.contains(left) && index.contains(right) {
                ranked.push((scores[id], id, left, right));
                bytes += piece.len();
                if ranked.len() > MAX_MERGES || bytes > MAX_MERGE_BYTES {
                    return Err(format!(
                        "the pieces split into more than {MAX_MERGES} merges or {MAX_MERGE_BYTES} bytes of them"
                    ));
                }
            }
            Ok(())
        };
        if piece.len() <= short {
            for (at, _) in piece.char_indices().skip(1) {
                try_split(at)?;
            }
        } else {
            splits.clear();
            likely_splits(piece.as_bytes(), base, &hashes, &mut suffix, &mut splits);
            for &at in &splits {
                try_split(at)?;
            }
        }
    }
    // Stable: a piece's splits stay in the order of where they split.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    Ok(ranked.into_iter().map(|(_, _, l, r)| (l, r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every split looked up directly: the definition, quadratic in a piece's length.
    fn naive<'a>(tokens: &'a [String], scores: &[f32]) -> Vec<(&'a str, &'a str)> {
        let index: HashSet<&str> = tokens.iter().map(String::as_str).collect();
        let mut ranked = Vec::new();
        for (id, piece) in tokens.iter().enumerate() {
            for (at, _) in piece.char_indices().skip(1) {
                let (left, right) = piece.split_at(at);
                if index.contains(left) && index.contains(right) {
                    ranked.push((scores[id], id, left, right));
                }
            }
        }
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.into_iter().map(|(_, _, l, r)| (l, r)).collect()
    }

    #[test]
    fn the_merges_are_the_definitions_on_random_vocabularies() {
        let alphabet = ["a", "b", "\u{2581}", "é", "语"];
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |n: usize| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % n as u64) as usize
        };
        for _ in 0..200 {
            let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
            for _ in 0..next(60) {
                let len = 2 + next(6);
                let piece: String = (0..len).map(|_| alphabet[next(alphabet.len())]).collect();
                if !tokens.contains(&piece) {
                    tokens.push(piece);
                }
            }
            // Ties in score, so the order within a score is checked too.
            let scores: Vec<f32> = (0..tokens.len()).map(|_| -(next(4) as f32)).collect();
            let want = naive(&tokens, &scores);
            // Every piece through direct lookups, and every piece through the hashes.
            for short in [usize::MAX, 0] {
                let got = merges_splitting(&tokens, &scores, |_| true, short).unwrap();
                assert_eq!(got, want, "short pieces up to {short} bytes");
            }
        }
    }

    #[test]
    fn pieces_that_are_not_mergeable_make_no_merges() {
        let tokens: Vec<String> = ["a", "b", "ab", "ba"].map(String::from).to_vec();
        let got = merges(&tokens, &[0.0, 0.0, -1.0, -2.0], |id| id != 2).unwrap();
        assert_eq!(got, [("b", "a")]);
    }

    #[test]
    fn too_many_merges_are_refused() {
        // Runs of one letter: every split of every run is a merge, ~n²/2 of them, each as
        // long as its run.
        let tokens: Vec<String> = (1..=2_000).map(|n| "a".repeat(n)).collect();
        let scores = vec![0.0; tokens.len()];
        let err = merges(&tokens, &scores, |_| true).unwrap_err();
        assert!(err.contains("merges"), "{err}");
    }
}
