//! The status page (`GET /` on the admin API), in a real browser.
//!
//! dockward serves a few loopback routes; headless Chromium loads the page before and after
//! traffic, and the rendered DOM must show every route with the counters `GET /routes`
//! reports, sparklines drawn from `GET /history`, and route text (an error quoting markup)
//! as text. Screenshots of the page, wide and phone-sized, are kept as
//! `target/status-page.png` and `target/status-page-phone.png`.
//!
//! Needs Debian's `chromium` (`DOCKWARD_CHROMIUM` names another executable): without it the
//! browser test prints SKIP, and fails when `DOCKWARD_REQUIRE_BROWSER=1` (set by .ci/run,
//! which installs it).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dockward_tests::dockward::{
    DEADLINE, Dockward, connect, echo_server, http_get, http_get_with, poll, round_trip, udp_echo_server,
};
use dockward_tests::skip::skip;
use serde_json::Value;

/// How long one browser run may take on a busy machine.
const BROWSER_DEADLINE: Duration = Duration::from_secs(90);

/// How long until `GET /history` has a new sample: one sampling interval (5 s) and a margin.
const HISTORY_DEADLINE: Duration = Duration::from_secs(15);

/// The Chromium executable, or `None` (after printing SKIP) when there is none and the run
/// does not require one.
fn chromium(test: &str) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("DOCKWARD_CHROMIUM") {
        Some(bin) => vec![bin.into()],
        None => ["chromium", "chromium-browser", "google-chrome"].into_iter().map(PathBuf::from).collect(),
    };
    let found = candidates.into_iter().find(|bin| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        let required = std::env::var("DOCKWARD_REQUIRE_BROWSER").is_ok_and(|v| v == "1" || v == "true");
        assert!(!required, "DOCKWARD_REQUIRE_BROWSER=1 but no chromium executable (apt-get install chromium)");
        skip("browser", test, "chromium is not installed (apt-get install chromium; .ci/run installs it)");
    }
    found
}

/// Runs headless Chromium on `url` with `args` (`--dump-dom`, `--screenshot=...`) in a fresh
/// profile, and returns what it printed on stdout.
fn headless(bin: &Path, url: &str, args: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let logs = tempfile::tempdir().expect("log dir");
    let stderr_path = logs.path().join("chromium.log");
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .env("HOME", profile.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("chromium log"))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let give_up = Instant::now() + BROWSER_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait chromium") {
            break status;
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {BROWSER_DEADLINE:?}:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().expect("stdout reader");
    assert!(
        status.success(),
        "chromium failed ({status}):\n{}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    out
}

/// The page as rendered once its first requests are answered and a few seconds of page time
/// (virtual: no waiting) have run its polls.
fn rendered_dom(bin: &Path, admin: &str) -> String {
    let dom = headless(bin, &format!("http://{admin}/"), &["--dump-dom".into(), "--virtual-time-budget=5000".into()]);
    assert!(dom.contains("id=\"routes\""), "not the status page:\n{dom}");
    dom
}

/// The `<article>` of route `alias` in `dom`.
fn article<'a>(dom: &'a str, alias: &str) -> &'a str {
    let at = dom.find(&format!("data-alias=\"{alias}\"")).unwrap_or_else(|| panic!("no row for {alias}:\n{dom}"));
    let open = dom[..at].rfind("<article").expect("the alias is on an <article>");
    let close = dom[at..].find("</article>").expect("the <article> is closed") + at;
    &dom[open..close]
}

/// The raw value of counter `name` in a route's article, and the text shown for it.
fn counter(article: &str, name: &str) -> (u64, String) {
    let needle = format!("data-field=\"{name}\" data-value=\"");
    let at = article.find(&needle).unwrap_or_else(|| panic!("no {name} in:\n{article}")) + needle.len();
    let rest = &article[at..];
    let (value, rest) = rest.split_once('"').expect("a quoted value");
    let text = rest.trim_start_matches('>').split('<').next().unwrap_or_default();
    (value.parse().unwrap_or_else(|_| panic!("{name}={value:?} is not a number")), text.to_string())
}

/// The text of element `data-field="name"` in a route's article.
fn text_of(article: &str, name: &str) -> String {
    let needle = format!("data-field=\"{name}\">");
    let at = article.find(&needle).unwrap_or_else(|| panic!("no {name} in:\n{article}")) + needle.len();
    article[at..].split('<').next().unwrap_or_default().to_string()
}

