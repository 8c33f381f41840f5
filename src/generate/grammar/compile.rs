//! A request's grammar compiled by llguidance, once, before the request is queued: an invalid
//! or unsupported grammar is the request's error (400), never the engine's.
//!
//! Cost is bounded two ways: the grammar text is at most [`MAX_GRAMMAR_BYTES`], and
//! llguidance's [`ParserLimits`] cap the work of building the lexer (fuel), the grammar's size,
//! the lexer states (memory) and each mask's work ([`limits`]). Compiled grammars are kept
//! by their text (kind and canonical JSON or the regex / Lark text) in a least-recently-used
//! cache of at most [`CACHE_ENTRIES`] entries and a byte budget (`--grammar-cache-bytes`,
//! [`DEFAULT_CACHE_BYTES`]): agents send the same schema on every call, and a huge schema's
//! compiled grammar is megabytes. An entry's bytes are estimated ([`entry_bytes`]) and
//! updated on each use, as its lexer grows.
//!
//! JSON schemas are compiled compact (no free whitespace: `,` and `:` as separators, as
//! OpenAI's structured outputs write them) unless the schema sets llguidance's own options
//! under `"x-guidance"`: free whitespace lets a model pad forever, and costs tokens.
//! `oneOf` is read as `anyOf` (what pydantic's unions mean in practice).
//!
//! The parser factory (the trie and its slices, some tens of milliseconds on a large
//! vocabulary) is built at the first grammar, not at start-up: servers that never see one do
//! not pay for it.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use llguidance::api::{GrammarWithLexer, ParserLimits, TopLevelGrammar};
use llguidance::{ParserFactory, TokenParser};
use parking_lot::Mutex;
use serde_json::{json, Value};

pub use super::error::GrammarError;
use super::mask::Constraint;
use super::vocab;
use crate::generate::tokenizer::GenTokenizer;
use crate::metrics;

/// The longest grammar text accepted (a schema as JSON, a regex, a Lark grammar).
pub const MAX_GRAMMAR_BYTES: usize = 128 * 1024;
/// Compiled grammars kept, least recently used dropped first.
pub const CACHE_ENTRIES: usize = 32;
/// The cache's default byte budget (`--grammar-cache-bytes`): 256 MiB, some twenty of the
/// largest grammars accepted (a [`MAX_GRAMMAR_BYTES`] schema is ~11 MB compiled).
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

/// What a compiled grammar holds besides its text's share: measured at ~125 KiB for the
/// smallest schemas (tests/grammar_cache_bytes.rs).
pub const ENTRY_BASE_BYTES: usize = 128 << 10;
/// Bytes a compiled grammar holds per byte of its text (the cache key): llguidance 1.9.1
/// kept 67–89 bytes per key byte for JSON schemas of 4.4–77 kB of assorted fields
/// (counting the allocations a compile leaves live, on a 336- and a 49,152-token
/// vocabulary alike: the grammar does not depend on it). 96 covers them with some room;
/// tests/grammar_cache_bytes.rs checks that it still covers what a compile keeps and is
/// within twice of it.
pub const BYTES_PER_KEY_BYTE: usize = 96;

/// The estimated bytes of a cache entry: [`ENTRY_BASE_BYTES`], [`BYTES_PER_KEY_BYTE`] per
/// byte of its key, and what its lexer (shared by every sequence that runs the grammar,
/// built lazily as they go) has grown since the compile.
pub fn entry_bytes(key_len: usize, lexer_growth: usize) -> usize {
    ENTRY_BASE_BYTES + key_len * BYTES_PER_KEY_BYTE + lexer_growth
}

/// What a request constrains its output to.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// JSON that validates against this schema.
    JsonSchema(Value),
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// Text that matches this regular expression (Rust `regex` syntax), whole.
    Regex(String),
    /// A grammar in llguidance's Lark syntax.
    Lark(String),
    /// A reasoning model's answer: free reasoning text up to the `end` tag, then `then`
    /// (vLLM applies a grammar once the reasoning has ended). With `open` the prompt opened
    /// the block and the answer starts inside it; otherwise a block opened by `start` (at the
    /// answer's start, after whitespace) may come first, or none.
    AfterReasoning {
        start: String,
        end: String,
        open: bool,
        then: Box<Grammar>,
    },
}

