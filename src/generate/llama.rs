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

use super::decoder::{self, AttnShape, CacheShape, Decoder, DecoderShape, Linear, StepInput};
use super::gguf::{GgufError, GgufFile, RawTensor};
use candle_core::quantized::GgmlDType;

use crate::kernels::{self, Dtype, Epilogue, KernelLevel, PackedLinear, Q4Format, Q4Linear};

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

    /// The sizes of one sequence's KV cache.
    pub fn cache_shape(&self) -> CacheShape {
        CacheShape {
            n_layer: self.n_layer,
            kv_width: self.kv_width(),
            f16: self.kv_f16,
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
        let layer = kernels::Int8Linear::from_q8_0(&bytes, &vec![0.0; n], k).map_err(error)?;
        return Ok(Linear::Packed(PackedLinear::Int8(layer)));
    }
    let mut w = Vec::with_capacity(n * k);
    for (name, rows) in parts {
        w.extend(file.f32(name, &[*rows, k])?);
    }
    Linear::new(dtype, &w, vec![0.0; n], k).map_err(error)
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
        // Tied embeddings (no output.weight) reuse the embedding table as the LM head.
        let head_name = if file.has_tensor("output.weight") {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        // Layers convert in parallel, beside the head (the largest single tensor: a fifth of
        // SmolLM2-135M's bytes, so it starts first): loading is on the cold-start path.
        // The embedding table is copied as stored, after the head.
        let ((lm_head, token_embd), layers) = kernels::team::join_map(
            || {
                (
                    load_linear(file, &[(head_name.to_string(), vocab)], d, dtype, keep_q4),
                    file.raw("token_embd.weight", &[vocab, d]),
                )
            },
            config.n_layer,
            threads,
            &layer,
        );
        let layers = layers.into_iter().collect::<Result<Vec<_>, _>>()?;
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

    /// The sizes the engine needs.
    pub fn shape(&self) -> DecoderShape {
        let c = &self.config;
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
        let rope = RopeTable::new(&positions, hd, c.rope_base, &self.rope_freq_factors);
        let mut xn = vec![0.0f32; m * d];
        let mut qkv = vec![0.0f32; m * qkvw];
        let mut attn = vec![0.0f32; m * d];
        let mut proj = vec![0.0f32; m * d];
        let mut gate_up = vec![0.0f32; m * 2 * ff];
        let mut act = vec![0.0f32; m * ff];
        let threads = self.threads;
        let level = self.level;
        let shape = AttnShape {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: hd,
            qkvw,
        };
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, c.rms_eps, &mut xn);
            layer
                .qkv
                .forward(&xn, m, &mut qkv, level, threads, Epilogue::Bias);
            for (r, row) in qkv.chunks_exact_mut(qkvw).enumerate() {
                let (q, kv) = row.split_at_mut(c.n_head * hd);
                rope.apply(r, q, hd);
                rope.apply(r, &mut kv[..kvw], hd);
            }
            decoder::cached_attention(inputs, l, &qkv, &shape, &mut attn, level, threads);
            layer
                .o
                .forward(&attn, m, &mut proj, level, threads, Epilogue::Bias);
            add(&mut x, &proj);
            rms_norm(&x, &layer.ffn_norm, c.rms_eps, &mut xn);
            layer
                .gate_up
                .forward(&xn, m, &mut gate_up, level, threads, Epilogue::Bias);
            for (gu, a) in gate_up.chunks_exact(2 * ff).zip(act.chunks_exact_mut(ff)) {
                let (g, u) = gu.split_at(ff);
                for ((a, &g), &u) in a.iter_mut().zip(g).zip(u) {
                    *a = g / (1.0 + (-g).exp()) * u;
                }
            }
            layer
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

impl Decoder for Llama {
    fn shape(&self) -> DecoderShape {
        Llama::shape(self)
    }

    fn step(&self, inputs: &mut [StepInput]) -> Vec<Vec<f32>> {
        Llama::step(self, inputs)
    }

    fn weight_bytes(&self) -> usize {
        Llama::weight_bytes(self)
    }

    fn dtype(&self) -> Dtype {
        Llama::dtype(self)
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
                decoder::formats_of(self.layers.iter().flat_map(|l| [&l.qkv, &l.o])),
            ),
            (
                "feed_forward",
                decoder::formats_of(self.layers.iter().flat_map(|l| [&l.gate_up, &l.down])),
            ),
            ("lm_head", self.lm_head.format_name().to_string()),
        ]
    }
}
