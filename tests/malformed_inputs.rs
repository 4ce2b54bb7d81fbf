//! Checked-in corpora of malformed input, replayed through the parsers: container labels
//! (`tests/fixtures/malformed/labels.yaml`) and PROXY protocol headers
//! (`tests/fixtures/malformed/proxy_headers.yaml`), each case with the exact error it must
//! produce. Malformed routes files are `tests/fixtures/invalid/` (replayed through
//! `dockward check` by tests/check.rs); the pathological ones are here.
//!
//! No input may panic, and every error must name what was wrong. A mismatch lists every
//! failing case with what it produced, in the fixture's own YAML, ready to review.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};

use docker_watcher::{ContainerState, ContainerView, LabelError, parse_labels};
use dockward_tests::dockward::workspace_root;
use proxy_core::proxy_protocol::{Parsed, parse_header};
use route_spec::fields::{Clipped, FIELDS};
use serde_norway::Value;

/// Reads a fixture as a YAML list of maps.
fn cases(file: &str) -> Vec<serde_norway::Mapping> {
    let path = workspace_root().join("tests/fixtures/malformed").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let Value::Sequence(items) = doc else { panic!("{}: expected a list of cases", path.display()) };
    items
        .into_iter()
        .map(|item| match item {
            Value::Mapping(m) => m,
            other => panic!("{}: a case is not a map: {other:?}", path.display()),
        })
        .collect()
}

fn field<'a>(case: &'a serde_norway::Mapping, key: &str) -> Option<&'a Value> {
    case.get(Value::String(key.to_string()))
}

fn text(case: &serde_norway::Mapping, key: &str) -> Option<String> {
    field(case, key).map(|v| match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("{key}: expected text, found {other:?}"),
    })
}

fn strings(case: &serde_norway::Mapping, key: &str) -> Vec<String> {
    match field(case, key) {
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => panic!("{key}: expected strings, found {other:?}"),
            })
            .collect(),
        None => Vec::new(),
        Some(other) => panic!("{key}: expected a list, found {other:?}"),
    }
}

/// The YAML of a string list, as the fixtures write it.
fn yaml_list(items: &[String]) -> String {
    items.iter().map(|s| format!("\n    - {}", serde_json::to_string(s).expect("a string"))).collect()
}

/// The container a label case describes.
fn view(case: &serde_norway::Mapping) -> ContainerView {
    let labels: BTreeMap<String, String> = match field(case, "labels") {
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, v)| match (k, v) {
                (Value::String(k), Value::String(v)) => (k.clone(), v.clone()),
                other => panic!("labels must be quoted text: {other:?}"),
            })
            .collect(),
        other => panic!("a case needs labels: {other:?}"),
    };
    let networks: BTreeMap<String, Option<IpAddr>> = match field(case, "networks") {
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, v)| {
                let name = match k {
                    Value::String(s) => s.clone(),
                    other => panic!("network name {other:?}"),
                };
                let ip = match v {
                    Value::Null => None,
                    Value::String(s) => Some(s.parse().unwrap_or_else(|e| panic!("network {name}: {s}: {e}"))),
                    other => panic!("network {name}: {other:?}"),
                };
                (name, ip)
            })
            .collect(),
        None => BTreeMap::new(),
        Some(other) => panic!("networks: {other:?}"),
    };
    ContainerView {
        id: "0123456789abcdef".into(),
        name: "box".into(),
        labels,
        network_mode: text(case, "network_mode").unwrap_or_else(|| "host".into()),
        networks,
        ports: Default::default(),
        image: String::new(),
        state: ContainerState::Running,
    }
}

