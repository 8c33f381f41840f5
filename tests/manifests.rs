//! The deployment files against the binary they deploy: every YAML and JSON file parses, ports
//! are 80, probe paths are routes that exist, every environment variable the files set is one
//! the binary reads (`zerobatch --help` lists it), resources and scaling numbers match the
//! docs, and the shell scripts pass shellcheck.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p, exts));
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.contains(&e))
        {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            Value::deserialize(d)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// Environment variables the binary reads, from its own `--help`.
fn env_vars_in_help() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_zerobatch"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let mut vars = BTreeSet::new();
    for piece in help.split("[env: ").skip(1) {
        vars.insert(piece.split(['=', ']']).next().unwrap().to_string());
    }
    for line in help.lines() {
        let word = line.split_whitespace().next().unwrap_or("");
        if line.starts_with("  ")
            && !word.is_empty()
            && word.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        {
            vars.insert(word.to_string());
        }
    }
    assert!(
        vars.contains("PORT") && vars.contains("HF_HOME") && vars.contains("SHUTDOWN_DELAY_MS"),
        "{vars:?}"
    );
    vars
}

fn routes() -> BTreeSet<&'static str> {
    zerobatch::http::routes::ROUTES
        .iter()
        .map(|r| r.path)
        .collect()
}

/// Every `{name, value}` under an `env` key, anywhere in the document.
fn env_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                if k.as_str() == Some("env") {
                    if let Some(list) = child.as_sequence() {
                        for item in list {
                            if let Some(name) = item.get("name").and_then(Value::as_str) {
                                out.push(name.to_string());
                            }
                        }
                    }
                }
                env_names(child, out);
            }
        }
        Value::Sequence(s) => s.iter().for_each(|c| env_names(c, out)),
        _ => {}
    }
}

/// Every `httpGet` probe (path, port) in the document.
fn probes(v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                if k.as_str() == Some("httpGet") {
                    let path = child
                        .get("path")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    out.push((path, child.get("port").cloned().unwrap_or(Value::Null)));
                }
                probes(child, out);
            }
        }
        Value::Sequence(s) => s.iter().for_each(|c| probes(c, out)),
        _ => {}
    }
}

fn port_is_80(port: &Value) -> bool {
    port.as_u64() == Some(80) || port.as_str() == Some("http") || port.as_str() == Some("80")
}

