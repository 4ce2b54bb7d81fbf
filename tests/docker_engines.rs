//! One dockward in front of two real engines at once: the machine's dockerd (`local`, on its
//! unix socket) and a private dockerd reached over `tcp://127.0.0.1:PORT` (`priv`), each
//! with labelled host-network containers serving on loopback.
//!
//! Routes come from both, SOURCE names the engine (`local/NAME`, `priv/NAME`), replicas of
//! one alias on the two engines are one balanced route, and stopping the private engine
//! leaves the local engine's routes and traffic untouched, while its own routes come back
//! when it is started again.
//!
//! The private engine needs root and dockerd; without them the test prints SKIP, unless
//! DOCKWARD_REQUIRE_DOCKER=1 (CI), where it fails instead. All traffic stays on 127.0.0.1.

use std::time::Duration;

use dockward_tests::docker::{
    ContainerSpec, DockwardWithDocker, TestEngine, free_tcp_port, loopback, tcp_echo_eventually,
};
use dockward_tests::dockward::poll;
use dockward_tests::private_engine::PrivateEngine;
use serde_json::Value;

/// Routes must follow containers (and engines) within this.
const FOLLOW: Duration = Duration::from_secs(20);
/// A target inside a just-started container may need a moment to bind.
const TARGET_UP: Duration = Duration::from_secs(15);

fn listening(r: &Value) -> bool {
    r["state"] == "listening"
}

/// The rows of `alias`, whatever their source.
fn rows_of(dockward: &DockwardWithDocker, alias: &str) -> Vec<Value> {
    dockward.routes().into_iter().filter(|r| r["alias"] == alias).collect()
}

/// Whether dockward shows engine `name` as lost (its error row).
fn engine_lost(dockward: &DockwardWithDocker, name: &str) -> bool {
    dockward.routes().iter().any(|r| r["source"] == name && r["state"] == "error")
}

/// A TCP echo container labelled `alias` = `listen:target`, bound to loopback.
fn echo(prefix: &str, alias: &str, listen: u16, target: u16) -> ContainerSpec {
    let port = format!("{listen}:{target}");
    let (port_key, bind_key) = (format!("proxy.{alias}.port"), format!("proxy.{alias}.bind"));
    ContainerSpec::tcp_echo(prefix, target, &[(port_key.as_str(), port.as_str()), (bind_key.as_str(), "127.0.0.1")])
        .restart_unless_stopped()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_engines_route_side_by_side_and_losing_one_leaves_the_other_untouched() {
    const NAME: &str = "docker_engines";
    if !PrivateEngine::usable_for(NAME) {
        return;
    }
    let Some(local) = TestEngine::connect(NAME).await else { return };
    let mut private = PrivateEngine::start_with_tcp();
    let remote = TestEngine::connect_to(NAME, &private.host).await;
    let local_url = local
        .host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
    let tcp_url = private.tcp.clone().expect("the private engine listens on TCP");
    // Both engines in one flag, comma-separated, as DOCKER_HOST may hold them.
    let hosts = format!("local={local_url},priv={tcp_url}");
    let dockward = DockwardWithDocker::start_at(Some(&hosts), NAME, None);

    let (mine_listen, theirs_listen, shared_listen) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let mine = local.run(&echo("eng-mine", "mine", mine_listen, free_tcp_port())).await;
    let theirs = remote.run(&echo("eng-theirs", "theirs", theirs_listen, free_tcp_port())).await;
    let shared_local = local.run(&echo("eng-shared", "shared", shared_listen, free_tcp_port())).await;
    let shared_remote = remote.run(&echo("eng-shared", "shared", shared_listen, free_tcp_port())).await;

    // Routes from both engines, each SOURCE naming its engine.
    let mine_source = format!("local/{}", mine.name);
    let theirs_source = format!("priv/{}", theirs.name);
    dockward.wait_row(&mine_source, "mine", "listening", FOLLOW, listening);
    dockward.wait_row(&theirs_source, "theirs", "listening", FOLLOW, listening);
    assert_eq!(tcp_echo_eventually(loopback(mine_listen), b"to local", TARGET_UP), b"to local");
    assert_eq!(tcp_echo_eventually(loopback(theirs_listen), b"to priv", TARGET_UP), b"to priv");
    let out = dockward.cli(&["routes"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&theirs_source), "the SOURCE column names the engine:\n{table}");

    // `dockward check --container ENGINE/NAME` asks that engine; a bare name is ambiguous.
    let check = |container: &str| {
        dockward_tests::dockward::command()
            .args(["check", "--docker-host", &hosts, "--container", container])
            .output()
            .expect("dockward check runs")
    };
    let out = check(&format!("priv/{}", theirs.name));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("127.0.0.1:{theirs_listen}")) && text.contains("ok: 1 route"), "{text}");
    let out = check(&theirs.name);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("write ENGINE/{}", theirs.name)), "{err}");

    // The replicas of `shared` on the two engines are one route with both targets.
    let shared = poll("one shared route with both replicas", FOLLOW, || {
        let rows = rows_of(&dockward, "shared");
        (rows.len() == 1 && rows[0]["targets"].as_array().is_some_and(|t| t.len() == 2)).then(|| rows[0].clone())
    });
    assert!(listening(&shared), "{shared}");
    assert!(
        [&shared_local.name, &shared_remote.name]
            .iter()
            .any(|n| shared["source"].as_str().unwrap_or("").ends_with(n.as_str())),
        "{shared}"
    );

    // The private engine goes away: only its own error row appears; the local engine's
    // route stays as it was and carries traffic.
    let mine_before = dockward.row(&mine_source, "mine").expect("the local route");
    private.stop_daemon();
    poll("dockward to see the private engine gone", FOLLOW, || engine_lost(&dockward, "priv").then_some(()));
    assert!(!engine_lost(&dockward, "local"), "the local engine is not lost");
    let mine_during = dockward.row(&mine_source, "mine").expect("the local route stays");
    assert!(listening(&mine_during));
    assert_eq!(mine_during["listen"], mine_before["listen"]);
    assert_eq!(tcp_echo_eventually(loopback(mine_listen), b"still local", TARGET_UP), b"still local");
    assert_eq!(
        tcp_echo_eventually(loopback(shared_listen), b"shared", TARGET_UP),
        b"shared",
        "the local replica serves"
    );

    // It comes back: its containers restart by their policy, its routes carry traffic again.
    private.start_daemon();
    poll("dockward back in touch with the private engine", FOLLOW, || (!engine_lost(&dockward, "priv")).then_some(()));
    dockward.wait_row(&theirs_source, "theirs", "listening", FOLLOW, listening);
    assert_eq!(tcp_echo_eventually(loopback(theirs_listen), b"priv again", TARGET_UP), b"priv again");
    let mine_after = dockward.row(&mine_source, "mine").expect("the local route");
    assert_eq!(mine_after["listen"], mine_before["listen"]);
    assert_eq!(tcp_echo_eventually(loopback(mine_listen), b"local again", TARGET_UP), b"local again");

    drop((theirs, shared_remote));
    drop(remote);
    private.stop_daemon();
}
