//! The GPT-2 family (GPT-2 small to XL, DistilGPT2 and fine-tunes) from a Hugging Face
//! directory: `config.json` with `model_type: gpt2` and `model.safetensors` with the
//! checkpoint's own tensor names (`wte.weight`, `h.0.attn.c_attn.weight`, …, with or without
//! a `transformer.` prefix).
//!
//! GPT-2 stores its linear layers as `Conv1D`, weights `[in, out]`: they are transposed once
//! at load into the `[out, in]` layout our kernels pack, then packed like the Llama layers
//! (int8 by default; bf16 or f32 with `--dtype`). The LM head is the token embedding table
//! (tied), packed as one more linear layer; the table itself stays in the memory map and
//! gives one row per token. Attention, the KV cache and a step's bookkeeping are the shared
//! ones of [`super::decoder`].

use std::path::Path;

use serde::Deserialize;

use super::decoder::{self, AttnShape, Decoder, DecoderShape, Linear, StepInput};
use super::kv_cache::CacheShape;
use crate::kernels::{Dtype, Epilogue, KernelLevel, PackedLinear};
use crate::model::weights::{Weight, WeightFile};
use crate::model::ModelError;

/// The activation after the first MLP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new` (GPT-2's own), `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact erf form.
    Gelu,
}

/// Hyperparameters from `config.json`.
#[derive(Debug, Clone)]
pub struct Gpt2Config {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab: usize,
    /// `n_positions`: the longest sequence (position embeddings).
    pub context: usize,
    pub eps: f32,
    pub activation: Activation,
    /// Keys and values cached in f16 (low-precision weights) or f32 (f32 weights).
    pub kv_f16: bool,
}

/// `config.json` as GPT-2 checkpoints write it (other fields are ignored).
#[derive(Deserialize)]
struct ConfigJson {
    model_type: Option<String>,
    vocab_size: usize,
    /// GPT-2's own config.json has both (equal); older ones only `n_ctx`.
    n_positions: Option<usize>,
    n_ctx: Option<usize>,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_inner: Option<usize>,
    activation_function: Option<String>,
    layer_norm_epsilon: Option<f32>,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    add_cross_attention: bool,
    scale_attn_weights: Option<bool>,
}

/// Largest sizes accepted from a configuration (guards against absurd allocations).
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS: usize = 512;
const MAX_VOCAB: usize = 1 << 20;
const MAX_CONTEXT: usize = 1 << 20;

impl Gpt2Config {
    /// Reads and checks `config.json`'s text.
    ///
    /// # Errors
    ///
    /// When it is not a GPT-2 configuration this server runs; the message names the field.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let c: ConfigJson = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let bad =
            |field: &str, why: String| ModelError::Config(format!("config.json: {field} {why}"));
        let n_positions = c
            .n_positions
            .or(c.n_ctx)
            .ok_or_else(|| bad("n_positions", "is missing".to_string()))?;
        if let Some(t) = &c.model_type {
            if t != "gpt2" {
                return Err(bad("model_type", format!("is {t:?}, not \"gpt2\"")));
            }
        }
        for (name, v, max) in [
            ("vocab_size", c.vocab_size, MAX_VOCAB),
            ("n_positions", n_positions, MAX_CONTEXT),
            ("n_embd", c.n_embd, MAX_DIM),
            ("n_layer", c.n_layer, MAX_LAYERS),
            ("n_head", c.n_head, MAX_DIM),
            ("n_inner", c.n_inner.unwrap_or(1), 4 * MAX_DIM),
        ] {
            if v == 0 || v > max {
                return Err(bad(name, format!("is {v}, outside 1..={max}")));
            }
        }
        if !c.n_embd.is_multiple_of(c.n_head) {
            return Err(bad(
                "n_head",
                format!("({}) does not divide n_embd ({})", c.n_head, c.n_embd),
            ));
        }
        let activation = match c.activation_function.as_deref().unwrap_or("gelu_new") {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "config.json: activation_function {other:?} (supported: gelu_new, gelu_pytorch_tanh, gelu_fast, gelu)"
                )))
            }
        };
        for (name, set) in [
            (
                "scale_attn_by_inverse_layer_idx",
                c.scale_attn_by_inverse_layer_idx,
            ),
            ("add_cross_attention", c.add_cross_attention),
            (
                "scale_attn_weights = false",
                c.scale_attn_weights == Some(false),
            ),
        ] {
            if set {
                return Err(ModelError::Unsupported(format!(
                    "config.json: {name} is not supported"
                )));
            }
        }
        let eps = c.layer_norm_epsilon.unwrap_or(1e-5);
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(bad("layer_norm_epsilon", format!("is {eps}")));
        }
        Ok(Self {
            n_layer: c.n_layer,
            n_embd: c.n_embd,
            n_head: c.n_head,
            head_dim: c.n_embd / c.n_head,
            n_ff: c.n_inner.unwrap_or(4 * c.n_embd),
            vocab: c.vocab_size,
            context: n_positions,
            eps,
            activation,
            kv_f16: true,
        })
    }

    /// The sizes of one sequence's KV cache.
    pub fn cache_shape(&self) -> CacheShape {
        CacheShape {
            n_layer: self.n_layer,
            kv_width: self.n_embd,
            f16: self.kv_f16,
        }
    }
}

