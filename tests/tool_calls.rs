//! Function calling under `tool_choice` "auto" and "none" and a whole agent loop, through
//! the real binary, real HTTP and the real clients: tests/clients/check_tools.py drives
//! SmolLM2-135M-Instruct (whose template knows no tools: the generic JSON format) with the
//! `openai` SDK (the loop call → tool result → answer, auto answers, parallel_tool_calls,
//! streaming) and `huggingface_hub`'s `InferenceClient.chat_completion(tools=...)`, and
//! validates every call's arguments with `jsonschema`. The Hermes grammar is driven token by
//! token in tests/tool_syntax_grammar.rs (the tiny Qwen's context cannot hold its template's
//! tool list).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// The interpreter with `jsonschema`, `openai` and `huggingface_hub`, or None (after saying
/// SKIPPED) when there is none; under CI a missing one fails.
fn python() -> Option<PathBuf> {
    test_python("tool_calls", "jsonschema, openai, huggingface_hub")
}

#[test]
fn an_agent_loop_and_auto_tool_calls_work_with_the_real_clients_on_smollm2() {
    let Some(python) = python() else { return };
    let server = Proc::spawn(smollm2_path().to_str().unwrap(), &[]);
    connect_until_up(server.addr);
    wait_ready(server.addr);
    let (status, output) = run_client_script(
        &python,
        "check_tools.py",
        &format!("http://{}", server.addr),
        &[],
        Duration::from_secs(600),
    );
    match status {
        Some(s) if s.success() => {
            eprintln!("{output}");
            for check in [
                "ok   an agent loop through the openai SDK",
                "ok   tool_choice auto answers text or valid calls",
                "ok   streamed auto answers equal the whole ones",
                "ok   huggingface_hub chat_completion with tools",
                "0 tool checks failed",
            ] {
                assert!(output.contains(check), "{check}\n{output}");
            }
        }
        _ => panic!(
            "check_tools.py failed ({status:?}):\n{output}\nserver log:\n{}",
            server.log()
        ),
    }
}