#[test]
fn every_yaml_and_json_file_parses() {
    let mut n = 0;
    for dir in ["container", ".github"] {
        for p in files_under(&root().join(dir), &["yaml", "yml"]) {
            assert!(!documents(&p).is_empty(), "{} is empty", p.display());
            n += 1;
        }
        for p in files_under(&root().join(dir), &["json"]) {
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(
        n >= 5,
        "expected the ACA, Kubernetes and workflow files, found {n}"
    );
}

#[test]
fn env_vars_ports_and_probes_match_the_binary() {
    let known = env_vars_in_help();
    let routes = routes();
    let mut checked_probes = 0;
    for p in files_under(&root().join("container"), &["yaml", "yml"]) {
        for doc in documents(&p) {
            let mut names = Vec::new();
            env_names(&doc, &mut names);
            for name in names {
                assert!(
                    known.contains(&name),
                    "{} sets {name}, which zerobatch does not read (see zerobatch --help)",
                    p.display()
                );
            }
            let mut found = Vec::new();
            probes(&doc, &mut found);
            for (path, port) in found {
                assert!(
                    routes.contains(path.as_str()),
                    "{}: probe path {path} is not a route",
                    p.display()
                );
                assert!(
                    port_is_80(&port),
                    "{}: probe port {port:?} is not 80",
                    p.display()
                );
                checked_probes += 1;
            }
        }
    }
    assert!(
        checked_probes >= 6,
        "liveness, readiness and startup probes in the ACA and Kubernetes files"
    );

    let dockerfile = std::fs::read_to_string(root().join("container/Dockerfile")).unwrap();
    assert!(
        dockerfile.lines().any(|l| l.trim() == "EXPOSE 80"),
        "Dockerfile exposes 80"
    );
    // Instructions with their continuation lines joined.
    let joined = dockerfile.replace("\\\n", " ");
    let mut env_set = 0;
    for line in joined
        .lines()
        .filter(|l| l.trim_start().starts_with("ENV "))
    {
        for assignment in line.trim_start()[4..].split_whitespace() {
            let name = assignment.split('=').next().unwrap();
            // PATH is the image's own, not a setting of the server.
            assert!(
                name == "PATH" || known.contains(name),
                "Dockerfile sets {name}, which zerobatch does not read"
            );
            env_set += 1;
        }
    }
    assert!(
        env_set >= 3,
        "the Dockerfile configures the server through env vars"
    );
}

#[test]
fn azure_container_app_matches_the_binary_and_the_docs() {
    let app = &documents(&root().join("container/containerapp.yaml"))[0];
    let props = &app["properties"];
    let ingress = &props["configuration"]["ingress"];
    assert_eq!(ingress["targetPort"].as_u64(), Some(80));
    assert_eq!(ingress["external"].as_bool(), Some(true));
    let template = &props["template"];
    assert!(
        template["terminationGracePeriodSeconds"].as_u64().unwrap() * 1000 > 25_000,
        "grace period exceeds the shutdown timeout"
    );
    let container = &template["containers"][0];
    let env: Vec<(String, String)> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let cpu = container["resources"]["cpu"].as_f64().unwrap();
    let memory = container["resources"]["memory"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get("WORKERS").map(|w| w.parse::<f64>().unwrap()),
        Some(cpu),
        "one worker per vCPU"
    );
    if let Some(port) = get("PORT") {
        assert_eq!(port, "80");
    }
    let scale = &template["scale"];
    assert_eq!(scale["minReplicas"].as_u64(), Some(0), "scales to zero");
    let concurrent = scale["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .find_map(|r| {
            r["http"]["metadata"]["concurrentRequests"]
                .as_str()
                .map(str::to_string)
        })
        .expect("an http scale rule with concurrentRequests");
    let scaling = std::fs::read_to_string(root().join("docs/scaling.md")).expect("docs/scaling.md");
    assert!(
        scaling.contains(&format!("concurrentRequests: \"{concurrent}\"")),
        "docs/scaling.md derives concurrentRequests {concurrent}"
    );
    assert!(
        scaling.contains(&format!("cpu: {cpu:.1}"))
            && scaling.contains(&format!("memory: {memory}")),
        "docs/scaling.md states the resources cpu: {cpu:.1} / memory: {memory}"
    );
}

#[test]
fn kubernetes_and_keda_manifests_match_the_binary() {
    let dir = root().join("container/k8s");
    let mut kinds = BTreeSet::new();
    for p in files_under(&dir, &["yaml"]) {
        for doc in documents(&p) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            match kind.as_str() {
                "Deployment" => {
                    let c = &doc["spec"]["template"]["spec"]["containers"][0];
                    let ports = c["ports"].as_sequence().unwrap();
                    assert!(
                        ports
                            .iter()
                            .any(|p| p["containerPort"].as_u64() == Some(80)),
                        "container port 80"
                    );
                    let grace = doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                        .as_u64()
                        .unwrap();
                    assert!(grace * 1000 > 25_000);
                }
                "Service" => {
                    let ports = doc["spec"]["ports"].as_sequence().unwrap();
                    assert!(ports
                        .iter()
                        .any(|p| port_is_80(&p["targetPort"]) || p["port"].as_u64() == Some(80)));
                }
                "HTTPScaledObject" => {
                    assert_eq!(doc["spec"]["scaleTargetRef"]["port"].as_u64(), Some(80));
                    assert_eq!(
                        doc["spec"]["replicas"]["min"].as_u64(),
                        Some(0),
                        "scales from zero"
                    );
                }
                "ScaledObject" => {
                    let triggers = doc["spec"]["triggers"].as_sequence().unwrap();
                    let query = triggers
                        .iter()
                        .find(|t| t["type"].as_str() == Some("prometheus"))
                        .expect("a prometheus trigger")["metadata"]["query"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    assert!(
                        query.contains(zerobatch::metrics::QUEUE_DEPTH),
                        "the trigger reads {}: {query}",
                        zerobatch::metrics::QUEUE_DEPTH
                    );
                }
                _ => {}
            }
            kinds.insert(kind);
        }
    }
    for k in ["Deployment", "Service", "HTTPScaledObject", "ScaledObject"] {
        assert!(kinds.contains(k), "container/k8s has no {k}");
    }
}

#[test]
fn workflows_run_the_readme_test_command_and_deploy_the_dockerfile() {
    let ci = std::fs::read_to_string(root().join(".github/workflows/ci.yml")).unwrap();
    assert!(ci.contains(".ci/run"), "ci.yml runs .ci/run");
    let ci_run = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        ci_run.contains("./scripts/test.sh") && readme.contains("./scripts/test.sh"),
        ".ci/run runs the README's test command"
    );
    let deploy = std::fs::read_to_string(root().join(".github/workflows/deploy.yml")).unwrap();
    for needle in [
        "container/Dockerfile",
        "ghcr.io",
        "AZURE_CREDENTIALS",
        "az containerapp",
    ] {
        assert!(deploy.contains(needle), "deploy.yml lacks {needle}");
    }
}

