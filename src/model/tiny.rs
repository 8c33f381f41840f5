//! A tiny BERT with random weights (fixed seed) and a WordPiece tokenizer built in code,
//! written in Hugging Face layout, so that tests and benchmarks run a real forward pass in
//! milliseconds without downloading anything.
//!
//! Every file is written beside its destination and renamed into place (see `weights.rs`:
//! model files are replaced by rename, never rewritten in place), so writing the model again
//! while a server maps it is safe.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

/// Shape of the generated model. Small enough for debug-build tests, big enough to have
/// several heads, layers and a maximum length that tests can exceed.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// `max_position_embeddings`.
    pub max_positions: usize,
    /// `max_seq_length` in `sentence_bert_config.json`.
    pub max_seq_length: usize,
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            hidden: 32,
            layers: 2,
            heads: 4,
            intermediate: 64,
            max_positions: 64,
            max_seq_length: 48,
            seed: 42,
        }
    }
}

const SPECIAL: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
const WORDS: &[&str] = &[
    "the", "a", "an", "man", "woman", "is", "are", "eating", "food", "dog", "cat", "runs", "in",
    "park", "hello", "world", "fast", "server", "batch", "model", "and", "of", "to", "on", "with",
    "cafe", "naive", "over", "under", "quick", "brown", "fox", "jumps", "lazy",
];

fn vocabulary() -> Vec<String> {
    let mut v: Vec<String> = SPECIAL.iter().map(|s| s.to_string()).collect();
    v.extend(WORDS.iter().map(|s| s.to_string()));
    for c in ('a'..='z').chain('0'..='9') {
        v.push(c.to_string());
        v.push(format!("##{c}"));
    }
    for p in ".,!?;:'\"()-/".chars() {
        v.push(p.to_string());
    }
    v
}

/// SplitMix64: a tiny, fixed, well-mixed generator so the weights are the same everywhere.
struct SplitMix(u64);

impl SplitMix {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Writes `path` through `write(temporary path)`: a new file beside `path`, then renamed over
/// it, so that a reader sees the old file or the new one, never a partial or rewritten one.
pub fn replace_file(
    path: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{}: not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write(&tmp).and_then(|()| Ok(std::fs::rename(&tmp, path)?));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| e.context(format!("writing {}", path.display())))
}

fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> anyhow::Result<()> {
    replace_file(path, |tmp| Ok(std::fs::write(tmp, contents)?))
}

/// Writes a complete sentence-transformers model directory to `dir`.
pub fn write_tiny_bert(dir: &Path, spec: &TinySpec) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("1_Pooling"))?;
    let vocab = vocabulary();
    let (h, i) = (spec.hidden, spec.intermediate);
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
        "hidden_size": h, "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
        "intermediate_size": i, "max_position_embeddings": spec.max_positions,
        "type_vocab_size": 2, "vocab_size": vocab.len(), "layer_norm_eps": 1e-12,
        "pad_token_id": 0, "position_embedding_type": "absolute"
    });
    write_file(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    write_file(
        &dir.join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
{"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
{"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
    )?;
    write_file(
        &dir.join("1_Pooling/config.json"),
        format!(
            r#"{{"word_embedding_dimension":{h},"pooling_mode_cls_token":false,"pooling_mode_mean_tokens":true}}"#
        ),
    )?;
    write_file(
        &dir.join("sentence_bert_config.json"),
        format!(
            r#"{{"max_seq_length":{},"do_lower_case":false}}"#,
            spec.max_seq_length
        ),
    )?;

    let mut rng = SplitMix(spec.seed);
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut add = |name: String, dims: &[usize], scale: f32, offset: f32| -> anyhow::Result<()> {
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|_| offset + scale * rng.next_f32()).collect();
        tensors.push((name, Tensor::from_vec(data, dims, &Device::Cpu)?));
        Ok(())
    };
    add(
        "embeddings.word_embeddings.weight".into(),
        &[vocab.len(), h],
        0.5,
        0.0,
    )?;
    add(
        "embeddings.position_embeddings.weight".into(),
        &[spec.max_positions, h],
        0.1,
        0.0,
    )?;
    add(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, h],
        0.1,
        0.0,
    )?;
    add("embeddings.LayerNorm.weight".into(), &[h], 0.1, 1.0)?;
    add("embeddings.LayerNorm.bias".into(), &[h], 0.1, 0.0)?;
    for l in 0..spec.layers {
        let p = format!("encoder.layer.{l}");
        for part in ["query", "key", "value"] {
            add(
                format!("{p}.attention.self.{part}.weight"),
                &[h, h],
                0.3,
                0.0,
            )?;
            add(format!("{p}.attention.self.{part}.bias"), &[h], 0.1, 0.0)?;
        }
        add(
            format!("{p}.attention.output.dense.weight"),
            &[h, h],
            0.3,
            0.0,
        )?;
        add(format!("{p}.attention.output.dense.bias"), &[h], 0.1, 0.0)?;
        add(
            format!("{p}.attention.output.LayerNorm.weight"),
            &[h],
            0.1,
            1.0,
        )?;
        add(
            format!("{p}.attention.output.LayerNorm.bias"),
            &[h],
            0.1,
            0.0,
        )?;
        add(format!("{p}.intermediate.dense.weight"), &[i, h], 0.3, 0.0)?;
        add(format!("{p}.intermediate.dense.bias"), &[i], 0.1, 0.0)?;
        add(format!("{p}.output.dense.weight"), &[h, i], 0.3, 0.0)?;
        add(format!("{p}.output.dense.bias"), &[h], 0.1, 0.0)?;
        add(format!("{p}.output.LayerNorm.weight"), &[h], 0.1, 1.0)?;
        add(format!("{p}.output.LayerNorm.bias"), &[h], 0.1, 0.0)?;
    }
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    replace_file(&dir.join("model.safetensors"), |tmp| {
        Ok(candle_core::safetensors::save(&map, tmp)?)
    })?;

    write_tokenizer(&vocab, &dir.join("tokenizer.json"))
}