#[test]
fn every_malformed_label_set_gives_its_exact_errors() {
    let cases = cases("labels.yaml");
    assert!(cases.len() >= 50, "the corpus keeps at least 50 malformed label sets, has {}", cases.len());
    let mut names = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    let known_fields = FIELDS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ");
    for case in &cases {
        let name = text(case, "name").expect("every case has a name");
        assert!(names.insert(name.clone()), "two cases named {name:?}");
        let view = view(case);
        let out = match catch_unwind(AssertUnwindSafe(|| parse_labels(&view, &[]))) {
            Ok(out) => out,
            Err(_) => {
                failures.push(format!("- name: {name}\n  PANICKED"));
                continue;
            }
        };
        let want = strings(case, "errors");
        let want_routes = text(case, "routes").map_or(0, |n| n.parse::<usize>().expect("routes is a number"));
        // The list of every field is written `{FIELDS}` in the fixture, so a new field does
        // not rewrite it.
        let got: Vec<String> = out.errors.iter().map(|e| e.to_string().replace(&known_fields, "{FIELDS}")).collect();
        if got.is_empty() {
            failures.push(format!("- name: {name}\n  NO ERROR ({} routes)", out.routes.len()));
            continue;
        }
        for e in &out.errors {
            if let LabelError::Label { key, .. } = e {
                let shown = Clipped::bare(key).to_string(); // escaped, as errors show names
                assert!(e.to_string().contains(&shown), "{name}: the error does not name its label: {e}");
            }
        }
        if got != want || out.routes.len() != want_routes {
            failures.push(format!("- name: {name}\n  routes: {}\n  errors:{}", out.routes.len(), yaml_list(&got)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} label cases differ; got:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Bytes of a PROXY header case: `text` (with YAML escapes such as `\r\n`) or `hex`
/// (whitespace ignored).
fn header_bytes(case: &serde_norway::Mapping) -> Vec<u8> {
    if let Some(t) = text(case, "text") {
        return t.into_bytes();
    }
    let hex: String = text(case, "hex").expect("a case has text or hex").split_whitespace().collect();
    assert!(hex.len() % 2 == 0, "odd hex: {hex}");
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect()
}

/// What [`parse_header`] says of `bytes`, as the fixture writes it.
fn verdict(bytes: &[u8]) -> String {
    match catch_unwind(|| parse_header(bytes)) {
        Ok(Ok(Parsed::Incomplete)) => "incomplete".to_string(),
        Ok(Ok(Parsed::Header(h))) => format!("a header: {h:?}"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "PANICKED".to_string(),
    }
}

#[test]
fn every_malformed_proxy_header_gives_its_exact_error() {
    let cases = cases("proxy_headers.yaml");
    assert!(cases.len() >= 30, "the corpus keeps at least 30 malformed headers, has {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = text(case, "name").expect("every case has a name");
        let bytes = header_bytes(case);
        let got = verdict(&bytes);
        let want = text(case, "error").expect("every case has an error (or `incomplete`)");
        if got != want {
            failures.push(format!("- name: {name}\n  error: {}", serde_json::to_string(&got).expect("string")));
            continue;
        }
        // Fed one byte at a time, the reader reaches the same verdict as with every byte at
        // once, and no sooner: a header split across reads is never mistaken for a bad one.
        let first = (0..=bytes.len()).map(|n| verdict(&bytes[..n])).find(|v| v != "incomplete");
        assert_eq!(first.unwrap_or_else(|| "incomplete".into()), want, "{name}: byte by byte");
    }
    assert!(
        failures.is_empty(),
        "{} of {} header cases differ; got:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn pathological_labels_are_errors_not_panics() {
    // A megabyte value, and two thousand labels on one container.
    let huge = "9".repeat(1 << 20);
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    labels.insert("proxy.big.port".into(), huge.clone());
    for i in 0..2_000 {
        labels.insert(format!("proxy.a{i}.prot"), i.to_string());
    }
    let view = ContainerView {
        name: "box".into(),
        labels,
        network_mode: "host".into(),
        ports: Default::default(),
        image: String::new(),
        state: ContainerState::Running,
        ..Default::default()
    };
    let out = parse_labels(&view, &[]);
    assert!(out.routes.is_empty());
    assert_eq!(out.errors.len(), 2_001);
    let big = out.errors.iter().find(|e| e.alias() == Some("big")).expect("the huge port is an error");
    assert_eq!(big.key(), Some("proxy.big.port"));
    assert!(out.errors.iter().filter(|e| e.alias() != Some("big")).all(|e| e.to_string().contains("did you mean")));
}

#[test]
fn pathological_routes_files_are_errors_not_panics() {
    // Nesting deep enough to overflow a naive recursive reader: refused by a linear pre-scan
    // before the YAML scanner (quadratic in the depth) sees it.
    let deep = format!("routes:\n  a: {{port: 1, allow: {}{}}}\n", "[".repeat(10_000), "]".repeat(10_000));
    let loaded = dockward::routes_file::parse("deep.yml", &deep);
    assert!(loaded.routes.is_empty());
    assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
    assert!(
        loaded.errors[0].to_string().starts_with("deep.yml: lists and maps nested more than 64 deep (line 2)"),
        "{}",
        loaded.errors[0]
    );

    // Aliases that would expand to billions of nodes ("billion laughs").
    let mut laughs = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (i, name) in ["b", "c", "d", "e", "f", "g", "h", "i"].iter().enumerate() {
        let prev = ["a", "b", "c", "d", "e", "f", "g", "h"][i];
        laughs.push_str(&format!("{name}: &{name} [{}]\n", vec![format!("*{prev}"); 9].join(", ")));
    }
    laughs.push_str("routes:\n  x: {port: 1, allow: *i}\n");
    let loaded = dockward::routes_file::parse("laughs.yml", &laughs);
    assert!(loaded.routes.is_empty());
    assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
    assert_eq!(loaded.errors[0].to_string(), "laughs.yml: invalid YAML: repetition limit exceeded");

    // Binary garbage and a huge single line.
    for text in ["\u{0}\u{1}\u{2}routes", &"x".repeat(1 << 20), "routes:\n  ssh: {port: \u{feff}22}\n"] {
        let loaded = dockward::routes_file::parse("odd.yml", text);
        assert!(!loaded.errors.is_empty(), "{:?}", &text[..text.len().min(40)]);
        assert!(loaded.errors.iter().all(|e| !e.message.is_empty()));
    }
}
