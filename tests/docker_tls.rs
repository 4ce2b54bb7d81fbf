//! TLS to a Docker engine, for real: a private dockerd serves its API on `tcp://127.0.0.1:PORT`
//! with `--tlsverify` (client certificates required), its certificates made by the test
//! (tests/common/certs.rs), next to the machine's engine on its unix socket.
//!
//! - With the right certificates (`--docker-tls tls=DIR`), dockward lists a labelled
//!   host-network container of the TLS engine and forwards traffic to it, and `dockward check
//!   --container tls/NAME` reads it through the same connect function.
//! - With another CA's `ca.pem`, or without a client certificate, the TLS engine is an error
//!   row of source `tls` saying which, while the machine's engine's route carries traffic.
//! - A client certificate of another CA, or no certificates at all: `dockward check` says
//!   which, naming the engine.
//! - Certificate files missing or broken are named, with their engine, before any connection
//!   (this part needs no engine and always runs).
//!
//! The private engine needs root and dockerd; without them the Docker test prints SKIP,
//! unless DOCKWARD_REQUIRE_DOCKER=1 (CI), where it fails instead. All traffic stays on
//! 127.0.0.1.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use dockward_tests::certs::TestCerts;
use dockward_tests::docker::{
    ContainerSpec, DockwardWithDocker, TestEngine, free_tcp_port, loopback, tcp_echo_eventually,
};
use dockward_tests::dockward::poll;
use dockward_tests::private_engine::PrivateEngine;
use serde_json::Value;

/// Routes (and error rows) must follow within this.
const FOLLOW: Duration = Duration::from_secs(20);
/// A target inside a just-started container may need a moment to bind.
const TARGET_UP: Duration = Duration::from_secs(15);

fn listening(r: &Value) -> bool {
    r["state"] == "listening"
}

/// A TCP echo container labelled `alias` = `listen:target`, bound to loopback.
fn echo(prefix: &str, alias: &str, listen: u16, target: u16) -> ContainerSpec {
    let port = format!("{listen}:{target}");
    let (port_key, bind_key) = (format!("proxy.{alias}.port"), format!("proxy.{alias}.bind"));
    ContainerSpec::tcp_echo(prefix, target, &[(port_key.as_str(), port.as_str()), (bind_key.as_str(), "127.0.0.1")])
}

/// `dockward check --docker-host HOSTS [--docker-tls T]... --container CONTAINER`.
fn check(hosts: &str, tls: &[String], container: &str) -> Output {
    let mut cmd = dockward_tests::dockward::command();
    cmd.args(["check", "--docker-host", hosts, "--container", container]);
    for t in tls {
        cmd.args(["--docker-tls", t]);
    }
    cmd.output().expect("dockward check runs")
}

/// The `--docker-tls` value giving engine `tls` the certificates in `dir`.
fn tls_arg(dir: &Path) -> String {
    format!("tls={}", dir.display())
}

/// Asserts that `out` failed with an error naming engine `tls` and saying `says`.
fn assert_refused(out: &Output, says: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}{}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("error: engine \"tls\": ") && err.contains(says), "expected {says:?}:\n{err}");
}

