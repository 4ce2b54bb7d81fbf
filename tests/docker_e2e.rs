//! End to end: the built `dockward` binary, a real Docker engine, host-network containers
//! serving on loopback. Labels become listening ports that carry traffic, follow the
//! containers' lives, and bad labels show up as errors without hurting anyone else.
//!
//! All traffic stays on 127.0.0.1: containers run with network mode host and listen on
//! loopback; every route binds 127.0.0.1 (`proxy.*.bind`).

use std::net::TcpStream;
use std::time::Duration;

use dockward_tests::docker::{
    ContainerSpec, DockwardWithDocker, TestEngine, free_tcp_port, free_udp_port, loopback, tcp_echo_eventually,
    udp_echo_eventually,
};
use dockward_tests::on_each_engine;

/// Routes must follow containers within this (expected: well under a second).
const FOLLOW: Duration = Duration::from_secs(10);
/// A target inside a just-started container may need a moment to bind.
const TARGET_UP: Duration = Duration::from_secs(15);

on_each_engine! {
    async fn tcp_and_udp_routes_appear_on_start_and_carry_traffic(engine) {
        let dockward = DockwardWithDocker::start(&engine, None);
        let (tcp_target, udp_target) = (free_tcp_port(), free_udp_port());
        let (tcp_listen, udp_listen) = (free_tcp_port(), free_udp_port());
        let tcp_port = format!("{tcp_listen}:{tcp_target}");
        let udp_port = format!("{udp_listen}:{udp_target}");
        // Two aliases: fields by #N, a shared one by `*`, and one override of the wildcard.
        let c = engine
            .run(&ContainerSpec::tcp_and_udp_echo(
                "e2e-both",
                tcp_target,
                udp_target,
                &[
                    ("proxy.aliases", "echo-tcp, echo-udp"),
                    ("proxy.*.bind", "127.0.0.1"),
                    ("proxy.*.scheme", "tcp"),
                    ("proxy.#1.port", &tcp_port),
                    ("proxy.#2.port", &udp_port),
                    ("proxy.#2.scheme", "udp"),
                ],
            ))
            .await;

        let tcp_row = dockward.wait_row(&c.name, "echo-tcp", "listening", FOLLOW, |r| r["state"] == "listening");
        assert_eq!(tcp_row["protocol"], "tcp");
        assert_eq!(tcp_row["listen"], format!("127.0.0.1:{tcp_listen}"));
        assert_eq!(tcp_row["targets"], serde_json::json!([format!("127.0.0.1:{tcp_target}")]));
        let udp_row = dockward.wait_row(&c.name, "echo-udp", "listening", FOLLOW, |r| r["state"] == "listening");
        assert_eq!(udp_row["protocol"], "udp");
        assert_eq!(udp_row["listen"], format!("127.0.0.1:{udp_listen}"));

        assert_eq!(tcp_echo_eventually(loopback(tcp_listen), b"hello over tcp", TARGET_UP), b"hello over tcp");
        assert_eq!(udp_echo_eventually(loopback(udp_listen), b"hello over udp", TARGET_UP), b"hello over udp");

        // `dockward routes` shows the container name as the source.
        let out = dockward.cli(&["routes"]);
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "dockward routes failed: {}", String::from_utf8_lossy(&out.stderr));
        let line = table.lines().find(|l| l.contains("echo-tcp")).unwrap_or_else(|| panic!("no echo-tcp row in:\n{table}"));
        assert!(line.contains(&c.name), "the SOURCE column names the container: {line}");
        let out = dockward.cli(&["routes", "--json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("routes --json is JSON");
        let row = rows.iter().find(|r| r["alias"] == "echo-udp").expect("echo-udp row");
        assert_eq!(row["source"], c.name.as_str());
        assert!(row["bytes_in"].as_u64().unwrap_or(0) >= b"hello over udp".len() as u64, "{row}");
    }

    async fn stop_closes_the_port_and_restart_reopens_it_on_the_same_port(engine) {
        let dockward = DockwardWithDocker::start(&engine, None);
        let (target, listen) = (free_tcp_port(), free_tcp_port());
        let port = format!("{listen}:{target}");
        let c = engine
            .run(&ContainerSpec::tcp_echo(
                "e2e-stop",
                target,
                &[("proxy.svc.port", &port), ("proxy.svc.bind", "127.0.0.1")],
            ))
            .await;
        dockward.wait_row(&c.name, "svc", "listening", FOLLOW, |r| r["state"] == "listening");
        assert_eq!(tcp_echo_eventually(loopback(listen), b"before", TARGET_UP), b"before");

        c.stop().await;
        dockward.wait_gone(&c.name, "svc", FOLLOW);
        let refused = TcpStream::connect(loopback(listen));
        assert!(refused.is_err(), "port {listen} still accepts after the container stopped");

        c.start().await;
        let row = dockward.wait_row(&c.name, "svc", "listening again", FOLLOW, |r| r["state"] == "listening");
        assert_eq!(row["listen"], format!("127.0.0.1:{listen}"), "back on the same port");
        assert_eq!(tcp_echo_eventually(loopback(listen), b"after", TARGET_UP), b"after");
    }

    async fn bad_labels_on_one_container_show_as_errors_while_a_good_one_works(engine) {
        let dockward = DockwardWithDocker::start(&engine, None);
        let (target, listen, ok_listen) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
        let good_port = format!("{listen}:{target}");
        let ok_port = format!("{ok_listen}:{target}");
        let bad = engine
            .run(&ContainerSpec::sleeper(
                "e2e-bad",
                &[
                    ("proxy.aliases", "ok,broken,typo"),
                    ("proxy.*.bind", "127.0.0.1"),
                    ("proxy.ok.port", &ok_port),
                    ("proxy.broken.port", "22:22:22"),
                    ("proxy.typo.port", "2200:22"),
                    ("proxy.typo.sheme", "udp"),
                ],
            ))
            .await;
        let good = engine
            .run(&ContainerSpec::tcp_echo(
                "e2e-good",
                target,
                &[("proxy.web.port", &good_port), ("proxy.web.bind", "127.0.0.1")],
            ))
            .await;

        let broken = dockward.wait_row(&bad.name, "broken", "an error", FOLLOW, |r| r["state"] == "error");
        assert_eq!(
            broken["error"], "label proxy.broken.port=\"22:22:22\": too many ':'; expected LISTEN:TARGET or TARGET",
            "{broken}"
        );
        let typo = dockward.wait_row(&bad.name, "typo", "an error", FOLLOW, |r| r["state"] == "error");
        assert_eq!(typo["error"], "label proxy.typo.sheme=\"udp\": unknown field (did you mean \"scheme\"?)");
        // The bad container's valid alias still works.
        let ok = dockward.wait_row(&bad.name, "ok", "listening", FOLLOW, |r| r["state"] == "listening");
        assert_eq!(ok["listen"], format!("127.0.0.1:{ok_listen}"));

        dockward.wait_row(&good.name, "web", "listening", FOLLOW, |r| r["state"] == "listening");
        assert_eq!(tcp_echo_eventually(loopback(listen), b"unaffected", TARGET_UP), b"unaffected");
        let out = dockward.cli(&["routes"]);
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(table.lines().any(|l| l.contains(&bad.name) && l.contains("error")), "errors show in the table:\n{table}");
    }
}

/// Rootless Podman's user-mode networking (slirp4netns here; pasta alike) gives a container
/// no address the host can reach: dockward forwards to the port it publishes on 127.0.0.1,
/// and a container that publishes none is an error row saying so.
#[tokio::test(flavor = "multi_thread")]
async fn podman_user_mode_networking_is_reached_on_the_published_port() {
    const NAME: &str = "podman_user_mode_networking";
    let Some(engine) = TestEngine::podman(NAME).await else { return };
    let has_slirp = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("slirp4netns").is_file()));
    if !has_slirp {
        assert!(!dockward_tests::podman::podman_required(), "DOCKWARD_REQUIRE_PODMAN=1 but slirp4netns is missing");
        dockward_tests::skip::skip("podman", NAME, "no slirp4netns (scripts/start-podman.sh installs it)");
        return;
    }
    let dockward = DockwardWithDocker::start(&engine, None);
    let (target, published, listen) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let port = format!("{listen}:{target}");
    let labels = [("proxy.slirp.port", port.as_str()), ("proxy.slirp.bind", "127.0.0.1")];
    let c = engine
        .run(&ContainerSpec::tcp_echo_any("slirp", target, &labels).on_network("slirp4netns", target, published))
        .await;
    let row = dockward.wait_row(&c.name, "slirp", "listening", FOLLOW, |r| r["state"] == "listening");
    assert_eq!(row["targets"], serde_json::json!([format!("127.0.0.1:{published}")]));
    assert_eq!(tcp_echo_eventually(loopback(listen), b"through slirp", TARGET_UP), b"through slirp");

    let bare_port = format!("{}:{target}", free_tcp_port());
    let bare_labels = [("proxy.bare.port", bare_port.as_str())];
    let mut bare = ContainerSpec::tcp_echo_any("slirp-bare", target, &bare_labels);
    bare.network = Some("slirp4netns".into());
    let bare = engine.run(&bare).await;
    let row = dockward_tests::dockward::poll("the error row of the unpublished container", FOLLOW, || {
        dockward.routes().into_iter().find(|r| r["source"] == bare.name.as_str() && r["state"] == "error")
    });
    let error = row["error"].as_str().unwrap_or("").to_string();
    assert!(
        error.contains("network mode slirp4netns gives the container no address dockward can reach")
            && error.contains(&format!("does not publish port {target}/tcp")),
        "{row}"
    );
}
