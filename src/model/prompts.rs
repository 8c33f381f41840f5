//! The named prompts of a sentence-transformers model (`config_sentence_transformers.json`'s
//! `prompts`, e.g. e5's `"query": "query: "`), prepended to a text when a request names one
//! (`prompt_name`, as TEI and `SentenceTransformer.encode` take it).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ModelError;

#[derive(Deserialize)]
struct SentenceTransformersFile {
    #[serde(default)]
    prompts: BTreeMap<String, String>,
}

/// A model's prompts by name (none when it has no `config_sentence_transformers.json`, or
/// that file names none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompts(BTreeMap<String, String>);

impl Prompts {
    /// Reads `config_sentence_transformers.json`. Its `default_prompt_name` is not applied: a
    /// prompt is used only when a request names it, as TEI does.
    pub fn from_config_json(text: &str) -> Result<Self, ModelError> {
        let file: SentenceTransformersFile = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config_sentence_transformers.json: {e}")))?;
        Ok(Prompts(file.prompts))
    }

    /// The prompts' names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    /// The text of the prompt `name`, or a message for the client naming the known prompts.
    pub fn get(&self, name: &str) -> Result<&str, String> {
        match self.0.get(name) {
            Some(text) => Ok(text),
            None if self.0.is_empty() => Err(format!(
                "prompt_name {name:?}: this model has no prompts (its config_sentence_transformers.json names none)"
            )),
            None => Err(format!(
                "prompt_name {name:?} is not one of this model's prompts: {}",
                self.names().join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_read_and_unknown_names_are_explained() {
        let p = Prompts::from_config_json(
            r#"{"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": null, "__version__": {}}"#,
        )
        .unwrap();
        assert_eq!(p.get("query"), Ok("query: "));
        assert_eq!(p.names(), vec!["passage", "query"]);
        let err = p.get("doc").unwrap_err();
        assert!(
            err.contains("\"doc\"") && err.contains("passage, query"),
            "{err}"
        );
        let none =
            Prompts::from_config_json(r#"{"__version__": {"sentence_transformers": "2.0.0"}}"#)
                .unwrap();
        assert!(none.get("query").unwrap_err().contains("no prompts"));
        assert!(Prompts::from_config_json("[").is_err());
    }
}