struct Block {
    ln_1: (Vec<f32>, Vec<f32>),
    /// Q, K and V side by side, with their bias.
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: (Vec<f32>, Vec<f32>),
    c_fc: Linear,
    mlp_proj: Linear,
}

/// A GPT-2 model ready to run.
pub struct Gpt2 {
    config: Gpt2Config,
    wte: Weight,
    wpe: Weight,
    blocks: Vec<Block>,
    ln_f: (Vec<f32>, Vec<f32>),
    lm_head: Linear,
    dtype: Dtype,
    level: KernelLevel,
    threads: usize,
}

/// The tensors of a checkpoint, by GPT-2's names with or without the `transformer.` prefix
/// that `GPT2LMHeadModel.save_pretrained` adds.
struct Tensors {
    file: WeightFile,
    prefix: &'static str,
}

impl Tensors {
    fn open(path: &Path) -> Result<Self, ModelError> {
        let file = WeightFile::open(path)?;
        let prefix = if file.contains("wte.weight") {
            ""
        } else if file.contains("transformer.wte.weight") {
            "transformer."
        } else {
            return Err(ModelError::Weights(format!(
                "{}: no wte.weight (nor transformer.wte.weight): not a GPT-2 checkpoint",
                path.display()
            )));
        };
        Ok(Self { file, prefix })
    }

    /// The tensor `name`, checked to have `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Weight, ModelError> {
        let full = format!("{}{name}", self.prefix);
        let w = self.file.get(&full)?;
        if w.shape() != shape {
            return Err(ModelError::Weights(format!(
                "{}: {full} has shape {:?}, the configuration says {shape:?}",
                self.file.path().display(),
                w.shape()
            )));
        }
        Ok(w)
    }

    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
        Ok(self.get(name, &[n])?.as_slice().to_vec())
    }

    /// A `Conv1D` layer (`weight` `[k, n]`, `bias` `[n]`) as a linear layer of `dtype`.
    fn conv1d(&self, name: &str, k: usize, n: usize, dtype: Dtype) -> Result<Linear, ModelError> {
        let w = self.get(&format!("{name}.weight"), &[k, n])?;
        let b = self.vector(&format!("{name}.bias"), n)?;
        let w = w.as_slice();
        let mut t = vec![0.0f32; n * k];
        for (i, row) in w.chunks_exact(n).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                t[j * k + i] = v;
            }
        }
        PackedLinear::pack(dtype, &t, &b, k)
            .map_err(|e| ModelError::Weights(format!("{name}: {e}")))
    }
}

