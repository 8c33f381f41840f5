//! A local HTTP server that answers like the Hugging Face hub, for the requests its client
//! (`hf-hub`'s sync API) makes: a repository's file list (`GET /api/models/OWNER/NAME/revision/
//! REV`: `sha` and `siblings`), and a file (`GET /OWNER/NAME/resolve/REV/PATH`, first with
//! `Range: bytes=0-0` for its metadata: `ETag`, `X-Repo-Commit`, `Content-Range`; then from an
//! offset). Unknown repositories and files are 404s, as on the hub; with a token set, a request
//! without `Authorization: Bearer TOKEN` is a 401. Every request is recorded.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// One repository: its id, its commit, its files (path, bytes).
pub struct FakeRepo {
    pub id: String,
    pub commit: String,
    pub files: Vec<(String, Vec<u8>)>,
}

/// A request the fake hub received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub authorization: Option<String>,
}

pub struct FakeHub {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeHub {
    /// Serves `repos` on a free loopback port until the test process ends.
    pub fn start(repos: Vec<FakeRepo>, token: Option<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let repos = Arc::new(repos);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (repos, log, token) = (repos.clone(), log.clone(), token.clone());
                std::thread::spawn(move || {
                    let _ = answer(stream, &repos, &log, token.as_deref());
                });
            }
        });
        Self { addr, seen }
    }

    /// The value for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// The hub's blob id of a file (its sha256, as for LFS files).
pub fn etag(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn answer(
    mut stream: TcpStream,
    repos: &[FakeRepo],
    log: &Mutex<Vec<Seen>>,
    token: Option<&str>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut range, mut authorization) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim_end().is_empty() {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => authorization = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        authorization: authorization.clone(),
    });
    let mut respond = |status: &str, headers: &[(&str, String)], body: &[u8]| {
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)
    };
    if let Some(t) = token {
        if authorization.as_deref() != Some(&format!("Bearer {t}")) {
            return respond(
                "401 Unauthorized",
                &[("Content-Type", "application/json".into())],
                br#"{"error":"Invalid credentials in Authorization header"}"#,
            );
        }
    }
    let not_found = |what: &str| format!(r#"{{"error":"{what} not found"}}"#).into_bytes();
    if let Some(rest) = path.strip_prefix("/api/models/") {
        // OWNER/NAME/revision/REV
        let Some((id, _rev)) = rest.rsplit_once("/revision/") else {
            return respond("404 Not Found", &[], &not_found("Route"));
        };
        let Some(repo) = repos.iter().find(|r| r.id == id) else {
            return respond("404 Not Found", &[], &not_found("Repository"));
        };
        let siblings: Vec<_> = repo
            .files
            .iter()
            .map(|(f, _)| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "id": repo.id, "sha": repo.commit, "siblings": siblings });
        return respond(
            "200 OK",
            &[("Content-Type", "application/json".into())],
            body.to_string().as_bytes(),
        );
    }
    // /OWNER/NAME/resolve/REV/PATH
    let found = repos.iter().find_map(|r| {
        let rest = path.strip_prefix(&format!("/{}/resolve/", r.id))?;
        let (_rev, file) = rest.split_once('/')?;
        let (_, bytes) = r.files.iter().find(|(f, _)| f == file)?;
        Some((r, bytes))
    });
    let Some((repo, bytes)) = found else {
        return respond(
            "404 Not Found",
            &[("X-Error-Code", "EntryNotFound".into())],
            &not_found("Entry"),
        );
    };
    // (Files here are never empty; `max` keeps the arithmetic safe if one were.)
    let size = bytes.len().max(1);
    let (start, end) = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(s, e)| {
            let s: usize = s.parse().unwrap_or(0);
            let e: usize = e.parse().unwrap_or(size - 1);
            (s.min(size), e.min(size - 1))
        })
        .unwrap_or((0, size - 1));
    let body = bytes.get(start..=end).unwrap_or(&[]);
    let size = bytes.len();
    respond(
        "206 Partial Content",
        &[
            ("ETag", format!("\"{}\"", etag(bytes))),
            ("X-Repo-Commit", repo.commit.clone()),
            ("Content-Range", format!("bytes {start}-{end}/{size}")),
        ],
        body,
    )
}
