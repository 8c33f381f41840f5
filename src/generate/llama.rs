//! The Llama-family decoder (Llama 2/3, SmolLM2, TinyLlama, …) from a GGUF file, with the
//! forward pass that continuous batching needs: one call runs one step for many sequences,
//! each contributing a few rows (a chunk of its prompt, or its last token), with the linear
//! layers batched over every row and attention per sequence over its own KV cache.
//!
//! Weights are dequantized at load and re-packed for our kernels (`crate::kernels`): int8 in
//! blocks of 32 (the granularity of GGUF's Q8_0, so Q8_0 weights keep their exact values, and
//! VNNI dot products run the batched steps), bf16, or f32 (exact, for reference tests). The
//! embedding table stays as stored and is dequantized one row per token.

use std::path::Path;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::gguf::{GgufError, GgufFile, RawTensor};
use candle_core::quantized::GgmlDType;

use crate::kernels::team::parallel_for;
use crate::kernels::tiles::SharedOut;
use crate::kernels::{
    self, Dtype, Epilogue, KernelLevel, LinearPart, PackedLinear, Q4Format, Q4Linear,
};

/// Hyperparameters read from the GGUF metadata (`llama.*`).
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab: usize,
    pub context: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    /// Keys and values are cached in f16 (as llama.cpp does; with quantized weights), else in
    /// f32 (with f32 weights, so that f32 runs match the reference to 1e-4).
    pub kv_f16: bool,
}

/// Largest sizes accepted from a file's metadata (guards against absurd allocations).
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS: usize = 512;
const MAX_VOCAB: usize = 1 << 20;
const MAX_CONTEXT: usize = 1 << 20;

