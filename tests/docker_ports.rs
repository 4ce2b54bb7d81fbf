//! A container's exposed ports decide what its labels leave out, as in GoDoxy: the engine's
//! answer for a real host-network container (its `Config.ExposedPorts`, which the list does
//! not show, so dockward inspects it) makes an alias without `scheme` UDP when its port is
//! exposed over UDP only, and gives an alias without `port` the container's port.
//!
//! Host-network containers on loopback only (see tests/docker_e2e.rs). Targets through a
//! published port need a bridge network, which the test engine runs without
//! (`--bridge=none`): that half is covered without an engine, by the unit tests of
//! docker-watcher's `targets` and `views` and by tests/fixtures/godoxy/container-ports.yaml.

use std::net::SocketAddr;
use std::time::Duration;

use dockward_tests::docker::{
    ContainerSpec, DockwardWithDocker, TestEngine, free_tcp_port, free_udp_port, loopback, tcp_echo_eventually,
    udp_echo_eventually,
};
use dockward_tests::dockward::run;

/// Routes must follow containers within this.
const FOLLOW: Duration = Duration::from_secs(10);
/// A target inside a just-started container may need a moment to bind.
const TARGET_UP: Duration = Duration::from_secs(15);

/// A UDP-only exposed port makes a scheme-less alias UDP, and an alias with a scheme but no
/// port takes the container's exposed port; both carry traffic, and `dockward check
/// --container` says the same.
#[tokio::test(flavor = "multi_thread")]
async fn exposed_ports_give_the_scheme_and_port_that_labels_leave_out() {
    let Some(engine) = TestEngine::connect("exposed_ports").await else { return };
    let dockward = DockwardWithDocker::start(&engine, None);
    let (tcp_target, udp_target) = (free_tcp_port(), free_udp_port());
    let udp_listen = free_udp_port();
    let dns_port = format!("{udp_listen}:{udp_target}");
    let dns_labels = [("proxy.aliases", "dns"), ("proxy.dns.bind", "127.0.0.1"), ("proxy.dns.port", dns_port.as_str())];
    let dns_spec =
        ContainerSpec::udp_echo("exposed-udp", udp_target, &dns_labels).exposing(&[format!("{udp_target}/udp")]);
    let app_labels = [("proxy.aliases", "app"), ("proxy.app.bind", "127.0.0.1"), ("proxy.app.scheme", "tcp")];
    let app_spec =
        ContainerSpec::tcp_echo("exposed-tcp", tcp_target, &app_labels).exposing(&[format!("{tcp_target}/tcp")]);
    let mut containers = vec![engine.run(&dns_spec).await, engine.run(&app_spec).await];
    let (dns_name, app_name) = (containers[0].name.clone(), containers[1].name.clone());

    let dns = dockward.wait_row(&dns_name, "dns", "listening", FOLLOW, |r| r["state"] == "listening");
    assert_eq!(dns["protocol"], "udp", "no scheme, and {udp_target} is exposed over UDP only: {dns}");
    assert_eq!(dns["targets"], serde_json::json!([format!("127.0.0.1:{udp_target}")]));
    let app = dockward.wait_row(&app_name, "app", "listening", FOLLOW, |r| r["state"] == "listening");
    assert_eq!(app["protocol"], "tcp");
    assert_eq!(app["targets"], serde_json::json!([format!("127.0.0.1:{tcp_target}")]), "the exposed port: {app}");

    assert_eq!(udp_echo_eventually(loopback(udp_listen), b"over udp", TARGET_UP), b"over udp");
    let app_listen: SocketAddr = app["listen"].as_str().expect("listen").parse().expect("an address");
    assert_ne!(app_listen.port(), 0, "the OS picked a port");
    assert_eq!(tcp_echo_eventually(app_listen, b"over tcp", TARGET_UP), b"over tcp");

    let mut args = vec!["check", "--container", dns_name.as_str(), "--container", app_name.as_str()];
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    if !host.is_empty() {
        args.extend(["--docker-host", host.as_str()]);
    }
    let out = run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("dns ") || l.starts_with("app "))
        .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        rows,
        [
            format!("dns udp 127.0.0.1:{udp_listen} 127.0.0.1:{udp_target}"),
            format!("app tcp 127.0.0.1:0 127.0.0.1:{tcp_target}"),
        ],
        "{stdout}"
    );
    engine.remove_all(&mut containers);
}