#[test]
fn shell_scripts_pass_shellcheck() {
    let scripts = files_under(&root().join("scripts"), &["sh"]);
    assert!(scripts.len() >= 5);
    if Command::new("shellcheck")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("ZEROBATCH_SKIP_SHELLCHECK").is_ok(),
            "shellcheck is not installed (apt-get install shellcheck); set ZEROBATCH_SKIP_SHELLCHECK=1 to skip this check knowingly"
        );
        eprintln!("shellcheck skipped: ZEROBATCH_SKIP_SHELLCHECK is set");
        return;
    }
    let mut cmd = Command::new("shellcheck");
    cmd.args(&scripts).arg(root().join(".ci/run"));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Checks `v` against an OpenAPI v3 structural schema, as a cluster validates a custom
/// resource: types, required fields, enums, minimum lengths and item counts, and no field the
/// schema does not define (a cluster would drop a misspelt field without a word).
fn check_schema(v: &Value, schema: &Value, at: &str, errors: &mut Vec<String>) {
    let flag = |name: &str| schema.get(name).and_then(Value::as_bool) == Some(true);
    if flag("x-kubernetes-int-or-string") {
        if !(v.is_string() || v.as_i64().is_some()) {
            errors.push(format!("{at}: expected an integer or a string"));
        }
        return;
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_mapping(),
            "array" => v.is_sequence(),
            "string" => v.is_string(),
            "integer" => v.as_i64().is_some(),
            "number" => v.is_number(),
            "boolean" => v.is_bool(),
            _ => true,
        };
        if !ok {
            errors.push(format!("{at}: expected {t}, found {v:?}"));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_sequence) {
        if !allowed.contains(v) {
            errors.push(format!("{at}: {v:?} is not one of {allowed:?}"));
        }
    }
    if let (Some(min), Some(s)) = (schema.get("minLength").and_then(Value::as_u64), v.as_str()) {
        if (s.chars().count() as u64) < min {
            errors.push(format!("{at}: shorter than {min}"));
        }
    }
    if let Value::Sequence(items) = v {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if (items.len() as u64) < min {
                errors.push(format!("{at}: fewer than {min} items"));
            }
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check_schema(item, item_schema, &format!("{at}[{i}]"), errors);
            }
        }
    }
    if let Value::Mapping(fields) = v {
        for name in schema
            .get("required")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if !fields.contains_key(name) {
                errors.push(format!("{at}: missing required field {name:?}"));
            }
        }
        let properties = schema.get("properties");
        for (key, child) in fields {
            let name = key.as_str().unwrap_or_default();
            let here = format!("{at}.{name}");
            match properties.and_then(|p| p.get(key)) {
                Some(s) => check_schema(child, s, &here, errors),
                None => match schema.get("additionalProperties") {
                    Some(s @ Value::Mapping(_)) => check_schema(child, s, &here, errors),
                    Some(Value::Bool(true)) => {}
                    _ if flag("x-kubernetes-preserve-unknown-fields") => {}
                    _ if properties.is_none() => {}
                    _ => errors.push(format!("{here}: not a field of this resource")),
                },
            }
        }
    }
}

/// The OpenAPI schema of a KEDA CRD, from the unchanged copies in tests/data/keda/ (their
/// README says where they come from). Where the workspace's shared/schemas/ lies beside the
/// repository, the copies must still be identical to it.
fn crd_schema(file: &str) -> Option<Value> {
    let path = root().join("tests/data/keda").join(file);
    let shared = root().join("../shared/schemas").join(file);
    if shared.is_file() {
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&shared).unwrap(),
            "{} differs from {}",
            path.display(),
            shared.display()
        );
    }
    let crd = &documents(&path)[0];
    Some(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone())
}