impl Grammar {
    /// The cache key: the kind and the text.
    fn key(&self) -> String {
        match self {
            Grammar::JsonSchema(v) => format!("json:{v}"),
            Grammar::JsonObject => "json_object".into(),
            Grammar::Regex(r) => format!("regex:{r}"),
            Grammar::Lark(l) => format!("lark:{l}"),
            Grammar::AfterReasoning {
                start,
                end,
                open,
                then,
            } => format!("reasoning:{start}:{end}:{open}:{}", then.key()),
        }
    }

    /// llguidance's form of the grammar.
    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema)),
            Grammar::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(&json!({"type": "object"})))
            }
            Grammar::Regex(r) => TopLevelGrammar::from_regex(r),
            Grammar::Lark(l) => TopLevelGrammar::from_lark(l.clone()),
            Grammar::AfterReasoning {
                start,
                end,
                open,
                then,
            } => {
                // The reasoning is one lazy lexeme (it ends at the first end tag), then the
                // request's grammar, referenced by name, with its own lexer.
                let (start, end) = (lark_regex(start), lark_regex(end));
                let think = if *open {
                    format!("think[lazy]: /(?s:.*){end}/")
                } else {
                    format!("think[lazy]: /[ \\t\\n]*{start}(?s:.*){end}/")
                };
                let first = if *open { "think WS?" } else { "(think WS?)?" };
                let lark = format!("start: {first} @content\n{think}\n{}", super::LARK_WS);
                let mut inner = then.top_level();
                if let Some(g) = inner.grammars.first_mut() {
                    g.name = Some("content".into());
                }
                let mut grammars = vec![GrammarWithLexer::from_lark(lark)];
                grammars.append(&mut inner.grammars);
                TopLevelGrammar {
                    grammars,
                    max_tokens: None,
                }
            }
        }
    }
}

/// `text` as a regular expression matching it, inside a Lark `/.../` literal.
pub fn lark_regex(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `schema` with the compact options, unless it sets its own (`x-guidance`), or is not an
/// object (`true`/`false` schemas).
fn compact(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance").or_insert_with(|| {
            json!({
                "whitespace_flexible": false,
                "item_separator": ",",
                "key_separator": ":",
                "coerce_one_of": true,
            })
        });
    }
    schema
}

/// The limits every grammar compiles and runs under.
pub fn limits() -> ParserLimits {
    ParserLimits {
        // ~50k per ms: at most ~20 ms of lexer building.
        initial_lexer_fuel: 1_000_000,
        // ~14k per ms: at most ~15 ms for one token's mask.
        step_lexer_fuel: 200_000,
        step_max_items: 50_000,
        // 1-2 kB each: at most ~40 MB of lexer states per grammar.
        max_lexer_states: 20_000,
        // Symbols in productions: a few MB of JSON schema.
        max_grammar_size: 200_000,
        // Errors name the problem, not the parser's state.
        verbose_errors: false,
        ..ParserLimits::default()
    }
}

/// A cache entry: the compiled parser, not yet started, when it was last used, and its
/// estimated bytes.
struct Entry {
    parser: TokenParser,
    used: u64,
    /// The lexer's bytes at the compile.
    lexer_at_compile: usize,
    bytes: usize,
}

impl Entry {
    /// Updates the estimate from the lexer's bytes now.
    fn measure(&mut self, key_len: usize) {
        let lexer = self.parser.parser.lexer_stats().num_bytes;
        self.bytes = entry_bytes(key_len, lexer.saturating_sub(self.lexer_at_compile));
    }
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, Entry>,
    clock: u64,
    /// The sum of the entries' bytes.
    bytes: usize,
    budget: usize,
}

impl Cache {
    /// Drops least recently used entries, never `keep`, until at most [`CACHE_ENTRIES`]
    /// remain within the budget; `keep` goes too when it alone is over the budget.
    fn evict(&mut self, keep: &str) {
        while self.entries.len() > CACHE_ENTRIES || self.bytes > self.budget {
            let oldest = self
                .entries
                .iter()
                .filter(|(k, _)| k.as_str() != keep)
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            let Some(k) = oldest.or_else(|| self.entries.contains_key(keep).then(|| keep.into()))
            else {
                break;
            };
            if let Some(e) = self.entries.remove(&k) {
                self.bytes -= e.bytes;
            }
        }
        metrics::set_grammar_cache_bytes(self.bytes);
    }
}

