//! Keeping secrets out of logs, error answers and probes.
//!
//! Secrets reach text in three ways: a URL with a password (`redis://user:pass@host`), a URL
//! with a SAS signature (`...?sv=...&sig=...`, which HTTP clients print in their errors), and
//! the configured secrets themselves (an account key, a SAS token, an API key) quoted by some
//! library's message. [`redact`] removes all three. The configured secrets are registered once
//! at start ([`register`]); [`clean`] redacts with them, and the broker's error type displays
//! through it, so every error string that comes from the broker's clients is clean wherever it
//! goes (logs, `/readyz`, error answers, dead letters).

use parking_lot::RwLock;

/// The configured secrets, for [`clean`].
static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Adds a configured secret (an account key, a SAS token, a password, the API key) to those
/// [`clean`] hides.
pub fn register(secret: &str) {
    let secret = secret.trim().trim_start_matches('?');
    if secret.is_empty() {
        return;
    }
    let mut known = KNOWN.write();
    if !known.iter().any(|k| k == secret) {
        known.push(secret.to_string());
    }
}

/// [`redact`] with the registered secrets.
pub fn clean(text: &str) -> String {
    let known = KNOWN.read();
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    redact(text, &known)
}

/// Replaced secrets read as this.
pub const HIDDEN: &str = "***";

/// URL query parameters whose values are secrets (a SAS token's signature, and the names
/// other services give passwords and keys in URLs).
const SECRET_PARAMS: &[&str] = &[
    "sig",
    "password",
    "pwd",
    "secret",
    "token",
    "access_token",
    "key",
    "api_key",
    "apikey",
    "accountkey",
    "sharedaccesssignature",
];

/// `text` with the password of every URL's user info, the value of every secret query
/// parameter, and every occurrence of the `known` secrets replaced by [`HIDDEN`].
pub fn redact(text: &str, known: &[&str]) -> String {
    // The known secrets first: the other rules would cut a SAS token apart before it is found.
    let mut out = text.to_string();
    for secret in known {
        // Very short values would hide ordinary words; real keys and tokens are long.
        if secret.len() >= 8 {
            out = out.replace(secret, HIDDEN);
        }
    }
    redact_params(&redact_userinfo(&out))
}

/// Replaces `PASS` in every `scheme://USER:PASS@` (and `scheme://:PASS@`).
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace.
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(HIDDEN);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Replaces the value of every `NAME=VALUE` whose name is a secret parameter, where it follows
/// `?`, `&` or `;` (query strings and connection strings).
fn redact_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        let starts_param = i == 0 || matches!(bytes[i - 1], b'?' | b'&' | b';');
        if starts_param {
            if let Some(eq) = text[i..].find('=') {
                let name = &text[i..i + eq];
                if SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name)) {
                    let value_start = i + eq + 1;
                    let value_end = text[value_start..]
                        .find(|c: char| {
                            c == '&' || c == ';' || c == '"' || c == '\'' || c.is_whitespace()
                        })
                        .map_or(text.len(), |e| value_start + e);
                    out.push_str(&text[copied..value_start]);
                    out.push_str(HIDDEN);
                    copied = value_end;
                    i = value_end;
                    continue;
                }
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_signatures_and_known_secrets_are_hidden() {
        assert_eq!(
            redact("cannot reach redis://user:hunter2@cache:6380/jobs", &[]),
            "cannot reach redis://user:***@cache:6380/jobs"
        );
        assert_eq!(
            redact("rediss://:hunter2@cache:6380/jobs?group=g", &[]),
            "rediss://:***@cache:6380/jobs?group=g"
        );
        assert_eq!(
            redact("redis://user@cache:6380/jobs", &[]),
            "redis://user@cache:6380/jobs"
        );
        let sas = "error sending request for url (https://acct.queue.core.windows.net/jobs/messages?sv=2022-11-02&ss=q&sig=abc%2Bdef%3D&se=2030): 403";
        let shown = redact(sas, &[]);
        assert!(!shown.contains("abc%2Bdef"), "{shown}");
        assert!(shown.contains("sig=***&se=2030"), "{shown}");
        assert_eq!(
            redact(
                "AccountKey=abc; the key is s3cr3t-k3y-value",
                &["s3cr3t-k3y-value"]
            ),
            "AccountKey=***; the key is ***"
        );
        assert_eq!(
            redact("no secrets here: a=b&c=d", &[]),
            "no secrets here: a=b&c=d"
        );
        assert_eq!(redact("", &["long-enough-secret"]), "");
        register("?sv=2022&sig=registered-signature");
        assert_eq!(clean("token sv=2022&sig=registered-signature"), "token ***");
    }
}
