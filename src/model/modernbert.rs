//! ModernBERT (`gte-modernbert`, `modernbert-embed`): a bidirectional encoder with rotary
//! positions, pre-norm layers, a GeGLU feed-forward, and attention that alternates between
//! global layers (every token sees every token) and local ones (a token sees the tokens
//! within `local_attention / 2` positions), as transformers' `ModernBertModel` computes it:
//!
//! ```text
//! x = LayerNorm(tok_embeddings[ids])
//! per layer: x += Wo(attention(RoPE(Wqkv(attn_norm(x)))))      attn_norm is none on layer 0
//!            x += Wo'(act(input) · gate), (input, gate) = Wi(mlp_norm(x))
//! hidden = final_norm(x)
//! ```
//!
//! then sentence-transformers' pooling (`super::pooling`). LayerNorms have no bias unless
//! `norm_bias`, the linear layers none unless `attention_bias` / `mlp_bias`.
//!
//! A batch is never padded: the rows of every input are concatenated, the linear layers run
//! over all of them at once, and attention runs per input over its own rows at positions
//! `0..len` (ModernBERT's own "unpadded" path), so an input gives the same vector alone as
//! in any batch. Attention that sees the whole input (a global layer, or a local layer over
//! an input no longer than its window) is the encoders' kernel (`crate::kernels::attention`);
//! a local layer over a longer input is `crate::kernels::window_attention`.

use super::embedding_table::EmbeddingTable;
use super::modernbert_config::{Activation, LayerKind, ModernBertConfig};
use super::proj::Proj;
use super::unpadded::{add, embedding_rows, pool_each, refuse_pairs};
use super::weights::{Names, Weight, WeightFile};
use super::{EncoderInput, Model, ModelError, Pooling};
use crate::kernels::rope::{Rope, RopeParams, RopeStyle};
use crate::kernels::team::parallel_for_each;
use crate::kernels::{
    add_layer_norm, attention_with, gelu_at, gelu_tanh_at, window_attention, AttentionShape, Dtype,
    KernelLevel, Products, WindowShape,
};

/// Query rows per task of a local layer's windowed attention.
const WINDOW_ROWS_PER_TASK: usize = 16;

/// A LayerNorm: its weight, and its bias when `norm_bias` (else zeros).
struct Norm {
    gamma: Weight,
    beta: Vec<f32>,
}

struct Layer {
    kind: LayerKind,
    /// `None` on layer 0 (transformers' Identity).
    attn_norm: Option<Norm>,
    /// Q, K and V side by side (`3·hidden` outputs).
    wqkv: Proj,
    wo: Proj,
    mlp_norm: Norm,
    /// The GeGLU's input and gate side by side (`2·intermediate_size` outputs).
    wi: Proj,
    mlp_wo: Proj,
}

/// A loaded ModernBERT embedder: the encoder's layers, then pooling.
pub struct ModernBertEncoder {
    config: ModernBertConfig,
    level: KernelLevel,
    embed: EmbeddingTable,
    embed_norm: Norm,
    layers: Vec<Layer>,
    final_norm: Norm,
    /// One row of zeros: the residual a plain LayerNorm adds.
    zeros: Vec<f32>,
    pooling: Pooling,
}

