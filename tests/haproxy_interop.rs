//! PROXY protocol interoperability with a real peer: HAProxy (Debian's `haproxy`).
//!
//! - In front of dockward: HAProxy `send-proxy-v2` → dockward `accept_proxy_protocol:
//!   required` (trusting 127.0.0.1). The client, bound to 127.0.0.2, must be what dockward
//!   logs and what it relays upstream in its own v2 header.
//! - Behind dockward: dockward `proxy_protocol: v1` and `v2` → HAProxy `accept-proxy`, which
//!   refuses bad headers; traffic passing and HAProxy's log naming the client is interop.
//!
//! HAProxy runs in the foreground (`-db`) as a child, killed when the test ends, with its
//! config in a temp dir. Its ports are picked by the OS (bound on :0 and released just
//! before HAProxy starts; a collision is retried). Without HAProxy the tests print SKIP,
//! unless `DOCKWARD_REQUIRE_HAPROXY=1` (set by .ci/run, which installs it): then they fail.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use dockward_tests::dockward::{DEADLINE, Dockward, connect, connect_from, echo_server, poll, round_trip};
use dockward_tests::haproxy::haproxy_bin;
use proxy_core::proxy_protocol::{Parsed, Version, parse_header};

/// The client's own address: not 127.0.0.1, so it cannot be confused with HAProxy or dockward.
const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

/// Whether something listens on 127.0.0.1:`port` (from /proc/net/tcp, without connecting:
/// a probe connection would be forwarded and counted).
fn listening(port: u16) -> bool {
    let wanted = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|table| {
        table.lines().skip(1).any(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 3 && cols[1] == wanted && cols[3] == "0A"
        })
    })
}

/// A running HAProxy; killed when dropped.
struct Haproxy {
    child: Child,
    dir: tempfile::TempDir,
    /// The port of its one frontend, on 127.0.0.1.
    port: u16,
}

impl Haproxy {
    /// Starts HAProxy with one TCP frontend on a free loopback port; `frontend` is the rest of
    /// the frontend section after its `bind` line's address (`accept-proxy`, ...) and `server`
    /// the backend's server line. Retries on another port when the picked one was taken.
    fn start(bin: &Path, bind_options: &str, server: &str) -> Haproxy {
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let config = format!(
                "global\n    log stdout format raw local0 info\n\
                 defaults\n    mode tcp\n    log global\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
                 frontend fe\n    bind 127.0.0.1:{port} {bind_options}\n    log-format \"client=%ci:%cp frontend=%fi:%fp\"\n    default_backend be\n\
                 backend be\n    {server}\n"
            );
            let cfg = dir.path().join("haproxy.cfg");
            std::fs::write(&cfg, config).expect("write haproxy.cfg");
            let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log file");
            let child = Command::new(bin)
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("haproxy starts");
            let mut haproxy = Haproxy { child, dir, port };
            let give_up = Instant::now() + DEADLINE;
            loop {
                if listening(port) {
                    return haproxy;
                }
                if let Ok(Some(status)) = haproxy.child.try_wait() {
                    last = format!("haproxy exited with {status}:\n{}", haproxy.log());
                    break;
                }
                assert!(Instant::now() < give_up, "haproxy never listened on {port}:\n{}", haproxy.log());
                thread::sleep(Duration::from_millis(5));
            }
            // Most likely the port was taken between picking and binding: try another.
        }
        panic!("haproxy did not start in 5 tries; last: {last}");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// HAProxy's output: its log lines (`log stdout`) and any warning.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("---- haproxy log ----\n{}---- end of haproxy log ----", self.log());
        }
    }
}

/// A target that reads the PROXY header dockward sends, reports the client it names, and
/// then echoes the rest of the stream. Serves connections one after another.
fn proxy_header_echo_target(version: Version) -> (SocketAddr, mpsc::Receiver<Result<SocketAddr, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind target");
    let addr = listener.local_addr().expect("target address");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let report = read_header_then_echo(stream, version, &tx);
            let _ = tx.send(report);
        }
    });
    (addr, rx)
}

