//! Reuse of shared prompt prefixes: the keys and values of earlier sequences, kept in blocks
//! of [`BLOCK_TOKENS`] tokens, so that a request whose prompt starts as an earlier one did (a
//! long system prompt, a tool list, the turns of a conversation so far) prefills only the
//! rest.
//!
//! As vLLM's automatic prefix caching: a block is found by a hash of its own tokens and of the
//! block before it, so one lookup per block walks the longest cached prefix. The hash only
//! finds a block; what makes a hit is exact: each block keeps its tokens and the serial number
//! of the block it followed when it was stored, and a lookup checks both at every step, so a
//! hash collision (or a parent evicted and stored again by another prefix) is a miss, never
//! someone else's keys.
//!
//! Unlike vLLM, blocks are copied, not shared: a sequence keeps its own contiguous cache (the
//! attention kernels read it as one array), the hit's blocks are copied into it at admission
//! and a sequence's blocks are copied out after its prompt is read and when it ends. A copy
//! is a memory move of the block's bytes, microseconds per block against the milliseconds its
//! prefill costs; the price is that sequences sharing a prefix do not share its memory (the
//! KV budget counts each one's whole prompt, as before).
//!
//! Bounded by bytes (`--prefix-cache-bytes`): past the budget the least recently used blocks
//! go first. A lookup or store touches its chain's blocks from last to first, so a prefix's
//! later blocks are always older than its earlier ones, and eviction takes a chain from its
//! end (a block whose parent went is unreachable, and goes with the next evictions).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};

use super::kv_cache::{KvBlock, KvCache};
use crate::metrics;

/// Tokens per block (vLLM's default): a hit reuses whole blocks, so at most this many tokens
/// less than the shared prefix.
pub const BLOCK_TOKENS: usize = 16;

/// One stored block.
struct Entry {
    /// Unique over the cache's life (never reused): what a child's `parent` names.
    serial: u64,
    /// The serial of the block it followed when stored (0: the prompt's first block).
    parent: u64,
    tokens: Box<[u32]>,
    kv: KvBlock,
    /// When it was last used (a key of `lru`).
    used: u64,
}

/// Blocks of keys and values by prefix, least recently used evicted past a byte budget.
pub struct PrefixCache {
    budget: usize,
    bytes: usize,
    hasher: RandomState,
    blocks: HashMap<u64, Entry>,
    /// Last use → block key: the oldest first.
    lru: BTreeMap<u64, u64>,
    clock: u64,
    next_serial: u64,
}

/// A block's key: its tokens and its parent's key (0 for the first block).
fn block_key(hasher: &RandomState, parent_key: u64, tokens: &[u32]) -> u64 {
    hasher.hash_one((parent_key, tokens))
}

