//! GoDoxy compatibility: label sets taken from GoDoxy's tests and documentation, restated as
//! data in `tests/fixtures/godoxy/*.yaml`, each with what dockward makes of it.
//!
//! Each case names the GoDoxy file and test (or doc section) it comes from, the container
//! facts that matter (name, network mode, networks), the labels, and the expected routes
//! (`ALIAS PROTOCOL LISTEN -> TARGET[,TARGET]`), skipped aliases (`ALIAS: reason`, exactly),
//! errors (each expected text must be contained in one error, in order, and there must be
//! as many errors as expected texts) and exclusion. A case with `difference:` documents
//! where dockward deliberately differs from GoDoxy; the README's "Coming from GoDoxy"
//! section lists the same differences.
//!
//! Container facts may also give its ports, `exposed: [53/udp, 80/tcp]` and `published:
//! ["5353:53/udp", "127.0.0.1:8080:80/tcp"]` (HOST_PORT:CONTAINER_PORT/PROTOCOL, with an
//! optional host address first), and `engine: 192.168.2.100` for a remote engine at that
//! address (default: local). Published ports count as exposed too, as in the engine's answers.
//! `image: postgres:16` is the container's image, whose name may give a missing scheme and port.
//!
//! The labels go through `docker_watcher::parse_container_labels`, the function the Docker
//! provider and `dockward check --container` use (for a container without ports on a local
//! engine it is `parse_labels`, which `dockward check --labels` uses); a few cases also run
//! through the built binary below.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use docker_watcher::{
    ContainerPorts, ContainerRoutes, ContainerState, ContainerView, EngineSite, ExposedPort, PublishedPort,
    parse_container_labels, parse_labels,
};
use dockward_tests::dockward::{run, workspace_root};
use route_spec::Protocol;
use serde_norway::Value;

/// Where the cases live.
fn fixtures() -> PathBuf {
    workspace_root().join("tests/fixtures/godoxy")
}

/// One case, read from YAML.
struct Case {
    file: String,
    name: String,
    view: ContainerView,
    site: EngineSite,
    self_networks: Vec<String>,
    routes: Vec<String>,
    skipped: Vec<String>,
    errors: Vec<String>,
    excluded: bool,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn list(v: Option<&Value>) -> Vec<String> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items.iter().map(text).collect(),
        Some(other) => panic!("expected a list, got {other:?}"),
    }
}

/// `53/udp` → (53, UDP); no protocol is TCP.
fn port_and_protocol(text: &str) -> (u16, Protocol) {
    let (port, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => panic!("protocol {other:?}: expected tcp or udp"),
    };
    (port.parse().unwrap_or_else(|_| panic!("{text:?}: expected PORT/PROTOCOL")), protocol)
}

/// The `exposed` and `published` container facts; published ports are exposed too.
fn ports(container: Option<&Value>) -> ContainerPorts {
    let facts = |k: &str| list(container.and_then(|c| c.get(k)));
    let published: Vec<PublishedPort> = facts("published")
        .iter()
        .map(|p| {
            let (host, container_port) = p.rsplit_once(':').unwrap_or_else(|| panic!("{p:?}: expected HOST:CONTAINER"));
            let (host_ip, host_port) = host.rsplit_once(':').unwrap_or(("", host));
            let (container_port, protocol) = port_and_protocol(container_port);
            PublishedPort {
                container_port,
                protocol,
                host_ip: host_ip.to_string(),
                host_port: host_port.parse().expect("a host port"),
            }
        })
        .collect();
    let mut exposed: Vec<ExposedPort> = facts("exposed")
        .iter()
        .map(|e| port_and_protocol(e))
        .chain(published.iter().map(|p| (p.container_port, p.protocol)))
        .map(|(port, protocol)| ExposedPort { port, protocol })
        .collect();
    exposed.sort();
    exposed.dedup();
    ContainerPorts { exposed, published }
}

