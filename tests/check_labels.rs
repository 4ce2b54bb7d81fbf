//! `dockward check --labels k=v ...` and `dockward check --container NAME`: container labels
//! validated by the same parser the Docker provider uses, with every error naming its label
//! and value, and exit status 1 on any error.
//!
//! The `--container` cases need a Docker engine: they print SKIP without one, and fail when
//! `DOCKWARD_REQUIRE_DOCKER=1`.

use std::collections::BTreeMap;

use docker_watcher::{ServiceView, TaskView, parse_service_labels};
use dockward_tests::docker::{ContainerSpec, TestEngine};
use dockward_tests::dockward::{run, workspace_root};

/// `dockward check ARGS`, with `--docker-host` when the tests use a non-default engine (the
/// test helper clears DOCKER_HOST from dockward's environment).
fn check(args: &[&str]) -> std::process::Output {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    if args.contains(&"--container") && !host.is_empty() {
        all.extend(["--docker-host", host.as_str()]);
    }
    run(&all)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn good_labels_print_their_routes_and_pass() {
    let out = check(&[
        "--labels",
        "proxy.aliases=ssh, dns",
        "proxy.*.bind=127.0.0.1",
        "proxy.#1.port=2222:22",
        "proxy.dns.port=5353:53",
        "proxy.dns.scheme=udp",
        "--name",
        "gitea",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    assert_eq!(
        stdout(&out),
        "\
ALIAS  PROTO  LISTEN          TARGETS       SOURCE  OPTIONS
ssh    tcp    127.0.0.1:2222  127.0.0.1:22  gitea   -
dns    udp    127.0.0.1:5353  127.0.0.1:53  gitea   -
ok: 2 routes in 5 labels
"
    );
}

#[test]
fn without_a_name_the_alias_is_container_and_the_flag_may_repeat() {
    let out = check(&["--labels", "proxy.#1.port=8080:80", "--labels", "proxy.#1.connect_timeout=2s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "\
ALIAS      PROTO  LISTEN        TARGETS       SOURCE     OPTIONS
container  tcp    0.0.0.0:8080  127.0.0.1:80  container  connect_timeout=2s
ok: 1 route in 2 labels
"
    );
}

#[test]
fn a_misspelt_field_gets_a_did_you_mean_and_fails() {
    let out = check(&[
        "--labels",
        "proxy.aliases=ssh,web",
        "proxy.ssh.port=2222:22",
        "proxy.web.prot=8080:80",
        "proxy.ssh.sheme=tcp",
        "--name",
        "box",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "\
error: box: label proxy.ssh.sheme=\"tcp\": unknown field (did you mean \"scheme\"?)
error: box: label proxy.web.prot=\"8080:80\": unknown field (did you mean \"port\"?)
check failed: 2 errors in 4 labels
"
    );
    assert_eq!(stdout(&out), "", "both aliases are broken: no route");
}

#[test]
fn bad_ports_name_label_and_value_and_the_good_alias_still_routes() {
    let out = check(&[
        "--labels",
        "proxy.aliases=a,b,c,ok",
        "proxy.a.port=22:22:22",
        "proxy.b.port=abc",
        "proxy.c.port=70000",
        "proxy.ok.port=2200:22",
        "--name",
        "box",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "\
error: box: label proxy.a.port=\"22:22:22\": too many ':'; expected LISTEN:TARGET or TARGET
error: box: label proxy.b.port=\"abc\": \"abc\" is not a port number; expected LISTEN:TARGET or TARGET
error: box: label proxy.c.port=\"70000\": 70000 is not a port (1-65535)
check failed: 3 errors in 5 labels
"
    );
    assert_eq!(
        stdout(&out),
        "\
ALIAS  PROTO  LISTEN        TARGETS       SOURCE  OPTIONS
ok     tcp    0.0.0.0:2200  127.0.0.1:22  box     -
"
    );
}

#[test]
fn index_zero_and_beyond_the_aliases_are_errors() {
    let out = check(&[
        "--labels",
        "proxy.aliases=web",
        "proxy.#0.port=1:2",
        "proxy.#2.port=3:4",
        "proxy.#1.port=8080:80",
        "--name",
        "box",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "\
error: box: label proxy.#0.port=\"1:2\": aliases are numbered from #1
error: box: label proxy.#2.port=\"3:4\": #2 is beyond the aliases (1 listed: web)
check failed: 2 errors in 4 labels
"
    );
    assert!(stdout(&out).contains("web    tcp    0.0.0.0:8080  127.0.0.1:80  box"), "{}", stdout(&out));
}

#[test]
fn aliases_without_a_port_are_noted_not_errors() {
    let out = check(&["--labels", "proxy.aliases=web,ssh", "proxy.web.scheme=http", "--name", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "\
note: app: alias \"web\" makes no route: scheme http is an HTTP route, not a stream route
note: app: alias \"ssh\" makes no route: no port
ok: 0 routes in 2 labels
"
    );
}

#[test]
fn labels_combine_with_routes_files_and_their_ports_conflict() {
    let out = check(&["--routes", "tests/fixtures/valid/minimal.yml", "--labels", "proxy.git.port=2222:22"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "\
error: container: route \"git\": listens on tcp 0.0.0.0:2222, as route \"ssh\" of tests/fixtures/valid/minimal.yml does
check failed: 1 error in 1 file and 1 label
"
    );

    // The same alias on the same port is a replica of the file's route, not a conflict.
    let out = check(&["--routes", "tests/fixtures/valid/minimal.yml", "--labels", "proxy.ssh.port=2222:22"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = check(&["--routes", "tests/fixtures/valid/minimal.yml", "--labels", "proxy.git.port=2223:22"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).ends_with("ok: 2 routes in 1 file and 1 label\n"), "{}", stdout(&out));
}

#[test]
fn cells_longer_than_a_format_width_are_clipped_and_the_check_does_not_crash() {
    // Issue 15 #1: a cell over 65,535 characters used to panic ("Formatting argument out of
    // range", exit 101).
    let host = format!("proxy.a.host={}", "h".repeat(70_000));
    let value = format!("proxy.b.port={}", "9".repeat(100_000));
    let out = check(&["--labels", "proxy.aliases=a,b", "proxy.a.port=2222:22", &host, &value, "--name", "box"]);
    assert_eq!(out.status.code(), Some(1), "{:.2000}", stderr(&out));
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table:.3000}");
    assert!(lines[1].starts_with("a      tcp    0.0.0.0:2222  hhhh"), "{:.200}", lines[1]);
    assert!(lines[1].ends_with("…[clipped: 70003 chars]  box     -"), "{:.200}", lines[1]);
    assert!(lines[1].chars().count() < 1100, "{}", lines[1].chars().count());
    let errors = stderr(&out);
    assert!(errors.starts_with("error: box: label proxy.b.port=\""), "{errors:.300}");
    assert!(errors.ends_with("check failed: 1 error in 4 labels\n"), "{errors:.300}");
}

#[test]
fn labels_and_values_cannot_forge_lines_or_drive_the_terminal() {
    // Issue 15 #10: whatever the label parser accepts, what check prints is escaped.
    let out = check(&[
        "--labels",
        "proxy.esc\x1b[31mRED\x1b[0m.port=1:2",
        "proxy.ok.port=2200:22",
        "proxy.ok.host=127.0.0.1\u{202e}",
        "--name",
        "box\nssh-backdoor  tcp  0.0.0.0:22",
    ]);
    // Today these labels are accepted and print escaped (`esc\u{1b}[31mRED…`, `box\nssh-…`);
    // once aliases and hosts with such characters are refused, the errors quoting them must
    // be escaped just the same. Either way: no raw control or bidi character, no forged line.
    let (out_text, err_text) = (stdout(&out), stderr(&out));
    let all = format!("{out_text}{err_text}");
    assert!(!all.contains(['\x1b', '\u{202e}']), "{all}");
    assert!(all.contains("\\u{1b}[31mRED\\u{1b}[0m"), "{all}");
    assert!(all.contains("box\\nssh-backdoor"), "{all}");
    for line in all.lines() {
        assert!(!line.starts_with("ssh-backdoor"), "a forged line: {all}");
    }
}

#[test]
fn a_label_without_a_value_is_a_usage_error() {
    let out = check(&["--labels", "proxy.ssh.port"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("expected KEY=VALUE"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_containers_labels_are_checked_against_the_real_engine() {
    let Some(engine) = TestEngine::connect("check_container").await else { return };
    let good = engine
        .create(&ContainerSpec::sleeper(
            "check-good",
            &[("proxy.aliases", "ssh"), ("proxy.ssh.port", "2222:22"), ("proxy.ssh.bind", "127.0.0.1")],
        ))
        .await;
    let bad = engine
        .run(&ContainerSpec::sleeper(
            "check-bad",
            &[("proxy.aliases", "a,b"), ("proxy.a.port", "1:2"), ("proxy.b.scheme", "tcpp"), ("proxy.b.port", "3:4")],
        ))
        .await;

    // Never started: checked all the same, with a note.
    let out = check(&["--container", &good.name]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "\
ALIAS  PROTO  LISTEN          TARGETS       SOURCE{pad}  OPTIONS
ssh    tcp    127.0.0.1:2222  127.0.0.1:22  {name}  -
note: {name}: the container is created; its routes are served only while it runs
ok: 1 route in container {name}
",
            name = good.name,
            pad = " ".repeat(good.name.len() - "SOURCE".len()),
        )
    );

    let out = check(&["--container", &bad.name, "--container", &good.name]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "\
error: {bad}: label proxy.b.scheme=\"tcpp\": unknown scheme (did you mean \"tcp\"?)
check failed: 1 error in container {bad} and container {good}
",
            bad = bad.name,
            good = good.name
        )
    );
    let table = stdout(&out);
    assert!(table.lines().any(|l| l.starts_with("a ") && l.contains(&bad.name)), "{table}");

    let out = check(&["--container", "dwt-no-such-container-anywhere"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: no container \"dwt-no-such-container-anywhere\" on the Docker engine at "),
        "{err}"
    );
    assert!(err.ends_with("check failed: 1 error in container dwt-no-such-container-anywhere\n"), "{err}");
}

#[test]
fn an_unreachable_engine_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = format!("unix://{}/docker.sock", dir.path().display());
    let out = run(&["check", "--container", "web", "--docker-host", &host]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with(&format!("error: cannot reach the Docker engine at {host}")), "{err}");
}

/// The `deploy.labels` (service labels) of one service of a stack file.
fn stack_service_labels(file: &str, service: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(workspace_root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let doc: serde_norway::Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let labels = doc
        .get("services")
        .and_then(|s| s.get(service))
        .and_then(|s| s.get("deploy"))
        .and_then(|d| d.get("labels"))
        .and_then(|l| l.as_mapping())
        .unwrap_or_else(|| panic!("{file}: no deploy.labels on service {service}"));
    labels
        .iter()
        .map(|(k, v)| {
            let text = |v: &serde_norway::Value| match v {
                serde_norway::Value::String(s) => s.clone(),
                other => serde_norway::to_string(other).unwrap_or_default().trim().to_string(),
            };
            (text(k), text(v))
        })
        .collect()
}

#[test]
fn the_swarm_stack_example_routes_to_every_task_of_its_service() {
    let labels = stack_service_labels("examples/swarm/stack.yml", "server");
    let mut args = vec!["--labels".to_string()];
    args.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
    args.extend(["--name".to_string(), "game_server".to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = check(&refs);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).ends_with("ok: 2 routes in 5 labels\n"), "{}", stdout(&out));

    // As the watcher sees the deployed stack: three running tasks on game_backend.
    let mut service_labels: BTreeMap<String, String> = labels.into_iter().collect();
    service_labels.insert("com.docker.stack.namespace".into(), "game".into());
    let task = |id: &str, ip: &str| TaskView {
        id: id.into(),
        node_id: "node".into(),
        host_network: false,
        node_address: None,
        networks: [
            ("game_backend".to_string(), Some(ip.parse().expect("ip"))),
            ("ingress".to_string(), Some("10.0.0.9".parse().expect("ip"))),
        ]
        .into_iter()
        .collect(),
    };
    let view = ServiceView {
        id: "svc".into(),
        name: "game_server".into(),
        labels: service_labels,
        virtual_ips: BTreeMap::new(),
        ingress_networks: ["ingress".to_string()].into_iter().collect(),
        tasks: vec![task("t1", "10.0.1.3"), task("t2", "10.0.1.4"), task("t3", "10.0.1.5")],
    };
    let parsed = parse_service_labels(&view, &[]);
    assert_eq!(parsed.errors, []);
    let routes: Vec<(String, String, Vec<String>)> = parsed
        .routes
        .iter()
        .map(|r| (r.protocol.to_string(), r.listen.to_string(), r.targets.iter().map(|t| t.to_string()).collect()))
        .collect();
    let targets: Vec<String> = ["10.0.1.3:27015", "10.0.1.4:27015", "10.0.1.5:27015"].map(String::from).to_vec();
    assert_eq!(
        routes,
        [
            ("tcp".to_string(), "0.0.0.0:27015".to_string(), targets.clone()),
            ("udp".to_string(), "0.0.0.0:27015".to_string(), targets),
        ]
    );
    assert!(parsed.routes.iter().all(|r| r.source == "game_server"));
}
