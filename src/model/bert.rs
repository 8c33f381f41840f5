//! BERT-family encoder (BERT, MiniLM, XLM-RoBERTa and other checkpoints of `BertModel`'s
//! shape) as a candle forward pass on the CPU, built from the fused kernels of
//! `crate::kernels`.
//!
//! The linear layers are packed at load for the model's dtype (f32 too: panels that the
//! kernels read without repacking at every call), the embeddings and norms read in place from
//! the memory-mapped `model.safetensors` (see `weights.rs`); all shared by every worker
//! thread. Activations are candle tensors that flow through the custom ops of `bert_ops.rs`.
//! The Q, K and V projections run as one linear layer (one pass over the input), and the
//! position and token-type-0 embeddings are summed once at load; the second text of a pair
//! (token type 1) adds the difference of the two type embeddings.
//!
//! `BertForSequenceClassification` checkpoints (cross-encoder rerankers, classifiers) load the
//! same encoder; their pooler and classifier are `heads.rs`'s. XLM-RoBERTa checkpoints
//! (`XLMRobertaModel`, `XLMRobertaForSequenceClassification`) run the same layers; what
//! differs (positions after the padding id, one token type, the tensors' prefix) comes from
//! [`Family`] in `bert_config.rs`.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::bert_ops::{AddLayerNorm, Attention, Linear, ProjectAddNorm};
use super::weights::{Names, Weight, WeightFile};
use super::{EncoderInput, ModelError};
use crate::kernels::{
    add_layer_norm, AttentionShape, Dtype, KernelLevel, LinearPart, PackedLinear, Products,
};

pub use super::bert_config::{BertConfig, Family};

/// A linear layer's weight (`n×k`) and bias (`n`).
pub(super) struct Dense {
    w: Weight,
    b: Weight,
}

impl Dense {
    pub(super) fn part(&self) -> LinearPart<'_> {
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

/// A layer's four linear layers, packed at load for the model's dtype; Q, K and V
/// concatenated into one layer.
struct Linears {
    qkv: PackedLinear,
    out: PackedLinear,
    up: PackedLinear,
    down: PackedLinear,
}

struct Layer {
    linears: Linears,
    attn_norm: Norm,
    ffn_norm: Norm,
}

/// A loaded BERT encoder; returns the last hidden state of a batch.
pub struct Bert {
    config: BertConfig,
    dtype: Dtype,
    /// The kernel path the packed layers run on.
    level: KernelLevel,
    word: Weight,
    /// Position embeddings plus the token-type-0 embedding, `[max_position_embeddings, hidden]`.
    position_and_type: Vec<f32>,
    /// The position of a sequence's first token ([`BertConfig::position_offset`]).
    position_offset: usize,
    /// RoBERTa's padding id: a token with this id sits at position `pad` and does not advance
    /// the positions after it (`None` for BERT, whose positions are the token indices).
    position_pad: Option<u32>,
    /// Token type 1 less token type 0, added to the second text of a pair (`None` when the
    /// model has one token type, or ignores token types as RoBERTa does).
    type1_delta: Option<Vec<f32>>,
    embed_norm: Norm,
    layers: Vec<Layer>,
}

/// BERT's and XLM-RoBERTa's tensors ([`Names`]: under `bert.` or `roberta.` for models saved
/// with a head).
impl<'a> Names<'a> {
    /// The encoder's tensors in `file`, a checkpoint of `family`.
    pub(super) fn of(file: &'a WeightFile, family: Family) -> Self {
        Names::prefixed_if_present(file, family.prefix(), "embeddings.word_embeddings.weight")
    }

