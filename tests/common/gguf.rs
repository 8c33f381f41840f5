//! A tiny Llama-family GGUF file, written with candle's GGUF writer, for the tests that need
//! a loadable file or a variation of it: other sizes, other tensor types, extra or edited
//! metadata, or a tensor's dimensions rewritten after the fact (candle's writer refuses to
//! write a quantized tensor whose rows are not whole blocks, which is what a corrupt file
//! holds).

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// The sizes of the tiny model.
#[derive(Debug, Clone, Copy)]
pub struct TinyLlama {
    pub hidden: usize,
    pub ff: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub layers: usize,
    pub context: usize,
}

impl TinyLlama {
    /// Sizes that k-quants' blocks of 256 divide.
    pub const DEFAULT: TinyLlama = TinyLlama {
        hidden: 256,
        ff: 512,
        heads: 4,
        kv_heads: 2,
        layers: 2,
        context: 64,
    };
}

impl Default for TinyLlama {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Deterministic values in [-scale, scale).
pub fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale
        })
        .collect()
}

/// The vocabulary: 62 printable ASCII characters, `Ġ` and an end-of-text control token.
pub fn vocabulary() -> Vec<String> {
    let mut tokens: Vec<String> = (33u8..=94).map(|b| (b as char).to_string()).collect();
    tokens.extend(["Ġ", "<|endoftext|>"].map(String::from));
    tokens
}

impl TinyLlama {
    /// The metadata of a byte-level BPE Llama with `tokens` (the last one a control token,
    /// also EOS).
    pub fn metadata(&self, tokens: &[String]) -> Vec<(String, Value)> {
        let vocab = tokens.len();
        let strings = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
        let u32v = |n: usize| Value::U32(n as u32);
        let mut types = vec![Value::I32(1); vocab];
        types[vocab - 1] = Value::I32(3);
        let kv: Vec<(&str, Value)> = vec![
            ("general.architecture", Value::String("llama".into())),
            ("llama.block_count", u32v(self.layers)),
            ("llama.context_length", u32v(self.context)),
            ("llama.embedding_length", u32v(self.hidden)),
            ("llama.feed_forward_length", u32v(self.ff)),
            ("llama.attention.head_count", u32v(self.heads)),
            ("llama.attention.head_count_kv", u32v(self.kv_heads)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("default".into())),
            ("tokenizer.ggml.tokens", strings(tokens)),
            ("tokenizer.ggml.merges", strings(&[])),
            ("tokenizer.ggml.token_type", Value::Array(types)),
            ("tokenizer.ggml.eos_token_id", u32v(vocab - 1)),
        ];
        kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// (name, shape [rows, k] or [n], values) of every tensor (tied embeddings: no
    /// `output.weight`).
    pub fn weights(&self, vocab: usize) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let (d, ff) = (self.hidden, self.ff);
        let hd = d / self.heads;
        let mut w = vec![(
            "token_embd.weight".to_string(),
            vec![vocab, d],
            values(1, vocab * d, 1.0),
        )];
        for l in 0..self.layers {
            let seed = 100 * (l as u64 + 1);
            let norm = |s| values(s, d, 0.1).iter().map(|v| 1.0 + v).collect();
            let parts: [(&str, usize, usize, f32); 7] = [
                ("attn_q", self.heads * hd, d, 0.1),
                ("attn_k", self.kv_heads * hd, d, 0.1),
                ("attn_v", self.kv_heads * hd, d, 0.1),
                ("attn_output", d, self.heads * hd, 0.1),
                ("ffn_gate", ff, d, 0.1),
                ("ffn_up", ff, d, 0.1),
                ("ffn_down", d, ff, 0.07),
            ];
            w.push((format!("blk.{l}.attn_norm.weight"), vec![d], norm(seed)));
            w.push((format!("blk.{l}.ffn_norm.weight"), vec![d], norm(seed + 1)));
            for (j, (name, rows, k, scale)) in parts.into_iter().enumerate() {
                w.push((
                    format!("blk.{l}.{name}.weight"),
                    vec![rows, k],
                    values(seed + 2 + j as u64, rows * k, scale),
                ));
            }
        }
        w.push((
            "output_norm.weight".to_string(),
            vec![d],
            values(7, d, 0.1).iter().map(|v| 1.0 + v).collect(),
        ));
        w
    }

    /// Writes the model to `path`: every tensor F32, `extra` metadata added after the
    /// model's own.
    pub fn write_f32(&self, path: &Path, extra: Vec<(String, Value)>) {
        let tokens = vocabulary();
        let mut metadata = self.metadata(&tokens);
        metadata.extend(extra);
        let tensors: Vec<(String, QTensor)> = self
            .weights(tokens.len())
            .into_iter()
            .map(|(name, shape, v)| (name, quantize(v, &shape, GgmlDType::F32)))
            .collect();
        write(path, &metadata, &tensors);
    }
}

/// `values` in `shape`, stored as `dtype` (candle's quantizer).
pub fn quantize(values: Vec<f32>, shape: &[usize], dtype: GgmlDType) -> QTensor {
    let t = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
    QTensor::quantize(&t, dtype).unwrap()
}

/// Writes a GGUF file with candle's writer.
pub fn write(path: &Path, metadata: &[(String, Value)], tensors: &[(String, QTensor)]) {
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(&mut std::fs::File::create(path).unwrap(), &meta, &refs).unwrap();
}

/// Rewrites the dimensions of tensor `name` in the GGUF file at `path` (PyTorch order,
/// outermost first, as many as it has), leaving its data as it is.
pub fn set_tensor_dims(path: &Path, name: &str, dims: &[usize]) {
    let mut bytes = std::fs::read(path).unwrap();
    // A tensor descriptor: the name (u64 length, bytes), u32 n_dims, n_dims × u64 (innermost
    // first), u32 type, u64 offset.
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(needle.len())
        .rposition(|w| w == needle)
        .unwrap_or_else(|| panic!("no tensor {name} in {}", path.display()))
        + needle.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    assert_eq!(n_dims, dims.len(), "{name} has {n_dims} dimensions");
    for (i, &d) in dims.iter().rev().enumerate() {
        let p = at + 4 + 8 * i;
        bytes[p..p + 8].copy_from_slice(&(d as u64).to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}