#[test]
fn certificate_files_at_fault_are_named_with_their_engine() {
    let certs = TestCerts::generate();
    // Nobody listens there: every case fails before connecting.
    let hosts = format!("tls=tcp://127.0.0.1:{}", free_tcp_port());
    let broken = |name: &str, file: &str, text: Option<&str>| {
        let dir = certs.copy(&certs.client(), name);
        match text {
            Some(text) => std::fs::write(dir.join(file), text).expect("write"),
            None => std::fs::remove_file(dir.join(file)).expect("remove"),
        }
        dir
    };
    let no_ca = broken("no-ca", "ca.pem", None);
    let no_key = broken("no-key", "key.pem", None);
    let bad_key = broken("bad-key", "key.pem", Some("not a key\n"));
    let bad_ca = broken("bad-ca", "ca.pem", Some("not a certificate\n"));
    let other_key = certs.copy(&certs.client(), "other-key");
    std::fs::copy(certs.foreign_client().join("key.pem"), other_key.join("key.pem")).expect("copy key");
    let cases = [
        (&no_ca, format!("TLS: {}/ca.pem: No such file or directory", no_ca.display())),
        (&no_key, format!("TLS: {}/key.pem: missing, while cert.pem is there (give both)", no_key.display())),
        (&bad_key, format!("TLS: {}/key.pem: holds no private key", bad_key.display())),
        (&bad_ca, format!("TLS: {}/ca.pem: holds no certificate", bad_ca.display())),
        (&other_key, format!("TLS: {}/key.pem: not the key of {}/cert.pem", other_key.display(), other_key.display())),
    ];
    for (dir, says) in &cases {
        assert_refused(&check(&hosts, &[tls_arg(dir)], "tls/web"), says);
    }
    // Certificates for an engine that is not there, or not on TCP, are a usage error naming them.
    let out = check(&hosts, &[format!("pi={}", certs.client().display())], "tls/web");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains(&format!("--docker-tls pi={}: no engine named \"pi\" (engines: tls)", certs.client().display()))
    );
    let out = check("tls=unix:///var/run/docker.sock", &[tls_arg(&certs.client())], "tls/web");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not reached over tcp:// or https://"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_engine_is_watched_with_the_right_certificates_and_refused_with_wrong_ones() {
    const NAME: &str = "docker_tls";
    if !PrivateEngine::usable_for(NAME) {
        return;
    }
    let Some(local) = TestEngine::connect(NAME).await else { return };
    let certs = TestCerts::generate();
    let mut private = PrivateEngine::start_with_tls(&certs.server());
    // The test's own client uses the engine's plain unix socket.
    let remote = TestEngine::connect_to(NAME, &private.host).await;
    let local_url = local
        .host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
    let tls_url = private.tcp.clone().expect("the private engine listens on TCP");
    let hosts = format!("local={local_url},tls={tls_url}");

    let (mine_listen, theirs_listen) = (free_tcp_port(), free_tcp_port());
    let mine = local.run(&echo("tls-mine", "mine", mine_listen, free_tcp_port())).await;
    let theirs = remote.run(&echo("tls-theirs", "theirs", theirs_listen, free_tcp_port())).await;
    let mine_source = format!("local/{}", mine.name);
    let theirs_source = format!("tls/{}", theirs.name);
    let theirs_arg = format!("tls/{}", theirs.name);

    // The right certificates: the TLS engine's container is a route carrying traffic, next
    // to the local engine's.
    {
        let args = ["--docker-tls".to_string(), tls_arg(&certs.client())];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let dockward = DockwardWithDocker::start_with_args(Some(&hosts), NAME, None, &args);
        dockward.wait_row(&theirs_source, "theirs", "listening", FOLLOW, listening);
        dockward.wait_row(&mine_source, "mine", "listening", FOLLOW, listening);
        assert_eq!(tcp_echo_eventually(loopback(theirs_listen), b"over tls", TARGET_UP), b"over tls");
        assert_eq!(tcp_echo_eventually(loopback(mine_listen), b"local", TARGET_UP), b"local");
        let errors: Vec<Value> = dockward.routes().into_iter().filter(|r| r["state"] == "error").collect();
        assert!(errors.is_empty(), "no error rows: {errors:?}");
    }
    let out = check(&hosts, &[tls_arg(&certs.client())], &theirs_arg);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("127.0.0.1:{theirs_listen}")) && text.contains("ok: 1 route"), "{text}");

    // Another CA's ca.pem, or no client certificate: the TLS engine is an error row saying
    // which, and the local engine's route carries traffic all along.
    let refusals = [
        (
            certs.wrong_ca(),
            format!("TLS: the engine's certificate is not signed by the CA in {}/ca.pem", certs.wrong_ca().display()),
        ),
        (
            certs.ca_only(),
            format!(
                "TLS: the engine requires a client certificate, and {} has no cert.pem and key.pem",
                certs.ca_only().display()
            ),
        ),
    ];
    for (dir, says) in &refusals {
        let args = ["--docker-tls".to_string(), tls_arg(dir)];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let dockward = DockwardWithDocker::start_with_args(Some(&hosts), NAME, None, &args);
        let row = poll("the TLS engine's error row", FOLLOW, || {
            dockward.routes().into_iter().find(|r| r["source"] == "tls" && r["state"] == "error")
        });
        let error = row["error"].as_str().unwrap_or_default();
        assert!(error.starts_with(&format!("cannot reach the Docker engine at {tls_url}: ")), "{row}");
        assert!(error.contains(says.as_str()) && error.ends_with("; retrying"), "expected {says:?}: {row}");
        dockward.wait_row(&mine_source, "mine", "listening", FOLLOW, listening);
        assert_eq!(tcp_echo_eventually(loopback(mine_listen), b"still local", TARGET_UP), b"still local");
        assert!(dockward.row(&theirs_source, "theirs").is_none(), "no route from a refused engine");
        let lost: Vec<Value> = dockward.routes().into_iter().filter(|r| r["source"] == "local").collect();
        assert!(lost.is_empty(), "the local engine is fine: {lost:?}");
        let out = check(&hosts, &[tls_arg(dir)], &theirs_arg);
        assert_refused(&out, says);
    }

    // A client certificate of another CA: the engine refuses it. No certificates at all: the
    // engine speaks TLS to a plain client.
    let foreign = certs.foreign_client();
    let out = check(&hosts, &[tls_arg(&foreign)], &theirs_arg);
    assert_refused(
        &out,
        &format!("TLS: the engine refused dockward's client certificate {}/cert.pem", foreign.display()),
    );
    let out = check(&hosts, &[], &theirs_arg);
    assert_refused(&out, "TLS: the engine speaks TLS: give its certificate directory");

    drop(theirs);
    drop(remote);
    private.stop_daemon();
}