impl ModernBertEncoder {
    /// Reads the weights of `file` (named as ModernBertModel saves them, `layers.N.…`, or with
    /// the `model.` prefix of a ModernBertForMaskedLM checkpoint, whose head is not read),
    /// checks every shape against `config`, and packs the linear layers for `dtype`.
    pub fn load(
        config: ModernBertConfig,
        file: &WeightFile,
        dtype: Dtype,
        level: KernelLevel,
        pooling: Pooling,
    ) -> Result<Self, ModelError> {
        let names = Names::prefixed_if_present(file, "model.", "embeddings.tok_embeddings.weight");
        let get = |name: &str, dims: &[usize]| names.get(name, dims);
        let c = &config;
        let (d, ff) = (c.hidden_size, c.intermediate_size);
        let norm = |name: &str| -> Result<Norm, ModelError> {
            Ok(Norm {
                gamma: get(&format!("{name}.weight"), &[d])?,
                beta: if c.norm_bias {
                    get(&format!("{name}.bias"), &[d])?.as_slice().to_vec()
                } else {
                    vec![0.0; d]
                },
            })
        };
        let linear = |name: &str, n: usize, k: usize, bias: bool, dtype: Dtype| {
            let w = get(&format!("{name}.weight"), &[n, k])?;
            let b = if bias {
                Some(vec![get(&format!("{name}.bias"), &[n])?])
            } else {
                None
            };
            Proj::new(vec![w], b, k, dtype)
        };
        // int8 keeps Q, K and V in bf16, as the BERT encoders do (their error is amplified
        // by the attention logits).
        let qkv_dtype = if dtype == Dtype::Int8 {
            Dtype::Bf16
        } else {
            dtype
        };
        let embed =
            EmbeddingTable::load(&names, "embeddings.tok_embeddings.weight", c.vocab_size, d)?;
        let embed_norm = norm("embeddings.norm")?;
        let mut layers = Vec::new();
        for (l, &kind) in c.layer_kinds().iter().enumerate() {
            let p = |s: &str| format!("layers.{l}.{s}");
            let (ab, mb) = (c.attention_bias, c.mlp_bias);
            layers.push(Layer {
                kind,
                attn_norm: if l == 0 {
                    None
                } else {
                    Some(norm(&p("attn_norm"))?)
                },
                wqkv: linear(&p("attn.Wqkv"), 3 * d, d, ab, qkv_dtype)?,
                wo: linear(&p("attn.Wo"), d, d, ab, dtype)?,
                mlp_norm: norm(&p("mlp_norm"))?,
                wi: linear(&p("mlp.Wi"), 2 * ff, d, mb, dtype)?,
                mlp_wo: linear(&p("mlp.Wo"), d, ff, mb, dtype)?,
            });
        }
        let final_norm = norm("final_norm")?;
        // As for BERT: the linear weights were read once to pack them.
        file.release_resident_pages();
        Ok(Self {
            zeros: vec![0.0; d],
            config,
            level,
            embed,
            embed_norm,
            layers,
            final_norm,
            pooling,
        })
    }

    pub fn config(&self) -> &ModernBertConfig {
        &self.config
    }

    /// `out = LayerNorm(x)` row by row.
    fn norm(&self, x: &[f32], n: &Norm, out: &mut [f32]) {
        out.copy_from_slice(x);
        let eps = self.config.norm_eps;
        add_layer_norm(out, &self.zeros, n.gamma.as_slice(), &n.beta, eps);
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
        let (mut x, positions) = embedding_rows(
            inputs,
            &self.embed,
            d,
            c.vocab_size,
            c.max_position_embeddings,
        )?;
        let m = positions.len();
        let rope = |kind| {
            let params = RopeParams {
                n_rot: hd,
                head_dim: hd,
                base: c.rope_theta(kind),
                freq_scale: 1.0,
                attn_factor: 1.0,
            };
            Rope::new(&positions, &params, &vec![1.0; hd / 2], RopeStyle::Halves)
        };
        let ropes = [rope(LayerKind::Global), rope(LayerKind::Local)];
        let level = self.level;
        let mut xn = vec![0.0f32; m * d];
        self.norm(&x, &self.embed_norm, &mut xn);
        std::mem::swap(&mut x, &mut xn);
        let mut qkv = vec![0.0f32; m * 3 * d];
        let mut attn = vec![0.0f32; m * d];
        let mut proj = vec![0.0f32; m * d];
        let mut wi = vec![0.0f32; m * 2 * ff];
        let mut act = vec![0.0f32; m * ff];
        for layer in &self.layers {
            match &layer.attn_norm {
                Some(n) => self.norm(&x, n, &mut xn),
                None => xn.copy_from_slice(&x),
            }
            layer.wqkv.forward(&xn, m, &mut qkv, level, threads);
            let rope = &ropes[(layer.kind == LayerKind::Local) as usize];
            for (r, row) in qkv.chunks_exact_mut(3 * d).enumerate() {
                rope.apply(r, &mut row[..d]);
                rope.apply(r, &mut row[d..2 * d]);
            }
            self.attention(inputs, layer.kind, &qkv, &mut attn, threads);
            layer.wo.forward(&attn, m, &mut proj, level, threads);
            add(&mut x, &proj);
            self.norm(&x, &layer.mlp_norm, &mut xn);
            layer.wi.forward(&xn, m, &mut wi, level, threads);
            self.geglu(&mut wi, &mut act);
            layer.mlp_wo.forward(&act, m, &mut proj, level, threads);
            add(&mut x, &proj);
        }
        self.norm(&x, &self.final_norm, &mut xn);
        Ok(xn)
    }