#[test]
fn keda_resources_pass_the_crd_schemas() {
    let schemas = [
        ("ScaledObject", crd_schema("keda.sh_scaledobjects.yaml")),
        (
            "HTTPScaledObject",
            crd_schema("http.keda.sh_httpscaledobjects.yaml"),
        ),
    ];
    let mut checked = 0;
    for p in files_under(&root().join("container"), &["yaml"]) {
        for doc in documents(&p) {
            for (kind, schema) in &schemas {
                let Some(schema) = schema else { continue };
                if doc["kind"].as_str() == Some(kind) {
                    let mut errors = Vec::new();
                    check_schema(&doc, schema, kind, &mut errors);
                    assert!(errors.is_empty(), "{}: {errors:#?}", p.display());
                    checked += 1;
                }
            }
        }
    }
    if schemas.iter().all(|(_, s)| s.is_some()) {
        // container/k8s (2), container/queue (2), container/generation (2).
        assert!(checked >= 6, "only {checked} KEDA resources found");
    }
    // The checker itself refuses what a cluster would.
    if let Some(schema) = &schemas[0].1 {
        let doc = &documents(&root().join("container/queue/k8s.yaml"))[2];
        let mut bad = doc.clone();
        bad["spec"]["triggers"][0]["metadata"]["lagCount"] = Value::from(5);
        bad["spec"]["minReplicaCunt"] = Value::from(0);
        let mut errors = Vec::new();
        check_schema(&bad, schema, "ScaledObject", &mut errors);
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }
}

#[test]
fn queue_worker_manifests_scale_on_the_stream_lag_derived_in_the_docs() {
    let docs = std::fs::read_to_string(root().join("docs/queue.md")).unwrap();
    let k8s = documents(&root().join("container/queue/k8s.yaml"));
    let by_kind = |kind: &str| {
        k8s.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("container/queue/k8s.yaml has no {kind}"))
    };
    let deployment = by_kind("Deployment");
    let scaled = by_kind("ScaledObject");
    let auth = by_kind("TriggerAuthentication");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert_eq!(
        scaled["spec"]["minReplicaCount"].as_u64(),
        Some(0),
        "scales to zero"
    );
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"].as_str(), Some("redis-streams"));
    assert_eq!(
        trigger["authenticationRef"]["name"],
        auth["metadata"]["name"]
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_sequence().unwrap();
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"].as_str() == Some(name))
            .map(|e| e["value"].as_str().unwrap_or("(secret)").to_string())
    };
    assert!(
        value("QUEUE_URL").is_some(),
        "the Deployment sets QUEUE_URL"
    );
    let timeout: u64 = value("SHUTDOWN_TIMEOUT_MS").unwrap().parse().unwrap();
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() * 1000 > timeout);

    let app = &documents(&root().join("container/queue/containerapp.yaml"))[0];
    let scale = &app["properties"]["template"]["scale"];
    assert_eq!(scale["minReplicas"].as_u64(), Some(0), "scales to zero");
    let rule = &scale["rules"][0]["custom"];
    assert_eq!(rule["type"].as_str(), Some("redis-streams"));
    for (file, meta) in [
        ("k8s.yaml", &trigger["metadata"]),
        ("containerapp.yaml", &rule["metadata"]),
    ] {
        assert_eq!(
            meta["consumerGroup"].as_str(),
            Some(zerobatch::config::DEFAULT_GROUP),
            "{file}: the group zerobatch reads by default"
        );
        let lag = meta["lagCount"].as_str().unwrap();
        assert!(lag.parse::<u64>().is_ok(), "{file}: lagCount {lag:?}");
        assert!(
            docs.contains(&format!("lagCount: \"{lag}\"")),
            "{file}: docs/queue.md derives lagCount {lag}"
        );
    }
}

