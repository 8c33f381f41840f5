//! The structured-output fields of the generation bodies, read into one [`Grammar`]:
//!
//! - OpenAI's `response_format` (chat and completions): `{"type": "text"}` (none),
//!   `{"type": "json_object"}`, `{"type": "json_schema", "json_schema": {"name", "schema",
//!   "strict"}}`; and TGI's chat shapes of it, `{"type": "json", "value": <schema>}` (also
//!   `json_object` with a `value`) and `{"type": "regex", "value": "..."}`;
//! - vLLM's `structured_outputs` (chat and completions): one of `json` (a schema, or its
//!   text), `regex`, `grammar` (Lark), `choice` (a list of strings), `json_object: true`;
//! - TGI's `parameters.grammar`: `{"type": "json" | "json_schema" | "regex" | "lark",
//!   "value": ...}`.
//!
//! Lark is llguidance's grammar syntax (a superset of the common Lark subset, with
//! `%json {...}` to embed a schema); llama.cpp's GBNF is not accepted.

use serde::Deserialize;
use serde_json::Value;

use super::generation::bad;
use crate::error::ServiceError;
use crate::generate::grammar::Grammar;

/// A schema given as an object (or `true`/`false`), or as its JSON text.
fn schema(field: &str, value: Value) -> Result<Grammar, ServiceError> {
    let value = match value {
        Value::String(text) => serde_json::from_str(&text)
            .map_err(|e| bad(format!("{field} is not a JSON schema: {e}")))?,
        v => v,
    };
    match value {
        Value::Object(_) | Value::Bool(_) => Ok(Grammar::JsonSchema(value)),
        other => Err(bad(format!(
            "{field} must be a JSON schema (an object), got {}",
            kind(&other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn text(field: &str, value: Value) -> Result<String, ServiceError> {
    match value {
        Value::String(s) if !s.is_empty() => Ok(s),
        Value::String(_) => Err(bad(format!("{field} must not be empty"))),
        other => Err(bad(format!(
            "{field} must be a string, got {}",
            kind(&other)
        ))),
    }
}

/// OpenAI's `json_schema` object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JsonSchemaSpec {
    #[allow(dead_code)]
    name: Option<String>,
    #[allow(dead_code)]
    description: Option<String>,
    schema: Option<Value>,
    /// Always strict here: the grammar is enforced whatever it says.
    #[allow(dead_code)]
    strict: Option<bool>,
}

/// `response_format`, as OpenAI and TGI's chat route write it.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum ResponseFormat {
    Text,
    JsonObject {
        /// TGI's chat shape carries a schema here.
        value: Option<Value>,
    },
    JsonSchema {
        json_schema: JsonSchemaSpec,
    },
    /// TGI's.
    Json {
        value: Value,
    },
    /// TGI's.
    Regex {
        value: Value,
    },
}

impl ResponseFormat {
    /// The grammar it asks for (`None` for text).
    pub fn grammar(self) -> Result<Option<Grammar>, ServiceError> {
        Ok(match self {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject { value: None } => Some(Grammar::JsonObject),
            ResponseFormat::JsonObject { value: Some(v) } | ResponseFormat::Json { value: v } => {
                Some(schema("response_format.value", v)?)
            }
            ResponseFormat::JsonSchema { json_schema } => Some(match json_schema.schema {
                Some(v) => schema("response_format.json_schema.schema", v)?,
                None => Grammar::JsonObject,
            }),
            ResponseFormat::Regex { value } => {
                Some(Grammar::Regex(text("response_format.value", value)?))
            }
        })
    }
}

/// vLLM's `structured_outputs`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct StructuredOutputs {
    json: Option<Value>,
    regex: Option<String>,
    grammar: Option<String>,
    choice: Option<Vec<String>>,
    #[serde(default)]
    json_object: bool,
}

impl StructuredOutputs {
    /// The one grammar it names.
    pub fn grammar(self) -> Result<Option<Grammar>, ServiceError> {
        let given = [
            self.json.is_some(),
            self.regex.is_some(),
            self.grammar.is_some(),
            self.choice.is_some(),
            self.json_object,
        ]
        .iter()
        .filter(|&&g| g)
        .count();
        if given > 1 {
            return Err(bad(
                "structured_outputs takes one of json, regex, grammar, choice and json_object",
            ));
        }
        Ok(if let Some(v) = self.json {
            Some(schema("structured_outputs.json", v)?)
        } else if let Some(r) = self.regex {
            Some(Grammar::Regex(text("structured_outputs.regex", r.into())?))
        } else if let Some(g) = self.grammar {
            Some(Grammar::Lark(text("structured_outputs.grammar", g.into())?))
        } else if let Some(choice) = self.choice {
            if choice.is_empty() || choice.iter().any(String::is_empty) {
                return Err(bad(
                    "structured_outputs.choice must hold at least one non-empty string",
                ));
            }
            let alternatives: Vec<String> = choice.iter().map(|c| escape_regex(c)).collect();
            Some(Grammar::Regex(format!("({})", alternatives.join("|"))))
        } else if self.json_object {
            Some(Grammar::JsonObject)
        } else {
            None
        })
    }
}

/// `text` as a regular expression that matches it literally (Rust `regex` syntax).
fn escape_regex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// TGI's `parameters.grammar`.
#[derive(Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub(super) enum TgiGrammar {
    Json(Value),
    JsonSchema(Value),
    Regex(Value),
    Lark(Value),
}

impl TgiGrammar {
    pub fn grammar(self) -> Result<Grammar, ServiceError> {
        match self {
            TgiGrammar::Json(v) | TgiGrammar::JsonSchema(v) => schema("grammar.value", v),
            TgiGrammar::Regex(v) => Ok(Grammar::Regex(text("grammar.value", v)?)),
            TgiGrammar::Lark(v) => Ok(Grammar::Lark(text("grammar.value", v)?)),
        }
    }
}

/// The grammar of an OpenAI-shaped body: `response_format` or `structured_outputs`, not both.
pub(super) fn openai_grammar(
    response_format: Option<ResponseFormat>,
    structured: Option<StructuredOutputs>,
) -> Result<Option<Grammar>, ServiceError> {
    let a = response_format
        .map(ResponseFormat::grammar)
        .transpose()?
        .flatten();
    let b = structured
        .map(StructuredOutputs::grammar)
        .transpose()?
        .flatten();
    match (a, b) {
        (Some(_), Some(_)) => Err(bad("give response_format or structured_outputs, not both")),
        (a, b) => Ok(a.or(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rf(v: Value) -> Result<Option<Grammar>, ServiceError> {
        serde_json::from_value::<ResponseFormat>(v)
            .map_err(|e| bad(e.to_string()))?
            .grammar()
    }

    #[test]
    fn response_formats_read_as_grammars() {
        assert_eq!(rf(json!({"type": "text"})).unwrap(), None);
        assert_eq!(
            rf(json!({"type": "json_object"})).unwrap(),
            Some(Grammar::JsonObject)
        );
        let s = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(
            rf(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": s, "strict": true}}))
                .unwrap(),
            Some(Grammar::JsonSchema(s.clone()))
        );
        assert_eq!(
            rf(json!({"type": "json", "value": s})).unwrap(),
            Some(Grammar::JsonSchema(s.clone()))
        );
        assert_eq!(
            rf(json!({"type": "regex", "value": "[ab]+"})).unwrap(),
            Some(Grammar::Regex("[ab]+".into()))
        );
        assert!(rf(json!({"type": "xml"})).is_err());
        assert!(rf(json!({"type": "json_schema", "json_schema": {"schema": 3}})).is_err());
    }

    #[test]
    fn structured_outputs_take_one_kind() {
        let so = |v: Value| {
            serde_json::from_value::<StructuredOutputs>(v)
                .unwrap()
                .grammar()
        };
        assert_eq!(
            so(json!({"choice": ["yes", "no (maybe)"]})).unwrap(),
            Some(Grammar::Regex(r"(yes|no \(maybe\))".into()))
        );
        assert_eq!(
            so(json!({"grammar": "start: \"a\""})).unwrap(),
            Some(Grammar::Lark("start: \"a\"".into()))
        );
        assert_eq!(
            so(json!({"json": "{\"type\": \"string\"}"})).unwrap(),
            Some(Grammar::JsonSchema(json!({"type": "string"})))
        );
        assert!(so(json!({"regex": "a", "grammar": "start: \"a\""})).is_err());
    }

    #[test]
    fn tgi_grammars_read() {
        let g = |v: Value| serde_json::from_value::<TgiGrammar>(v).unwrap().grammar();
        assert_eq!(
            g(json!({"type": "regex", "value": "\\d+"})).unwrap(),
            Grammar::Regex("\\d+".into())
        );
        assert_eq!(
            g(json!({"type": "json", "value": {"type": "object"}})).unwrap(),
            Grammar::JsonSchema(json!({"type": "object"}))
        );
        assert!(g(json!({"type": "json", "value": [1]})).is_err());
        assert!(g(json!({"type": "regex", "value": ""})).is_err());
    }
}