    /// One vector per input (a single text or a pair's ids): its rows of the last hidden
    /// state pooled as the model says.
    pub fn pooled(
        &self,
        inputs: &[EncoderInput<'_>],
        threads: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let hidden = self.hidden_states(inputs, threads)?;
        pool_each(&hidden, inputs, self.config.hidden_size, self.pooling)
    }

    /// `act = act(input) · gate` for every row of `wi` (`input` its first
    /// `intermediate_size` values, `gate` the rest), the activation applied in place.
    fn geglu(&self, wi: &mut [f32], act: &mut [f32]) {
        let ff = self.config.intermediate_size;
        for (row, out) in wi.chunks_exact_mut(2 * ff).zip(act.chunks_exact_mut(ff)) {
            let (input, gate) = row.split_at_mut(ff);
            match self.config.activation() {
                Activation::Gelu => gelu_at(input, self.level),
                Activation::GeluTanh => gelu_tanh_at(input, self.level),
            }
            for ((o, a), g) in out.iter_mut().zip(input.iter()).zip(gate.iter()) {
                *o = a * g;
            }
        }
    }

    /// Attention of every input over its own rows of `qkv` (`Σ len × 3·hidden`), into
    /// `attn` (`Σ len × hidden`), shared by `threads`: an input whose keys are all visible
    /// (a global layer, or a local layer over an input within its window) in one task on the
    /// encoders' kernel (given every thread when it is the only input), a longer input on a
    /// local layer in tasks of [`WINDOW_ROWS_PER_TASK`] query rows.
    fn attention(
        &self,
        inputs: &[EncoderInput<'_>],
        kind: LayerKind,
        qkv: &[f32],
        attn: &mut [f32],
        threads: usize,
    ) {
        let c = &self.config;
        let (d, half) = (c.hidden_size, c.half_window());
        let (heads, head_dim) = (c.num_attention_heads, c.head_dim());
        let windowed = |len: usize| kind == LayerKind::Local && len > half + 1;
        // (first row of the input, its length, first query row of the task, the output)
        let mut tasks: Vec<(usize, usize, usize, &mut [f32])> = Vec::new();
        let mut rest: &mut [f32] = attn;
        let mut row0 = 0;
        for s in inputs {
            let len = s.ids.len();
            let (mine, after) = rest.split_at_mut(len * d);
            rest = after;
            if windowed(len) {
                for (i, out) in mine.chunks_mut(WINDOW_ROWS_PER_TASK * d).enumerate() {
                    tasks.push((row0, len, i * WINDOW_ROWS_PER_TASK, out));
                }
            } else {
                tasks.push((row0, len, 0, mine));
            }
            row0 += len;
        }
        // A lone full-attention task splits its heads over the threads itself.
        let inner = if tasks.len() == 1 { threads } else { 1 };
        let level = self.level;
        let window = WindowShape {
            heads,
            head_dim,
            half_window: half,
        };
        parallel_for_each(&mut tasks, threads, &|_, (row0, len, r0, out)| {
            let (row0, len, r0) = (*row0, *len, *r0);
            let rows = &qkv[row0 * 3 * d..(row0 + len) * 3 * d];
            if windowed(len) {
                window_attention(&window, rows, r0, out, level);
            } else {
                let shape = AttentionShape {
                    seq_len: len,
                    heads,
                    head_dim,
                    lengths: vec![len],
                    unpadded: false,
                };
                // f32 products at every dtype: with bf16 ones (the BERT encoders' on AMX) the
                // tiny reference's lowest cosine was 0.99986 in bf16, below the 0.9999 bar;
                // with f32 ones 0.99992 (tests/tiny_modernbert_reference.rs).
                attention_with(rows, out, &shape, inner, level, Products::F32);
            }
        });
    }
}

impl Model for ModernBertEncoder {
    fn forward(
        &self,
        inputs: &[EncoderInput<'_>],
        threads: usize,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        refuse_pairs(inputs, "ModernBERT")?;
        self.pooled(inputs, threads)
    }
}