/// Compiles grammars for one model's vocabulary.
pub struct GrammarCompiler {
    tokenizer: Arc<GenTokenizer>,
    vocab: usize,
    factory: OnceLock<Result<ParserFactory, String>>,
    cache: Mutex<Cache>,
}

impl GrammarCompiler {
    /// A compiler for a model whose logits have `vocab` entries, its cache within
    /// [`DEFAULT_CACHE_BYTES`].
    pub fn new(tokenizer: Arc<GenTokenizer>, vocab: usize) -> Self {
        Self {
            tokenizer,
            vocab,
            factory: OnceLock::new(),
            cache: Mutex::new(Cache {
                budget: DEFAULT_CACHE_BYTES,
                ..Cache::default()
            }),
        }
    }

    /// The compiler with its cache within `bytes` (0: nothing is kept).
    pub fn with_cache_bytes(self, bytes: usize) -> Self {
        let mut cache = self.cache.lock();
        cache.budget = bytes;
        cache.evict("");
        drop(cache);
        self
    }

    fn factory(&self) -> Result<&ParserFactory, GrammarError> {
        self.factory
            .get_or_init(|| {
                let env = vocab::tok_env(&self.tokenizer, self.vocab)?;
                let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
                factory.quiet();
                *factory.limits_mut() = limits();
                Ok(factory)
            })
            .as_ref()
            .map_err(|e| GrammarError::Unavailable(e.clone()))
    }

    /// A fresh constraint for `grammar` (from the cache when it was compiled before). Blocks
    /// for the compile: call it off the async threads.
    ///
    /// # Errors
    ///
    /// When the grammar is too long, malformed or unsupported, or the model cannot run one.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, GrammarError> {
        let key = grammar.key();
        if key.len() > MAX_GRAMMAR_BYTES {
            return Err(GrammarError::Invalid(format!(
                "the grammar is {} bytes; at most {MAX_GRAMMAR_BYTES} are accepted",
                key.len()
            )));
        }
        let factory = self.factory()?;
        {
            let mut cache = self.cache.lock();
            cache.clock += 1;
            let now = cache.clock;
            if let Some(e) = cache.entries.get_mut(&key) {
                e.used = now;
                let parser = e.parser.clone();
                let before = e.bytes;
                e.measure(key.len());
                let after = e.bytes;
                cache.bytes = cache.bytes - before + after;
                if after != before {
                    cache.evict(&key);
                }
                drop(cache);
                metrics::record_grammar_cache(true);
                return Constraint::new(parser);
            }
        }
        metrics::record_grammar_cache(false);
        let started = Instant::now();
        let parser = factory
            .create_parser(grammar.top_level())
            .map_err(|e| GrammarError::Invalid(first_line(&e.to_string())))?;
        metrics::record_grammar_compile(started.elapsed());
        let lexer_at_compile = parser.parser.lexer_stats().num_bytes;
        let mut cache = self.cache.lock();
        let used = cache.clock;
        let bytes = entry_bytes(key.len(), 0);
        if bytes > cache.budget {
            // Kept, it would push out every other grammar and then itself.
            drop(cache);
            return Constraint::new(parser);
        }
        if let Some(old) = cache.entries.insert(
            key.clone(),
            Entry {
                parser: parser.clone(),
                used,
                lexer_at_compile,
                bytes,
            },
        ) {
            cache.bytes -= old.bytes;
        }
        cache.bytes += bytes;
        cache.evict(&key);
        drop(cache);
        Constraint::new(parser)
    }

    /// Grammars in the cache.
    pub fn cached(&self) -> usize {
        self.cache.lock().entries.len()
    }

    /// The estimated bytes of the grammars in the cache ([`entry_bytes`]).
    pub fn cached_bytes(&self) -> usize {
        self.cache.lock().bytes
    }

    /// Whether `grammar` is in the cache.
    pub fn is_cached(&self, grammar: &Grammar) -> bool {
        self.cache.lock().entries.contains_key(&grammar.key())
    }
}

/// llguidance's errors can be long (a grammar dump); the first lines name the problem.
fn first_line(message: &str) -> String {
    let mut out: String = message.lines().take(4).collect::<Vec<_>>().join(" ");
    if out.len() > 600 {
        let mut cut = 600;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    format!("invalid grammar: {out}")
}
