//! Incremental decoding of generated ids as it was first written, kept as the reference the
//! decoder must equal: every step decodes again all ids from the start of the last piece
//! emitted (so a long run of ids that add no text costs the length of the run at each step).

use zerobatch::generate::incremental::IncrementalDecoder;
use zerobatch::generate::tokenizer::GenTokenizer;

/// The reference decoder.
#[derive(Default)]
pub struct Redecoding {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl Redecoding {
    pub fn push(&mut self, tokenizer: &GenTokenizer, id: u32) -> String {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read]);
        let now = tokenizer.decode(&self.ids[self.prefix..]);
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && now.is_char_boundary(before.len())
        {
            let piece = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            piece
        } else {
            String::new()
        }
    }
}

/// Pushes `ids` through the decoder and the reference: the same piece at every step.
pub fn assert_same_pieces(tokenizer: &GenTokenizer, ids: &[u32]) {
    let mut decoder = IncrementalDecoder::new();
    let mut reference = Redecoding::default();
    for (i, &id) in ids.iter().enumerate() {
        let got = decoder.push(tokenizer, id);
        let want = reference.push(tokenizer, id);
        assert_eq!(got, want, "step {i} (id {id}) of {ids:?}");
    }
}

/// `count` random streams of up to `len` ids below `vocab`, half of them drawn from
/// `favoured` (the ids that add no text or split characters).
pub fn random_streams(
    vocab: usize,
    favoured: &[u32],
    seed: u64,
    count: usize,
    len: usize,
) -> Vec<Vec<u32>> {
    let mut s = seed | 1;
    let mut next = move |n: usize| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % n as u64) as usize
    };
    (0..count)
        .map(|_| {
            let n = 1 + next(len);
            (0..n)
                .map(|_| {
                    if next(2) == 0 {
                        favoured[next(favoured.len())]
                    } else {
                        next(vocab) as u32
                    }
                })
                .collect()
        })
        .collect()
}

/// GPT-2's byte-level alphabet: the character that stands for each byte.
pub fn byte_chars() -> Vec<char> {
    let mut bytes: Vec<u32> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .map(u32::from)
        .collect();
    let mut chars = bytes.clone();
    let mut n = 0;
    for b in 0..=255u32 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in bytes.into_iter().zip(chars) {
        table[b as usize] = char::from_u32(c).unwrap();
    }
    table
}