#[test]
fn azure_queue_worker_manifests_scale_on_the_queue_length_derived_in_the_docs() {
    let docs = std::fs::read_to_string(root().join("docs/queue.md")).unwrap();
    let k8s = documents(&root().join("container/queue/k8s-azure.yaml"));
    let by_kind = |kind: &str| {
        k8s.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("container/queue/k8s-azure.yaml has no {kind}"))
    };
    let deployment = by_kind("Deployment");
    let scaled = by_kind("ScaledObject");
    let auth = by_kind("TriggerAuthentication");
    let account = by_kind("ServiceAccount");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert_eq!(scaled["spec"]["minReplicaCount"].as_u64(), Some(0));
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"].as_str(), Some("azure-queue"));
    assert_eq!(
        trigger["authenticationRef"]["name"],
        auth["metadata"]["name"]
    );
    assert_eq!(
        auth["spec"]["podIdentity"]["provider"].as_str(),
        Some("azure-workload")
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"]
            .as_str(),
        Some("true"),
        "the workload identity webhook only injects labelled pods"
    );
    let env = pod["containers"][0]["env"].as_sequence().unwrap();
    let queue_url = |env: &[Value]| {
        env.iter()
            .find(|e| e["name"].as_str() == Some("QUEUE_URL"))
            .and_then(|e| e["value"].as_str())
            .expect("QUEUE_URL set in the clear")
            .replace("${STORAGE_ACCOUNT}", "account")
            .replace("ACCOUNT", "account")
    };
    let app = &documents(&root().join("container/queue/containerapp-azure.yaml"))[0];
    assert_eq!(app["identity"]["type"].as_str(), Some("SystemAssigned"));
    let app_env = app["properties"]["template"]["containers"][0]["env"]
        .as_sequence()
        .unwrap();
    let scale = &app["properties"]["template"]["scale"];
    assert_eq!(scale["minReplicas"].as_u64(), Some(0), "scales to zero");
    let rule = &scale["rules"][0]["custom"];
    assert_eq!(rule["type"].as_str(), Some("azure-queue"));
    assert_eq!(rule["identity"].as_str(), Some("system"));
    for (file, meta, env) in [
        ("k8s-azure.yaml", &trigger["metadata"], env),
        ("containerapp-azure.yaml", &rule["metadata"], app_env),
    ] {
        // The URL zerobatch reads names the queue the scaler watches.
        let url = queue_url(env);
        let Ok(zerobatch::config::QueueUrl::Azure(target)) =
            url.parse::<zerobatch::config::QueueUrl>()
        else {
            panic!("{file}: QUEUE_URL {url:?} is not an azure-queue URL");
        };
        assert_eq!(
            meta["queueName"].as_str(),
            Some(target.queue.as_str()),
            "{file}"
        );
        let length = meta["queueLength"].as_str().unwrap();
        assert!(
            length.parse::<u64>().is_ok(),
            "{file}: queueLength {length:?}"
        );
        assert!(
            docs.contains(&format!("queueLength: \"{length}\"")),
            "{file}: docs/queue.md derives queueLength {length}"
        );
    }
}