fn load_cases() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("tests/fixtures/godoxy exists")
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let doc: Value = serde_norway::from_str(&std::fs::read_to_string(&path).expect("readable fixture"))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let Value::Sequence(items) = doc else { panic!("{file}: expected a list of cases") };
        for item in items {
            let get = |k: &str| item.get(k);
            let name = text(get("case").unwrap_or_else(|| panic!("{file}: a case without `case:`")));
            assert!(
                get("from").is_some_and(|f| !text(f).is_empty()),
                "{file}: case {name:?} must cite the GoDoxy file and test or doc section it comes from"
            );
            let container = get("container");
            let fact = |k: &str| container.and_then(|c| c.get(k)).map(text);
            let network_mode = fact("network_mode").unwrap_or_else(|| "host".into());
            let networks: BTreeMap<String, Option<IpAddr>> = match container.and_then(|c| c.get("networks")) {
                Some(Value::Mapping(m)) => m
                    .iter()
                    .map(|(k, v)| {
                        let ip = text(v);
                        (text(k), if ip.is_empty() { None } else { Some(ip.parse().expect("an IP address")) })
                    })
                    .collect(),
                _ => BTreeMap::new(),
            };
            let labels: BTreeMap<String, String> = match get("labels") {
                Some(Value::Mapping(m)) => m.iter().map(|(k, v)| (text(k), text(v))).collect(),
                _ => panic!("{file}: case {name:?} has no labels"),
            };
            cases.push(Case {
                file: file.clone(),
                name,
                view: ContainerView {
                    id: "c0ffee".into(),
                    name: fact("name").unwrap_or_else(|| "app".into()),
                    labels,
                    network_mode,
                    networks,
                    ports: ports(container),
                    image: fact("image").unwrap_or_default(),
                    state: ContainerState::Running,
                },
                site: fact("engine").map(EngineSite::Remote).unwrap_or_default(),
                self_networks: list(container.and_then(|c| c.get("self_networks"))),
                routes: list(get("routes")),
                skipped: list(get("skipped")),
                errors: list(get("errors")),
                excluded: get("excluded").is_some_and(|v| v.as_bool() == Some(true)),
            });
        }
    }
    cases
}

fn route_lines(r: &ContainerRoutes) -> Vec<String> {
    r.routes
        .iter()
        .map(|s| {
            let targets: Vec<String> = s.targets.iter().map(ToString::to_string).collect();
            format!("{} {} {} -> {}", s.alias, s.protocol, s.listen, targets.join(","))
        })
        .collect()
}

