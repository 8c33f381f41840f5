//! The hyperparameters of the Llama family, as llama.cpp reads them from a GGUF file's
//! `{arch}.*` keys (`llama_model_base::load_hparams`), checked before anything is sized by them.

use crate::generate::gguf::{GgufError, GgufFile};
use crate::generate::kv_cache::CacheShape;

/// Largest sizes accepted from a file's metadata (guards against absurd allocations).
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS: usize = 512;
pub(super) const MAX_VOCAB: usize = 1 << 20;
const MAX_CONTEXT: usize = 1 << 20;

/// Hyperparameters read from the GGUF metadata (`{arch}.*`, the keys llama.cpp reads).
#[derive(Debug, Clone)]
pub struct Hparams {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Values per query, key and value head: `{arch}.attention.key_length`, else
    /// `n_embd / n_head` (Qwen3's heads are wider than that).
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab: usize,
    pub context: usize,
    pub rope_base: f32,
    /// Positions are multiplied by this before rotating (`1 / rope.scaling.factor` for linear
    /// scaling, else 1).
    pub rope_freq_scale: f32,
    /// Values of each query and key head that rotate, the first ones of the head
    /// (`rope.dimension_count`, else the whole head; Phi-3 and Phi-4-mini rotate part of it).
    pub n_rot: usize,
    /// Multiplies the rotated values (`rope.scaling.attn_factor`, else 1; LongRoPE's
    /// attention factor, as llama.cpp scales its RoPE cos and sin by it).
    pub rope_attn_factor: f32,
    pub rms_eps: f32,
    /// Keys and values are cached in f16 (as llama.cpp does; with quantized weights), else in
    /// f32 (with f32 weights, so that f32 runs match the reference to 1e-4).
    pub kv_f16: bool,
}

impl Hparams {
    /// Reads and checks the hyperparameters of architecture `arch`.
    pub fn read(file: &GgufFile, arch: &str) -> Result<Self, GgufError> {
        let key = |k: &str| format!("{arch}.{k}");
        let bad = |k: &str, why: String| GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: key(k),
            problem: why,
        };
        let n_embd = file.size(&key("embedding_length"), MAX_DIM)?;
        let n_head = file.size(&key("attention.head_count"), MAX_DIM)?;
        let n_head_kv = match file.uint_opt(&key("attention.head_count_kv"))? {
            Some(_) => file.size(&key("attention.head_count_kv"), MAX_DIM)?,
            None => n_head,
        };
        if !n_head.is_multiple_of(n_head_kv) {
            return Err(bad(
                "attention.head_count_kv",
                format!("({n_head_kv}) does not divide head_count {n_head}"),
            ));
        }
        let head_dim = match file.uint_opt(&key("attention.key_length"))? {
            Some(_) => file.size(&key("attention.key_length"), MAX_DIM)?,
            None if n_embd.is_multiple_of(n_head) => n_embd / n_head,
            None => {
                return Err(bad(
                    "attention.head_count",
                    format!("({n_head}) does not split embedding_length {n_embd} into heads, and attention.key_length is not set"),
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(bad(
                "attention.key_length",
                format!("makes heads of {head_dim} values; rotary attention needs an even size"),
            ));
        }
        if let Some(v) = file.uint_opt(&key("attention.value_length"))? {
            if v as usize != head_dim {
                return Err(bad(
                    "attention.value_length",
                    format!("is {v}; only value heads as wide as the key heads ({head_dim}) are supported"),
                ));
            }
        }
        let n_rot = match file.uint_opt(&key("rope.dimension_count"))? {
            Some(rot) if rot as usize <= head_dim && rot % 2 == 0 && rot > 0 => rot as usize,
            Some(rot) => {
                return Err(bad(
                    "rope.dimension_count",
                    format!("is {rot}; it must be even and at most the head size ({head_dim})"),
                ))
            }
            None => head_dim,
        };
        let rope_attn_factor = match file.value(&key("rope.scaling.attn_factor")) {
            Some(_) => file.float(&key("rope.scaling.attn_factor"))?,
            None => 1.0,
        };
        if !(rope_attn_factor.is_finite() && rope_attn_factor > 0.0) {
            return Err(bad(
                "rope.scaling.attn_factor",
                format!("is {rope_attn_factor}; it must be positive"),
            ));
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
            rope_freq_scale: rope_freq_scale(file, arch)?,
            n_rot,
            rope_attn_factor,
            rms_eps,
            kv_f16: true,
        })
    }

    /// What RoPE reads of the hyperparameters.
    pub fn rope(&self) -> crate::kernels::rope::RopeParams {
        crate::kernels::rope::RopeParams {
            n_rot: self.n_rot,
            head_dim: self.head_dim,
            base: self.rope_base,
            freq_scale: self.rope_freq_scale,
            attn_factor: self.rope_attn_factor,
        }
    }

    /// Width of all query heads side by side.
    pub fn q_width(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of the fused Q, K and V projection.
    pub(super) fn qkv_width(&self) -> usize {
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

/// The position scale of `{arch}.rope.scaling.*`, as llama.cpp reads it: no scaling, or linear
/// scaling by `factor` (older files: `rope.scale_linear`). Other kinds (YaRN, LongRoPE) change
/// the angles of every position, so a file that asks for one is refused rather than run
/// wrongly.
fn rope_freq_scale(file: &GgufFile, arch: &str) -> Result<f32, GgufError> {
    let kind_key = format!("{arch}.rope.scaling.type");
    let kind = file.string_opt(&kind_key)?.unwrap_or("linear");
    if !matches!(kind, "none" | "linear") {
        return Err(GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: kind_key,
            problem: format!(
                "is {kind:?}; this server runs RoPE without scaling or with linear scaling"
            ),
        });
    }
    let mut factor = 0.0;
    for k in ["rope.scaling.factor", "rope.scale_linear"] {
        let k = format!("{arch}.{k}");
        if file.value(&k).is_some() {
            factor = file.float(&k)?;
            break;
        }
    }
    if kind == "none" || factor == 0.0 {
        return Ok(1.0);
    }
    if !(factor.is_finite() && factor > 0.0) {
        return Err(GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: format!("{arch}.rope.scaling.factor"),
            problem: format!("is {factor}; it must be positive"),
        });
    }
    Ok(1.0 / factor)
}