impl Gpt2 {
    /// Loads the checkpoint at `weights` with the hyperparameters `config`.
    ///
    /// # Errors
    ///
    /// When a tensor is missing or has the wrong shape (the message names it).
    pub fn load(
        mut config: Gpt2Config,
        weights: &Path,
        dtype: Dtype,
        level: KernelLevel,
        threads: usize,
    ) -> Result<Self, ModelError> {
        let t = Tensors::open(weights)?;
        config.kv_f16 = dtype != Dtype::F32;
        let (d, ff, vocab) = (config.n_embd, config.n_ff, config.vocab);
        let wte = t.get("wte.weight", &[vocab, d])?;
        let wpe = t.get("wpe.weight", &[config.context, d])?;
        let norm = |name: &str| -> Result<(Vec<f32>, Vec<f32>), ModelError> {
            Ok((
                t.vector(&format!("{name}.weight"), d)?,
                t.vector(&format!("{name}.bias"), d)?,
            ))
        };
        // Blocks convert in parallel, beside the head (a third of GPT-2 small's weights, so
        // it starts first): loading is on the cold-start path.
        let convert_block = |i: usize| -> Result<Block, ModelError> {
            let h = |s: &str| format!("h.{i}.{s}");
            Ok(Block {
                ln_1: norm(&h("ln_1"))?,
                c_attn: t.conv1d(&h("attn.c_attn"), d, 3 * d, dtype)?,
                attn_proj: t.conv1d(&h("attn.c_proj"), d, d, dtype)?,
                ln_2: norm(&h("ln_2"))?,
                c_fc: t.conv1d(&h("mlp.c_fc"), d, ff, dtype)?,
                mlp_proj: t.conv1d(&h("mlp.c_proj"), ff, d, dtype)?,
            })
        };
        // The head is tied to the embeddings in every GPT-2 checkpoint; a separate
        // `lm_head.weight` (untied fine-tunes) is used when the file has one.
        let convert_head = || -> Result<Linear, ModelError> {
            let untied = if t.file.contains("lm_head.weight") {
                let w = t.file.get("lm_head.weight")?;
                if w.shape() != [vocab, d] {
                    return Err(ModelError::Weights(format!(
                        "lm_head.weight has shape {:?}, expected [{vocab}, {d}]",
                        w.shape()
                    )));
                }
                Some(w)
            } else {
                None
            };
            let head = untied.as_ref().unwrap_or(&wte).as_slice();
            PackedLinear::pack(dtype, head, &vec![0.0; vocab], d)
                .map_err(|e| ModelError::Weights(format!("lm_head: {e}")))
        };
        let (lm_head, blocks) =
            crate::kernels::team::join_map(convert_head, config.n_layer, threads, &convert_block);
        let (blocks, lm_head) = (blocks.into_iter().collect::<Result<Vec<_>, _>>()?, lm_head?);
        let ln_f = norm("ln_f")?;
        // Every layer holds its own (transposed, packed) copy: the file's pages leave the
        // resident set (the embedding rows in use fault back in from the page cache).
        t.file.release_resident_pages();
        Ok(Self {
            config,
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
            dtype,
            level,
            threads: threads.max(1),
        })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &Gpt2Config {
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

    /// Bytes of weights held (packed layers, norms, and the embedding tables).
    pub fn weight_bytes(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                b.c_attn.bytes()
                    + b.attn_proj.bytes()
                    + b.c_fc.bytes()
                    + b.mlp_proj.bytes()
                    + 16 * self.config.n_embd
            })
            .sum();
        blocks + self.lm_head.bytes() + 4 * (self.wte.as_slice().len() + self.wpe.as_slice().len())
    }

    /// Runs one step (see [`super::llama::Llama::step`]).
    ///
    /// # Panics
    ///
    /// When a token id is outside the vocabulary or a cache would pass the context length
    /// (the engine checks both before a request is admitted).
    pub fn step(&self, inputs: &mut [StepInput]) -> Vec<Vec<f32>> {
        let c = &self.config;
        let (d, ff) = (c.n_embd, c.n_ff);
        let m: usize = inputs.iter().map(|i| i.tokens.len()).sum();
        if m == 0 {
            return Vec::new();
        }
        let positions = decoder::positions(inputs, c.context);
        let (wte, wpe) = (self.wte.as_slice(), self.wpe.as_slice());
        let mut x = Vec::with_capacity(m * d);
        for (&t, &p) in inputs.iter().flat_map(|i| i.tokens.iter()).zip(&positions) {
            let t = t as usize;
            assert!(t < c.vocab, "token ids are checked against the vocabulary");
            let (tok, pos) = (&wte[t * d..(t + 1) * d], &wpe[p * d..(p + 1) * d]);
            x.extend(tok.iter().zip(pos).map(|(a, b)| a + b));
        }
        let shape = AttnShape::causal(c.n_head, c.n_head, c.head_dim, 3 * d);
        let act = match c.activation {
            Activation::GeluTanh => Epilogue::BiasGeluTanh,
            Activation::Gelu => Epilogue::BiasGelu,
        };
        let mut xn = vec![0.0f32; m * d];
        let mut qkv = vec![0.0f32; m * 3 * d];
        let mut attn = vec![0.0f32; m * d];
        let mut proj = vec![0.0f32; m * d];
        let mut hidden = vec![0.0f32; m * ff];
        let (level, threads) = (self.level, self.threads);
        for (l, b) in self.blocks.iter().enumerate() {
            layer_norm(&x, &b.ln_1, c.eps, &mut xn);
            b.c_attn
                .forward(&xn, m, &mut qkv, level, threads, Epilogue::Bias);
            decoder::cached_attention(inputs, l, &qkv, &shape, &mut attn, level, threads);
            b.attn_proj
                .forward(&attn, m, &mut proj, level, threads, Epilogue::Bias);
            add(&mut x, &proj);
            layer_norm(&x, &b.ln_2, c.eps, &mut xn);
            b.c_fc.forward(&xn, m, &mut hidden, level, threads, act);
            b.mlp_proj
                .forward(&hidden, m, &mut proj, level, threads, Epilogue::Bias);
            add(&mut x, &proj);
        }
        let rows = decoder::finish_step(inputs);
        let final_norm = |h: &[f32], out: &mut [f32]| layer_norm(h, &self.ln_f, c.eps, out);
        decoder::logits(&x, d, &rows, final_norm, &self.lm_head, level, threads)
    }
}

