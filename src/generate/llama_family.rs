//! What the Llama family of GGUF architectures shares: pre-RMSNorm blocks, rotary attention
//! (grouped-query, over the KV caches of [`super::decoder`]) and a SwiGLU feed-forward, with
//! the forward pass that continuous batching needs: one call runs one step for many
//! sequences, each contributing a few rows (a chunk of its prompt, or its last token), the
//! linear layers batched over every row and attention per sequence over its own cache.
//!
//! The architectures (`general.architecture`, as llama.cpp names them) differ in a few
//! places, each in its own file through [`Arch`]: [`super::llama`] (adjacent-pair RoPE with
//! optional per-pair frequency factors), [`super::qwen2`] (rotate-half RoPE, Q/K/V biases) and
//! [`super::qwen3`] (rotate-half RoPE, an RMSNorm on every query and key head before it, a head
//! size of its own). What they share is read and run here once: the hyperparameters
//! ([`Hparams`], the keys llama.cpp reads), the tensors llama.cpp's loaders name
//! (`blk.N.attn_q` … or the fused `blk.N.attn_qkv`, optional `attn_q.bias` …, `output.weight`
//! or the tied embedding table), and the step.
//!
//! Weights are dequantized at load and re-packed for our kernels (`crate::kernels`): int8 in
//! blocks of 32 (the granularity of GGUF's Q8_0, so Q8_0 weights keep their exact values, and
//! VNNI dot products run the batched steps), bf16, or f32 (exact, for reference tests); Q4_0
//! and Q4_1 may stay as stored. The embedding table stays as stored and is dequantized one
//! row per token.

use std::path::Path;

use super::decoder::{self, AttnShape, CacheShape, Decoder, DecoderShape, Linear, StepInput};
use super::gguf::{GgufError, GgufFile, RawTensor};
use candle_core::quantized::GgmlDType;

use crate::kernels::{self, Dtype, Epilogue, KernelLevel, PackedLinear, Q4Format, Q4Linear};

/// Largest sizes accepted from a file's metadata (guards against absurd allocations).
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS: usize = 512;
const MAX_VOCAB: usize = 1 << 20;
const MAX_CONTEXT: usize = 1 << 20;

/// Hyperparameters read from the GGUF metadata (`{arch}.*`, the keys llama.cpp reads).
#[derive(Debug, Clone)]
pub struct Hparams {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Values per query, key and value head: `{arch}.attention.key_length`, else
    /// `n_embd / n_head` (Qwen3's heads are wider than that).
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab: usize,
    pub context: usize,
    pub rope_base: f32,
    /// Positions are multiplied by this before rotating (`1 / rope.scaling.factor` for linear
    /// scaling, else 1).
    pub rope_freq_scale: f32,
    pub rms_eps: f32,
    /// Keys and values are cached in f16 (as llama.cpp does; with quantized weights), else in
    /// f32 (with f32 weights, so that f32 runs match the reference to 1e-4).
    pub kv_f16: bool,
}

impl Hparams {
    /// Reads and checks the hyperparameters of architecture `arch`.
    pub fn read(file: &GgufFile, arch: &str) -> Result<Self, GgufError> {
        let key = |k: &str| format!("{arch}.{k}");
        let bad = |k: &str, why: String| GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: key(k),
            problem: why,
        };
        let n_embd = file.size(&key("embedding_length"), MAX_DIM)?;
        let n_head = file.size(&key("attention.head_count"), MAX_DIM)?;
        let n_head_kv = match file.uint_opt(&key("attention.head_count_kv"))? {
            Some(_) => file.size(&key("attention.head_count_kv"), MAX_DIM)?,
            None => n_head,
        };
        if !n_head.is_multiple_of(n_head_kv) {
            return Err(bad(
                "attention.head_count_kv",
                format!("({n_head_kv}) does not divide head_count {n_head}"),
            ));
        }
        let head_dim = match file.uint_opt(&key("attention.key_length"))? {
            Some(_) => file.size(&key("attention.key_length"), MAX_DIM)?,
            None if n_embd.is_multiple_of(n_head) => n_embd / n_head,
            None => {
                return Err(bad(
                    "attention.head_count",
                    format!("({n_head}) does not split embedding_length {n_embd} into heads, and attention.key_length is not set"),
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(bad(
                "attention.key_length",
                format!("makes heads of {head_dim} values; rotary attention needs an even size"),
            ));
        }
        if let Some(v) = file.uint_opt(&key("attention.value_length"))? {
            if v as usize != head_dim {
                return Err(bad(
                    "attention.value_length",
                    format!("is {v}; only value heads as wide as the key heads ({head_dim}) are supported"),
                ));
            }
        }
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
            rope_freq_scale: rope_freq_scale(file, arch)?,
            rms_eps,
            kv_f16: true,
        })
    }

