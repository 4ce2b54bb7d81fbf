//! `dockward check` on the fixtures under tests/fixtures/ and on the shipped examples.
//!
//! Each `valid/NAME.yml` must pass and print exactly `valid/NAME.out`; each
//! `invalid/NAME.yml` must fail with exit 1 and print exactly `invalid/NAME.err` on stderr.
//! Paths in messages are relative to the workspace root, where the check runs.

use std::path::{Path, PathBuf};

use dockward_tests::dockward::{run, workspace_root};

/// The `.yml` files of `tests/fixtures/<kind>/`, as paths relative to the workspace root.
fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = workspace_root().join("tests/fixtures").join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .map(|p| p.strip_prefix(workspace_root()).expect("under the root").to_path_buf())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

fn expected(fixture: &Path, ext: &str) -> String {
    let path = workspace_root().join(fixture.with_extension(ext));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{} needs {}: {e}", fixture.display(), path.display()))
}

fn check(files: &[&Path]) -> std::process::Output {
    let mut args = vec!["check"];
    for f in files {
        args.push("--routes");
        args.push(f.to_str().expect("utf-8 path"));
    }
    run(&args)
}

#[test]
fn every_valid_fixture_passes_and_prints_its_routes() {
    for fixture in fixtures("valid") {
        let out = check(&[&fixture]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{}: {stderr}", fixture.display());
        assert_eq!(stderr, "", "{}", fixture.display());
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected(&fixture, "out"), "{}", fixture.display());
    }
}

#[test]
fn every_invalid_fixture_fails_with_its_exact_error() {
    for fixture in fixtures("invalid") {
        let out = check(&[&fixture]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", fixture.display());
        assert_eq!(stderr, expected(&fixture, "err"), "{}", fixture.display());
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with(&format!("error: {}: ", fixture.display())), "names the file: {first}");
    }
}

#[test]
fn several_files_are_checked_together_and_every_error_is_reported() {
    let good = PathBuf::from("tests/fixtures/valid/minimal.yml");
    let bad = PathBuf::from("tests/fixtures/invalid/misspelt-field.yml");
    let worse = PathBuf::from("tests/fixtures/invalid/port-out-of-range.yml");
    let out = check(&[&good, &bad, &worse]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 2, "{stderr}");
    assert!(stderr.ends_with("check failed: 2 errors in 3 files\n"), "{stderr}");
    // The good file's routes are still listed.
    assert!(String::from_utf8_lossy(&out.stdout).contains("tests/fixtures/valid/minimal.yml"));
}

#[test]
fn the_same_alias_and_port_in_two_files_are_replicas_not_a_conflict() {
    let a = PathBuf::from("tests/fixtures/valid/minimal.yml");
    let out = check(&[&a, &a]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn two_aliases_on_one_port_in_two_files_are_a_conflict() {
    let a = PathBuf::from("tests/fixtures/valid/minimal.yml");
    let b = PathBuf::from("tests/fixtures/invalid/listen-conflict.yml");
    let out = check(&[&a, &b]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(r#"route "ssh-local": listens on tcp 127.0.0.1:2222, as route "ssh" of"#), "{stderr}");
}

#[test]
fn the_shipped_examples_are_valid() {
    let dir = workspace_root().join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "yml") {
            let rel = path.strip_prefix(workspace_root()).expect("under the root").to_path_buf();
            let out = check(&[&rel]);
            assert_eq!(out.status.code(), Some(0), "{}: {}", rel.display(), String::from_utf8_lossy(&out.stderr));
            checked += 1;
        }
    }
    assert!(checked >= 3, "expected at least three examples, found {checked}");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let out = run(&["check", "--routes", "tests/fixtures/does-not-exist.yml"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: tests/fixtures/does-not-exist.yml: cannot read the file: No such file or directory (os error 2)\n\
         check failed: 1 error in 1 file\n"
    );
}

#[test]
fn check_without_input_is_a_usage_error() {
    let out = run(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to check"));
}

#[test]
fn json_gives_the_routes_with_their_non_default_options() {
    let out = run(&["check", "--json", "--routes", "tests/fixtures/valid/options.yml"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(
        json,
        serde_json::json!({
            "ok": true,
            "routes": [{
                "alias": "db",
                "protocol": "tcp",
                "scheme": "tcp4",
                "listen": "127.0.0.1:15432",
                "targets": ["db.internal:5432"],
                "source": "tests/fixtures/valid/options.yml",
                "options": {
                    "connect_timeout": "2s",
                    "drain_grace": "10s",
                    "max_connections": "100",
                    "max_udp_sessions": "50",
                    "tcp_idle_timeout": "1h",
                    "udp_idle_timeout": "30s",
                },
            }],
            "errors": [],
            "notes": [],
            "inputs": {"files": 1, "labels": 0, "containers": []},
        })
    );
}

#[test]
fn json_gives_every_error_as_printed_and_fails() {
    let fixture = Path::new("tests/fixtures/invalid/several-errors.yml");
    let out = run(&["check", "--json", "--routes", fixture.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "with --json everything is on stdout");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(json["ok"], false);
    assert_eq!(json["routes"], serde_json::json!([]));
    // The same text as without --json, less the `error: ` prefix and the summary line.
    let printed: Vec<String> =
        expected(fixture, "err").lines().filter_map(|l| l.strip_prefix("error: ")).map(String::from).collect();
    assert_eq!(json["errors"], serde_json::json!(printed));
}

#[test]
fn json_lists_the_same_routes_as_the_table_for_every_valid_fixture() {
    for fixture in fixtures("valid") {
        let path = fixture.to_str().expect("utf-8");
        let out = run(&["check", "--json", "--routes", path]);
        assert_eq!(out.status.code(), Some(0), "{path}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
        let aliases: Vec<&str> =
            json["routes"].as_array().expect("routes").iter().filter_map(|r| r["alias"].as_str()).collect();
        let table = expected(&fixture, "out");
        let rows: Vec<&str> = table
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with("ok: ") && !l.starts_with("note: "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(aliases, rows, "{path}");
    }
}
