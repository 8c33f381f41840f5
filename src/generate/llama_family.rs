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
//! size of its own), [`super::phi3`] (rotate-half RoPE on part of each head, LongRoPE
//! factors; its fused tensors are read here) and [`super::smollm3`] (adjacent-pair RoPE, none
//! on every fourth layer). What they share is read and run here once: the hyperparameters
//! ([`Hparams`], the keys llama.cpp reads, in `hparams.rs`; RoPE, RMSNorm and SwiGLU are
//! `crate::kernels::rope`'s, shared with the Qwen3 embedder), the
//! tensors llama.cpp's loaders name
//! (`blk.N.attn_q` … or the fused `blk.N.attn_qkv`, optional `attn_q.bias` …, `ffn_gate` and
//! `ffn_up` or the fused `ffn_up` of Phi-3, `output.weight` or the tied embedding table), and
//! the step.
//!
//! Weights are dequantized at load and re-packed for our kernels (`crate::kernels`): int8 in
//! blocks of 32 (the granularity of GGUF's Q8_0, so Q8_0 weights keep their exact values, and
//! VNNI dot products run the batched steps), bf16, or f32 (exact, for reference tests); the
//! 4- and 5-bit formats, and Q6_K on CPUs without VNNI, may stay as stored
//! (`gguf_weights.rs`). The embedding table stays as stored and is dequantized one row per
//! token, or, tied and Q8_0 (or Q6_K kept), is read from the LM head.

mod hparams;

use std::path::Path;

use super::decoder::{self, AttnShape, Decoder, DecoderShape, Linear, StepInput};
use super::gguf::{GgufError, GgufFile};
use super::gguf_weights::{load_head_and_embeddings, load_linear, TokenEmbeddings};

pub use crate::kernels::rope::{rms_norm, rms_norm_in_place, swiglu, Rope, RopeStyle};
use crate::kernels::{self, Dtype, Epilogue, KernelLevel};
pub use hparams::Hparams;
use hparams::MAX_VOCAB;

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
    token_embd: TokenEmbeddings,
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
    /// tensor). `keep_low_bit`: 4- and 5-bit weights stay as stored (run by
    /// [`kernels::LowBitLinear`]) instead of being converted to `dtype`.
    pub fn load(
        path: &Path,
        dtype: Dtype,
        keep_low_bit: bool,
        level: KernelLevel,
        threads: usize,
    ) -> Result<(Self, GgufFile), GgufError> {
        let file = GgufFile::open(path)?;
        let model = Self::from_file(&file, dtype, keep_low_bit, level, threads)?;
        Ok((model, file))
    }

    /// [`Self::load`] from a file already open (its tokenizer can be built meanwhile).
    pub fn from_file(
        file: &GgufFile,
        dtype: Dtype,
        keep_low_bit: bool,
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
                load_linear(file, parts, k, bias, dtype, keep_low_bit)
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
            // Gate and up as one tensor (Phi-3's `ffn_up` of 2·n_ff rows, gate first, as
            // llama.cpp's fused SwiGLU splits it) when the file has no `ffn_gate`; else two.
            let gate_up = if file.has_tensor(&t("ffn_gate")) {
                vec![(t("ffn_gate"), ff), (t("ffn_up"), ff)]
            } else {
                vec![(t("ffn_up"), 2 * ff)]
            };
            Ok(Block {
                attn_norm: file.f32(&t("attn_norm"), &[d])?,
                qkv,
                o: linear(&[(t("attn_output"), d)], qw, None)?,
                ffn_norm: file.f32(&t("ffn_norm"), &[d])?,
                gate_up: linear(&gate_up, d, None)?,
                down: linear(&[(t("ffn_down"), d)], ff, None)?,
                own: own.load_layer(file, &hp, i)?,
            })
        };
        // The head first, on every thread (the largest tensor: its file pages and its
        // conversion are released or kept before the layers add theirs, so the load's peak
        // is the model plus one layer's pages), then the layers in parallel.
        let (lm_head, token_embd) = load_head_and_embeddings(file, vocab, d, dtype, keep_low_bit)?;
        let blocks = kernels::team::parallel_map(hp.n_layer, threads, &layer);
        let blocks = blocks.into_iter().collect::<Result<Vec<_>, _>>()?;
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
        layers + self.lm_head.bytes() + self.token_embd.bytes() + 4 * self.output_norm.len()
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
                    .row(&self.lm_head, t as usize)
                    .expect("token ids are checked against the vocabulary");
                x.extend_from_slice(&row);
            }
        }
        let rope = Rope::new(
            &positions,
            &c.rope(),
            self.arch.rope_freq_factors(),
            A::ROPE,
        );
        let mut xn = vec![0.0f32; m * d];
        let mut qkv = vec![0.0f32; m * qkvw];
        let mut attn = vec![0.0f32; m * qw];
        let mut proj = vec![0.0f32; m * d];
        let mut gate_up = vec![0.0f32; m * 2 * ff];
        let mut act = vec![0.0f32; m * ff];
        let (threads, level) = (self.threads, self.level);
        let shape = AttnShape::causal(c.n_head, c.n_head_kv, c.head_dim, qkvw);
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
            swiglu(&gate_up, ff, &mut act);
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
            ("token_embedding", self.token_embd.describe()),
            (
                "attention",
                decoder::formats_of(self.blocks.iter().flat_map(|l| [&l.qkv, &l.o])),
            ),
            (
                "feed_forward",
                decoder::formats_of(self.blocks.iter().flat_map(|l| [&l.gate_up, &l.down])),
            ),
            ("lm_head", decoder::formats_of([&self.lm_head])),
        ]
    }
}