/// The largest value a route's sparkline `chart` (`Throughput`, `Connections`) draws.
fn chart_max(article: &str, chart: &str) -> f64 {
    let at = article.find(&format!("aria-label=\"{chart}\"")).unwrap_or_else(|| panic!("no {chart} chart:\n{article}"));
    let needle = "data-max=\"";
    let from = article[at..].find(needle).expect("the chart has data-max") + at + needle.len();
    article[from..].split('"').next().and_then(|v| v.parse().ok()).expect("data-max is a number")
}

fn route<'a>(rows: &'a [Value], alias: &str) -> &'a Value {
    rows.iter().find(|r| r["alias"] == alias && r["protocol"].is_string()).expect("the route is listed")
}

/// The samples `GET /history` holds for route `alias`.
fn history_of(admin: &str, alias: &str) -> Vec<Vec<u64>> {
    let (status, body) = http_get(admin, "/history").expect("GET /history");
    assert_eq!(status, 200, "GET /history: {body}");
    let json: Value = serde_json::from_str(&body).expect("GET /history is JSON");
    json["series"]
        .as_array()
        .expect("series")
        .iter()
        .find(|s| s["alias"] == alias)
        .map(|s| serde_json::from_value(s["samples"].clone()).expect("samples are arrays of numbers"))
        .unwrap_or_default()
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("the target directory").to_path_buf()
}

#[test]
fn the_status_page_shows_every_route_and_its_counters_move_with_traffic() {
    let test = "the_status_page_shows_every_route_and_its_counters_move_with_traffic";
    let Some(chromium) = chromium(test) else { return };
    let (tcp_echo, udp_echo) = (echo_server(), udp_echo_server());
    let broken = tempfile::tempdir().expect("temp dir");
    let broken_file = broken.path().join("broken.yml");
    // An input whose error quotes markup: the page must show it as text.
    std::fs::write(&broken_file, "routes:\n  evil:\n    port: \"<b id=injected>x</b>\"\n").expect("write");
    let yaml = format!(
        "routes:\n  \
           web: {{scheme: tcp, bind: 127.0.0.1, port: '0:{tcp}'}}\n  \
           db: {{scheme: tcp, bind: 127.0.0.1, port: '0:{tcp}'}}\n  \
           game: {{scheme: udp, bind: 127.0.0.1, port: '0:{udp}'}}\n",
        tcp = tcp_echo.port(),
        udp = udp_echo.port()
    );
    let broken_arg = broken_file.display().to_string();
    let dw = Dockward::start_with_args(&yaml, "127.0.0.1:0", &["--routes", &broken_arg]);
    let (web, game) = (dw.listen_addr("web"), dw.listen_addr("game"));
    dw.listen_addr("db");

    // Before traffic: every row, listening, at zero, with the address it bound.
    let dom = rendered_dom(&chromium, &dw.admin);
    for (alias, listen) in [("web", web), ("game", game)] {
        let row = article(&dom, alias);
        assert_eq!(text_of(row, "state"), "listening", "{row}");
        assert_eq!(text_of(row, "listen"), listen.to_string(), "{row}");
        for name in ["connections_active", "connections_total", "bytes_in", "bytes_out"] {
            assert_eq!(counter(row, name).0, 0, "{alias} {name} before traffic:\n{row}");
        }
    }
    assert_eq!(counter(article(&dom, "web"), "bytes_in").1, "0 B");
    let evil = article(&dom, "evil");
    assert_eq!(text_of(evil, "state"), "error");
    assert!(evil.contains("&lt;b id=injected&gt;x&lt;/b&gt;"), "the error shows as text:\n{evil}");
    assert!(!dom.contains("<b id=injected") && !dom.contains("id=\"injected\""), "markup from a route got in:\n{dom}");

    // Traffic, once the sampler has a sample from before it, so the sparkline shows a rise.
    poll("a first history sample of web", HISTORY_DEADLINE, || {
        (!history_of(&dw.admin, "web").is_empty()).then_some(())
    });
    for _ in 0..3 {
        let mut stream = connect(web);
        assert_eq!(round_trip(&mut stream, &[7u8; 1000]), vec![7u8; 1000]);
    }
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    socket.set_read_timeout(Some(DEADLINE)).expect("timeout");
    for i in 0..5u8 {
        socket.send_to(&[i; 100], game).expect("send");
        let mut buf = [0u8; 200];
        assert_eq!(socket.recv_from(&mut buf).expect("echo through dockward").0, 100);
    }
    let counters = |r: &Value| {
        ["connections_active", "connections_total", "bytes_in", "bytes_out"].map(|f| r[f].as_u64().unwrap_or(u64::MAX))
    };
    dw.wait_route("web", "done with 3 connections", |r| counters(r) == [0, 3, 3000, 3000]);
    dw.wait_route("game", "done with 5 datagrams", |r| counters(r) == [1, 1, 500, 500]);
    poll("a history sample of web after the traffic", HISTORY_DEADLINE, || {
        history_of(&dw.admin, "web").last().is_some_and(|s| s[1] == 3000).then_some(())
    });

    // After: the counters GET /routes reports, in raw and human units, and sparklines that rose.
    let rows = dw.routes();
    let dom = rendered_dom(&chromium, &dw.admin);
    for (alias, expect) in [("web", [0, 3, 3000, 3000]), ("game", [1, 1, 500, 500]), ("db", [0, 0, 0, 0])] {
        let row = article(&dom, alias);
        let json = route(&rows, alias);
        for (name, want) in ["connections_active", "connections_total", "bytes_in", "bytes_out"].into_iter().zip(expect)
        {
            assert_eq!(counter(row, name).0, want, "{alias} {name} after traffic:\n{row}");
            assert_eq!(json[name].as_u64(), Some(want), "GET /routes {alias} {name}");
        }
    }
    let web_row = article(&dom, "web");
    assert_eq!(counter(web_row, "bytes_in").1, "2.9 KiB");
    assert!(web_row.contains(&format!(">{tcp_echo}<")), "the target is shown:\n{web_row}");
    assert!(chart_max(web_row, "Throughput") > 0.0, "web's throughput sparkline rose:\n{web_row}");
    assert!(chart_max(article(&dom, "game"), "Connections") > 0.0, "game's session is drawn");
    assert_eq!(chart_max(article(&dom, "db"), "Throughput"), 0.0, "db saw no traffic");
    assert_eq!(counter(article(&dom, "game"), "datagrams_in").0, 5);

    // Screenshots, wide and phone-sized, kept for people to look at.
    let url = format!("http://{}/", dw.admin);
    for (name, size) in [("status-page.png", "1280,900"), ("status-page-phone.png", "390,844")] {
        let path = target_dir().join(name);
        let _ = std::fs::remove_file(&path);
        headless(
            &chromium,
            &url,
            &[
                format!("--screenshot={}", path.display()),
                format!("--window-size={size}"),
                "--virtual-time-budget=5000".into(),
            ],
        );
        let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} is not a screenshot", path.display());
        println!("screenshot: {}", path.display());
    }
}