    pub(super) fn dense(&self, name: &str, n: usize, k: usize) -> Result<Dense, ModelError> {
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
    /// Maps `model.safetensors`, checks every tensor's shape against the config, and packs the
    /// linear layers for `dtype`, to run on the kernel path `level`.
    pub fn load(
        config: BertConfig,
        weights: &Path,
        dtype: Dtype,
        level: KernelLevel,
    ) -> Result<Self, ModelError> {
        Self::load_from(config, &WeightFile::open(weights)?, dtype, level)
    }

    /// [`Bert::load`] from an opened file (whose head, if any, the caller reads too).
    pub fn load_from(
        config: BertConfig,
        file: &WeightFile,
        dtype: Dtype,
        level: KernelLevel,
    ) -> Result<Self, ModelError> {
        let w = Names::of(file, config.family());
        let prefix = w.prefix();
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
        // Shapes match the config, which has type_vocab_size ≥ 1: row 0 exists.
        let type0 = types.as_slice().get(..h).ok_or_else(|| {
            ModelError::Weights(format!(
                "{prefix}embeddings.token_type_embeddings.weight has no row 0"
            ))
        })?;
        let position_and_type: Vec<f32> = positions
            .as_slice()
            .chunks_exact(h)
            .flat_map(|row| row.iter().zip(type0).map(|(p, t)| p + t))
            .collect();
        let type1_delta = types
            .as_slice()
            .get(h..2 * h)
            .filter(|_| config.uses_token_types())
            .map(|type1| type1.iter().zip(type0).map(|(t1, t0)| t1 - t0).collect());
        let position_offset = config.position_offset();
        let position_pad = (config.family() == Family::Roberta)
            .then_some(config.pad_token_id)
            .flatten();
        let embed_norm = w.norm("embeddings.LayerNorm", h)?;

        // Not `with_capacity(num_hidden_layers)`: the count comes from config.json, and a
        // huge one must end at the first missing tensor, not in an allocation failure.
        let mut layers = Vec::new();
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let qkv = [
                w.dense(&format!("{p}.attention.self.query"), h, h)?,
                w.dense(&format!("{p}.attention.self.key"), h, h)?,
                w.dense(&format!("{p}.attention.self.value"), h, h)?,
            ];
            let out = w.dense(&format!("{p}.attention.output.dense"), h, h)?;
            let up = w.dense(&format!("{p}.intermediate.dense"), i, h)?;
            let down = w.dense(&format!("{p}.output.dense"), h, i)?;
            let pack = |dtype: Dtype, w: &[f32], b: &[f32], k: usize| {
                PackedLinear::pack(dtype, w, b, k).map_err(ModelError::Weights)
            };
            let cat = |f: fn(&Dense) -> &[f32]| -> Vec<f32> {
                qkv.iter().flat_map(|d| f(d).iter().copied()).collect()
            };
            // int8 keeps the Q, K and V projections in bf16: their error is amplified by
            // the attention logits. Measured on MiniLM against sentence-transformers
            // (lowest cosine over the reference set): all int8 0.99895; with Q/K/V in bf16
            // 0.99949; with the up, down or output projection in bf16 instead 0.99932,
            // 0.99915, 0.99882 (docs/benchmarks.md).
            let qkv_dtype = if dtype == Dtype::Int8 {
                Dtype::Bf16
            } else {
                dtype
            };
            let linears = Linears {
                qkv: pack(
                    qkv_dtype,
                    &cat(|d| d.w.as_slice()),
                    &cat(|d| d.b.as_slice()),
                    h,
                )?,
                out: pack(dtype, out.w.as_slice(), out.b.as_slice(), h)?,
                up: pack(dtype, up.w.as_slice(), up.b.as_slice(), h)?,
                down: pack(dtype, down.w.as_slice(), down.b.as_slice(), i)?,
            };
            layers.push(Layer {
                linears,
                attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                ffn_norm: w.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        // The linear weights were read once to pack them; let their pages go from this
        // process's resident set (they are still the page cache's, and anything still used
        // from the mapping faults back in).
        file.release_resident_pages();
        Ok(Self {
            config,
            dtype,
            level,
            word,
            position_and_type,
            position_offset,
            position_pad,
            type1_delta,
            embed_norm,
            layers,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }
    /// The dtype of the linear layers.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The kernel path the packed layers run on.
    pub fn level(&self) -> KernelLevel {
        self.level
    }

    /// Runs the encoder over `inputs` (token ids, unpadded, each at most
    /// [`BertConfig::max_positions`] long; the tokens from `second_from` on are token type 1
    /// for a model that uses token types, type 0 like the rest for RoBERTa) and returns the
    /// last hidden state of every token, the sequences back to back (`[Σ len, hidden]`: token
    /// `t` of input `b` is row `Σ len[..b] + t`); `threads` is the intra-op parallelism of
    /// the matmuls.
    ///
    /// Nothing is padded: the linear layers, norms and GELU run over the real tokens only, so
    /// a batch of a short query and a long passage costs what the two cost alone, and an
    /// input's answer does not depend on the others in its batch.
    pub fn forward(
        &self,
        inputs: &[EncoderInput<'_>],
        threads: usize,
    ) -> Result<Tensor, ModelError> {
        let c = &self.config;
        let h = c.hidden_size;
        let seq_len = inputs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        if inputs.is_empty() || seq_len == 0 || inputs.iter().any(|s| s.ids.is_empty()) {
            return Err(ModelError::Input("empty batch or empty sequence".into()));
        }
        if c.uses_token_types()
            && self.type1_delta.is_none()
            && inputs.iter().any(|s| s.second_from < s.ids.len())
        {
            return Err(ModelError::Input(
                "a pair of texts needs two token types; this model has one (type_vocab_size 1)"
                    .into(),
            ));
        }
        if seq_len > c.max_positions() {
            return Err(ModelError::Input(format!(
                "sequence of {seq_len} tokens is longer than the model's {} positions",
                c.max_positions()
            )));
        }
        // Each token's word embedding, plus its position's (and token type's) row.
        let too_large = || {
            ModelError::Input(format!(
                "a batch of {} sequences of up to {seq_len} tokens is too large",
                inputs.len()
            ))
        };
        let rows = inputs
            .iter()
            .try_fold(0usize, |sum, s| sum.checked_add(s.ids.len()))
            .ok_or_else(too_large)?;
        let size = rows.checked_mul(h).ok_or_else(too_large)?;
        let mut embedded = vec![0.0f32; size];
        let word = self.word.as_slice();
        // Exactly Σ len rows; each input takes its own (zip asks the ids first).
        let mut token_rows = embedded.chunks_exact_mut(h);
        for s in inputs {
            let mut counted = 0;
            for (t, (&id, row)) in s.ids.iter().zip(token_rows.by_ref()).enumerate() {
                let id = id as usize;
                if id >= c.vocab_size {
                    return Err(ModelError::Input(format!(
                        "token id {id} is outside the vocabulary of {}",
                        c.vocab_size
                    )));
                }
                row.copy_from_slice(&word[id * h..][..h]);
                if let (true, Some(delta)) = (t >= s.second_from, &self.type1_delta) {
                    row.iter_mut().zip(delta).for_each(|(x, d)| *x += d);
                }
                let position = match self.position_pad {
                    // RoBERTa: a padding token sits at position `pad` and does not count.
                    Some(pad) if id == pad as usize => pad as usize,
                    Some(pad) => {
                        counted += 1;
                        pad as usize + counted
                    }
                    None => self.position_offset + t,
                };
                // Within the table for every length up to max_positions (checked above).
                let added = self
                    .position_and_type
                    .get(position * h..(position + 1) * h)
                    .ok_or_else(|| {
                        ModelError::Input(format!(
                            "token {t} is at position {position}, outside the model's table"
                        ))
                    })?;
                row.iter_mut().zip(added).for_each(|(x, p)| *x += p);
            }
        }
        let eps = c.layer_norm_eps as f32;
        add_layer_norm(
            &mut embedded,
            &vec![0.0; h],
            self.embed_norm.gamma.as_slice(),
            self.embed_norm.beta.as_slice(),
            eps,
        );
        let err = |e: candle_core::Error| ModelError::Forward(e.to_string());
        let mut x = Tensor::from_vec(embedded, (rows, h), &Device::Cpu).map_err(err)?;
        let attention = Attention {
            shape: AttentionShape {
                seq_len,
                heads: c.num_attention_heads,
                head_dim: h / c.num_attention_heads,
                lengths: inputs.iter().map(|s| s.ids.len()).collect(),
                unpadded: true,
            },
            threads,
            level: self.level,
            // The f32 model stays exact, and int16 (a classifier's default where AVX2 runs,
            // held to the scores' 1e-3 bar) keeps f32 products on every CPU; bf16 and int8
            // already round their linear layers more coarsely (bf16 products run on AMX
            // only).
            products: match self.dtype() {
                Dtype::F32 | Dtype::Int16 => Products::F32,
                Dtype::Bf16 | Dtype::Int8 => Products::Bf16,
            },
        };
        for layer in &self.layers {
            let Linears { qkv, out, up, down } = &layer.linears;
            let linear = |weights| Linear {
                weights,
                threads,
                level: self.level,
            };
            x = (|| {
                let qkv = x.apply_op1_no_bwd(&linear(qkv))?;
                let context = qkv.apply_op1_no_bwd(&attention)?;
                let attended = context.apply_op2_no_bwd(
                    &x,
                    &ProjectAddNorm {
                        first: out,
                        gelu: false,
                        second: None,
                        norm: layer.attn_norm.op(eps),
                        threads,
                        level: self.level,
                    },
                )?;
                attended.apply_op2_no_bwd(
                    &attended,
                    &ProjectAddNorm {
                        first: up,
                        gelu: true,
                        second: Some(down),
                        norm: layer.ffn_norm.op(eps),
                        threads,
                        level: self.level,
                    },
                )
            })()
            .map_err(err)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bert_config::tests::config_with;
    use crate::model::tiny::{replace_file, write_tiny_bert, TinySpec};
    use std::path::PathBuf;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("zb-bert-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A safetensors file from its header and data, byte for byte.
    fn write_raw(path: &Path, header: &str, data: &[u8]) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(path, bytes).unwrap();
    }

    /// The reported panic: a valid file whose token_type_embeddings is [0, 32], with
    /// "type_vocab_size": 0 in config.json.
    #[test]
    fn an_empty_token_type_table_is_an_error_not_a_panic() {
        let dir = temp_dir("type0");
        let err = BertConfig::from_json(&config_with(serde_json::json!({ "type_vocab_size": 0 })))
            .unwrap_err();
        assert!(err.to_string().contains("type_vocab_size"), "{err}");
        // And if such a config is built in code anyway, loading refuses it without panicking.
        write_tiny_bert(&dir, &TinySpec::default()).unwrap();
        let path = dir.join("model.safetensors");
        let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        tensors.insert(
            "embeddings.token_type_embeddings.weight".into(),
            Tensor::zeros((0, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        replace_file(&path, |tmp| {
            Ok(candle_core::safetensors::save(&tensors, tmp)?)
        })
        .unwrap();
        let mut config =
            BertConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        config.type_vocab_size = 0;
        let err = Bert::load(config, &path, Dtype::F32, KernelLevel::detected())
            .err()
            .expect("an error");
        assert!(err.to_string().contains("token_type_embeddings"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_safetensors_files_are_errors_naming_file_and_tensor() {
        use crate::model::weights::WeightFile;
        let dir = temp_dir("corrupt");
        let path = dir.join("model.safetensors");
        let f32s = |n: usize| vec![0u8; n * 4];
        // Too short, header longer than the file, header not JSON.
        for bytes in [
            &b""[..],
            b"\x05\0\0",
            b"\xff\0\0\0\0\0\0\0{}",
            b"\x02\0\0\0\0\0\0\0[]",
        ] {
            std::fs::write(&path, bytes).unwrap();
            let err = WeightFile::open(&path).err().expect("an error").to_string();
            assert!(err.contains("model.safetensors"), "{err}");
        }
        // Offsets past the end, sizes that disagree with the shape, shapes that overflow,
        // offsets that overlap: refused by the header check.
        for (header, data) in [
            (
                r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                f32s(1),
            ),
            (
                r#"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                f32s(2),
            ),
            (
                r#"{"t":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}"#,
                f32s(2),
            ),
            (
                r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                f32s(2),
            ),
            (
                r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"u":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                f32s(3),
            ),
        ] {
            write_raw(&path, header, &data);
            assert!(WeightFile::open(&path).is_err(), "{header}");
        }
        // A valid file: f32 in place, f16 and unaligned f32 converted; missing names refused.
        let mut data = f32s(2);
        data[..4].copy_from_slice(&1.5f32.to_le_bytes());
        data.extend_from_slice(&half_one());
        let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"h":{"dtype":"F16","shape":[1],"data_offsets":[8,10]}}"#;
        for pad in ["", " ", "  ", "   "] {
            // Padding the header by 1..3 bytes moves the data off 4-byte alignment.
            let padded = format!("{header}{pad}");
            write_raw(&path, &padded, &data);
            let file = WeightFile::open(&path).unwrap();
            assert_eq!(file.get("a").unwrap().as_slice(), &[1.5, 0.0]);
            assert_eq!(file.get("h").unwrap().as_slice(), &[1.0]);
            let err = file.get("nope").err().expect("an error").to_string();
            assert!(
                err.contains("nope") && err.contains("model.safetensors"),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// 1.0 in IEEE half precision, little-endian.
    fn half_one() -> [u8; 2] {
        [0x00, 0x3c]
    }

    /// Mutations of the tiny model's file (truncations, digits of the header changed, which
    /// keeps it JSON and moves shapes and offsets) load or fail with an error; those that load
    /// run a forward pass, which answers or fails with an error. Nothing panics.
    #[test]
    fn mutated_weight_files_never_panic() {
        let dir = temp_dir("mutated");
        write_tiny_bert(&dir, &TinySpec::default()).unwrap();
        let config =
            BertConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let original = std::fs::read(dir.join("model.safetensors")).unwrap();
        let header_len = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
        let digits: Vec<usize> = (8..8 + header_len)
            .filter(|&i| original[i].is_ascii_digit())
            .collect();
        let path = dir.join("mutated.safetensors");
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut loaded, mut refused) = (0, 0);
        for round in 0..300 {
            let mut bytes = original.clone();
            if round % 3 == 0 {
                bytes.truncate(next(original.len()));
            } else {
                for _ in 0..1 + round % 2 {
                    let at = digits[next(digits.len())];
                    bytes[at] = b'0' + next(10) as u8;
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            let outcome = std::panic::catch_unwind(|| {
                match Bert::load(config.clone(), &path, Dtype::F32, KernelLevel::detected()) {
                    Ok(bert) => {
                        let _ = bert.forward(
                            &[
                                EncoderInput::single(&[2, 7, 3]),
                                EncoderInput::pair(&[2, 3, 5], 2),
                            ],
                            1,
                        );
                        true
                    }
                    Err(_) => false,
                }
            });
            match outcome {
                Ok(true) => loaded += 1,
                Ok(false) => refused += 1,
                Err(_) => panic!("round {round} panicked"),
            }
        }
        assert!(refused > 100, "{loaded} loaded, {refused} refused");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A NaN weight that attention used to hide (a NaN key bias became tiny softmax weights
    /// and a finite vector): now `embed` fails with the non-finite error.
    #[test]
    fn a_nan_weight_gives_an_error_not_a_vector() {
        let dir = temp_dir("nan");
        write_tiny_bert(&dir, &TinySpec::default()).unwrap();
        let model = crate::model::load(dir.to_str().unwrap(), "main", |_, _| {}).unwrap();
        let ids = [2u32, 7, 9, 3];
        assert!(model.model.embed(&[&ids], 1).is_ok());
        let path = dir.join("model.safetensors");
        let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let name = "encoder.layer.0.attention.self.key.bias";
        let mut bias = tensors[name].to_vec1::<f32>().unwrap();
        bias[0] = f32::NAN;
        tensors.insert(name.into(), Tensor::new(bias, &Device::Cpu).unwrap());
        replace_file(&path, |tmp| {
            Ok(candle_core::safetensors::save(&tensors, tmp)?)
        })
        .unwrap();
        let corrupt = crate::model::load(dir.to_str().unwrap(), "main", |_, _| {}).unwrap();
        for threads in [1, 2] {
            let err = corrupt
                .model
                .embed(&[&ids, &ids[..2]], threads)
                .expect_err("a NaN weight must not give vectors");
            assert!(
                matches!(&err, ModelError::Forward(m) if m.contains("non-finite values (NaN or infinity)")),
                "{err}"
            );
        }
        // The model loaded before the file was replaced still answers (rename, not rewrite).
        assert!(model.model.embed(&[&ids], 1).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