/// `out = (x - mean) / sqrt(var + eps) · γ + β`, row by row.
fn layer_norm(x: &[f32], (gamma, beta): &(Vec<f32>, Vec<f32>), eps: f32, out: &mut [f32]) {
    let d = gamma.len();
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, &v), &g), &b) in o.iter_mut().zip(row).zip(gamma).zip(beta) {
            *o = (v - mean) * inv * g + b;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

impl Decoder for Gpt2 {
    fn shape(&self) -> DecoderShape {
        Gpt2::shape(self)
    }

    fn step(&self, inputs: &mut [StepInput]) -> Vec<Vec<f32>> {
        Gpt2::step(self, inputs)
    }

    fn weight_bytes(&self) -> usize {
        Gpt2::weight_bytes(self)
    }

    fn dtype(&self) -> Dtype {
        Gpt2::dtype(self)
    }

    fn weight_formats(&self) -> Vec<(&'static str, String)> {
        vec![
            ("token_embedding", "f32".to_string()),
            (
                "attention",
                decoder::formats_of(self.blocks.iter().flat_map(|b| [&b.c_attn, &b.attn_proj])),
            ),
            (
                "feed_forward",
                decoder::formats_of(self.blocks.iter().flat_map(|b| [&b.c_fc, &b.mlp_proj])),
            ),
            ("lm_head", decoder::formats_of([&self.lm_head])),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{"model_type":"gpt2","vocab_size":96,"n_positions":48,"n_ctx":48,"n_embd":64,
        "n_layer":2,"n_head":4,"n_inner":null,"activation_function":"gelu_new",
        "layer_norm_epsilon":1e-5,"task_specific_params":{"text-generation":{"do_sample":true}}}"#;

    #[test]
    fn a_gpt2_config_reads_with_its_defaults() {
        let c = Gpt2Config::from_json(TINY).unwrap();
        assert_eq!((c.n_layer, c.n_embd, c.head_dim, c.n_ff), (2, 64, 16, 256));
        assert_eq!((c.vocab, c.context), (96, 48));
        assert_eq!(c.activation, Activation::GeluTanh);
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (from, to, field) in [
            ("\"n_head\":4", "\"n_head\":5", "n_head"),
            ("\"n_embd\":64", "\"n_embd\":0", "n_embd"),
            ("\"gelu_new\"", "\"swish\"", "activation_function"),
            ("\"gpt2\"", "\"bert\"", "model_type"),
            ("\"n_layer\":2", "\"n_layer\":100000", "n_layer"),
        ] {
            let text = TINY.replace(from, to);
            let err = Gpt2Config::from_json(&text).unwrap_err().to_string();
            assert!(err.contains(field), "{to}: {err}");
        }
        let err = Gpt2Config::from_json(&TINY.replace("\"n_layer\":2,", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("n_layer"), "{err}");
    }

    #[test]
    fn layer_norm_normalizes_each_row() {
        let x = [1.0, 2.0, 3.0, 4.0, -2.0, 0.0, 2.0, 4.0];
        let gb = (vec![1.0; 4], vec![0.5; 4]);
        let mut out = [0.0; 8];
        layer_norm(&x, &gb, 0.0, &mut out);
        for row in out.chunks(4) {
            let mean = row.iter().sum::<f32>() / 4.0;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 4.0;
            assert!(
                (mean - 0.5).abs() < 1e-6 && (var - 1.0).abs() < 1e-5,
                "{row:?}"
            );
        }
    }
}
