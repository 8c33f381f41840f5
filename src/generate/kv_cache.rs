//! Each sequence's keys and values ([`KvCache`]), layer by layer, and the blocks of them the
//! prefix cache copies out and back in ([`KvBlock`]).
//!
//! A layer keeps positions `first..len` of its sequence, contiguous, so attention reads one
//! array. A global layer keeps every position (`first` is 0). A sliding-window layer (Gemma
//! 3's local layers) drops the positions no later query can see: a query at position `p` sees
//! `p + 1 - window ..= p`, so before a step's new rows are appended at `len`, positions before
//! `len + 1 - window` can go. They go once there are at least a window's worth of them, so a
//! position is moved at most once or twice and a sliding layer holds fewer than two windows
//! plus one step's rows: its memory follows the window, not the context.

use half::f16;

use crate::kernels::causal_attention::KvElem;

/// The sizes of one sequence's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    pub n_layer: usize,
    /// Values per token per layer for keys (and as many for values).
    pub kv_width: usize,
    /// Cached in f16 (with quantized or low-precision weights), else f32.
    pub f16: bool,
}

impl CacheShape {
    /// Bytes one token takes over every layer, keys and values.
    pub fn bytes_per_token(&self) -> usize {
        2 * self.n_layer * self.kv_width * self.elem_bytes()
    }

    fn elem_bytes(&self) -> usize {
        if self.f16 {
            2
        } else {
            4
        }
    }
}

/// One sequence's keys and values, layer by layer (`kv_width` values per position each, grown
/// as it goes).
///
/// In f16 with quantized weights, as llama.cpp keeps them: half the memory of f32, and
/// measured to matter for agreeing with llama.cpp's greedy tokens on long prompts
/// (tests/smollm2_reference.rs). In f32 with f32 weights (exact reference runs).
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
    /// Values per token per layer, for keys (and as many for values).
    kv_width: usize,
}

/// One layer's keys and values: positions `first..` of the sequence.
struct LayerCache {
    kv: KvLayer,
    /// Positions dropped from the front (only a sliding layer drops any).
    first: usize,
    /// The attention window of a sliding layer: positions a query sees, itself included.
    window: Option<usize>,
}

/// One layer's keys and values, in the cache's element type.
pub(super) enum KvLayer {
    F16(Vec<f16>, Vec<f16>),
    F32(Vec<f32>, Vec<f32>),
}

/// What attention reads of one layer: its keys and values from position `first` on.
pub(super) struct LayerView<'a> {
    pub kv: &'a KvLayer,
    pub first: usize,
}

/// The keys and values of a run of tokens, every layer, copied out of a [`KvCache`] (for the
/// prefix cache): layer by layer, the keys then the values, `tokens × kv_width` each.
pub struct KvBlock {
    tokens: usize,
    data: KvData,
}

enum KvData {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl KvData {
    fn len(&self) -> usize {
        match self {
            KvData::F16(d) => d.len(),
            KvData::F32(d) => d.len(),
        }
    }
}

impl KvBlock {
    /// Tokens held.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.data {
            KvData::F16(d) => 2 * d.len(),
            KvData::F32(d) => 4 * d.len(),
        }
    }

    /// One f32 token whose key and value are `kv` in every layer of `shape`.
    #[cfg(test)]
    pub(crate) fn for_tests(shape: CacheShape, kv: &[f32]) -> Self {
        assert_eq!(kv.len(), shape.kv_width);
        let data = (0..2 * shape.n_layer).flat_map(|_| kv.iter().copied());
        Self {
            tokens: 1,
            data: KvData::F32(data.collect()),
        }
    }

    /// Every value held, widened to f32.
    #[cfg(test)]
    pub(crate) fn values_for_tests(&self) -> Vec<f32> {
        match &self.data {
            KvData::F16(d) => d.iter().map(|x| x.to_f32()).collect(),
            KvData::F32(d) => d.clone(),
        }
    }
}

impl LayerCache {
    /// Positions held.
    fn held(&self, kv_width: usize) -> usize {
        match &self.kv {
            KvLayer::F16(k, _) => k.len() / kv_width,
            KvLayer::F32(k, _) => k.len() / kv_width,
        }
    }

    /// Drops, on a sliding layer, the positions that no query at `next` or later can see,
    /// once there are at least a window's worth of them (see the module's doc).
    fn forget_before(&mut self, next: usize, kv_width: usize) {
        let Some(window) = self.window else { return };
        let keep_from = (next + 1).saturating_sub(window);
        let gone = keep_from.saturating_sub(self.first);
        if gone < window {
            return;
        }
        let n = gone * kv_width;
        match &mut self.kv {
            KvLayer::F16(k, v) => {
                k.drain(..n);
                v.drain(..n);
            }
            KvLayer::F32(k, v) => {
                k.drain(..n);
                v.drain(..n);
            }
        }
        self.first = keep_from;
    }
}