impl PrefixCache {
    /// An empty cache of at most `budget` bytes of keys and values.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            bytes: 0,
            hasher: RandomState::new(),
            blocks: HashMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
            next_serial: 1,
        }
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Blocks held.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// The keys of the cached blocks that `tokens` starts with, in order.
    fn walk(&self, tokens: &[u32]) -> Vec<u64> {
        let mut found = Vec::new();
        let (mut parent_key, mut parent_serial) = (0, 0);
        for chunk in tokens.chunks_exact(BLOCK_TOKENS) {
            let key = block_key(&self.hasher, parent_key, chunk);
            match self.blocks.get(&key) {
                Some(e) if e.parent == parent_serial && *e.tokens == *chunk => {
                    found.push(key);
                    (parent_key, parent_serial) = (key, e.serial);
                }
                _ => break,
            }
        }
        found
    }

    /// Marks `keys` (a chain, first to last) as just used, the first ones newest.
    fn touch(&mut self, keys: &[u64]) {
        for key in keys.iter().rev() {
            self.clock += 1;
            let e = self.blocks.get_mut(key).expect("a walked block exists");
            self.lru.remove(&e.used);
            e.used = self.clock;
            self.lru.insert(self.clock, *key);
        }
    }

    /// Copies into `cache` (empty) the longest cached prefix of `prompt`, leaving at least
    /// its last token to prefill (its logits are the first token's), and returns how many
    /// tokens it holds now. Counts the hit and the miss in the metrics.
    pub fn restore(&mut self, prompt: &[u32], cache: &mut KvCache) -> usize {
        debug_assert!(cache.is_empty(), "restoring into a used cache");
        let usable = prompt.len().saturating_sub(1);
        let found = self.walk(&prompt[..usable]);
        self.touch(&found);
        for key in &found {
            cache.import(&self.blocks[key].kv);
        }
        let hit = found.len() * BLOCK_TOKENS;
        metrics::record_prefix_cache_lookup(hit, prompt.len() - hit);
        hit
    }

    /// Stores the whole blocks of `tokens` that `cache` holds (its first `cache.len()`
    /// tokens are `tokens`' first ones) and are not stored yet, evicting the least recently
    /// used blocks to stay within the budget.
    pub fn store(&mut self, tokens: &[u32], cache: &KvCache) {
        let held = tokens.len().min(cache.len());
        let whole = held / BLOCK_TOKENS;
        // The prefix found so far is kept from eviction while the rest is stored (`make_room`).
        let mut chain = self.walk(&tokens[..whole * BLOCK_TOKENS]);
        let (mut parent_key, mut parent_serial) = match chain.last() {
            Some(&key) => (key, self.blocks[&key].serial),
            None => (0, 0),
        };
        for b in chain.len()..whole {
            let chunk = &tokens[b * BLOCK_TOKENS..(b + 1) * BLOCK_TOKENS];
            let key = block_key(&self.hasher, parent_key, chunk);
            if self.blocks.contains_key(&key) {
                // Another prefix's block under this key (a hash collision, or a block whose
                // parent was evicted): this one's chain cannot be stored past it.
                break;
            }
            // A sliding-window layer may have dropped the block's first positions already.
            let Some(kv) = cache.export(b * BLOCK_TOKENS, BLOCK_TOKENS) else {
                break;
            };
            if !self.make_room(kv.bytes(), &chain) {
                break;
            }
            self.clock += 1;
            let serial = self.next_serial;
            self.next_serial += 1;
            self.bytes += kv.bytes();
            self.blocks.insert(
                key,
                Entry {
                    serial,
                    parent: parent_serial,
                    tokens: chunk.into(),
                    kv,
                    used: self.clock,
                },
            );
            self.lru.insert(self.clock, key);
            chain.push(key);
            (parent_key, parent_serial) = (key, serial);
        }
        // The chain's first blocks newest, as `touch` leaves it.
        self.touch(&chain);
        metrics::set_prefix_cache_size(self.bytes, self.blocks.len());
    }

    /// Evicts least recently used blocks, never one of `keep`, until `bytes` more fit.
    /// False when they cannot.
    fn make_room(&mut self, bytes: usize, keep: &[u64]) -> bool {
        if bytes > self.budget {
            return false;
        }
        while self.bytes + bytes > self.budget {
            let victim = self
                .lru
                .iter()
                .map(|(&used, &key)| (used, key))
                .find(|(_, key)| !keep.contains(key));
            let Some((used, key)) = victim else {
                return false;
            };
            self.lru.remove(&used);
            let e = self
                .blocks
                .remove(&key)
                .expect("an LRU entry has its block");
            self.bytes -= e.kv.bytes();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::kv_cache::CacheShape;

    const SHAPE: CacheShape = CacheShape {
        n_layer: 2,
        kv_width: 3,
        f16: false,
    };

    /// A cache for `tokens` whose keys and values are a function of each token and of every
    /// token before it (as a model's are), so a prefix copied from the wrong sequence shows.
    fn cache_for(tokens: &[u32]) -> KvCache {
        let mut cache = KvCache::with_capacity(SHAPE, tokens.len());
        let mut running = 0u64;
        for &t in tokens {
            running = running.wrapping_mul(31).wrapping_add(t as u64 + 1);
            let k: Vec<f32> = (0..SHAPE.kv_width)
                .map(|i| (running % 9973) as f32 + i as f32)
                .collect();
            cache.import(&KvBlock::for_tests(SHAPE, &k));
        }
        cache
    }

    fn block_bytes() -> usize {
        BLOCK_TOKENS * SHAPE.bytes_per_token()
    }

    /// The contents of a cache, token by token.
    fn contents(cache: &KvCache) -> Vec<Vec<f32>> {
        (0..cache.len())
            .map(|t| cache.export(t, 1).expect("held").values_for_tests())
            .collect()
    }

    fn seq(from: u32, n: usize) -> Vec<u32> {
        (from..from + n as u32).collect()
    }

    #[test]
    fn a_shared_prefix_is_restored_exactly_and_only_whole_blocks() {
        let mut pc = PrefixCache::new(1 << 20);
        let system = seq(100, 3 * BLOCK_TOKENS + 5);
        let first: Vec<u32> = system.iter().copied().chain(seq(1, 20)).collect();
        pc.store(&first, &cache_for(&first));
        assert_eq!(pc.blocks(), (first.len()) / BLOCK_TOKENS);

        let second: Vec<u32> = system.iter().copied().chain(seq(500, 9)).collect();
        let mut cache = KvCache::with_capacity(SHAPE, second.len());
        let hit = pc.restore(&second, &mut cache);
        assert_eq!(hit, 3 * BLOCK_TOKENS, "the whole blocks of the shared part");
        assert_eq!(contents(&cache), contents(&cache_for(&second[..hit])));
    }

    #[test]
    fn the_last_prompt_token_is_always_left_to_prefill() {
        let mut pc = PrefixCache::new(1 << 20);
        let prompt = seq(7, 2 * BLOCK_TOKENS);
        pc.store(&prompt, &cache_for(&prompt));
        let mut cache = KvCache::with_capacity(SHAPE, prompt.len());
        assert_eq!(pc.restore(&prompt, &mut cache), BLOCK_TOKENS);
        let longer = seq(7, 2 * BLOCK_TOKENS + 1);
        let mut cache = KvCache::with_capacity(SHAPE, longer.len());
        assert_eq!(pc.restore(&longer, &mut cache), 2 * BLOCK_TOKENS);
    }

    #[test]
    fn a_block_is_found_only_after_its_own_prefix() {
        let mut pc = PrefixCache::new(1 << 20);
        let a: Vec<u32> = seq(1, BLOCK_TOKENS)
            .into_iter()
            .chain(seq(50, BLOCK_TOKENS + 1))
            .collect();
        pc.store(&a, &cache_for(&a));
        // The same second block after another first one: not a hit.
        let b: Vec<u32> = seq(2, BLOCK_TOKENS)
            .into_iter()
            .chain(seq(50, BLOCK_TOKENS + 1))
            .collect();
        let mut cache = KvCache::with_capacity(SHAPE, b.len());
        assert_eq!(pc.restore(&b, &mut cache), 0);
        assert!(cache.is_empty());
    }

    #[test]
    fn the_budget_holds_and_the_least_recently_used_prefix_goes_first() {
        let mut pc = PrefixCache::new(4 * block_bytes());
        let a = seq(1, 2 * BLOCK_TOKENS + 1);
        let b = seq(1000, 2 * BLOCK_TOKENS + 1);
        let c = seq(5000, 2 * BLOCK_TOKENS + 1);
        pc.store(&a, &cache_for(&a));
        pc.store(&b, &cache_for(&b));
        // `a` used again: `b` is now the oldest, and `c` takes its place.
        let mut cache = KvCache::with_capacity(SHAPE, a.len());
        assert_eq!(pc.restore(&a, &mut cache), 2 * BLOCK_TOKENS);
        pc.store(&c, &cache_for(&c));
        assert_eq!(pc.bytes(), 4 * block_bytes());
        for (prompt, expect) in [(&a, 2 * BLOCK_TOKENS), (&b, 0), (&c, 2 * BLOCK_TOKENS)] {
            let mut cache = KvCache::with_capacity(SHAPE, prompt.len());
            assert_eq!(pc.restore(prompt, &mut cache), expect);
        }
    }

    #[test]
    fn eviction_takes_a_prefix_from_its_end() {
        let mut pc = PrefixCache::new(3 * block_bytes());
        let a = seq(1, 3 * BLOCK_TOKENS + 1);
        pc.store(&a, &cache_for(&a));
        let b = seq(1000, BLOCK_TOKENS + 1);
        pc.store(&b, &cache_for(&b));
        // `a` lost its last block, not its first.
        let mut cache = KvCache::with_capacity(SHAPE, a.len());
        assert_eq!(pc.restore(&a, &mut cache), 2 * BLOCK_TOKENS);
    }

    #[test]
    fn a_zero_budget_stores_nothing() {
        let mut pc = PrefixCache::new(0);
        let a = seq(1, 4 * BLOCK_TOKENS);
        pc.store(&a, &cache_for(&a));
        assert_eq!((pc.blocks(), pc.bytes()), (0, 0));
    }

    #[test]
    fn only_what_the_cache_holds_is_stored() {
        let mut pc = PrefixCache::new(1 << 20);
        let tokens = seq(1, 3 * BLOCK_TOKENS);
        // The last token generated is not in the cache yet.
        let cache = cache_for(&tokens[..3 * BLOCK_TOKENS - 1]);
        pc.store(&tokens, &cache);
        assert_eq!(pc.blocks(), 2);
    }
}
