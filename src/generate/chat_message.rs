//! A chat message as Hugging Face chat templates read it: what the API layers build, the chat
//! template renders and the function-call syntaxes (`tool_syntax/`) write, in a file of its
//! own so that those read it without reading each other.

use serde::{Deserialize, Serialize};

/// One chat message, as Hugging Face templates read it.
///
/// An assistant's earlier function calls are `tool_calls`, each `{"id", "type": "function",
/// "function": {"name", "arguments"}}` with `arguments` a JSON object (templates write it
/// with `| tojson`; vLLM and llama.cpp pass it parsed, too); a function's result is a
/// message of role `tool` with `tool_call_id` and the function's `name`. A call's content is
/// `""` (templates test it with `if message.content`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message of `role` saying `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            ..Self::default()
        }
    }
}