fn read_header_then_echo(
    mut stream: TcpStream,
    version: Version,
    tx: &mpsc::Sender<Result<SocketAddr, String>>,
) -> Result<SocketAddr, String> {
    stream.set_read_timeout(Some(DEADLINE)).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header = loop {
        match parse_header(&buf) {
            Ok(Parsed::Header(h)) => break h,
            Ok(Parsed::Incomplete) => {}
            Err(e) => return Err(format!("bad header from dockward: {e}")),
        }
        let n = stream.read(&mut chunk).map_err(|e| format!("reading the header: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {} bytes, before a whole header", buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if header.version != version {
        return Err(format!("expected a {version} header, got {}", header.version));
    }
    let client = header.addresses.map(|a| a.source).ok_or("a header without addresses")?;
    // Report first: the test reads the client while the echo goes on.
    let _ = tx.send(Ok(client));
    stream.write_all(&buf[header.len..]).map_err(|e| e.to_string())?;
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Ok(client),
            Ok(n) => stream.write_all(&chunk[..n]).map_err(|e| e.to_string())?,
        }
    }
}

#[test]
fn haproxy_send_proxy_v2_in_front_of_dockward_carries_the_real_client() {
    let Some(bin) = haproxy_bin("haproxy_send_proxy_v2_in_front_of_dockward_carries_the_real_client") else {
        return;
    };
    let (target, reports) = proxy_header_echo_target(Version::V2);
    let yaml = format!(
        "routes:\n  behind-haproxy:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {}\n    accept_proxy_protocol: required\n    \
         trusted: [127.0.0.1]\n    proxy_protocol: v2\n",
        target.port()
    );
    let dw = Dockward::start(&yaml);
    let listen = dw.listen_addr("behind-haproxy");
    let haproxy = Haproxy::start(&bin, "", &format!("server s {listen} send-proxy-v2"));

    let mut client = connect_from(CLIENT_IP, haproxy.addr());
    let client_addr = client.local_addr().expect("client address");
    assert_eq!(round_trip(&mut client, b"through haproxy and dockward"), b"through haproxy and dockward");
    let relayed = reports.recv_timeout(DEADLINE).expect("the target saw a connection");
    assert_eq!(relayed, Ok(client_addr), "dockward relays the client HAProxy named");

    // dockward's log and stats see the client, not HAProxy.
    drop(client);
    let row = dw.wait_route("behind-haproxy", "one connection", |r| r["connections_total"] == 1);
    assert_eq!(row["proxy_header_errors"], 0, "{row}");
    let log = poll("the connection in dockward's log", DEADLINE, || {
        let log = dw.log();
        log.contains(&format!("peer={client_addr}")).then_some(log)
    });
    assert!(log.contains("proxy=127.0.0.1:"), "HAProxy shows as the proxy:\n{log}");

    // Without HAProxy in between there is no header: a required one closes the connection.
    let mut direct = connect(listen);
    direct.write_all(b"no header here\r\n").expect("write");
    let mut buf = [0u8; 16];
    assert!(matches!(direct.read(&mut buf), Ok(0) | Err(_)), "a headerless connection is closed");
    dw.wait_route("behind-haproxy", "one header error", |r| r["proxy_header_errors"] == 1);
}

#[test]
fn dockward_proxy_protocol_v1_and_v2_are_accepted_by_haproxy() {
    let Some(bin) = haproxy_bin("dockward_proxy_protocol_v1_and_v2_are_accepted_by_haproxy") else { return };
    let echo = echo_server();
    let haproxy = Haproxy::start(&bin, "accept-proxy", &format!("server echo {echo}"));
    let yaml = format!(
        "routes:\n  pp1:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {p}\n    proxy_protocol: v1\n  \
         pp2:\n    scheme: tcp\n    bind: 127.0.0.1\n    port: {p}\n    proxy_protocol: v2\n",
        p = haproxy.port
    );
    let dw = Dockward::start(&yaml);
    for alias in ["pp1", "pp2"] {
        let listen = dw.listen_addr(alias);
        let mut client = connect_from(CLIENT_IP, listen);
        let client_addr = client.local_addr().expect("client address");
        let message = format!("{alias} through dockward and haproxy");
        assert_eq!(round_trip(&mut client, message.as_bytes()), message.as_bytes(), "{alias}");
        drop(client);
        // HAProxy logs a TCP session when it ends. With accept-proxy, %ci:%cp is the source
        // of the header (the client) and %fi:%fp its destination: the address the client
        // connected to, dockward's listener.
        let line = format!("client={client_addr} frontend={listen}");
        poll(&format!("{line:?} in HAProxy's log"), DEADLINE, || haproxy.log().contains(&line).then_some(()));
    }
    assert!(!haproxy.log().contains("Received something which does not look like a PROXY protocol header"));
}
