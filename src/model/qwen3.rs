//! Qwen3-Embedding: a Qwen3 decoder (RMSNorm blocks, grouped-query attention with an RMSNorm
//! on every query and key head before rotate-half RoPE, a SwiGLU feed-forward) run as an
//! encoder: one forward pass over each whole input, causal attention, the final norm, then
//! sentence-transformers' pooling (last-token for Qwen3-Embedding) in `super::pooling`.
//!
//! The per-row math (RoPE, RMSNorm, SwiGLU) and the causal attention are the generation
//! side's, shared through `crate::kernels::rope` and `crate::kernels::causal_attention`; the
//! linear layers are the embedding models' (packed at load for the dtype's kernels in
//! `crate::kernels`, as [`super::bert`] does).
//!
//! A batch is never padded: the rows of every input are concatenated, the linear layers run
//! over all of them at once, and attention runs per input over its own rows, at positions
//! `0..len`. So the tokenizer's padding side (Qwen3-Embedding pads on the left) cannot change
//! a result, and an input gives the same vector alone as in any batch: the last real token is
//! the input's last id (the `<|endoftext|>` its tokenizer's post-processor appends).

use serde::Deserialize;

use super::embedding_table::EmbeddingTable;
use super::proj::Proj;
use super::unpadded::{add, embedding_rows, pool_each, refuse_pairs};
use super::weights::{Names, Weight, WeightFile};
use super::{EncoderInput, Model, ModelError, Pooling};
use crate::kernels::rope::{rms_norm, rms_norm_in_place, swiglu, Rope, RopeParams, RopeStyle};
use crate::kernels::team::parallel_for_each;
use crate::kernels::{causal_attention, CausalShape, KvRows};
use crate::kernels::{Dtype, KernelLevel};

/// Query rows per attention task (as the generation side splits a prompt's rows).
const ATTENTION_ROWS_PER_TASK: usize = 16;

/// The fields of a Qwen3 `config.json` this encoder reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen3Config {
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Values per head; transformers' default is `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f32,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_rope_theta() -> f32 {
    10_000.0
}

fn default_act() -> String {
    "silu".into()
}

/// The largest sizes accepted from `config.json`, so a corrupt file fails with a message, not
/// an allocation failure.
const MAX_DIM: usize = 1 << 16;
const MAX_VOCAB: usize = 1 << 20;

impl Qwen3Config {
    /// Reads and checks a Qwen3 `config.json` (Qwen3-Embedding's says `Qwen3ForCausalLM`; its
    /// language-model head, if the file holds one, is not used).
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let c: Qwen3Config = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let bad = |m: String| Err(ModelError::Config(format!("config.json: {m}")));
        if c.model_type != "qwen3" {
            return bad(format!("model_type {:?} is not \"qwen3\"", c.model_type));
        }
        if let Some(a) = c
            .architectures
            .iter()
            .find(|a| !matches!(a.as_str(), "Qwen3ForCausalLM" | "Qwen3Model"))
        {
            return Err(ModelError::Unsupported(format!(
                "architectures names {a:?}; a Qwen3 checkpoint is served as an embedding model (Qwen3Model or Qwen3ForCausalLM, as Qwen3-Embedding)"
            )));
        }
        if c.hidden_act != "silu" {
            return bad(format!("hidden_act {:?}: Qwen3 uses silu", c.hidden_act));
        }
        if c.attention_bias {
            return Err(ModelError::Unsupported(
                "config.json sets attention_bias; Qwen3 checkpoints have no attention biases and this server reads none".into(),
            ));
        }
        if c.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ModelError::Unsupported(
                "config.json sets rope_scaling, which this server does not implement for Qwen3 embedders".into(),
            ));
        }
        if c.use_sliding_window {
            return Err(ModelError::Unsupported(
                "config.json sets use_sliding_window, which this server does not implement for Qwen3 embedders".into(),
            ));
        }
        let hd = c.head_dim();
        let sizes = [
            ("hidden_size", c.hidden_size, MAX_DIM),
            ("intermediate_size", c.intermediate_size, 4 * MAX_DIM),
            ("num_hidden_layers", c.num_hidden_layers, 512),
            ("num_attention_heads", c.num_attention_heads, 1024),
            ("num_key_value_heads", c.num_key_value_heads, 1024),
            ("head_dim", hd, 4096),
            ("vocab_size", c.vocab_size, MAX_VOCAB),
            (
                "max_position_embeddings",
                c.max_position_embeddings,
                1 << 24,
            ),
        ];
        for (name, v, max) in sizes {
            if v == 0 || v > max {
                return bad(format!("{name} is {v}; it must be between 1 and {max}"));
            }
        }
        if !c.num_attention_heads.is_multiple_of(c.num_key_value_heads) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                c.num_attention_heads, c.num_key_value_heads
            ));
        }
        if !hd.is_multiple_of(2) {
            return bad(format!("head_dim {hd} is odd; RoPE turns pairs of values"));
        }
        let eps_ok = c.rms_norm_eps.is_finite() && c.rms_norm_eps >= 0.0;
        let theta_ok = c.rope_theta.is_finite() && c.rope_theta > 1.0;
        if !(eps_ok && theta_ok) {
            return bad(format!(
                "rms_norm_eps {} or rope_theta {} is out of range",
                c.rms_norm_eps, c.rope_theta
            ));
        }
        Ok(c)
    }

    /// Values per attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    fn q_width(&self) -> usize {
        self.num_attention_heads * self.head_dim()
    }

    fn kv_width(&self) -> usize {
        self.num_key_value_heads * self.head_dim()
    }
}