impl KvCache {
    /// An empty cache with room reserved for `tokens` tokens, every layer global.
    pub fn with_capacity(shape: CacheShape, tokens: usize) -> Self {
        Self::with_windows(shape, tokens, &vec![None; shape.n_layer])
    }

    /// An empty cache for up to `tokens` tokens whose layer `l` slides with window
    /// `windows[l]` (see the module's doc); a sliding layer reserves room for two windows.
    ///
    /// # Panics
    ///
    /// When `windows` does not have one entry per layer, or a window is 0.
    pub fn with_windows(shape: CacheShape, tokens: usize, windows: &[Option<usize>]) -> Self {
        assert_eq!(windows.len(), shape.n_layer, "one window per layer");
        assert!(!windows.contains(&Some(0)), "a window of 0 positions");
        Self {
            layers: windows
                .iter()
                .map(|&window| {
                    let n = window.map_or(tokens, |w| tokens.min(2 * w)) * shape.kv_width;
                    let kv = if shape.f16 {
                        KvLayer::F16(Vec::with_capacity(n), Vec::with_capacity(n))
                    } else {
                        KvLayer::F32(Vec::with_capacity(n), Vec::with_capacity(n))
                    };
                    LayerCache {
                        kv,
                        first: 0,
                        window,
                    }
                })
                .collect(),
            len: 0,
            kv_width: shape.kv_width,
        }
    }

