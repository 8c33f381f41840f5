//! Chat templates: the model's own Jinja template (GGUF `tokenizer.chat_template`) rendered
//! with minijinja, with the context Hugging Face's `apply_chat_template` gives it (`messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`, and the request's
//! `chat_template_kwargs`, as vLLM and llama.cpp's server pass them: Qwen3's
//! `enable_thinking`) and Python's string methods (`.strip()`, `.startswith()`, …) that such
//! templates call.
//!
//! The template comes from the model file, so a render is bounded: at most [`FUEL`]
//! instructions and [`MAX_RENDERED_BYTES`] of output, past which it fails with the reason
//! (a looping template used to render forever). A template is tried on sample conversations
//! when it is loaded, so one that fails on a single user message, or passes either bound on
//! a four-message conversation, fails the load instead of every chat request.

use std::io::Write;

use minijinja::{Environment, Error, ErrorKind, Value};

pub use super::chat_message::ChatMessage;
use super::reasoning::ThinkingTags;
use super::tool_syntax::ToolSyntax;

/// Most template instructions one render may run: 2 million. SmolLM2's template runs ~23
/// per message (23,015 for 1,000 messages), so this is ~87,000 messages, past what a request
/// body carries; a template that loops is stopped after 50–80 ms of CPU (release build,
/// busy 2-core Xeon).
pub const FUEL: u64 = 2_000_000;

/// Most bytes a render may produce: 16 MiB, eight times the default request body limit and
/// about 4 million tokens of text, past any context this server loads (at most 1 Mi tokens).
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

/// Extra variables for the template (a request's `chat_template_kwargs`).
pub type TemplateKwargs = serde_json::Map<String, serde_json::Value>;

/// The variables the server sets itself, which `chat_template_kwargs` may not replace.
pub const RESERVED_VARIABLES: [&str; 5] = [
    "messages",
    "add_generation_prompt",
    "bos_token",
    "eos_token",
    "raise_exception",
];

