//! BERT-family encoder (BERT, MiniLM, and other `BertModel` checkpoints) as a candle forward
//! pass on the CPU, built from the fused kernels in `kernels.rs`.
//!
//! Weights are used in place from the memory-mapped `model.safetensors` (see `weights.rs`),
//! shared by every worker thread; activations are candle tensors that flow through the custom
//! ops of `kernels.rs`. The Q, K and V projections run as one linear op with three parts (one
//! pass over the input), and the position and token-type-0 embeddings are summed once at load.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Deserialize;

use super::kernels::{AddLayerNorm, Attention, AttentionShape, Gelu, Linear, LinearPart};
use super::weights::{Weight, WeightFile};
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

/// A linear layer's weight (`n×k`) and bias (`n`).
struct Dense {
    w: Weight,
    b: Weight,
}

impl Dense {
    fn part(&self) -> LinearPart<'_> {
        LinearPart {
            w: self.w.as_slice(),
            b: self.b.as_slice(),
        }
    }
}

/// LayerNorm weights.
struct Norm {
    gamma: Weight,
    beta: Weight,
}

impl Norm {
    fn op(&self, eps: f32) -> AddLayerNorm<'_> {
        AddLayerNorm {
            gamma: self.gamma.as_slice(),
            beta: self.beta.as_slice(),
            eps,
        }
    }
}

struct Layer {
    /// Query, key and value projections, run as one linear op with three parts.
    qkv: [Dense; 3],
    out: Dense,
    attn_norm: Norm,
    up: Dense,
    down: Dense,
    ffn_norm: Norm,
}

/// A loaded BERT encoder; returns the last hidden state of a batch.
pub struct Bert {
    config: BertConfig,
    word: Weight,
    /// Position embeddings plus the token-type-0 embedding, `[max_positions, hidden]`.
    position_and_type: Tensor,
    embed_norm: Norm,
    layers: Vec<Layer>,
}

struct Names<'a> {
    file: &'a WeightFile,
    prefix: &'static str,
}

impl Names<'_> {
    fn get(&self, name: &str, dims: &[usize]) -> Result<Weight, ModelError> {
        let full = format!("{}{name}", self.prefix);
        let w = self.file.get(&full)?;
        if w.shape() != dims {
            return Err(ModelError::Weights(format!(
                "{full} has shape {:?}, config.json implies {dims:?}",
                w.shape()
            )));
        }
        Ok(w)
    }

    fn dense(&self, name: &str, n: usize, k: usize) -> Result<Dense, ModelError> {
        Ok(Dense {
            w: self.get(&format!("{name}.weight"), &[n, k])?,
            b: self.get(&format!("{name}.bias"), &[n])?,
        })
    }

    /// LayerNorm weights under either naming (`weight`/`bias` or the old `gamma`/`beta`).
    fn norm(&self, name: &str, h: usize) -> Result<Norm, ModelError> {
        let either = |a: &str, b: &str| {
            self.get(&format!("{name}.{a}"), &[h])
                .or_else(|_| self.get(&format!("{name}.{b}"), &[h]))
        };
        Ok(Norm {
            gamma: either("weight", "gamma")?,
            beta: either("bias", "beta")?,
        })
    }
}

impl Bert {
    /// Maps `model.safetensors` and checks every tensor's shape against the config.
    pub fn load(config: BertConfig, weights: &Path) -> Result<Self, ModelError> {
        let file = WeightFile::open(weights)?;
        let prefix = if file.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let w = Names {
            file: &file,
            prefix,
        };
        let (h, i) = (config.hidden_size, config.intermediate_size);

        let word = w.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let positions = w.get(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let types = w.get(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        let type0 = &types.as_slice()[..h];
        let summed: Vec<f32> = positions
            .as_slice()
            .chunks_exact(h)
            .flat_map(|row| row.iter().zip(type0).map(|(p, t)| p + t))
            .collect();
        let position_and_type =
            Tensor::from_vec(summed, (config.max_position_embeddings, h), &Device::Cpu)
                .map_err(|e| ModelError::Weights(e.to_string()))?;
        let embed_norm = w.norm("embeddings.LayerNorm", h)?;

        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(Layer {
                qkv: [
                    w.dense(&format!("{p}.attention.self.query"), h, h)?,
                    w.dense(&format!("{p}.attention.self.key"), h, h)?,
                    w.dense(&format!("{p}.attention.self.value"), h, h)?,
                ],
                out: w.dense(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                up: w.dense(&format!("{p}.intermediate.dense"), i, h)?,
                down: w.dense(&format!("{p}.output.dense"), h, i)?,
                ffn_norm: w.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
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
        let h = c.hidden_size;
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
        // Gather the word embeddings of every position (padding rows stay zero: they are
        // never attended to nor pooled).
        let word = self.word.as_slice();
        let mut embedded = vec![0.0f32; sequences.len() * seq_len * h];
        for (b, s) in sequences.iter().enumerate() {
            for (t, &id) in s.iter().enumerate() {
                let id = id as usize;
                if id >= c.vocab_size {
                    return Err(ModelError::Input(format!(
                        "token id {id} is outside the vocabulary of {}",
                        c.vocab_size
                    )));
                }
                embedded[(b * seq_len + t) * h..][..h].copy_from_slice(&word[id * h..][..h]);
            }
        }
        let err = |e: candle_core::Error| ModelError::Forward(e.to_string());
        let rows = sequences.len() * seq_len;
        let eps = c.layer_norm_eps as f32;
        let positions = self.position_and_type.narrow(0, 0, seq_len).map_err(err)?;
        let mut x = Tensor::from_vec(embedded, (rows, h), &Device::Cpu)
            .and_then(|x| x.apply_op2_no_bwd(&positions, &self.embed_norm.op(eps)))
            .map_err(err)?;
        let attention = Attention {
            shape: AttentionShape {
                seq_len,
                heads: c.num_attention_heads,
                head_dim: h / c.num_attention_heads,
                lengths: sequences.iter().map(|s| s.len()).collect(),
            },
            threads,
        };
        for layer in &self.layers {
            let qkv_parts = [
                layer.qkv[0].part(),
                layer.qkv[1].part(),
                layer.qkv[2].part(),
            ];
            let (out, up, down) = ([layer.out.part()], [layer.up.part()], [layer.down.part()]);
            x = (|| {
                let qkv = x.apply_op1_no_bwd(&Linear {
                    parts: &qkv_parts,
                    threads,
                })?;
                let context = qkv.apply_op1_no_bwd(&attention)?;
                let projected = context.apply_op1_no_bwd(&Linear {
                    parts: &out,
                    threads,
                })?;
                let attended = projected.apply_op2_no_bwd(&x, &layer.attn_norm.op(eps))?;
                let expanded = attended.apply_op1_no_bwd(&Linear {
                    parts: &up,
                    threads,
                })?;
                expanded.inplace_op1(&Gelu)?;
                let reduced = expanded.apply_op1_no_bwd(&Linear {
                    parts: &down,
                    threads,
                })?;
                reduced.apply_op2_no_bwd(&attended, &layer.ffn_norm.op(eps))
            })()
            .map_err(err)?;
        }
        Ok((x, seq_len))
    }
}