    /// Tokens held (the sequence's length: a sliding layer may have dropped the first ones).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of keys and values held, every layer.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match &l.kv {
                KvLayer::F16(k, v) => 2 * (k.len() + v.len()),
                KvLayer::F32(k, v) => 4 * (k.len() + v.len()),
            })
            .sum()
    }

    /// Appends the keys and values of `rows` new positions (from `len()` on) to layer `l`:
    /// row `r`'s key is `kv(r).0`, its value `kv(r).1`. A sliding layer first drops what the
    /// new rows cannot see. The length grows when the step ends ([`Self::advance`]).
    pub(super) fn append<'a>(
        &mut self,
        l: usize,
        rows: usize,
        kv: impl Fn(usize) -> (&'a [f32], &'a [f32]),
    ) {
        let (len, kvw) = (self.len, self.kv_width);
        let layer = &mut self.layers[l];
        layer.forget_before(len, kvw);
        for r in 0..rows {
            let (k, v) = kv(r);
            match &mut layer.kv {
                KvLayer::F16(kc, vc) => {
                    KvElem::append(kc, k);
                    KvElem::append(vc, v);
                }
                KvLayer::F32(kc, vc) => {
                    KvElem::append(kc, k);
                    KvElem::append(vc, v);
                }
            }
        }
    }

    /// Layer `l` as attention reads it.
    pub(super) fn layer(&self, l: usize) -> LayerView<'_> {
        let layer = &self.layers[l];
        LayerView {
            kv: &layer.kv,
            first: layer.first,
        }
    }

    /// Ends a step that appended `tokens` positions to every layer.
    pub(super) fn advance(&mut self, tokens: usize) {
        self.len += tokens;
        debug_assert!(self
            .layers
            .iter()
            .all(|l| l.first + l.held(self.kv_width) == self.len));
    }

    /// A copy of the keys and values of tokens `from..from + tokens`, every layer (for the
    /// prefix cache, [`super::prefix_cache`]); `None` when a sliding layer no longer holds
    /// them.
    ///
    /// # Panics
    ///
    /// When the sequence is not that long.
    pub fn export(&self, from: usize, tokens: usize) -> Option<KvBlock> {
        assert!(
            from + tokens <= self.len,
            "exporting tokens the sequence does not have"
        );
        if self.layers.iter().any(|l| l.first > from) {
            return None;
        }
        let kvw = self.kv_width;
        let span = |l: &LayerCache| (from - l.first) * kvw..(from - l.first + tokens) * kvw;
        let data = match self.layers.first().map(|l| &l.kv) {
            Some(KvLayer::F32(..)) => KvData::F32(
                self.layers
                    .iter()
                    .flat_map(|l| match &l.kv {
                        KvLayer::F32(k, v) => [&k[span(l)], &v[span(l)]],
                        KvLayer::F16(..) => unreachable!("one element type per cache"),
                    })
                    .flatten()
                    .copied()
                    .collect(),
            ),
            _ => KvData::F16(
                self.layers
                    .iter()
                    .flat_map(|l| match &l.kv {
                        KvLayer::F16(k, v) => [&k[span(l)], &v[span(l)]],
                        KvLayer::F32(..) => unreachable!("one element type per cache"),
                    })
                    .flatten()
                    .copied()
                    .collect(),
            ),
        };
        Some(KvBlock { tokens, data })
    }

    /// Appends the tokens of `block` (made by [`Self::export`] from a cache of the same
    /// shape) after the ones held; sliding layers then drop what later queries cannot see.
    ///
    /// # Panics
    ///
    /// When `block` comes from a cache of another shape.
    pub fn import(&mut self, block: &KvBlock) {
        let kvw = self.kv_width;
        let n = block.tokens * kvw;
        assert_eq!(
            block.data.len(),
            2 * n * self.layers.len(),
            "a block of another cache shape"
        );
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let at = 2 * n * i;
            match (&mut layer.kv, &block.data) {
                (KvLayer::F16(k, v), KvData::F16(d)) => {
                    k.extend_from_slice(&d[at..at + n]);
                    v.extend_from_slice(&d[at + n..at + 2 * n]);
                }
                (KvLayer::F32(k, v), KvData::F32(d)) => {
                    k.extend_from_slice(&d[at..at + n]);
                    v.extend_from_slice(&d[at + n..at + 2 * n]);
                }
                _ => panic!("a block of another element type"),
            }
        }
        self.len += block.tokens;
        let (len, kvw) = (self.len, self.kv_width);
        for layer in &mut self.layers {
            layer.forget_before(len, kvw);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: CacheShape = CacheShape {
        n_layer: 2,
        kv_width: 3,
        f16: false,
    };

    /// Position `p`'s key in layer `l` is `[p, l, 0]`, its value `[p, l, 1]`.
    fn grow(cache: &mut KvCache, tokens: usize) {
        let start = cache.len();
        let rows: Vec<[[f32; 3]; 2]> = (start..start + tokens)
            .map(|p| [[p as f32, 0.0, 0.0], [p as f32, 0.0, 1.0]])
            .collect();
        for l in 0..SHAPE.n_layer {
            let rows: Vec<[[f32; 3]; 2]> = rows
                .iter()
                .map(|[k, v]| [[k[0], l as f32, k[2]], [v[0], l as f32, v[2]]])
                .collect();
            cache.append(l, tokens, |r| (&rows[r][0][..], &rows[r][1][..]));
        }
        cache.advance(tokens);
    }

    /// The positions layer `l` holds, from its keys.
    fn positions(cache: &KvCache, l: usize) -> Vec<usize> {
        match cache.layer(l).kv {
            KvLayer::F32(k, _) => k.chunks_exact(3).map(|c| c[0] as usize).collect(),
            KvLayer::F16(..) => unreachable!(),
        }
    }

    #[test]
    fn a_sliding_layer_keeps_what_the_next_query_sees_and_stays_under_two_windows() {
        let window = 5;
        let mut cache = KvCache::with_windows(SHAPE, 1000, &[Some(window), None]);
        for step in [1, 7, 1, 1, 3, 16, 1, 1, 1, 1, 1, 1, 40, 1] {
            grow(&mut cache, step);
            let len = cache.len();
            let held = positions(&cache, 0);
            // Contiguous, ending at the last position, starting where `first` says.
            assert_eq!(held, (cache.layer(0).first..len).collect::<Vec<_>>());
            // The next query (at `len`) sees len+1-window..: all of it is still held.
            assert!(cache.layer(0).first <= (len + 1).saturating_sub(window));
            // Fewer than two windows before the step's rows were appended.
            assert!(
                held.len() < 2 * window + step,
                "{} held after {step}",
                held.len()
            );
            // The global layer holds everything.
            assert_eq!(positions(&cache, 1), (0..len).collect::<Vec<_>>());
        }
        assert!(
            cache.layer(0).first > 0,
            "the test never dropped a position"
        );
    }

    #[test]
    fn export_needs_every_layer_to_hold_the_block_and_import_slides_too() {
        let mut cache = KvCache::with_windows(SHAPE, 100, &[Some(4), None]);
        grow(&mut cache, 20);
        // Positions go as the next rows come in: those before 20 + 1 - 4.
        grow(&mut cache, 10);
        let first = cache.layer(0).first;
        assert_eq!(first, 17);
        assert!(cache.export(first - 1, 1).is_none());
        let block = cache
            .export(first, 30 - first)
            .expect("held by every layer");
        assert_eq!(block.tokens(), 30 - first);
        // A full cache exports everything; importing it into a sliding one drops the front.
        let mut full = KvCache::with_capacity(SHAPE, 100);
        grow(&mut full, 30);
        let all = full.export(0, 30).expect("nothing dropped");
        let mut restored = KvCache::with_windows(SHAPE, 100, &[Some(4), None]);
        restored.import(&all);
        assert_eq!(restored.len(), 30);
        assert_eq!(positions(&restored, 1), (0..30).collect::<Vec<_>>());
        let kept = positions(&restored, 0);
        assert_eq!(kept, (restored.layer(0).first..30).collect::<Vec<_>>());
        assert!(kept.len() < 8 && kept.contains(&(30 + 1 - 4)));
        assert!(restored.bytes() < full.bytes());
    }
}