impl LlamaConfig {
    /// Reads and checks the hyperparameters.
    pub fn read(file: &GgufFile) -> Result<Self, GgufError> {
        let arch = file.string("general.architecture")?;
        let key = |k: &str| format!("{arch}.{k}");
        let n_embd = file.size(&key("embedding_length"), MAX_DIM)?;
        let n_head = file.size(&key("attention.head_count"), MAX_DIM)?;
        let n_head_kv = match file.uint_opt(&key("attention.head_count_kv"))? {
            Some(_) => file.size(&key("attention.head_count_kv"), MAX_DIM)?,
            None => n_head,
        };
        let bad = |k: &str, why: String| GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: key(k),
            problem: why,
        };
        if !n_embd.is_multiple_of(n_head) || (n_embd / n_head) % 2 != 0 {
            return Err(bad(
                "attention.head_count",
                format!(
                    "({n_head}) does not split embedding_length {n_embd} into even-sized heads"
                ),
            ));
        }
        if !n_head.is_multiple_of(n_head_kv) {
            return Err(bad(
                "attention.head_count_kv",
                format!("({n_head_kv}) does not divide head_count {n_head}"),
            ));
        }
        let head_dim = n_embd / n_head;
        if let Some(rot) = file.uint_opt(&key("rope.dimension_count"))? {
            if rot as usize != head_dim {
                return Err(bad(
                    "rope.dimension_count",
                    format!("is {rot}; only a rotary dimension equal to the head size ({head_dim}) is supported"),
                ));
            }
        }
        let rms_eps = file.float(&key("attention.layer_norm_rms_epsilon"))?;
        let rope_base = match file.value(&key("rope.freq_base")) {
            Some(_) => file.float(&key("rope.freq_base"))?,
            None => 10_000.0,
        };
        if !(rms_eps.is_finite() && rms_eps >= 0.0 && rope_base.is_finite() && rope_base > 1.0) {
            return Err(bad(
                "rope.freq_base",
                "or the RMS epsilon is out of range".into(),
            ));
        }
        Ok(Self {
            n_layer: file.size(&key("block_count"), MAX_LAYERS)?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: file.size(&key("feed_forward_length"), 4 * MAX_DIM)?,
            vocab: 0,
            context: file.size(&key("context_length"), MAX_CONTEXT)?,
            rope_base,
            rms_eps,
            kv_f16: true,
        })
    }

    /// Width of the fused Q, K and V projection.
    fn qkv_width(&self) -> usize {
        (self.n_head + 2 * self.n_head_kv) * self.head_dim
    }

    /// Width of one token's keys (or values) in the cache.
    pub fn kv_width(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// A linear layer without bias in the format chosen at load.
enum Linear {
    F32 { w: Vec<f32>, zero: Vec<f32> },
    Packed(PackedLinear),
}

impl Linear {
    fn new(dtype: Dtype, w: Vec<f32>, n: usize, k: usize) -> Result<Self, String> {
        let zero = vec![0.0; n];
        Ok(match PackedLinear::pack(dtype, &w, &zero, k)? {
            Some(p) => Linear::Packed(p),
            None => Linear::F32 { w, zero },
        })
    }

    fn n(&self) -> usize {
        match self {
            Linear::F32 { zero, .. } => zero.len(),
            Linear::Packed(p) => p.n(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Linear::F32 { w, zero } => 4 * (w.len() + zero.len()),
            Linear::Packed(p) => p.bytes(),
        }
    }

    /// `out[m×n] = x[m×k] · Wᵀ`.
    fn forward(&self, x: &[f32], m: usize, out: &mut [f32], level: KernelLevel, threads: usize) {
        match self {
            Linear::F32 { w, zero } => {
                let k = x.len().checked_div(m).unwrap_or(0);
                let parts = [LinearPart { w, b: zero }];
                kernels::linear(x, m, k, &parts, out, threads);
            }
            Linear::Packed(p) => p.forward(x, m, out, level, threads, Epilogue::Bias),
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V side by side.
    qkv: Linear,
    o: Linear,
    ffn_norm: Vec<f32>,
    /// Gate and up side by side (`2·n_ff` outputs).
    gate_up: Linear,
    down: Linear,
}

/// Loads the linear layer made of `parts` (tensor name, rows) stacked, each `rows × k`: as
/// stored when they are all Q4_0 or all Q4_1 and `keep_q4`, or all Q8_0 and `dtype` is int8;
/// else dequantized and packed as `dtype`.
fn load_linear(
    file: &GgufFile,
    parts: &[(String, usize)],
    k: usize,
    dtype: Dtype,
    keep_q4: bool,
) -> Result<Linear, GgufError> {
    let q4 = |t| match t {
        Some(GgmlDType::Q4_0) => Some(Q4Format::Q4_0),
        Some(GgmlDType::Q4_1) => Some(Q4Format::Q4_1),
        _ => None,
    };
    let types: Vec<_> = parts
        .iter()
        .map(|(name, _)| file.tensor_type(name))
        .collect();
    let formats: Vec<_> = types.iter().map(|&t| q4(t)).collect();
    let n: usize = parts.iter().map(|p| p.1).sum();
    let name = parts
        .iter()
        .map(|p| p.0.as_str())
        .collect::<Vec<_>>()
        .join("+");
    let error = |problem: String| GgufError::Tensor {
        path: file.path().to_path_buf(),
        name: name.clone(),
        problem,
    };
    if let (true, Some(Some(format))) = (keep_q4, formats.first()) {
        if formats.iter().all(|f| *f == Some(*format)) {
            let mut stacked = Vec::with_capacity(parts.len());
            for (name, rows) in parts {
                stacked.push(file.bytes(name, &[*rows, k])?.0);
            }
            let layer = Q4Linear::from_parts(*format, &stacked, &vec![0.0; n], k).map_err(error)?;
            return Ok(Linear::Packed(PackedLinear::Q4(layer)));
        }
    }
    if dtype == Dtype::Int8 && types.iter().all(|t| *t == Some(GgmlDType::Q8_0)) {
        // Q8_0 is the int8 kernel's own format: taken as stored, exactly.
        let mut bytes = Vec::new();
        for (name, rows) in parts {
            bytes.extend_from_slice(file.bytes(name, &[*rows, k])?.0);
        }
        let layer = kernels::Int8Linear::from_q8_0(&bytes, &vec![0.0; n], k).map_err(error)?;
        return Ok(Linear::Packed(PackedLinear::Int8(layer)));
    }
    let mut w = Vec::with_capacity(n * k);
    for (name, rows) in parts {
        w.extend(file.f32(name, &[*rows, k])?);
    }
    Linear::new(dtype, w, n, k).map_err(error)
}

/// One sequence's keys and values, layer by layer (`len × kv_width` each, grown as it goes).
///
/// In f16 with quantized weights, as llama.cpp keeps them: half the memory of f32, and
/// measured to matter for agreeing with llama.cpp's greedy tokens on long prompts
/// (tests/smollm2_reference.rs). In f32 with f32 weights (exact reference runs).
pub struct KvCache {
    layers: Vec<KvLayer>,
    len: usize,
}

/// One layer's keys and values.
enum KvLayer {
    F16(Vec<f16>, Vec<f16>),
    F32(Vec<f32>, Vec<f32>),
}

/// An element type of the KV cache.
trait KvElem: Copy + Send + Sync {
    /// Appends `src` converted.
    fn append(cache: &mut Vec<Self>, src: &[f32]);
    /// Widens `src` into `dst`.
    fn widen(src: &[Self], dst: &mut [f32]);
}

impl KvElem for f16 {
    fn append(cache: &mut Vec<Self>, src: &[f32]) {
        let at = cache.len();
        cache.resize(at + src.len(), f16::ZERO);
        cache[at..].convert_from_f32_slice(src);
    }

    #[inline(always)]
    fn widen(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

impl KvElem for f32 {
    fn append(cache: &mut Vec<Self>, src: &[f32]) {
        cache.extend_from_slice(src);
    }

    #[inline(always)]
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl KvCache {
    /// An empty cache with room reserved for `tokens` tokens.
    pub fn with_capacity(config: &LlamaConfig, tokens: usize) -> Self {
        let width = config.kv_width();
        Self {
            layers: (0..config.n_layer)
                .map(|_| {
                    let n = tokens * width;
                    if config.kv_f16 {
                        KvLayer::F16(Vec::with_capacity(n), Vec::with_capacity(n))
                    } else {
                        KvLayer::F32(Vec::with_capacity(n), Vec::with_capacity(n))
                    }
                })
                .collect(),
            len: 0,
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One sequence's part of a step: the tokens to run (at positions `cache.len()..`), and
/// whether the logits after its last token are wanted.
pub struct StepInput<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    pub want_logits: bool,
}

/// A Llama-family model ready to run.
pub struct Llama {
    config: LlamaConfig,
    token_embd: RawTensor,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    lm_head: Linear,
    /// Per rotary pair: the divisor of its frequency (Llama 3.1's `rope_freqs`), or 1.
    rope_freq_factors: Vec<f32>,
    dtype: Dtype,
    level: KernelLevel,
    threads: usize,
}

impl Llama {
    /// Loads the model from a GGUF file whose architecture is `llama`.
    ///
    /// # Errors
    ///
    /// When the file is not a usable Llama-family GGUF (each error names the key or tensor).
    /// `keep_q4`: Q4_0 and Q4_1 weights stay as stored (run by [`kernels::Q4Linear`])
    /// instead of being converted to `dtype`.
    pub fn load(
        path: &Path,
        dtype: Dtype,
        keep_q4: bool,
        level: KernelLevel,
        threads: usize,
    ) -> Result<(Self, GgufFile), GgufError> {
        let file = GgufFile::open(path)?;
        let model = Self::from_file(&file, dtype, keep_q4, level, threads)?;
        Ok((model, file))
    }

    /// [`Self::load`] from a file already open (its tokenizer can be built meanwhile).
    pub fn from_file(
        file: &GgufFile,
        dtype: Dtype,
        keep_q4: bool,
        level: KernelLevel,
        threads: usize,
    ) -> Result<Self, GgufError> {
        let path = file.path();
        let arch = file.string("general.architecture")?.to_string();
        if arch != "llama" {
            return Err(GgufError::Metadata {
                path: path.to_path_buf(),
                key: "general.architecture".into(),
                problem: format!(
                    "is {arch:?}; this server runs the llama architecture (Llama 2/3, SmolLM2, TinyLlama, …)"
                ),
            });
        }
        let mut config = LlamaConfig::read(file)?;
        let vocab = match file.strings("tokenizer.ggml.tokens") {
            Ok(t) => t.len(),
            Err(e) => return Err(e),
        };
        if vocab == 0 || vocab > MAX_VOCAB {
            return Err(GgufError::Metadata {
                path: path.to_path_buf(),
                key: "tokenizer.ggml.tokens".into(),
                problem: format!("holds {vocab} tokens"),
            });
        }
        config.vocab = vocab;
        config.kv_f16 = dtype != Dtype::F32;
        let (d, hd, ff) = (config.n_embd, config.head_dim, config.n_ff);
        let kvw = config.kv_width();
        let token_embd = file.raw("token_embd.weight", &[vocab, d])?;
        let file_ref = file;
        let layer = |i: usize| -> Result<Layer, GgufError> {
            let t = |s: &str| format!("blk.{i}.{s}.weight");
            let linear = |parts: &[(String, usize)], k: usize| {
                load_linear(file_ref, parts, k, dtype, keep_q4)
            };
            Ok(Layer {
                attn_norm: file_ref.f32(&t("attn_norm"), &[d])?,
                qkv: linear(
                    &[
                        (t("attn_q"), config.n_head * hd),
                        (t("attn_k"), kvw),
                        (t("attn_v"), kvw),
                    ],
                    d,
                )?,
                o: linear(&[(t("attn_output"), d)], d)?,
                ffn_norm: file_ref.f32(&t("ffn_norm"), &[d])?,
                gate_up: linear(&[(t("ffn_gate"), ff), (t("ffn_up"), ff)], d)?,
                down: linear(&[(t("ffn_down"), d)], ff)?,
            })
        };
        // Layers convert in parallel: loading is on the cold-start path.
        let layers = (0..config.n_layer)
            .into_par_iter()
            .map(layer)
            .collect::<Result<Vec<_>, _>>()?;
        let output_norm = file.f32("output_norm.weight", &[d])?;
        // Tied embeddings (no output.weight) reuse the embedding table as the LM head.
        let head_name = if file.has_tensor("output.weight") {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        let lm_head = load_linear(file, &[(head_name.to_string(), vocab)], d, dtype, keep_q4)?;
        let rope_freq_factors = if file.has_tensor("rope_freqs.weight") {
            file.f32("rope_freqs.weight", &[hd / 2])?
        } else {
            vec![1.0; hd / 2]
        };
        Ok(Self {
            config,
            token_embd,
            layers,
            output_norm,
            lm_head,
            rope_freq_factors,
            dtype,
            level,
            threads: threads.max(1),
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The number format of the linear layers.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The kernel path the packed layers run on.
    pub fn level(&self) -> KernelLevel {
        self.level
    }

    /// Bytes of weights held (packed layers, norms and the embedding table as stored).
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv.bytes()
                    + l.o.bytes()
                    + l.gate_up.bytes()
                    + l.down.bytes()
                    + 4 * (l.attn_norm.len() + l.ffn_norm.len())
            })
            .sum();
        layers + self.lm_head.bytes() + self.token_embd.bytes.len()
    }

    /// Runs one step: every input's tokens go through the model at their positions, their
    /// keys and values are appended to their caches, and the logits after the last token of
    /// each input that wants them are returned (`vocab` values each, in input order).
    ///
    /// # Panics
    ///
    /// When a token id is outside the vocabulary or a cache would pass the context length
    /// (the engine checks both before a request is admitted).
    pub fn step(&self, inputs: &mut [StepInput]) -> Vec<Vec<f32>> {
        let c = &self.config;
        let (d, hd, ff) = (c.n_embd, c.head_dim, c.n_ff);
        let kvw = c.kv_width();
        let qkvw = c.qkv_width();
        let m: usize = inputs.iter().map(|i| i.tokens.len()).sum();
        if m == 0 {
            return Vec::new();
        }
        // Embeddings and each row's position.
        let mut x = Vec::with_capacity(m * d);
        let mut positions = Vec::with_capacity(m);
        for input in inputs.iter() {
            assert!(
                input.cache.len + input.tokens.len() <= c.context,
                "a sequence passed the context length"
            );
            for (j, &t) in input.tokens.iter().enumerate() {
                let row = self
                    .token_embd
                    .row(t as usize)
                    .expect("token ids are checked against the vocabulary");
                x.extend_from_slice(&row);
                positions.push(input.cache.len + j);
            }
        }
        let rope = RopeTable::new(&positions, hd, c.rope_base, &self.rope_freq_factors);
        let mut xn = vec![0.0f32; m * d];
        let mut qkv = vec![0.0f32; m * qkvw];
        let mut attn = vec![0.0f32; m * d];
        let mut proj = vec![0.0f32; m * d];
        let mut gate_up = vec![0.0f32; m * 2 * ff];
        let mut act = vec![0.0f32; m * ff];
        let threads = self.threads;
        let level = self.level;
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, c.rms_eps, &mut xn);
            layer.qkv.forward(&xn, m, &mut qkv, level, threads);
            for (r, row) in qkv.chunks_exact_mut(qkvw).enumerate() {
                let (q, kv) = row.split_at_mut(c.n_head * hd);
                rope.apply(r, q, hd);
                rope.apply(r, &mut kv[..kvw], hd);
            }
            // Append keys and values, then attend, sequence by sequence (in parallel).
            let mut row0 = 0;
            let mut jobs = Vec::with_capacity(inputs.len());
            let mut attn_rest: &mut [f32] = &mut attn;
            for input in inputs.iter_mut() {
                let rows = input.tokens.len();
                let (mine, rest) = attn_rest.split_at_mut(rows * d);
                attn_rest = rest;
                let layer = &mut input.cache.layers[l];
                for r in row0..row0 + rows {
                    let row = &qkv[r * qkvw..(r + 1) * qkvw];
                    match layer {
                        KvLayer::F16(k, v) => {
                            KvElem::append(k, &row[d..d + kvw]);
                            KvElem::append(v, &row[d + kvw..]);
                        }
                        KvLayer::F32(k, v) => {
                            KvElem::append(k, &row[d..d + kvw]);
                            KvElem::append(v, &row[d + kvw..]);
                        }
                    }
                }
                let start = input.cache.len;
                jobs.push((
                    &qkv[row0 * qkvw..(row0 + rows) * qkvw],
                    &*layer,
                    start,
                    (SharedOut(mine.as_mut_ptr()), mine.len()),
                ));
                row0 += rows;
            }
            let shape = AttnShape {
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                head_dim: hd,
                qkvw,
            };
            parallel_for(jobs.len(), threads, &|i| {
                let (q, layer, start, (out, len)) = jobs[i];
                // SAFETY: each job's output is its own rows of `attn` (split above), which
                // stays mutably borrowed until this loop ends.
                let out = unsafe { std::slice::from_raw_parts_mut(out.ptr(), len) };
                match layer {
                    KvLayer::F16(k, v) => attend(&shape, q, k, v, start, out, level),
                    KvLayer::F32(k, v) => attend(&shape, q, k, v, start, out, level),
                }
            });
            layer.o.forward(&attn, m, &mut proj, level, threads);
            add(&mut x, &proj);
            rms_norm(&x, &layer.ffn_norm, c.rms_eps, &mut xn);
            layer.gate_up.forward(&xn, m, &mut gate_up, level, threads);
            for (gu, a) in gate_up.chunks_exact(2 * ff).zip(act.chunks_exact_mut(ff)) {
                let (g, u) = gu.split_at(ff);
                for ((a, &g), &u) in a.iter_mut().zip(g).zip(u) {
                    *a = g / (1.0 + (-g).exp()) * u;
                }
            }
            layer.down.forward(&act, m, &mut proj, level, threads);
            add(&mut x, &proj);
        }
        // Logits only for the rows that need them.
        let mut last_rows = Vec::new();
        let mut row0 = 0;
        for input in inputs.iter_mut() {
            row0 += input.tokens.len();
            input.cache.len += input.tokens.len();
            if input.want_logits && !input.tokens.is_empty() {
                last_rows.push(row0 - 1);
            }
        }
        let r = last_rows.len();
        if r == 0 {
            return Vec::new();
        }
        let mut h = Vec::with_capacity(r * d);
        for &row in &last_rows {
            h.extend_from_slice(&x[row * d..(row + 1) * d]);
        }
        let mut hn = vec![0.0f32; r * d];
        rms_norm(&h, &self.output_norm, c.rms_eps, &mut hn);
        let mut logits = vec![0.0f32; r * self.lm_head.n()];
        self.lm_head.forward(&hn, r, &mut logits, level, threads);
        logits
            .chunks_exact(self.lm_head.n())
            .map(<[f32]>::to_vec)
            .collect()
    }
}

/// `out = x / rms(x) · w`, row by row.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(row).zip(w) {
            *o = v * scale * w;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Rotary embedding angles for the rows of one step (GGUF's Llama convention: the rotated
/// pairs are adjacent values, `(x[2i], x[2i+1])`, as the converter permutes Q and K for it).
struct RopeTable {
    /// Per row, per pair: (cos, sin).
    cos_sin: Vec<(f32, f32)>,
    pairs: usize,
}

impl RopeTable {
    fn new(positions: &[usize], head_dim: usize, base: f32, factors: &[f32]) -> Self {
        let pairs = head_dim / 2;
        let inv_freq: Vec<f64> = (0..pairs)
            .map(|i| 1.0 / (base as f64).powf(2.0 * i as f64 / head_dim as f64) / factors[i] as f64)
            .collect();
        let mut cos_sin = Vec::with_capacity(positions.len() * pairs);
        for &p in positions {
            for f in &inv_freq {
                let theta = p as f64 * f;
                cos_sin.push((theta.cos() as f32, theta.sin() as f32));
            }
        }
        Self { cos_sin, pairs }
    }

    /// Rotates every head of `x` (heads of `head_dim` values) for row `r`.
    fn apply(&self, r: usize, x: &mut [f32], head_dim: usize) {
        let cs = &self.cos_sin[r * self.pairs..(r + 1) * self.pairs];
        for head in x.chunks_exact_mut(head_dim) {
            for (pair, &(cos, sin)) in head.chunks_exact_mut(2).zip(cs) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * cos - b * sin;
                pair[1] = a * sin + b * cos;
            }
        }
    }
}

struct AttnShape {
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    qkvw: usize,
}

/// Causal attention of one sequence's new rows (queries in `qkv`, rows at positions
/// `start..`) over its cache (`k`, `v`: every position up to the last new row), into `out`
/// (`rows × n_head·head_dim`). Each cached key and value is widened once per row and used by
/// every query head of its group (grouped-query attention).
fn attend<T: KvElem>(
    s: &AttnShape,
    qkv: &[f32],
    k: &[T],
    v: &[T],
    start: usize,
    out: &mut [f32],
    level: KernelLevel,
) {
    #[cfg(target_arch = "x86_64")]
    if level >= KernelLevel::Avx2 && KernelLevel::detected() >= KernelLevel::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { attend_avx2(s, qkv, k, v, start, out) };
        return;
    }
    let _ = level;
    attend_portable(s, qkv, k, v, start, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2<T: KvElem>(
    s: &AttnShape,
    qkv: &[f32],
    k: &[T],
    v: &[T],
    start: usize,
    out: &mut [f32],
) {
    attend_portable(s, qkv, k, v, start, out)
}

#[inline(always)]
fn attend_portable<T: KvElem>(
    s: &AttnShape,
    qkv: &[f32],
    k: &[T],
    v: &[T],
    start: usize,
    out: &mut [f32],
) {
    let hd = s.head_dim;
    let group = s.n_head / s.n_head_kv;
    let kvw = s.n_head_kv * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let rows = qkv.len() / s.qkvw;
    let span = start + rows;
    let mut scores = vec![0.0f32; group * span];
    let mut wide = vec![0.0f32; hd];
    let mut max = vec![0.0f32; group];
    let mut inv = vec![0.0f32; group];
    for r in 0..rows {
        let visible = start + r + 1;
        let q_row = &qkv[r * s.qkvw..r * s.qkvw + s.n_head * hd];
        let o_row = &mut out[r * s.n_head * hd..(r + 1) * s.n_head * hd];
        for kvh in 0..s.n_head_kv {
            let heads = kvh * group..(kvh + 1) * group;
            max.fill(f32::NEG_INFINITY);
            for t in 0..visible {
                T::widen(&k[t * kvw + kvh * hd..][..hd], &mut wide);
                for (gi, h) in heads.clone().enumerate() {
                    let score = dot(&q_row[h * hd..(h + 1) * hd], &wide) * scale;
                    scores[gi * span + t] = score;
                    max[gi] = max[gi].max(score);
                }
            }
            for gi in 0..group {
                let mut sum = 0.0f32;
                for score in &mut scores[gi * span..gi * span + visible] {
                    *score = (*score - max[gi]).exp();
                    sum += *score;
                }
                inv[gi] = 1.0 / sum;
            }
            for h in heads.clone() {
                o_row[h * hd..(h + 1) * hd].fill(0.0);
            }
            for t in 0..visible {
                T::widen(&v[t * kvw + kvh * hd..][..hd], &mut wide);
                for (gi, h) in heads.clone().enumerate() {
                    let w = scores[gi * span + t] * inv[gi];
                    for (o, &vv) in o_row[h * hd..(h + 1) * hd].iter_mut().zip(&wide) {
                        *o += w * vv;
                    }
                }
            }
        }
    }
}

/// A dot product in 16 independent lanes (so it vectorizes).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = a.len() / 16;
    for c in 0..chunks {
        for l in 0..16 {
            acc[l] += a[c * 16 + l] * b[c * 16 + l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 16..a.len() {
        sum += a[i] * b[i];
    }
    sum
}