struct Layer {
    attn_norm: Weight,
    /// Q, K and V side by side.
    qkv: Proj,
    q_norm: Weight,
    k_norm: Weight,
    o: Proj,
    ffn_norm: Weight,
    /// Gate and up side by side (`2·intermediate_size` outputs).
    gate_up: Proj,
    down: Proj,
}

/// A loaded Qwen3 embedder: the decoder's layers, then pooling.
pub struct Qwen3Encoder {
    config: Qwen3Config,
    level: KernelLevel,
    embed: EmbeddingTable,
    layers: Vec<Layer>,
    norm: Weight,
    pooling: Pooling,
}

impl Qwen3Encoder {
    /// Reads the weights of `file` (named as Qwen3Model saves them, `layers.N.…`, or with the
    /// `model.` prefix of a Qwen3ForCausalLM checkpoint), checks every shape against `config`,
    /// and packs the linear layers for `dtype`.
    pub fn load(
        config: Qwen3Config,
        file: &WeightFile,
        dtype: Dtype,
        level: KernelLevel,
        pooling: Pooling,
    ) -> Result<Self, ModelError> {
        let names = Names::prefixed_if_present(file, "model.", "embed_tokens.weight");
        let get = |name: &str, dims: &[usize]| names.get(name, dims);
        let c = &config;
        let (d, ff, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let (qw, kvw) = (c.q_width(), c.kv_width());
        let embed = EmbeddingTable::load(&names, "embed_tokens.weight", c.vocab_size, d)?;
        // int8 keeps Q, K and V in bf16, as the BERT encoders do (their error is amplified
        // by the attention logits).
        let qkv_dtype = if dtype == Dtype::Int8 {
            Dtype::Bf16
        } else {
            dtype
        };
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers {
            let p = |s: &str| format!("layers.{l}.{s}");
            let w = |s: &str, n: usize, k: usize| get(&p(s), &[n, k]);
            layers.push(Layer {
                attn_norm: get(&p("input_layernorm.weight"), &[d])?,
                qkv: Proj::new(
                    vec![
                        w("self_attn.q_proj.weight", qw, d)?,
                        w("self_attn.k_proj.weight", kvw, d)?,
                        w("self_attn.v_proj.weight", kvw, d)?,
                    ],
                    None,
                    d,
                    qkv_dtype,
                )?,
                q_norm: get(&p("self_attn.q_norm.weight"), &[hd])?,
                k_norm: get(&p("self_attn.k_norm.weight"), &[hd])?,
                o: Proj::new(vec![w("self_attn.o_proj.weight", d, qw)?], None, qw, dtype)?,
                ffn_norm: get(&p("post_attention_layernorm.weight"), &[d])?,
                gate_up: Proj::new(
                    vec![
                        w("mlp.gate_proj.weight", ff, d)?,
                        w("mlp.up_proj.weight", ff, d)?,
                    ],
                    None,
                    d,
                    dtype,
                )?,
                down: Proj::new(vec![w("mlp.down_proj.weight", d, ff)?], None, ff, dtype)?,
            });
        }
        let norm = get("norm.weight", &[d])?;
        // As for BERT: the linear weights were read once to pack them.
        file.release_resident_pages();
        Ok(Self {
            config,
            level,
            embed,
            layers,
            norm,
            pooling,
        })
    }

    pub fn config(&self) -> &Qwen3Config {
        &self.config
    }

    /// The last hidden state (after the final norm) of every input's rows, concatenated
    /// (`Σ len × hidden_size`).
    pub fn hidden_states(
        &self,
        inputs: &[EncoderInput<'_>],
        threads: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let (d, ff, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let (qw, kvw) = (c.q_width(), c.kv_width());
        let qkvw = qw + 2 * kvw;
        let (mut x, positions) = embedding_rows(
            inputs,
            &self.embed,
            d,
            c.vocab_size,
            c.max_position_embeddings,
        )?;
        let m = positions.len();
        let rope = RopeParams {
            n_rot: hd,
            head_dim: hd,
            base: c.rope_theta,
            freq_scale: 1.0,
            attn_factor: 1.0,
        };
        // Qwen3 has no per-pair frequency factors.
        let ones = vec![1.0f32; hd / 2];
        let rope = Rope::new(&positions, &rope, &ones, RopeStyle::Halves);
        let shape = CausalShape::new(c.num_attention_heads, c.num_key_value_heads, hd);
        let (level, eps) = (self.level, c.rms_norm_eps);
        let mut xn = vec![0.0f32; m * d];
        let mut qkv = vec![0.0f32; m * qkvw];
        let mut k = vec![0.0f32; m * kvw];
        let mut v = vec![0.0f32; m * kvw];
        let mut attn = vec![0.0f32; m * qw];
        let mut proj = vec![0.0f32; m * d];
        let mut gate_up = vec![0.0f32; m * 2 * ff];
        let mut act = vec![0.0f32; m * ff];
        for layer in &self.layers {
            rms_norm(&x, layer.attn_norm.as_slice(), eps, &mut xn);
            layer.qkv.forward(&xn, m, &mut qkv, level, threads);
            for (r, row) in qkv.chunks_exact_mut(qkvw).enumerate() {
                let (q, rest) = row.split_at_mut(qw);
                let (kr, vr) = rest.split_at_mut(kvw);
                rms_norm_in_place(q, layer.q_norm.as_slice(), eps);
                rms_norm_in_place(kr, layer.k_norm.as_slice(), eps);
                rope.apply(r, q);
                rope.apply(r, kr);
                k[r * kvw..(r + 1) * kvw].copy_from_slice(kr);
                v[r * kvw..(r + 1) * kvw].copy_from_slice(vr);
            }
            self.attention(inputs, &shape, qkvw, &qkv, &k, &v, &mut attn, threads);
            layer.o.forward(&attn, m, &mut proj, level, threads);
            add(&mut x, &proj);
            rms_norm(&x, layer.ffn_norm.as_slice(), eps, &mut xn);
            layer.gate_up.forward(&xn, m, &mut gate_up, level, threads);
            swiglu(&gate_up, ff, &mut act);
            layer.down.forward(&act, m, &mut proj, level, threads);
            add(&mut x, &proj);
        }
        rms_norm(&x, self.norm.as_slice(), eps, &mut xn);
        Ok(xn)
    }

    /// Causal attention of every input over its own rows (keys `k`, values `v`: one row of
    /// `n_head_kv·head_dim` per token), in tasks of up to [`ATTENTION_ROWS_PER_TASK`] query
    /// rows shared by `threads`, into `attn` (`Σ len × n_head·head_dim`).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        inputs: &[EncoderInput<'_>],
        shape: &CausalShape,
        qkvw: usize,
        qkv: &[f32],
        k: &[f32],
        v: &[f32],
        attn: &mut [f32],
        threads: usize,
    ) {
        let qw = shape.n_head * shape.head_dim;
        let kvw = shape.n_head_kv * shape.head_dim;
        // (first row of the input, first query row of the task within it, the task's output)
        let mut tasks: Vec<(usize, usize, usize, &mut [f32])> = Vec::new();
        let mut rest: &mut [f32] = attn;
        let mut row0 = 0;
        for s in inputs {
            let len = s.ids.len();
            let (mine, after) = rest.split_at_mut(len * qw);
            rest = after;
            for (i, out) in mine.chunks_mut(ATTENTION_ROWS_PER_TASK * qw).enumerate() {
                tasks.push((row0, i * ATTENTION_ROWS_PER_TASK, len, out));
            }
            row0 += len;
        }
        let level = self.level;
        parallel_for_each(&mut tasks, threads, &|_, (row0, r0, len, out)| {
            let (row0, r0, len) = (*row0, *r0, *len);
            let rows = out.len() / qw;
            let q = &qkv[(row0 + r0) * qkvw..(row0 + r0 + rows) * qkvw];
            let keys = &k[row0 * kvw..(row0 + len) * kvw];
            let values = &v[row0 * kvw..(row0 + len) * kvw];
            let kv = KvRows {
                k: keys,
                v: values,
                first: 0,
            };
            causal_attention(shape, q, qkvw, kv, r0, out, level);
        });
    }
}

impl Model for Qwen3Encoder {
    fn forward(
        &self,
        inputs: &[EncoderInput<'_>],
        threads: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        refuse_pairs(inputs, "Qwen3")?;
        let h = self.config.hidden_size;
        let hidden = self.hidden_states(inputs, threads)?;
        pool_each(&hidden, inputs, h, self.pooling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> String {
        let mut c = serde_json::json!({
            "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 100,
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "rms_norm_eps": 1e-6, "rope_theta": 1e6, "max_position_embeddings": 64,
            "rope_scaling": null, "attention_bias": false, "hidden_act": "silu"
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c.to_string()
    }

    #[test]
    fn reads_a_qwen3_config_and_refuses_what_it_does_not_run() {
        let c = Qwen3Config::from_json(&config(serde_json::json!({}))).unwrap();
        assert_eq!((c.head_dim(), c.q_width(), c.kv_width()), (16, 64, 32));
        let no_head_dim = Qwen3Config::from_json(&config(serde_json::json!({"head_dim": null})));
        assert_eq!(no_head_dim.unwrap().head_dim(), 8);
        for (extra, says) in [
            (serde_json::json!({"model_type": "qwen2"}), "model_type"),
            (
                serde_json::json!({"architectures": ["Qwen3ForSequenceClassification"]}),
                "Qwen3ForSequenceClassification",
            ),
            (
                serde_json::json!({"attention_bias": true}),
                "attention_bias",
            ),
            (
                serde_json::json!({"rope_scaling": {"type": "yarn", "factor": 4.0}}),
                "rope_scaling",
            ),
            (serde_json::json!({"use_sliding_window": true}), "sliding"),
            (serde_json::json!({"num_key_value_heads": 3}), "multiple"),
            (serde_json::json!({"hidden_size": 0}), "hidden_size"),
            (serde_json::json!({"hidden_act": "gelu"}), "silu"),
        ] {
            let err = Qwen3Config::from_json(&config(extra.clone()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{extra}: {err}");
        }
        assert!(Qwen3Config::from_json("[]").is_err());
    }
}