/// A request with any method, for what `http_get` cannot send.
fn request(admin: &str, method: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(admin.parse::<SocketAddr>().expect("a TCP admin address")).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: dockward\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn the_page_and_its_history_are_read_only_and_load_nothing_from_elsewhere() {
    let dw = Dockward::start("routes:\n  web: {scheme: tcp, bind: 127.0.0.1, port: '0:9'}\n");
    dw.listen_addr("web");
    let page = request(&dw.admin, "GET", "/");
    let head = page.split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/html; charset=utf-8"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"),
        "{head}"
    );
    assert!(page.contains("<title>dockward</title>"));

    let (status, body) = http_get_with(&dw.admin, "/history", &[("Accept", "application/json")]).expect("GET /history");
    assert_eq!(status, 200);
    let json: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["interval_seconds"], 5);
    assert_eq!(json["capacity"], 120);
    assert_eq!(
        json["fields"],
        serde_json::json!(["t", "bytes_in", "bytes_out", "connections_active", "connections_total"])
    );
    assert!(json["series"].is_array());

    for path in ["/", "/history"] {
        for method in ["POST", "PUT", "DELETE"] {
            let answer = request(&dw.admin, method, path);
            assert!(answer.starts_with("HTTP/1.1 405"), "{method} {path}: {answer}");
            assert!(answer.to_ascii_lowercase().contains("allow: get, head"), "{method} {path}: {answer}");
        }
    }
    let head_only = request(&dw.admin, "HEAD", "/");
    assert!(head_only.starts_with("HTTP/1.1 200") && !head_only.contains("<html"), "{head_only}");
}
