//! Sentence-transformers pooling: how per-token vectors become one vector per input, read
//! from the model's `1_Pooling/config.json`, and L2 normalisation.

use serde::Deserialize;

use super::ModelError;

/// How token vectors are combined into a sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Average of the real (unpadded) tokens, special tokens included, as sentence-transformers does.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// Element-wise maximum over the real tokens.
    Max,
    /// Sum of the real tokens divided by √length.
    MeanSqrtLen,
    /// The last real token.
    LastToken,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    /// Whether a prompt's tokens are pooled with the text's (sentence-transformers' default).
    #[serde(default = "yes")]
    include_prompt: bool,
}

fn yes() -> bool {
    true
}

impl Pooling {
    /// Reads a sentence-transformers pooling config. Exactly one mode must be on: combined
    /// modes concatenate vectors, which no model we serve uses.
    pub fn from_config_json(text: &str) -> Result<Self, ModelError> {
        let c: PoolingConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("1_Pooling/config.json: {e}")))?;
        if c.pooling_mode_weightedmean_tokens {
            return Err(ModelError::Unsupported(
                "1_Pooling/config.json enables pooling_mode_weightedmean_tokens, which this server does not implement (it pools with cls, mean, max, mean_sqrt_len_tokens or lasttoken)".into(),
            ));
        }
        if !c.include_prompt {
            return Err(ModelError::Unsupported(
                "1_Pooling/config.json sets include_prompt false (pooling without the prompt's tokens), which this server does not implement".into(),
            ));
        }
        let modes = [
            (c.pooling_mode_mean_tokens, Pooling::Mean),
            (c.pooling_mode_cls_token, Pooling::Cls),
            (c.pooling_mode_max_tokens, Pooling::Max),
            (c.pooling_mode_mean_sqrt_len_tokens, Pooling::MeanSqrtLen),
            (c.pooling_mode_lasttoken, Pooling::LastToken),
        ];
        let on: Vec<Pooling> = modes
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, p)| *p)
            .collect();
        match on.as_slice() {
            [one] => Ok(*one),
            [] => Err(ModelError::Config("1_Pooling/config.json enables no pooling mode".into())),
            _ => Err(ModelError::Config(format!(
                "1_Pooling/config.json enables several pooling modes ({on:?}); only one is supported"
            ))),
        }
    }

    /// What an embedding model answers for the rows `[len × hidden]` of one sequence: the
    /// pooled vector, or (`every_token`, TEI's `/embed_all`) every row as it is.
    pub fn answer(self, rows: &[f32], hidden: usize, every_token: bool) -> Vec<f32> {
        if every_token {
            return rows.to_vec();
        }
        let mut out = Vec::with_capacity(hidden);
        self.pool(rows, hidden, &mut out);
        out
    }

    /// Pools the rows `[len × hidden]` of one sequence (only its real tokens) into `out`.
    pub fn pool(self, rows: &[f32], hidden: usize, out: &mut Vec<f32>) {
        let len = rows.len() / hidden;
        debug_assert!(len >= 1 && rows.len() == len * hidden);
        out.clear();
        match self {
            Pooling::Cls => out.extend_from_slice(&rows[..hidden]),
            Pooling::LastToken => out.extend_from_slice(&rows[(len - 1) * hidden..]),
            Pooling::Mean | Pooling::MeanSqrtLen => {
                out.resize(hidden, 0.0);
                for row in rows.chunks_exact(hidden) {
                    for (o, v) in out.iter_mut().zip(row) {
                        *o += v;
                    }
                }
                let div = if self == Pooling::Mean {
                    len as f32
                } else {
                    (len as f32).sqrt()
                };
                out.iter_mut().for_each(|o| *o /= div);
            }
            Pooling::Max => {
                out.extend_from_slice(&rows[..hidden]);
                for row in rows.chunks_exact(hidden).skip(1) {
                    for (o, v) in out.iter_mut().zip(row) {
                        *o = o.max(*v);
                    }
                }
            }
        }
    }
}

/// Scales `v` to unit L2 norm, as sentence-transformers' `Normalize` module does (a zero vector
/// stays zero rather than becoming NaN).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let norm = norm.max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROWS: [f32; 6] = [1.0, -2.0, 3.0, 4.0, 5.0, -6.0];

    fn pooled(p: Pooling) -> Vec<f32> {
        let mut out = Vec::new();
        p.pool(&ROWS, 2, &mut out);
        out
    }

    #[test]
    fn every_mode_pools_as_sentence_transformers_does() {
        assert_eq!(pooled(Pooling::Mean), vec![3.0, -4.0 / 3.0]);
        assert_eq!(pooled(Pooling::Cls), vec![1.0, -2.0]);
        assert_eq!(pooled(Pooling::LastToken), vec![5.0, -6.0]);
        assert_eq!(pooled(Pooling::Max), vec![5.0, 4.0]);
        let s = 3f32.sqrt();
        assert_eq!(pooled(Pooling::MeanSqrtLen), vec![9.0 / s, -4.0 / s]);
    }

    #[test]
    fn an_answer_is_the_pooled_vector_or_every_row() {
        for p in [Pooling::Mean, Pooling::Cls, Pooling::LastToken] {
            assert_eq!(p.answer(&ROWS, 2, false), pooled(p));
            assert_eq!(p.answer(&ROWS, 2, true), ROWS.to_vec());
        }
    }

    #[test]
    fn reads_the_mode_from_the_config_and_refuses_combinations() {
        let mean = r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true}"#;
        assert_eq!(Pooling::from_config_json(mean).unwrap(), Pooling::Mean);
        let cls = r#"{"pooling_mode_cls_token": true}"#;
        assert_eq!(Pooling::from_config_json(cls).unwrap(), Pooling::Cls);
        let both = r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#;
        assert!(Pooling::from_config_json(both).is_err());
        assert!(Pooling::from_config_json("{}").is_err());
        let last = r#"{"pooling_mode_lasttoken": true, "include_prompt": true}"#;
        assert_eq!(Pooling::from_config_json(last).unwrap(), Pooling::LastToken);
        for (config, names) in [
            (
                r#"{"pooling_mode_weightedmean_tokens": true}"#,
                "weightedmean",
            ),
            (
                r#"{"pooling_mode_cls_token": true, "include_prompt": false}"#,
                "include_prompt",
            ),
        ] {
            let err = Pooling::from_config_json(config).unwrap_err().to_string();
            assert!(err.contains(names), "{err}");
        }
        assert!(Pooling::from_config_json("not json").is_err());
    }

    #[test]
    fn normalize_gives_unit_vectors_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0, 0.0];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0, 0.0]);
    }
}