fn write_tokenizer(vocab: &[String], path: &Path) -> anyhow::Result<()> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    use tokenizers::{AddedToken, Tokenizer};

    let ids: tokenizers::models::bpe::Vocab = vocab
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), i as u32))
        .collect();
    let model = WordPiece::builder()
        .vocab(ids)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| anyhow::anyhow!("wordpiece: {e}"))?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), 3),
            ("[CLS]".into(), 2),
        )))
        // BERT's: joins `##` pieces, no space before punctuation (for `/decode`).
        .with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    let special: Vec<AddedToken> = SPECIAL.iter().map(|s| AddedToken::from(*s, true)).collect();
    tokenizer.add_special_tokens(&special);
    replace_file(path, |tmp| {
        tokenizer
            .save(tmp, false)
            .map_err(|e| anyhow::anyhow!("saving tokenizer: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tiny_model_loads_and_its_tokenizer_splits_words() {
        let dir = std::env::temp_dir().join(format!("zb-tiny-{}", std::process::id()));
        write_tiny_bert(&dir, &TinySpec::default()).unwrap();
        let loaded = crate::model::load(dir.to_str().unwrap(), "main", |_, _| {}).unwrap();
        assert_eq!(loaded.info.dimensions, 32);
        assert_eq!(loaded.info.max_input_length, 48);
        assert!(loaded.info.normalized_by_model);
        let ids = loaded
            .tokenizer
            .encode(0, "A man is eating food.", true)
            .unwrap();
        // [CLS] a man is eating food . [SEP]
        assert_eq!(ids.len(), 8);
        assert_eq!((ids[0], ids[7]), (2, 3));
        let v = loaded.model.embed(&[&ids], 1).unwrap();
        assert_eq!(v[0].len(), 32);
        assert!(v[0].iter().all(|x| x.is_finite()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Writing the model again over a served one replaces the files by rename: the loaded
    /// model keeps its weights (its mapping is of the old file), the new load sees the new
    /// weights, and no temporary file is left behind.
    #[test]
    fn writing_over_a_served_model_replaces_its_files_by_rename() {
        let dir = std::env::temp_dir().join(format!("zb-tiny-rename-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_tiny_bert(&dir, &TinySpec::default()).unwrap();
        let weights = dir.join("model.safetensors");
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let before = inode(&weights);
        let served = crate::model::load(dir.to_str().unwrap(), "main", |_, _| {}).unwrap();
        let ids = [2u32, 7, 9, 3];
        let old = served.model.embed(&[&ids], 1).unwrap();
        let spec = TinySpec {
            seed: 7,
            ..TinySpec::default()
        };
        write_tiny_bert(&dir, &spec).unwrap();
        assert_ne!(
            inode(&weights),
            before,
            "a new file, not the old one rewritten"
        );
        assert_eq!(served.model.embed(&[&ids], 1).unwrap(), old);
        let fresh = crate::model::load(dir.to_str().unwrap(), "main", |_, _| {}).unwrap();
        assert_ne!(fresh.model.embed(&[&ids], 1).unwrap(), old);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