/// Checks a request's `chat_template_kwargs`: any JSON values, under names other than
/// [`RESERVED_VARIABLES`].
///
/// # Errors
///
/// Naming the first reserved variable the kwargs set.
pub fn check_kwargs(kwargs: &TemplateKwargs) -> Result<(), String> {
    match RESERVED_VARIABLES
        .iter()
        .find(|name| kwargs.contains_key(**name))
    {
        Some(name) => Err(format!(
            "chat_template_kwargs may not set {name:?}: the server sets it (settable: any other name, e.g. enable_thinking)"
        )),
        None => Ok(()),
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The function-call syntax the template teaches.
    tool_syntax: ToolSyntax,
    /// The thinking tags the template writes, if it does (a reasoning model's).
    thinking: Option<ThinkingTags>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat";

/// The render's output, refusing bytes past [`MAX_RENDERED_BYTES`].
struct Bounded {
    out: Vec<u8>,
    overflowed: bool,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("the rendered prompt is too long"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why a render failed.
enum Failure {
    /// The template passed [`FUEL`] or [`MAX_RENDERED_BYTES`].
    Unbounded(String),
    /// The template refused the messages or failed on them.
    Refused(String),
}

impl ChatTemplate {
    /// Compiles `source` and tries it on sample conversations.
    ///
    /// # Errors
    ///
    /// When the template does not parse, fails on a conversation of one user message, or
    /// passes [`FUEL`] or [`MAX_RENDERED_BYTES`] on a system, user, assistant, user one.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        // As transformers (`trim_blocks=True, lstrip_blocks=True`) and llama.cpp's Jinja
        // engine compile chat templates: a block or comment tag takes the newline after it and
        // the indentation before it (SmolLM3's template starts with comments on their own
        // lines, which otherwise put a newline before the prompt).
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.set_fuel(Some(FUEL));
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| format!("the chat template does not parse: {e}"))?;
        let template = Self {
            env,
            tool_syntax: ToolSyntax::detect(source),
            thinking: ThinkingTags::detect(source),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        };
        template.check()?;
        Ok(template)
    }

    /// The function-call syntax the template teaches ([`ToolSyntax::detect`]).
    pub fn tool_syntax(&self) -> ToolSyntax {
        self.tool_syntax
    }

    /// The thinking tags the template writes ([`ThinkingTags::detect`]): its model reasons.
    pub fn thinking(&self) -> Option<ThinkingTags> {
        self.thinking
    }

    /// Renders the sample conversations (see [`Self::new`]).
    fn check(&self) -> Result<(), String> {
        let msg = ChatMessage::new;
        let none = TemplateKwargs::new();
        match self.try_render(&[msg("user", "Hello!")], true, &none) {
            Ok(_) => {}
            Err(Failure::Unbounded(e) | Failure::Refused(e)) => {
                return Err(format!("on a conversation of one user message, {e}"))
            }
        }
        // Templates may refuse a system message or this order of roles; only the bounds
        // count here.
        let longer = [
            msg("system", "You are a helpful assistant."),
            msg("user", "Hello!"),
            msg("assistant", "Hi! How can I help?"),
            msg("user", "Tell me a joke."),
        ];
        match self.try_render(&longer, true, &none) {
            Err(Failure::Unbounded(e)) => Err(format!("on a conversation of four messages, {e}")),
            _ => Ok(()),
        }
    }

    /// The prompt for `messages`, ending with the assistant's turn opened when
    /// `add_generation_prompt`, with `kwargs` as further variables (checked by
    /// [`check_kwargs`]).
    ///
    /// # Errors
    ///
    /// When the template fails on these messages (e.g. it raises on a role order it does not
    /// accept: the message is the template's own), or passes [`FUEL`] or
    /// [`MAX_RENDERED_BYTES`].
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: &TemplateKwargs,
    ) -> Result<String, String> {
        self.try_render(messages, add_generation_prompt, kwargs)
            .map_err(|(Failure::Unbounded(e) | Failure::Refused(e))| e)
    }

    /// Where each message's content lies in `rendered` (the render of `messages`), as byte
    /// ranges; `None` when the template does not copy contents as they are.
    ///
    /// The messages are rendered once more with each content replaced by a marker no text
    /// holds (a fresh random tag); the contents put back in place of the markers must give
    /// `rendered` again, byte for byte. A template that changes a content (`| trim`, `| upper`)
    /// or decides on it (`content.startswith(...)`) fails that, and gets `None`.
    pub fn content_spans(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: &TemplateKwargs,
        rendered: &str,
    ) -> Option<Vec<std::ops::Range<usize>>> {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let marker = |i: usize| format!("\u{E000}{tag}:{i}\u{E001}");
        let marked: Vec<ChatMessage> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| ChatMessage {
                content: marker(i),
                ..m.clone()
            })
            .collect();
        let template_out = self
            .try_render(&marked, add_generation_prompt, kwargs)
            .ok()?;
        // Put the contents back where the markers are, in order of appearance.
        let mut spans = Vec::new();
        let mut rebuilt = String::with_capacity(rendered.len());
        let mut rest = template_out.as_str();
        while let Some(at) = rest.find('\u{E000}') {
            let tail = &rest[at + '\u{E000}'.len_utf8()..];
            let end = tail.find('\u{E001}')?;
            let i: usize = tail[..end]
                .strip_prefix(&tag)?
                .strip_prefix(':')?
                .parse()
                .ok()?;
            rebuilt.push_str(&rest[..at]);
            let content = &messages.get(i)?.content;
            spans.push(rebuilt.len()..rebuilt.len() + content.len());
            rebuilt.push_str(content);
            rest = &tail[end + '\u{E001}'.len_utf8()..];
        }
        rebuilt.push_str(rest);
        (rebuilt == rendered).then_some(spans)
    }

    fn try_render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: &TemplateKwargs,
    ) -> Result<String, Failure> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| Failure::Refused(e.to_string()))?;
        let mut out = Bounded {
            out: Vec::new(),
            overflowed: false,
        };
        let rendered = template.render_captured_to(
            minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
                // The server's own variables come first, so they win a clash (the front end
                // refuses one already).
                ..Value::from_serialize(kwargs)
            },
            &mut out,
        );
        match rendered {
            Ok(_) => String::from_utf8(out.out)
                .map_err(|_| Failure::Refused("the chat template rendered invalid UTF-8".into())),
            Err(_) if out.overflowed => Err(Failure::Unbounded(format!(
                "the chat template's output passed {MAX_RENDERED_BYTES} bytes"
            ))),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(Failure::Unbounded(format!(
                "the chat template ran more than {FUEL} instructions (it may loop)"
            ))),
            Err(e) => Err(Failure::Refused(match e.detail() {
                Some(d) => format!("the chat template refused the messages: {d}"),
                None => format!("the chat template refused the messages: {e}"),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's template (ChatML with a default system prompt).
    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    /// Block and comment tags take the newline after them and the indentation before them,
    /// as transformers' and llama.cpp's Jinja settings do (the rendering below is jinja2's
    /// with `trim_blocks` and `lstrip_blocks`).
    #[test]
    fn tags_on_their_own_lines_leave_no_whitespace() {
        let source = "{# a comment #}\n{% for message in messages %}\n    {% if message.role == 'user' %}\n<{{ message.content }}>\n    {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new(source, "", "").unwrap();
        let out = t
            .render(
                &[msg("user", "a"), msg("user", "b")],
                false,
                &TemplateKwargs::new(),
            )
            .unwrap();
        assert_eq!(out, "<a>\n<b>\n");
    }

    #[test]
    fn chatml_renders_like_transformers() {
        let t = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        let out = t
            .render(&[msg("user", "Hi!")], true, &TemplateKwargs::new())
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t
            .render(
                &[msg("system", "Be brief."), msg("user", "Hi")],
                false,
                &TemplateKwargs::new(),
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}{{ bos_token }}{{ messages[0].content.strip().upper() }}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        assert_eq!(
            t.render(&[msg("user", "  hey ")], true, &TemplateKwargs::new())
                .unwrap(),
            "<s>HEY"
        );
        let err = t
            .render(&[msg("assistant", "x")], true, &TemplateKwargs::new())
            .unwrap_err();
        assert!(err.contains("Conversation must start with user"), "{err}");
    }

    #[test]
    fn chat_template_kwargs_reach_the_template_but_not_the_servers_variables() {
        // Qwen3's generation prompt.
        let src = "{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let kwargs = |v: serde_json::Value| v.as_object().unwrap().clone();
        let off = kwargs(serde_json::json!({"enable_thinking": false}));
        let on = kwargs(serde_json::json!({"enable_thinking": true}));
        let hi = [msg("user", "hi")];
        assert_eq!(
            t.render(&hi, true, &off).unwrap(),
            "hi<|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
        assert_eq!(
            t.render(&hi, true, &on).unwrap(),
            "hi<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render(&hi, true, &TemplateKwargs::new()).unwrap(),
            "hi<|im_start|>assistant\n"
        );
        let spans = t.content_spans(&hi, true, &off, &t.render(&hi, true, &off).unwrap());
        // The message's content is where it is, thinking block or not.
        let spans = spans.unwrap();
        assert_eq!((spans.len(), spans[0].start, spans[0].end), (1, 0, 2));
        // The server's variables cannot be set, and even past the check they win.
        let forged = kwargs(serde_json::json!({"messages": [{"role": "user", "content": "x"}]}));
        let err = check_kwargs(&forged).unwrap_err();
        assert!(err.contains("\"messages\""), "{err}");
        assert!(check_kwargs(&off).is_ok());
        assert_eq!(t.render(&hi, false, &forged).unwrap(), "hi");
    }

    #[test]
    fn a_broken_template_is_an_error_not_a_panic() {
        assert!(ChatTemplate::new("{% for x in %}", "", "").is_err());
    }

    /// Why `source` does not load.
    fn load_error(source: &str) -> String {
        match ChatTemplate::new(source, "", "") {
            Ok(_) => panic!("{source} loaded"),
            Err(e) => e,
        }
    }

    /// Why `t` does not render `messages`.
    fn render_error(t: &ChatTemplate, messages: &[ChatMessage]) -> String {
        match t.render(messages, true, &TemplateKwargs::new()) {
            Ok(out) => panic!("rendered {} bytes", out.len()),
            Err(e) => e,
        }
    }

    /// Runs `f` on a thread; `None` if it has not finished after `limit` (a hang).
    fn within<T: Send + 'static>(
        limit: std::time::Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit).ok()
    }

    const LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

    #[test]
    fn a_template_that_loops_fails_the_load() {
        // 10¹⁰ iterations: without fuel, a render that never ends.
        let src =
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let err = within(LIMIT, || ChatTemplate::new(src, "", "").err())
            .expect("the load hung")
            .expect("the template loaded");
        assert!(err.contains("instructions"), "{err}");
    }

    #[test]
    fn a_template_that_loops_on_long_conversations_fails_those_requests() {
        // Loads (the samples are short), then runs out of fuel on 200 messages.
        let src = "{% for m in messages %}{% for i in range(100000) %}{% endfor %}{{ m.content }}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let messages = vec![msg("user", "hi"); 200];
        let err = within(LIMIT, move || render_error(&t, &messages)).expect("the render hung");
        assert!(err.contains("instructions"), "{err}");
    }

    #[test]
    fn a_render_past_the_size_bound_fails() {
        // 1 MB per message: the samples pass, 20 messages do not.
        let src = "{% for m in messages %}{{ 'x' * 1000000 }}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let err = render_error(&t, &vec![msg("user", "hi"); 20]);
        assert!(err.contains("bytes"), "{err}");
        assert_eq!(
            t.render(&[msg("user", "hi")], true, &TemplateKwargs::new())
                .unwrap()
                .len(),
            1_000_000
        );
        // Growing without looping: a string doubled in a loop is caught when written.
        let src = "{% set ns = namespace(s='x' * 100000) %}{% for i in range(9) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}";
        assert!(load_error(src).contains("bytes"));
    }

    #[test]
    fn a_template_that_fails_on_one_user_message_fails_the_load() {
        let err = load_error("{{ raise_exception('no chat here') }}");
        assert!(err.contains("no chat here"), "{err}");
        let err = load_error("{{ messages[0].content.nope() }}");
        assert!(err.contains("one user message"), "{err}");
    }

    #[test]
    fn a_template_that_refuses_system_messages_still_loads() {
        // Mistral's and Gemma's templates raise on a system message.
        let src = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}[{{ m.role }}]{{ m.content }}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(
            t.render(&[msg("user", "a")], true, &TemplateKwargs::new())
                .unwrap(),
            "[user]a"
        );
        let err = render_error(&t, &[msg("system", "s")]);
        assert!(err.contains("System role not supported"), "{err}");
    }
}
