//! BERT-family encoder (BERT, MiniLM, and other `BertModel` checkpoints) as a candle forward
//! pass on the CPU, built from the fused kernels in `kernels.rs`.
//!
//! Weights are read from a memory-mapped `model.safetensors` and kept as candle tensors shared
//! by every worker thread (an `Arc` inside each tensor); each forward pass allocates only its
//! activations. At load the Q, K and V projections are concatenated into one matrix so each layer
//! runs one wide matmul instead of three narrow ones, and the position and token-type-0
//! embeddings are added together once.

use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::kernels::{AddLayerNorm, Attention, AttentionShape, Gelu, Linear};
use super::ModelError;

/// The fields of a Hugging Face `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// Parses `config.json` and refuses what this encoder does not implement, with the reason.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let c: BertConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        if let Some(t) = &c.model_type {
            if t != "bert" {
                return Err(ModelError::Unsupported(format!(
                    "model_type {t:?}: this server runs BERT-family encoders (model_type \"bert\")"
                )));
            }
        }
        if c.hidden_act != "gelu" {
            return Err(ModelError::Unsupported(format!(
                "hidden_act {:?}: only exact \"gelu\" is implemented",
                c.hidden_act
            )));
        }
        if let Some(p) = &c.position_embedding_type {
            if p != "absolute" {
                return Err(ModelError::Unsupported(format!(
                    "position_embedding_type {p:?}"
                )));
            }
        }
        if c.hidden_size == 0
            || c.num_attention_heads == 0
            || c.hidden_size % c.num_attention_heads != 0
        {
            return Err(ModelError::Config(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            )));
        }
        Ok(c)
    }
}

struct Layer {
    qkv_w: Tensor,
    qkv_b: Tensor,
    out_w: Tensor,
    out_b: Tensor,
    /// LayerNorm after attention: gamma and beta stacked, `[2, hidden]`.
    attn_norm: Tensor,
    up_w: Tensor,
    up_b: Tensor,
    down_w: Tensor,
    down_b: Tensor,
    ffn_norm: Tensor,
}

/// A loaded BERT encoder; returns the last hidden state of a batch.
pub struct Bert {
    config: BertConfig,
    word: Tensor,
    /// Position embeddings plus the token-type-0 embedding, `[max_positions, hidden]`.
    position_and_type: Tensor,
    embed_norm: Tensor,
    layers: Vec<Layer>,
}

struct Weights {
    st: MmapedSafetensors,
    prefix: &'static str,
}

impl Weights {
    fn get(&self, name: &str) -> Result<Tensor, ModelError> {
        let full = format!("{}{name}", self.prefix);
        self.st
            .load(&full, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| ModelError::Weights(format!("{full}: {e}")))
    }

    /// LayerNorm weights under either naming (`weight`/`bias` or the old `gamma`/`beta`), stacked.
    fn norm(&self, name: &str) -> Result<Tensor, ModelError> {
        let gamma = self
            .get(&format!("{name}.weight"))
            .or_else(|_| self.get(&format!("{name}.gamma")))?;
        let beta = self
            .get(&format!("{name}.bias"))
            .or_else(|_| self.get(&format!("{name}.beta")))?;
        Tensor::stack(&[gamma, beta], 0).map_err(|e| ModelError::Weights(format!("{name}: {e}")))
    }
}

fn shape_check(t: &Tensor, dims: &[usize], name: &str) -> Result<(), ModelError> {
    if t.dims() != dims {
        return Err(ModelError::Weights(format!(
            "{name} has shape {:?}, config.json implies {dims:?}",
            t.dims()
        )));
    }
    Ok(())
}