    /// Width of all query heads side by side.
    pub fn q_width(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of the fused Q, K and V projection.
    fn qkv_width(&self) -> usize {
        (self.n_head + 2 * self.n_head_kv) * self.head_dim
    }

    /// Width of one token's keys (or values) in the cache.
    pub fn kv_width(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// The sizes of one sequence's KV cache.
    pub fn cache_shape(&self) -> CacheShape {
        CacheShape {
            n_layer: self.n_layer,
            kv_width: self.kv_width(),
            f16: self.kv_f16,
        }
    }
}

/// The position scale of `{arch}.rope.scaling.*`, as llama.cpp reads it: no scaling, or linear
/// scaling by `factor` (older files: `rope.scale_linear`). Other kinds (YaRN, LongRoPE) change
/// the angles of every position, so a file that asks for one is refused rather than run
/// wrongly.
fn rope_freq_scale(file: &GgufFile, arch: &str) -> Result<f32, GgufError> {
    let kind_key = format!("{arch}.rope.scaling.type");
    let kind = file.string_opt(&kind_key)?.unwrap_or("linear");
    if !matches!(kind, "none" | "linear") {
        return Err(GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: kind_key,
            problem: format!(
                "is {kind:?}; this server runs RoPE without scaling or with linear scaling"
            ),
        });
    }
    let mut factor = 0.0;
    for k in ["rope.scaling.factor", "rope.scale_linear"] {
        let k = format!("{arch}.{k}");
        if file.value(&k).is_some() {
            factor = file.float(&k)?;
            break;
        }
    }
    if kind == "none" || factor == 0.0 {
        return Ok(1.0);
    }
    if !(factor.is_finite() && factor > 0.0) {
        return Err(GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: format!("{arch}.rope.scaling.factor"),
            problem: format!("is {factor}; it must be positive"),
        });
    }
    Ok(1.0 / factor)
}

/// How RoPE pairs a head's values (llama.cpp's rope types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// `LLAMA_ROPE_TYPE_NORM`: adjacent values `(x[2i], x[2i+1])` (llama.cpp's converter
    /// permutes Llama's Q and K rows for it).
    Adjacent,
    /// `LLAMA_ROPE_TYPE_NEOX`: the two halves, `(x[i], x[i + d/2])` (Hugging Face's
    /// `rotate_half`; Qwen's tensors are stored as trained).
    Halves,
}

/// Rotary embedding angles for the rows of one step.
pub struct Rope {
    /// Per row, per pair: (cos, sin).
    cos_sin: Vec<(f32, f32)>,
    pairs: usize,
    style: RopeStyle,
}

impl Rope {
    /// The angles of `positions`: pair `i` turns by `position · scale / base^(2i/d) /
    /// factors[i]` (`factors`: Llama 3.1's `rope_freqs`, or ones).
    fn new(positions: &[usize], hp: &Hparams, factors: &[f32], style: RopeStyle) -> Self {
        let (head_dim, base) = (hp.head_dim, hp.rope_base as f64);
        let pairs = head_dim / 2;
        let inv_freq: Vec<f64> = (0..pairs)
            .map(|i| 1.0 / base.powf(2.0 * i as f64 / head_dim as f64) / factors[i] as f64)
            .collect();
        let scale = hp.rope_freq_scale as f64;
        let mut cos_sin = Vec::with_capacity(positions.len() * pairs);
        for &p in positions {
            for f in &inv_freq {
                let theta = p as f64 * scale * f;
                cos_sin.push((theta.cos() as f32, theta.sin() as f32));
            }
        }
        Self {
            cos_sin,
            pairs,
            style,
        }
    }

