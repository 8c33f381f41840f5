//! The API key (`--api-key`): every route but the probes needs `Authorization: Bearer <key>`.

use hyper::header::AUTHORIZATION;
use hyper::Request;

use super::error::ApiError;

/// Checks the bearer token of `req` against `key` (when the server has one), comparing in
/// constant time so that response timing does not leak the key.
pub fn check<B>(key: Option<&str>, req: &Request<B>) -> Result<(), ApiError> {
    if authorized(key, req) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Whether `req` may use the routes behind the key: always when the server has none.
pub fn authorized<B>(key: Option<&str>, req: &Request<B>) -> bool {
    let Some(key) = key else {
        return true;
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .unwrap_or("");
    constant_time_eq(given.trim().as_bytes(), key.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret-dependent work; the byte loop always runs over the key's length.
    let mut diff = (a.len() != b.len()) as u8;
    for (i, &kb) in b.iter().enumerate() {
        diff |= a.get(i).copied().unwrap_or(!kb) ^ kb;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-longer", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        let req = |h: Option<&str>| {
            let mut b = Request::builder();
            if let Some(h) = h {
                b = b.header(AUTHORIZATION, h);
            }
            b.body(()).unwrap()
        };
        assert!(authorized(None, &req(None)));
        assert!(authorized(Some("k"), &req(Some("bearer k"))));
        assert!(!authorized(Some("k"), &req(Some("Bearer x"))));
        assert!(!authorized(Some("k"), &req(None)));
    }
}