#[test]
fn generation_manifests_agree_with_each_other_the_binary_and_the_docs() {
    let dir = root().join("container/generation");
    let env_of = |container: &Value| -> Vec<(String, String)> {
        container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| {
                let value = if e.get("secretRef").is_some() || e.get("valueFrom").is_some() {
                    "(secret)".to_string()
                } else {
                    e["value"].as_str().unwrap().to_string()
                };
                (e["name"].as_str().unwrap().to_string(), value)
            })
            .collect()
    };
    let get = |env: &[(String, String)], k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in the generation manifests"))
    };

    // Azure Container Apps.
    let app = &documents(&dir.join("containerapp.yaml"))[0];
    let props = &app["properties"];
    let ingress = &props["configuration"]["ingress"];
    assert_eq!(ingress["targetPort"].as_u64(), Some(80));
    assert_eq!(ingress["external"].as_bool(), Some(true));
    let template = &props["template"];
    let container = &template["containers"][0];
    let aca_env = env_of(container);
    assert_eq!(get(&aca_env, "PORT"), "80");
    assert_eq!(
        get(&aca_env, "API_KEY"),
        "(secret)",
        "the API key is a secret"
    );
    let cpu = container["resources"]["cpu"].as_f64().unwrap();
    assert_eq!(
        get(&aca_env, "WORKERS").parse::<f64>().unwrap(),
        cpu,
        "one worker per vCPU"
    );
    let shutdown: u64 = get(&aca_env, "SHUTDOWN_TIMEOUT_MS").parse().unwrap();
    assert!(template["terminationGracePeriodSeconds"].as_u64().unwrap() * 1000 > shutdown);
    let scale = &template["scale"];
    assert_eq!(scale["minReplicas"].as_u64(), Some(0), "scales to zero");
    let concurrent: u64 = scale["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .find_map(|r| r["http"]["metadata"]["concurrentRequests"].as_str())
        .expect("an http scale rule with concurrentRequests")
        .parse()
        .unwrap();
    let budget: u64 = get(&aca_env, "MAX_BATCH_TOTAL_TOKENS").parse().unwrap();
    assert!(
        (1..=budget / 64).contains(&concurrent),
        "{concurrent} requests per replica must leave each a share of the {budget}-token KV cache"
    );

    // Kubernetes: Deployment, Service and the ScaledObject on the generation metrics.
    let k8s = documents(&dir.join("k8s.yaml"));
    let by_kind = |kind: &str| {
        k8s.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("container/generation/k8s.yaml has no {kind}"))
    };
    let deployment = by_kind("Deployment");
    let service = by_kind("Service");
    let scaled = by_kind("ScaledObject");
    let deployment_name = deployment["metadata"]["name"].as_str().unwrap();
    let k8s_env = env_of(&deployment["spec"]["template"]["spec"]["containers"][0]);
    for name in [
        "MAX_BATCH_TOTAL_TOKENS",
        "MAX_PREFILL_TOKENS",
        "DEFAULT_MAX_NEW_TOKENS",
        "WORKERS",
    ] {
        assert_eq!(
            get(&k8s_env, name),
            get(&aca_env, name),
            "{name}: k8s.yaml and containerapp.yaml differ"
        );
    }
    assert_eq!(get(&k8s_env, "API_KEY"), "(secret)");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"].as_str(),
        Some(deployment_name)
    );
    // Its triggers read metrics only a running replica exports: without a wake-up trigger
    // (the HTTP add-on), zero replicas would stay at zero.
    assert!(
        scaled["spec"]["minReplicaCount"].as_u64().unwrap_or(0) >= 1,
        "the prometheus ScaledObject cannot wake the Deployment from zero"
    );
    let triggers = scaled["spec"]["triggers"].as_sequence().unwrap();
    let trigger_on = |metric: &str| {
        triggers
            .iter()
            .find(|t| {
                t["type"].as_str() == Some("prometheus")
                    && t["metadata"]["query"]
                        .as_str()
                        .is_some_and(|q| q.contains(metric))
            })
            .unwrap_or_else(|| panic!("no prometheus trigger reads {metric}"))
    };
    let sequences = trigger_on(zerobatch::metrics::RUNNING_SEQUENCES);
    assert!(sequences["metadata"]["query"]
        .as_str()
        .unwrap()
        .contains(zerobatch::metrics::QUEUE_DEPTH));
    assert_eq!(
        sequences["metadata"]["threshold"].as_str(),
        Some(concurrent.to_string().as_str()),
        "the sequences threshold equals the ACA rule's concurrentRequests"
    );
    let kv: u64 = trigger_on(zerobatch::metrics::KV_CACHE_TOKENS)["metadata"]["threshold"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(kv < budget, "the KV-cache threshold is below the budget");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );

    // The HTTP add-on alternative, for scale to zero.
    let http = &documents(&dir.join("httpscaledobject.yaml"))[0];
    assert_eq!(http["kind"].as_str(), Some("HTTPScaledObject"));
    let target = &http["spec"]["scaleTargetRef"];
    assert_eq!(target["name"].as_str(), Some(deployment_name));
    assert_eq!(target["service"], service["metadata"]["name"]);
    assert_eq!(target["port"].as_u64(), Some(80));
    assert_eq!(http["spec"]["replicas"]["min"].as_u64(), Some(0));
    assert_eq!(
        http["spec"]["scalingMetric"]["concurrency"]["targetValue"].as_u64(),
        Some(concurrent)
    );

    // The image they run is built the way the guide and the container test build it.
    let model = "MODEL=/models/SmolLM2-135M-Instruct";
    let guide = std::fs::read_to_string(root().join("docs/deploy-azure.md")).unwrap();
    let test = std::fs::read_to_string(root().join("scripts/container-test.sh")).unwrap();
    let dockerfile = std::fs::read_to_string(root().join("container/Dockerfile")).unwrap();
    for needle in [
        format!("--build-arg {model}"),
        "--build-arg MODEL_DIR=models/SmolLM2-135M-Instruct".to_string(),
        "scripts/fetch-model.sh --generation".to_string(),
        "container/generation/containerapp.yaml".to_string(),
        format!("MAX_BATCH_TOTAL_TOKENS={budget}"),
    ] {
        assert!(
            guide.contains(&needle),
            "docs/deploy-azure.md lacks {needle}"
        );
    }
    assert!(test.contains("gen_model_path=/models/SmolLM2-135M-Instruct"));
    assert!(dockerfile.contains(&format!("--build-arg {model}")));
}
