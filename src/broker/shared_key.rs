//! Shared Key authorization for Azure Storage (an account name and key), as a policy of the
//! Azure SDK's request pipeline.
//!
//! Why this exists: the official SDK (`azure_storage_queue`, `azure_storage_blob`) signs in with
//! Entra ID tokens or a SAS in the URL, not with an account key; but the account key is what
//! connection strings and Azurite (the local emulator every test and developer uses) carry. The
//! signature is the documented one ("Authorize with Shared Key", version 2015-02-21 and later):
//! an HMAC-SHA256, keyed with the decoded account key, over the method, the standard headers,
//! the `x-ms-*` headers and the resource (account, path and query), sent as
//! `Authorization: SharedKey ACCOUNT:SIGNATURE` with a fresh `x-ms-date` on every try.

use std::sync::Arc;

use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Signs every request with an account's key. Placed last among the per-try policies, so the
/// headers it signs are the ones sent.
pub struct SharedKeyPolicy {
    account: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for SharedKeyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("SharedKeyPolicy")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl SharedKeyPolicy {
    /// A policy for `account` with its base64 key (as the portal, `az` and Azurite show it).
    pub fn new(account: &str, key_base64: &str) -> Result<Self, String> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(key_base64.trim())
            .map_err(|e| format!("the account key is not base64: {e}"))?;
        if key.is_empty() {
            return Err("the account key is empty".into());
        }
        Ok(Self {
            account: account.to_string(),
            key,
        })
    }

    /// The `Authorization` header value for `request` (which must already carry `x-ms-date`).
    pub fn authorization(&self, request: &Request) -> String {
        let to_sign = string_to_sign(&self.account, request);
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        format!("SharedKey {}:{signature}", self.account)
    }
}

#[async_trait::async_trait]
impl Policy for SharedKeyPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let now = time::OffsetDateTime::now_utc();
        request.insert_header("x-ms-date", azure_core::time::to_rfc7231(&now));
        let authorization = self.authorization(request);
        request.insert_header("authorization", authorization);
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// The text that is signed: method, standard headers, canonical `x-ms-*` headers, canonical
/// resource.
fn string_to_sign(account: &str, request: &Request) -> String {
    let header = |name: &str| -> String {
        request
            .headers()
            .iter()
            .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str().to_string())
            .unwrap_or_default()
    };
    // Since version 2015-02-21 a zero length is signed as the empty string.
    let length = match request.body().len() {
        Some(0) | None => String::new(),
        Some(n) => n.to_string(),
    };
    let mut s = String::new();
    s.push_str(request.method().as_str());
    s.push('\n');
    for (i, name) in [
        "content-encoding",
        "content-language",
        "",
        "content-md5",
        "content-type",
        "date",
        "if-modified-since",
        "if-match",
        "if-none-match",
        "if-unmodified-since",
        "range",
    ]
    .iter()
    .enumerate()
    {
        if i == 2 {
            s.push_str(&length);
        } else {
            s.push_str(&header(name));
        }
        s.push('\n');
    }
    let mut ms: Vec<(String, String)> = request
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str().to_ascii_lowercase().starts_with("x-ms-"))
        .map(|(n, v)| (n.as_str().to_ascii_lowercase(), fold_spaces(v.as_str())))
        .collect();
    ms.sort();
    for (name, value) in ms {
        s.push_str(&name);
        s.push(':');
        s.push_str(&value);
        s.push('\n');
    }
    s.push_str(&canonical_resource(account, request.url()));
    s
}

/// `/ACCOUNT/PATH` then each query parameter, lower-cased and sorted, as `\nname:v1,v2`.
fn canonical_resource(account: &str, url: &url::Url) -> String {
    let mut s = format!("/{account}{}", url.path());
    let mut params: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (name, value) in url.query_pairs() {
        params
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.into_owned());
    }
    for (name, mut values) in params {
        values.sort();
        s.push('\n');
        s.push_str(&name);
        s.push(':');
        s.push_str(&values.join(","));
    }
    s
}

/// A header value with runs of spaces folded to one and the ends trimmed, as signed.
fn fold_spaces(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::{Method, Url};

    #[test]
    fn the_signed_text_has_the_documented_layout() {
        let url = Url::parse(
            "http://127.0.0.1:10001/devstoreaccount1/jobs/messages?visibilitytimeout=60&numofmessages=32",
        )
        .unwrap();
        let mut r = Request::new(url, Method::Get);
        r.insert_header("x-ms-version", "2026-04-06");
        r.insert_header("x-ms-date", "Fri, 27 Nov 2026 14:00:00 GMT");
        r.insert_header("accept", "application/xml");
        assert_eq!(
            string_to_sign("devstoreaccount1", &r),
            "GET\n\n\n\n\n\n\n\n\n\n\n\n\
             x-ms-date:Fri, 27 Nov 2026 14:00:00 GMT\nx-ms-version:2026-04-06\n\
             /devstoreaccount1/devstoreaccount1/jobs/messages\nnumofmessages:32\nvisibilitytimeout:60"
        );
        let mut put = Request::new(
            Url::parse("https://acct.blob.core.windows.net/jobs/jobs/a.json").unwrap(),
            Method::Put,
        );
        put.insert_header("content-type", "application/json");
        put.insert_header("if-none-match", "*");
        put.set_body(azure_core::Bytes::from_static(b"{\"state\":\"queued\"}"));
        let text = string_to_sign("acct", &put);
        assert!(
            text.starts_with("PUT\n\n\n18\n\napplication/json\n\n\n\n*\n\n\n"),
            "{text:?}"
        );
    }

    #[test]
    fn the_key_is_checked_and_never_printed() {
        assert!(SharedKeyPolicy::new("a", "not base64!").is_err());
        assert!(SharedKeyPolicy::new("a", "").is_err());
        let p = SharedKeyPolicy::new("acct", "c2VjcmV0").unwrap();
        assert!(!format!("{p:?}").contains("c2VjcmV0"));
        // HMAC-SHA256("secret", "GET\n...") is deterministic: the same request, the same header.
        let mut r = Request::new(
            Url::parse("https://acct.queue.core.windows.net/q").unwrap(),
            Method::Get,
        );
        r.insert_header("x-ms-date", "Fri, 27 Nov 2026 14:00:00 GMT");
        let a = p.authorization(&r);
        assert!(a.starts_with("SharedKey acct:"));
        assert_eq!(a, p.authorization(&r));
    }
}