    /// Rotates every head of `x` (heads of `2·pairs` values) for row `r`.
    pub fn apply(&self, r: usize, x: &mut [f32]) {
        let cs = &self.cos_sin[r * self.pairs..(r + 1) * self.pairs];
        let half = self.pairs;
        for head in x.chunks_exact_mut(2 * half) {
            match self.style {
                RopeStyle::Adjacent => {
                    for (pair, &(cos, sin)) in head.chunks_exact_mut(2).zip(cs) {
                        let (a, b) = (pair[0], pair[1]);
                        pair[0] = a * cos - b * sin;
                        pair[1] = a * sin + b * cos;
                    }
                }
                RopeStyle::Halves => {
                    let (lo, hi) = head.split_at_mut(half);
                    for ((a, b), &(cos, sin)) in lo.iter_mut().zip(hi.iter_mut()).zip(cs) {
                        let (x0, x1) = (*a, *b);
                        *a = x0 * cos - x1 * sin;
                        *b = x0 * sin + x1 * cos;
                    }
                }
            }
        }
    }
}

/// `out = x / rms(x) · w`, for every row of `w.len()` values of `x`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(row).zip(w) {
            *o = v * scale * w;
        }
    }
}

/// [`rms_norm`] in place.
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for row in x.chunks_exact_mut(d) {
        let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for (v, &w) in row.iter_mut().zip(w) {
            *v = *v * scale * w;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// What an architecture of the family adds to the shared model: its name, its RoPE, its own
/// tensors, and what it does to the queries and keys before attention.
pub trait Arch: Sized + Send + Sync {
    /// `general.architecture`, as llama.cpp names it.
    const NAME: &'static str;
    /// How RoPE pairs values.
    const ROPE: RopeStyle;
    /// The architecture's own tensors of one layer (`()` when it has none).
    type Layer: Send + Sync;

    /// Reads what the architecture holds for the whole model.
    fn load(file: &GgufFile, hp: &Hparams) -> Result<Self, GgufError>;

    /// Reads the architecture's own tensors of layer `i`.
    fn load_layer(&self, file: &GgufFile, hp: &Hparams, i: usize)
        -> Result<Self::Layer, GgufError>;

    /// Bytes held by one layer's own tensors.
    fn layer_bytes(layer: &Self::Layer) -> usize;

    /// Per rotary pair: the divisor of its frequency (ones unless the file says otherwise).
    fn rope_freq_factors(&self) -> &[f32];

    /// Makes one row's query heads `q` and key heads `k` ready for attention (biases are
    /// already added). The default is llama.cpp's Llama and Qwen2 graphs: RoPE on both.
    fn prepare_qk(
        &self,
        layer: &Self::Layer,
        hp: &Hparams,
        rope: &Rope,
        r: usize,
        q: &mut [f32],
        k: &mut [f32],
    ) {
        let _ = (layer, hp);
        rope.apply(r, q);
        rope.apply(r, k);
    }
}

/// What every layer of the family holds.
struct Block<L> {
    attn_norm: Vec<f32>,
    /// Q, K and V side by side (with their biases when the file has them).
    qkv: Linear,
    o: Linear,
    ffn_norm: Vec<f32>,
    /// Gate and up side by side (`2·n_ff` outputs).
    gate_up: Linear,
    down: Linear,
    /// The architecture's own tensors.
    own: L,
}

/// Loads the linear layer made of `parts` (tensor name, rows) stacked, each `rows × k`, with
/// `bias` (`None`: zeros): as stored when they are all Q4_0 or all Q4_1 and `keep_q4`, or all
/// Q8_0 and `dtype` is int8; else dequantized and packed as `dtype`.
pub(super) fn load_linear(
    file: &GgufFile,
    parts: &[(String, usize)],
    k: usize,
    bias: Option<Vec<f32>>,
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
    let bias = bias.unwrap_or_else(|| vec![0.0; n]);
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
            let layer = Q4Linear::from_parts(*format, &stacked, &bias, k).map_err(error)?;
            return Ok(Linear::Packed(PackedLinear::Q4(layer)));
        }
    }
    if dtype == Dtype::Int8 && types.iter().all(|t| *t == Some(GgmlDType::Q8_0)) {
        // Q8_0 is the int8 kernel's own format: taken as stored, exactly.
        // One tensor (the LM head, the largest) is read in place; stacked ones are joined.
        let bytes: std::borrow::Cow<[u8]> = match parts {
            [(name, rows)] => file.bytes(name, &[*rows, k])?.0.into(),
            _ => {
                let mut joined = Vec::new();
                for (name, rows) in parts {
                    joined.extend_from_slice(file.bytes(name, &[*rows, k])?.0);
                }
                joined.into()
            }
        };
        let layer = kernels::Int8Linear::from_q8_0(&bytes, &bias, k).map_err(error)?;
        return Ok(Linear::Packed(PackedLinear::Int8(layer)));
    }
    let mut w = Vec::with_capacity(n * k);
    for (name, rows) in parts {
        w.extend(file.f32(name, &[*rows, k])?);
    }
    Linear::new(dtype, &w, bias, k).map_err(error)
}

