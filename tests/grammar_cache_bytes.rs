//! The compiled-grammar cache's byte budget (src/generate/grammar/compile.rs):
//! - the estimate of an entry ([`entry_bytes`]) covers what a compile keeps alive, measured
//!   here by counting this thread's live allocations around a compile (a test binary of its
//!   own, for its counting allocator), for JSON schemas of 100 bytes to 72 kB, and is within
//!   twice of it (this is where `BYTES_PER_KEY_BYTE` and `ENTRY_BASE_BYTES` come from);
//! - the cache stays within its budget, dropping the least recently used grammars first;
//!   a grammar over the whole budget is not kept; budget 0 keeps nothing; an entry's bytes
//!   grow with its lexer as sequences run it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};
use zerobatch::generate::gguf::GgufFile;
use zerobatch::generate::grammar::compile::entry_bytes;
use zerobatch::generate::grammar::{Grammar, GrammarCompiler};
use zerobatch::generate::tokenizer::GenTokenizer;

/// Counts the bytes this thread has live (allocated and not yet freed).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|c| c.set(c.get() + delta));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as isize);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as isize));
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count(n as isize - l.size() as isize);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.with(|c| c.get())
}

fn compiler() -> GrammarCompiler {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf/tiny-qwen2-f32.gguf");
    let tok = Arc::new(GenTokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap());
    let vocab = tok.vocab_size();
    let c = GrammarCompiler::new(tok, vocab);
    // The parser factory (the token trie) is built at the first grammar: not an entry's.
    drop(c.compile(&Grammar::Regex("a".into())).unwrap());
    c
}

/// An object schema of `n` fields of assorted kinds (strings, bounded integers, enums,
/// arrays, nested objects with patterns).
fn schema(n: usize) -> Value {
    let mut props = serde_json::Map::new();
    for i in 0..n {
        let p = match i % 5 {
            0 => json!({"type": "string", "maxLength": 20}),
            1 => json!({"type": "integer", "minimum": 0, "maximum": 1000}),
            2 => json!({"enum": ["red", "green", "blue", format!("c{i}")]}),
            3 => json!({"type": "array", "items": {"type": "number"}, "maxItems": 5}),
            _ => {
                json!({"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "string", "pattern": "^[a-z]+$"}}, "required": ["a"]})
            }
        };
        props.insert(format!("field_{i}"), p);
    }
    json!({"type": "object", "properties": props, "required": ["field_0"]})
}

/// The cache key's length of `schema(n)` (`json:` and the schema's compact text).
fn key_len(n: usize) -> usize {
    format!("json:{}", schema(n)).len()
}

#[test]
fn the_estimate_covers_what_a_compile_keeps() {
    let c = compiler();
    for n in [1, 4, 16, 64, 256, 1024] {
        let g = Grammar::JsonSchema(schema(n));
        let before = live();
        drop(c.compile(&g).unwrap());
        let kept = (live() - before) as usize;
        assert!(c.is_cached(&g));
        let estimate = entry_bytes(key_len(n), 0);
        eprintln!(
            "{n} fields: key {} bytes, kept {kept}, estimate {estimate}",
            key_len(n)
        );
        assert!(
            estimate >= kept,
            "{n} fields: kept {kept} > estimate {estimate}"
        );
        assert!(
            estimate <= 2 * kept,
            "{n} fields: estimate {estimate} is far above the {kept} kept"
        );
    }
}

#[test]
fn the_cache_stays_within_its_budget_least_recently_used_first() {
    let budget = 1_000_000;
    let c = compiler().with_cache_bytes(budget);
    let small = |i: usize| {
        let mut s = schema(16);
        s["title"] = json!(format!("schema {i}"));
        Grammar::JsonSchema(s)
    };
    let (a, b, d) = (small(1), small(2), small(3));
    for g in [&a, &b, &d] {
        drop(c.compile(g).unwrap());
        assert!(c.cached_bytes() <= budget, "{}", c.cached_bytes());
    }
    assert_eq!(c.cached(), 4);
    // `a` is used again; a larger grammar then pushes out the least recently used.
    drop(c.compile(&a).unwrap());
    let big = Grammar::JsonSchema(schema(64));
    drop(c.compile(&big).unwrap());
    assert!(c.cached_bytes() <= budget, "{}", c.cached_bytes());
    assert!(c.is_cached(&big) && c.is_cached(&a));
    assert!(!c.is_cached(&b), "the least recently used went first");
    // A grammar over the whole budget is compiled but not kept, and pushes nothing out.
    let before = c.cached_bytes();
    let huge = Grammar::JsonSchema(schema(256));
    assert!(entry_bytes(key_len(256), 0) > budget);
    drop(c.compile(&huge).unwrap());
    assert!(!c.is_cached(&huge));
    assert_eq!(c.cached_bytes(), before);

    let off = compiler().with_cache_bytes(0);
    drop(off.compile(&a).unwrap());
    assert_eq!((off.cached(), off.cached_bytes()), (0, 0));
}

#[test]
fn an_entry_grows_with_its_lexer() {
    let c = compiler();
    let g = Grammar::JsonSchema(schema(16));
    let mut constraint = c.compile(&g).unwrap();
    let first = c.cached_bytes();
    // Masks build lexer states, which the cached grammar shares.
    let mut logits = vec![0.0f32; 400];
    constraint.apply(&mut logits);
    let allowed = logits.iter().position(|l| l.is_finite()).unwrap() as u32;
    constraint.commit(allowed).unwrap();
    let mut logits = vec![0.0f32; 400];
    constraint.apply(&mut logits);
    drop(c.compile(&g).unwrap());
    assert!(c.cached_bytes() > first, "{} <= {first}", c.cached_bytes());
}