impl Bert {
    /// Loads the encoder from `model.safetensors`, checking every shape against the config.
    pub fn load(config: BertConfig, weights: &Path) -> Result<Self, ModelError> {
        // SAFETY: the file is mapped read-only; we do not write it, and a model directory that
        // is modified while it is served is outside what any server can support.
        let st = unsafe { MmapedSafetensors::new(weights) }
            .map_err(|e| ModelError::Weights(format!("{}: {e}", weights.display())))?;
        let prefix = if st.get("bert.embeddings.word_embeddings.weight").is_ok() {
            "bert."
        } else {
            ""
        };
        let w = Weights { st, prefix };
        let h = config.hidden_size;
        let err = |e: candle_core::Error| ModelError::Weights(e.to_string());

        let word = w.get("embeddings.word_embeddings.weight")?;
        shape_check(&word, &[config.vocab_size, h], "word_embeddings")?;
        let positions = w.get("embeddings.position_embeddings.weight")?;
        shape_check(
            &positions,
            &[config.max_position_embeddings, h],
            "position_embeddings",
        )?;
        let types = w.get("embeddings.token_type_embeddings.weight")?;
        let type0 = types.narrow(0, 0, 1).map_err(err)?;
        let position_and_type = positions.broadcast_add(&type0).map_err(err)?;
        let embed_norm = w.norm("embeddings.LayerNorm")?;

        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let (q, k, v) = (
                w.get(&format!("{p}.attention.self.query.weight"))?,
                w.get(&format!("{p}.attention.self.key.weight"))?,
                w.get(&format!("{p}.attention.self.value.weight"))?,
            );
            let qkv_w = Tensor::cat(&[q, k, v], 0).map_err(err)?;
            shape_check(&qkv_w, &[3 * h, h], &format!("{p} q/k/v"))?;
            let qkv_b = Tensor::cat(
                &[
                    w.get(&format!("{p}.attention.self.query.bias"))?,
                    w.get(&format!("{p}.attention.self.key.bias"))?,
                    w.get(&format!("{p}.attention.self.value.bias"))?,
                ],
                0,
            )
            .map_err(err)?;
            let layer = Layer {
                qkv_w,
                qkv_b,
                out_w: w.get(&format!("{p}.attention.output.dense.weight"))?,
                out_b: w.get(&format!("{p}.attention.output.dense.bias"))?,
                attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"))?,
                up_w: w.get(&format!("{p}.intermediate.dense.weight"))?,
                up_b: w.get(&format!("{p}.intermediate.dense.bias"))?,
                down_w: w.get(&format!("{p}.output.dense.weight"))?,
                down_b: w.get(&format!("{p}.output.dense.bias"))?,
                ffn_norm: w.norm(&format!("{p}.output.LayerNorm"))?,
            };
            shape_check(&layer.out_w, &[h, h], &format!("{p} attention output"))?;
            shape_check(
                &layer.up_w,
                &[config.intermediate_size, h],
                &format!("{p} intermediate"),
            )?;
            shape_check(
                &layer.down_w,
                &[h, config.intermediate_size],
                &format!("{p} output"),
            )?;
            layers.push(layer);
        }
        Ok(Self {
            config,
            word,
            position_and_type,
            embed_norm,
            layers,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Runs the encoder over `sequences` (token ids, unpadded, each at most
    /// `max_position_embeddings` long) and returns the last hidden state, `[batch·seq_len,
    /// hidden]`, padded to the longest sequence; `threads` is the intra-op parallelism of the
    /// matmuls.
    pub fn forward(
        &self,
        sequences: &[&[u32]],
        threads: usize,
    ) -> Result<(Tensor, usize), ModelError> {
        let c = &self.config;
        let seq_len = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        if sequences.is_empty() || seq_len == 0 || sequences.iter().any(|s| s.is_empty()) {
            return Err(ModelError::Input("empty batch or empty sequence".into()));
        }
        if seq_len > c.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "sequence of {seq_len} tokens is longer than the model's {} positions",
                c.max_position_embeddings
            )));
        }
        let pad = c.pad_token_id.unwrap_or(0);
        let mut ids = Vec::with_capacity(sequences.len() * seq_len);
        for s in sequences {
            if let Some(bad) = s.iter().find(|&&id| id as usize >= c.vocab_size) {
                return Err(ModelError::Input(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(pad, seq_len - s.len()));
        }
        let err = |e: candle_core::Error| ModelError::Forward(e.to_string());
        let rows = ids.len();
        let ids = Tensor::from_vec(ids, rows, &Device::Cpu).map_err(err)?;
        let eps = c.layer_norm_eps as f32;
        let positions = self.position_and_type.narrow(0, 0, seq_len).map_err(err)?;
        let mut x = self
            .word
            .index_select(&ids, 0)
            .and_then(|x| x.apply_op3_no_bwd(&positions, &self.embed_norm, &AddLayerNorm { eps }))
            .map_err(err)?;
        let attention = Attention(AttentionShape {
            seq_len,
            heads: c.num_attention_heads,
            head_dim: c.hidden_size / c.num_attention_heads,
            lengths: sequences.iter().map(|s| s.len()).collect(),
        });
        let linear = Linear { threads };
        for layer in &self.layers {
            x = (|| {
                let qkv = x.apply_op3_no_bwd(&layer.qkv_w, &layer.qkv_b, &linear)?;
                let context = qkv.apply_op1_no_bwd(&attention)?;
                let projected = context.apply_op3_no_bwd(&layer.out_w, &layer.out_b, &linear)?;
                let attended =
                    projected.apply_op3_no_bwd(&x, &layer.attn_norm, &AddLayerNorm { eps })?;
                let up = attended.apply_op3_no_bwd(&layer.up_w, &layer.up_b, &linear)?;
                up.inplace_op1(&Gelu)?;
                let down = up.apply_op3_no_bwd(&layer.down_w, &layer.down_b, &linear)?;
                down.apply_op3_no_bwd(&attended, &layer.ffn_norm, &AddLayerNorm { eps })
            })()
            .map_err(err)?;
        }
        Ok((x, seq_len))
    }
}