/// The biases of `parts` (`{name}.bias` beside each `{name}.weight`), as one vector; `None`
/// when none of them has one (llama.cpp reads Q, K and V biases when present, for every
/// architecture of the family).
fn optional_biases(
    file: &GgufFile,
    parts: &[(String, usize)],
) -> Result<Option<Vec<f32>>, GgufError> {
    let names: Vec<String> = parts
        .iter()
        .map(|(w, _)| format!("{}.bias", w.trim_end_matches(".weight")))
        .collect();
    if !names.iter().any(|n| file.has_tensor(n)) {
        return Ok(None);
    }
    let mut bias = Vec::new();
    for (name, (_, rows)) in names.iter().zip(parts) {
        if file.has_tensor(name) {
            bias.extend(file.f32(name, &[*rows])?);
        } else {
            bias.extend(std::iter::repeat_n(0.0, *rows));
        }
    }
    Ok(Some(bias))
}

/// A model of the family ready to run (`A`: its architecture).
pub struct Model<A: Arch> {
    hp: Hparams,
    arch: A,
    token_embd: RawTensor,
    blocks: Vec<Block<A::Layer>>,
    output_norm: Vec<f32>,
    lm_head: Linear,
    dtype: Dtype,
    level: KernelLevel,
    threads: usize,
}

