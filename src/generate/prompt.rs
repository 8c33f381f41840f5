//! A conversation to the ids the model reads: the chat template's markup keeps its control
//! tokens, and what the users wrote stays text.
//!
//! Tokenizing the rendered prompt as a whole would read `<|im_end|>` typed in a message as the
//! control token that ends a turn, so a user could forge turns (a system message, an
//! assistant's answer). Here a message's content is tokenized as the plain text it is, and
//! only the template's own markup yields control tokens. Contents that spell no control
//! token (nearly all) take the plain path: the whole prompt tokenized at once, as before.
//! `--parse-special-in-chat` restores the old reading for those who rely on it.

use super::chat::{ChatMessage, ChatTemplate, TemplateKwargs};
use super::tokenizer::GenTokenizer;
use crate::error::ServiceError;

/// The rendered prompt for `messages` (the assistant's turn opened, `kwargs` as further
/// template variables) and its ids.
///
/// # Errors
///
/// `Invalid` when the template refuses the messages, when a role spells a control token,
/// when a content spells one and the template does not copy contents as they are (so the
/// content cannot be told from the markup), or when tokenizing fails.
pub fn chat_prompt(
    template: &ChatTemplate,
    tokenizer: &GenTokenizer,
    messages: &[ChatMessage],
    kwargs: &TemplateKwargs,
    parse_special: bool,
) -> Result<(String, Vec<u32>), ServiceError> {
    let text = template
        .render(messages, true, kwargs)
        .map_err(ServiceError::Invalid)?;
    let tokenize_failed = |e: super::tokenizer::GenTokenizerError| {
        ServiceError::Invalid(format!("the prompt cannot be tokenized: {e}"))
    };
    if parse_special {
        let ids = tokenizer.encode(&text, false).map_err(tokenize_failed)?;
        return Ok((text, ids));
    }
    // The control token spelled first in `s` (the one a reader of the message sees first).
    let spelled = |s: &str| {
        tokenizer
            .special_texts()
            .filter_map(|t| Some((s.find(t)?, t)))
            .min()
            .map(|(_, t)| t)
    };
    for (i, m) in messages.iter().enumerate() {
        if let Some(token) = spelled(&m.role) {
            return Err(ServiceError::Invalid(format!(
                "messages[{i}].role spells the control token {token:?}; a role is a plain name such as \"user\""
            )));
        }
        // Calls, ids and names are written by the template as they are (arguments as JSON):
        // none may spell a control token.
        let calls = m
            .tool_calls
            .as_ref()
            .map(|c| serde_json::Value::from(c.clone()).to_string());
        for (field, text) in [
            ("tool_calls", calls.as_deref()),
            ("tool_call_id", m.tool_call_id.as_deref()),
            ("name", m.name.as_deref()),
        ] {
            if let Some(token) = text.and_then(spelled) {
                return Err(ServiceError::Invalid(format!(
                    "messages[{i}].{field} spells the control token {token:?}"
                )));
            }
        }
    }
    let Some((first, token)) = messages
        .iter()
        .enumerate()
        .find_map(|(i, m)| Some((i, spelled(&m.content)?)))
    else {
        let ids = tokenizer.encode(&text, false).map_err(tokenize_failed)?;
        return Ok((text, ids));
    };
    let Some(spans) = template.content_spans(messages, true, kwargs, &text) else {
        return Err(ServiceError::Invalid(format!(
            "messages[{first}].content spells the control token {token:?}, and this model's chat template changes message contents, so the server cannot keep it as plain text; remove it (or start the server with --parse-special-in-chat to read it as the control token)"
        )));
    };
    let ids = tokenizer
        .encode_with_plain_spans(&text, &spans)
        .map_err(tokenize_failed)?;
    Ok((text, ids))
}
