//! The upstream application's shape, which zerobatch replaces: the FastAPI + `transformers`
//! GPT-2 app's `POST /generate {"text": ...}` → `{"generated_text": prompt + continuation}`,
//! 35 tokens in all, sampled as its `pipeline("text-generation")` sampled: with the model's
//! own settings (`generation_config.json`, `task_specific_params`), else top-k 50.

use serde::Deserialize;
use serde_json::{json, Value};

use super::generation::{AnswerContext, Collected, Format, GenerateCall, Sampling};
use crate::error::ServiceError;
use crate::generate::sampling::SamplingDefaults;
use crate::generate::service::{GenerateRequest, Length, Prompt};

/// The upstream application's total length (prompt + continuation), in tokens.
pub const MAX_LENGTH: usize = 35;
/// The upstream application's top-k (GPT-2's `task_specific_params`).
pub const TOP_K: usize = 50;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamRequest {
    text: String,
}

/// Whether a `/generate` body is in this shape (`text` and no `inputs`) rather than TGI's.
pub fn is_upstream(value: &Value) -> bool {
    value.get("text").is_some() && value.get("inputs").is_none()
}

/// Parses a body, sampling with the model's `defaults`.
pub fn parse(value: Value, defaults: &SamplingDefaults) -> Result<GenerateCall, ServiceError> {
    let r: UpstreamRequest = serde_json::from_value(value)
        .map_err(|e| ServiceError::Invalid(format!("invalid JSON body: {e}")))?;
    let d = defaults;
    let params = Sampling {
        do_sample: Some(d.do_sample.unwrap_or(true)),
        temperature: d.temperature,
        top_k: Some(d.top_k.unwrap_or(TOP_K) as i64),
        top_p: d.top_p,
        typical_p: d.typical_p,
        min_p: d.min_p,
        repetition_penalty: d.repetition_penalty,
        seed: None,
    }
    .checked(true)?;
    Ok(GenerateCall {
        request: GenerateRequest {
            prompt: Prompt::Text(r.text),
            params,
            length: Length::Total(MAX_LENGTH),
            stop: Vec::new(),
            ignore_eos: false,
            grammar: None,
            tools: None,
            split_reasoning: None,
            logit_bias: Vec::new(),
        },
        format: Format::Upstream,
        stream: false,
    })
}

/// The answer: the prompt and its continuation.
pub fn whole(a: &AnswerContext, c: &Collected) -> Value {
    json!({ "generated_text": format!("{}{}", a.prompt_text, c.text()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_top_k_50_and_35_tokens_in_all_unless_the_model_says_otherwise() {
        let v = || serde_json::json!({"text": "Hello"});
        let c = parse(v(), &SamplingDefaults::default()).unwrap();
        assert_eq!(c.format, Format::Upstream);
        assert!(c.request.params.do_sample);
        assert_eq!(c.request.params.top_k, Some(50));
        assert_eq!(c.request.length, Length::Total(35));
        let d = SamplingDefaults {
            temperature: Some(0.7),
            top_k: Some(10),
            top_p: Some(0.9),
            ..SamplingDefaults::default()
        };
        let p = parse(v(), &d).unwrap().request.params;
        assert!(p.do_sample);
        assert_eq!(
            (p.temperature, p.top_k, p.top_p),
            (0.7, Some(10), Some(0.9))
        );
        let greedy = SamplingDefaults {
            do_sample: Some(false),
            ..d
        };
        assert!(!parse(v(), &greedy).unwrap().request.params.do_sample);
        let e = parse(serde_json::json!({"text": "a", "temperature": 1}), &greedy).unwrap_err();
        assert!(e.to_string().contains("temperature"), "{e}");
    }
}