impl<A: Arch> Model<A> {
    /// Loads the model from a GGUF file whose architecture is `A::NAME`.
    ///
    /// # Errors
    ///
    /// When the file is not a usable model of this architecture (each error names the key or
    /// tensor). `keep_q4`: Q4_0 and Q4_1 weights stay as stored (run by
    /// [`kernels::Q4Linear`]) instead of being converted to `dtype`.
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
        let arch = file.string("general.architecture")?;
        if arch != A::NAME {
            return Err(GgufError::Metadata {
                path: path.to_path_buf(),
                key: "general.architecture".into(),
                problem: format!("is {arch:?}, not {:?}", A::NAME),
            });
        }
        let mut hp = Hparams::read(file, A::NAME)?;
        let vocab = file.strings("tokenizer.ggml.tokens")?.len();
        if vocab == 0 || vocab > MAX_VOCAB {
            return Err(GgufError::Metadata {
                path: path.to_path_buf(),
                key: "tokenizer.ggml.tokens".into(),
                problem: format!("holds {vocab} tokens"),
            });
        }
        hp.vocab = vocab;
        hp.kv_f16 = dtype != Dtype::F32;
        let own = A::load(file, &hp)?;
        let (d, ff, qw, kvw) = (hp.n_embd, hp.n_ff, hp.q_width(), hp.kv_width());
        let layer = |i: usize| -> Result<Block<A::Layer>, GgufError> {
            let t = |s: &str| format!("blk.{i}.{s}.weight");
            let linear = |parts: &[(String, usize)], k: usize, bias| {
                load_linear(file, parts, k, bias, dtype, keep_q4)
            };
            let separate = [(t("attn_q"), qw), (t("attn_k"), kvw), (t("attn_v"), kvw)];
            // Q, K and V as one tensor (`--fuse-qkv`), with one bias or separate ones, as
            // llama.cpp reads them; else three tensors.
            let qkv = if file.has_tensor(&t("attn_qkv")) {
                let fused = [(t("attn_qkv"), qw + 2 * kvw)];
                let bias = match optional_biases(file, &fused)? {
                    Some(b) => Some(b),
                    None => optional_biases(file, &separate)?,
                };
                linear(&fused, d, bias)?
            } else {
                linear(&separate, d, optional_biases(file, &separate)?)?
            };
            Ok(Block {
                attn_norm: file.f32(&t("attn_norm"), &[d])?,
                qkv,
                o: linear(&[(t("attn_output"), d)], qw, None)?,
                ffn_norm: file.f32(&t("ffn_norm"), &[d])?,
                gate_up: linear(&[(t("ffn_gate"), ff), (t("ffn_up"), ff)], d, None)?,
                down: linear(&[(t("ffn_down"), d)], ff, None)?,
                own: own.load_layer(file, &hp, i)?,
            })
        };
        // Tied embeddings (no output.weight) reuse the embedding table as the LM head.
        let head_name = if file.has_tensor("output.weight") {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        // Layers convert in parallel, beside the head (the largest single tensor: a fifth of
        // SmolLM2-135M's bytes, so it starts first): loading is on the cold-start path.
        // The embedding table is copied as stored, after the head.
        let ((lm_head, token_embd), blocks) = kernels::team::join_map(
            || {
                (
                    load_linear(
                        file,
                        &[(head_name.to_string(), vocab)],
                        d,
                        None,
                        dtype,
                        keep_q4,
                    ),
                    file.raw("token_embd.weight", &[vocab, d]),
                )
            },
            hp.n_layer,
            threads,
            &layer,
        );
        let blocks = blocks.into_iter().collect::<Result<Vec<_>, _>>()?;
        let (lm_head, token_embd) = (lm_head?, token_embd?);
        // Steps dequantize the table a row at a time; the file's checks (rows of whole
        // blocks) make every row decode, and one is decoded here to fail the load, not a
        // step, if that ever stops being so.
        if token_embd.row(vocab - 1).is_none() {
            return Err(GgufError::Tensor {
                path: path.to_path_buf(),
                name: "token_embd.weight".into(),
                problem: "has rows that cannot be dequantized".into(),
            });
        }
        let output_norm = file.f32("output_norm.weight", &[d])?;
        Ok(Self {
            hp,
            arch: own,
            token_embd,
            blocks,
            output_norm,
            lm_head,
            dtype,
            level,
            threads: threads.max(1),
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &Hparams {
        &self.hp
    }

    /// The sizes the engine needs.
    pub fn shape(&self) -> DecoderShape {
        let c = &self.hp;
        DecoderShape {
            n_layer: c.n_layer,
            n_embd: c.n_embd,
            vocab: c.vocab,
            context: c.context,
            cache: c.cache_shape(),
        }
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
            .blocks
            .iter()
            .map(|l| {
                l.qkv.bytes()
                    + l.o.bytes()
                    + l.gate_up.bytes()
                    + l.down.bytes()
                    + 4 * (l.attn_norm.len() + l.ffn_norm.len())
                    + A::layer_bytes(&l.own)
            })
            .sum();
        layers + self.lm_head.bytes() + self.token_embd.bytes.len() + 4 * self.output_norm.len()
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
        let c = &self.hp;
        let (d, ff, qw, kvw) = (c.n_embd, c.n_ff, c.q_width(), c.kv_width());
        let qkvw = c.qkv_width();
        let m: usize = inputs.iter().map(|i| i.tokens.len()).sum();
        if m == 0 {
            return Vec::new();
        }
        let positions = decoder::positions(inputs, c.context);
        let mut x = Vec::with_capacity(m * d);
        for input in inputs.iter() {
            for &t in input.tokens {
                let row = self
                    .token_embd
                    .row(t as usize)
                    .expect("token ids are checked against the vocabulary");
                x.extend_from_slice(&row);
            }
        }
        let rope = Rope::new(&positions, c, self.arch.rope_freq_factors(), A::ROPE);
        let mut xn = vec![0.0f32; m * d];
        let mut qkv = vec![0.0f32; m * qkvw];
        let mut attn = vec![0.0f32; m * qw];
        let mut proj = vec![0.0f32; m * d];
        let mut gate_up = vec![0.0f32; m * 2 * ff];
        let mut act = vec![0.0f32; m * ff];
        let (threads, level) = (self.threads, self.level);
        let shape = AttnShape {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            qkvw,
        };
        for (l, block) in self.blocks.iter().enumerate() {
            rms_norm(&x, &block.attn_norm, c.rms_eps, &mut xn);
            block
                .qkv
                .forward(&xn, m, &mut qkv, level, threads, Epilogue::Bias);
            for (r, row) in qkv.chunks_exact_mut(qkvw).enumerate() {
                let (q, kv) = row.split_at_mut(qw);
                self.arch
                    .prepare_qk(&block.own, c, &rope, r, q, &mut kv[..kvw]);
            }
            decoder::cached_attention(inputs, l, &qkv, &shape, &mut attn, level, threads);
            block
                .o
                .forward(&attn, m, &mut proj, level, threads, Epilogue::Bias);
            add(&mut x, &proj);
            rms_norm(&x, &block.ffn_norm, c.rms_eps, &mut xn);
            block
                .gate_up
                .forward(&xn, m, &mut gate_up, level, threads, Epilogue::Bias);
            for (gu, a) in gate_up.chunks_exact(2 * ff).zip(act.chunks_exact_mut(ff)) {
                let (g, u) = gu.split_at(ff);
                for ((a, &g), &u) in a.iter_mut().zip(g).zip(u) {
                    *a = g / (1.0 + (-g).exp()) * u;
                }
            }
            block
                .down
                .forward(&act, m, &mut proj, level, threads, Epilogue::Bias);
            add(&mut x, &proj);
        }
        // Logits only for the rows that need them.
        let rows = decoder::finish_step(inputs);
        let final_norm =
            |h: &[f32], out: &mut [f32]| rms_norm(h, &self.output_norm, c.rms_eps, out);
        decoder::logits(&x, d, &rows, final_norm, &self.lm_head, level, threads)
    }
}

impl<A: Arch> Decoder for Model<A> {
    fn shape(&self) -> DecoderShape {
        Model::shape(self)
    }

    fn step(&self, inputs: &mut [StepInput]) -> Vec<Vec<f32>> {
        Model::step(self, inputs)
    }

    fn weight_bytes(&self) -> usize {
        Model::weight_bytes(self)
    }

    fn dtype(&self) -> Dtype {
        Model::dtype(self)
    }

    fn weight_formats(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "token_embedding",
                format!(
                    "{} as stored, a row dequantized per token",
                    format!("{:?}", self.token_embd.dtype).to_lowercase()
                ),
            ),
            (
                "attention",
                decoder::formats_of(self.blocks.iter().flat_map(|l| [&l.qkv, &l.o])),
            ),
            (
                "feed_forward",
                decoder::formats_of(self.blocks.iter().flat_map(|l| [&l.gate_up, &l.down])),
            ),
            ("lm_head", self.lm_head.format_name().to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(head_dim: usize) -> Hparams {
        Hparams {
            n_layer: 1,
            n_embd: head_dim,
            n_head: 1,
            n_head_kv: 1,
            head_dim,
            n_ff: 1,
            vocab: 1,
            context: 8,
            rope_base: 10_000.0,
            rope_freq_scale: 1.0,
            rms_eps: 1e-6,
            kv_f16: false,
        }
    }

    /// Both styles rotate the same pairs by the same angles; they differ only in which values
    /// make a pair (adjacent, or one from each half).
    #[test]
    fn rope_styles_pair_values_differently_by_the_same_angles() {
        let h = hp(8);
        let ones = [1.0f32; 4];
        let adjacent = Rope::new(&[3], &h, &ones, RopeStyle::Adjacent);
        let halves = Rope::new(&[3], &h, &ones, RopeStyle::Halves);
        let x: Vec<f32> = (0..8).map(|i| i as f32 + 1.0).collect();
        // The same vector laid out for each style: pair i is (x[2i], x[2i+1]) in one,
        // (x[i], x[i+4]) in the other.
        let mut a = x.clone();
        let mut b: Vec<f32> = (0..8)
            .map(|j| if j < 4 { x[2 * j] } else { x[2 * (j - 4) + 1] })
            .collect();
        adjacent.apply(0, &mut a);
        halves.apply(0, &mut b);
        for i in 0..4 {
            assert!((a[2 * i] - b[i]).abs() < 1e-6);
            assert!((a[2 * i + 1] - b[i + 4]).abs() < 1e-6);
        }
        // Position 0 turns nothing; linear scaling by 2 turns position 6 as far as 3.
        let zero = Rope::new(&[0], &h, &ones, RopeStyle::Halves);
        let mut c = x.clone();
        zero.apply(0, &mut c);
        assert_eq!(c, x);
        let scaled = Rope::new(
            &[6],
            &Hparams {
                rope_freq_scale: 0.5,
                ..h.clone()
            },
            &ones,
            RopeStyle::Adjacent,
        );
        let mut s = x.clone();
        scaled.apply(0, &mut s);
        let mut t = x.clone();
        adjacent.apply(0, &mut t);
        for (u, v) in s.iter().zip(&t) {
            assert!((u - v).abs() < 1e-5);
        }
    }
}
