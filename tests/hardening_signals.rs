//! SIGHUP (issue 15 item 8): a reload, not an exit.

use dockward_tests::dockward::{DEADLINE, Dockward, connect, echo_server, poll, round_trip, routes_yaml, signal};

#[test]
fn sighup_rereads_a_routes_file_whose_edit_the_watch_missed_and_touches_nothing_else() {
    let echo = echo_server();
    let mut dw = Dockward::start(&routes_yaml(&[("steady", echo.port())]));
    let steady = dw.listen_addr("steady");
    let mut open = connect(steady);
    assert_eq!(round_trip(&mut open, b"before"), b"before");

    // An edit through a hard link in another directory: the same file, but the watched
    // directory hears nothing of it.
    let other = dw.dir().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let link = other.join("link.yml");
    std::fs::hard_link(&dw.routes_file, &link).expect("hard link");
    std::fs::write(&link, routes_yaml(&[("steady", echo.port()), ("added", echo.port())])).expect("edit via link");
    assert_eq!(std::fs::read_to_string(&dw.routes_file).expect("read").matches("added").count(), 1);

    signal(dw.pid(), libc::SIGHUP);
    let added = dw.listen_addr("added");
    assert!(dw.is_running(), "SIGHUP stopped dockward");
    assert_eq!(dw.listen_addr("steady"), steady, "the unchanged route was restarted");
    assert_eq!(round_trip(&mut open, b"after"), b"after");
    assert_eq!(round_trip(&mut connect(added), b"new"), b"new");
    let row = dw.wait_route("steady", "one connection open", |r| r["connections_active"] == 1);
    assert_eq!(row["connections_total"], 1);
    poll("the reload in the log", DEADLINE, || dw.log().contains("reloading").then_some(()));

    // Still stops as before.
    dw.sigterm();
    assert_eq!(dw.wait_exit(DEADLINE).code(), Some(0), "{}", dw.log());
}