/// Every case, with every mismatch reported at once.
#[test]
fn every_godoxy_case_gives_the_expected_routes_skips_and_errors() {
    let cases = load_cases();
    assert!(cases.len() >= 60, "the suite holds {} cases; at least 60 are wanted", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let r = parse_container_labels(&case.view, &case.site, &case.self_networks);
        if case.view.ports == ContainerPorts::default() && case.site == EngineSite::Local {
            assert_eq!(
                r,
                parse_labels(&case.view, &case.self_networks),
                "{}: without ports, as parse_labels",
                case.name
            );
        }
        let routes = route_lines(&r);
        let skipped: Vec<String> = r.skipped.iter().map(|s| format!("{}: {}", s.alias, s.reason)).collect();
        let errors: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
        let errors_match = errors.len() == case.errors.len()
            && case.errors.iter().zip(&errors).all(|(want, got)| got.contains(want.as_str()));
        if routes != case.routes || skipped != case.skipped || !errors_match || r.excluded != case.excluded {
            failures.push(format!(
                "{}: {}\n  routes   want {:?}\n           got  {:?}\n  skipped  want {:?}\n           got  {:?}\n  \
                 errors   want {:?}\n           got  {:?}\n  excluded want {} got {}",
                case.file,
                case.name,
                case.routes,
                routes,
                case.skipped,
                skipped,
                case.errors,
                errors,
                case.excluded,
                r.excluded
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// Case names are unique, so a failure names one case.
#[test]
fn case_names_are_unique() {
    let mut seen = std::collections::BTreeSet::new();
    for case in load_cases() {
        assert!(seen.insert(case.name.clone()), "case {:?} appears twice", case.name);
    }
}

/// `dockward check --labels` says why a GoDoxy HTTP alias makes no route, and passes.
#[test]
fn check_names_godoxy_http_routes_and_serves_the_stream_alias() {
    let out = run(&[
        "check",
        "--labels",
        "proxy.aliases=web,ssh",
        "proxy.web.port=8080",
        "proxy.ssh.port=2222:22",
        "proxy.*.max_conns_per_host=10",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("2222"), "{stdout}");
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("alias \"web\" makes no route: HTTP route (GoDoxy serves it); no stream route"), "{all}");
}

/// The `proxy.*` labels of each service of a compose file, as a map of labels per service.
fn compose_labels(file: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let yaml = std::fs::read_to_string(workspace_root().join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
    let doc: Value = serde_norway::from_str(&yaml).unwrap_or_else(|e| panic!("{file}: {e}"));
    let services = doc.get("services").and_then(Value::as_mapping).unwrap_or_else(|| panic!("{file}: no services"));
    services
        .iter()
        .map(|(name, service)| {
            let labels = match service.get("labels") {
                Some(Value::Mapping(m)) => m.iter().map(|(k, v)| (text(k), text(v))).collect(),
                _ => BTreeMap::new(),
            };
            (text(name), labels)
        })
        .collect()
}

/// examples/godoxy/compose.yml makes the routes its header promises, and none for the
/// aliases GoDoxy serves over HTTP or excludes.
#[test]
fn the_godoxy_example_compose_file_makes_its_documented_routes() {
    let mut routes = Vec::new();
    let mut skipped = Vec::new();
    for (i, (service, labels)) in compose_labels("examples/godoxy/compose.yml").into_iter().enumerate() {
        let view = ContainerView {
            id: format!("id{i}"),
            name: service.clone(),
            labels,
            network_mode: "bridge".into(),
            networks: [("bridge".to_string(), Some(format!("172.17.0.{}", i + 2).parse().expect("an IP")))]
                .into_iter()
                .collect(),
            ports: Default::default(),
            image: String::new(),
            state: ContainerState::Running,
        };
        let r = parse_labels(&view, &[]);
        assert!(r.errors.is_empty(), "{service}: {:?}", r.errors);
        routes.extend(route_lines(&r));
        skipped.extend(r.skipped.iter().map(|s| format!("{}: {}", s.alias, s.reason)));
    }
    assert_eq!(
        routes,
        [
            "dns udp 0.0.0.0:53 -> 172.17.0.2:53",
            "game udp 0.0.0.0:27015 -> 172.17.0.3:27015",
            "git-ssh tcp 0.0.0.0:2223 -> 172.17.0.4:22",
            "ssh tcp 0.0.0.0:2222 -> 172.17.0.5:22",
        ]
    );
    assert_eq!(
        skipped,
        [
            "game-old: alias ends in -old (a container mid-rename); GoDoxy excludes it",
            "git: HTTP route (GoDoxy serves it); no stream route"
        ]
    );
}

/// examples/godoxy/compose.yml's labels, unchanged, on real (host-network) containers of the
/// engine: `dockward check --container` reads them from the engine and finds the routes the
/// file promises, targets on loopback, and says why `git` and `game-old` make none. Nothing
/// listens: the example's fixed ports are only checked. Needs Docker (SKIP without one).
#[tokio::test(flavor = "multi_thread")]
async fn the_godoxy_example_runs_unchanged_on_real_containers() {
    let Some(engine) = dockward_tests::docker::TestEngine::connect("godoxy_example").await else { return };
    let mut containers = Vec::new();
    for (service, labels) in compose_labels("examples/godoxy/compose.yml") {
        let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let spec = dockward_tests::docker::ContainerSpec::sleeper(&format!("godoxy-{service}"), &pairs);
        containers.push(engine.run(&spec).await);
    }
    let mut args = vec!["check".to_string()];
    for c in &containers {
        args.extend(["--container".to_string(), c.name.clone()]);
    }
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    if !host.is_empty() {
        args.extend(["--docker-host".to_string(), host]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&refs);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| !l.starts_with("ALIAS") && !l.starts_with("note:") && !l.starts_with("ok:"))
        .map(|l| l.split_whitespace().take(4).collect())
        .collect();
    let mut rows: Vec<String> = rows.iter().map(|r| r.join(" ")).collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            "dns udp 0.0.0.0:53 127.0.0.1:53",
            "game udp 0.0.0.0:27015 127.0.0.1:27015",
            "git-ssh tcp 0.0.0.0:2223 127.0.0.1:22",
            "ssh tcp 0.0.0.0:2222 127.0.0.1:22",
        ],
        "{stdout}"
    );
    assert!(
        stdout.contains("alias \"git\" makes no route: HTTP route (GoDoxy serves it); no stream route"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "alias \"game-old\" makes no route: alias ends in -old (a container mid-rename); GoDoxy excludes it"
        ),
        "{stdout}"
    );
    engine.remove_all(&mut containers);
}
