//! The label grammar as specifications: one behaviour per test.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use route_spec::fields;
use route_spec::{Family, Protocol, Target};

use super::keys::field_problem;
use super::*;

fn view(labels: &[(&str, &str)]) -> ContainerView {
    ContainerView {
        id: "0123456789ab".into(),
        name: "app".into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        network_mode: "bridge".into(),
        networks: [("bridge".to_string(), Some("172.17.0.5".parse().unwrap()))].into_iter().collect(),
        ports: Default::default(),
        image: String::new(),
        state: ContainerState::Running,
    }
}

fn host_view(labels: &[(&str, &str)]) -> ContainerView {
    ContainerView { network_mode: "host".into(), networks: BTreeMap::new(), ..view(labels) }
}

fn parse(v: &ContainerView) -> ContainerRoutes {
    parse_labels(v, &[])
}

/// (alias, protocol, listen, target) of every route, for compact assertions.
fn summary(r: &ContainerRoutes) -> Vec<(String, Protocol, SocketAddr, String)> {
    r.routes.iter().map(|s| (s.alias.clone(), s.protocol, s.listen, s.targets[0].to_string())).collect()
}

fn errors(r: &ContainerRoutes) -> Vec<String> {
    r.errors.iter().map(ToString::to_string).collect()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn aliases_by_name_with_listen_and_target_ports() {
    let r = parse(&view(&[
        ("proxy.aliases", "ssh, dns"),
        ("proxy.ssh.port", "2222:22"),
        ("proxy.dns.port", "53:53"),
        ("proxy.dns.scheme", "udp"),
    ]));
    assert_eq!(errors(&r), Vec::<String>::new());
    assert_eq!(
        summary(&r),
        vec![
            ("ssh".into(), Protocol::Tcp, sa("0.0.0.0:2222"), "172.17.0.5:22".into()),
            ("dns".into(), Protocol::Udp, sa("0.0.0.0:53"), "172.17.0.5:53".into()),
        ]
    );
    assert!(r.routes.iter().all(|s| s.source == "app"));
}

#[test]
fn aliases_may_be_separated_by_spaces_or_commas() {
    let r = parse(&host_view(&[("proxy.aliases", "a b,c ,, d"), ("proxy.*.port", "80"), ("proxy.*.scheme", "tcp")]));
    let names: Vec<&str> = r.routes.iter().map(|s| s.alias.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
}

#[test]
fn without_aliases_the_container_name_is_the_alias() {
    let r = parse(&host_view(&[("proxy.#1.port", "8080:80")]));
    assert_eq!(summary(&r), vec![("app".into(), Protocol::Tcp, sa("0.0.0.0:8080"), "127.0.0.1:80".into())]);
}

#[test]
fn index_selects_the_nth_listed_alias() {
    let r = parse(&host_view(&[
        ("proxy.aliases", "web,metrics"),
        ("proxy.#1.port", "8080:80"),
        ("proxy.#2.port", "9090:9100"),
    ]));
    assert_eq!(errors(&r), Vec::<String>::new());
    assert_eq!(
        summary(&r),
        vec![
            ("web".into(), Protocol::Tcp, sa("0.0.0.0:8080"), "127.0.0.1:80".into()),
            ("metrics".into(), Protocol::Tcp, sa("0.0.0.0:9090"), "127.0.0.1:9100".into()),
        ]
    );
}

#[test]
fn index_zero_and_beyond_the_list_are_errors_and_other_aliases_survive() {
    let r = parse(&host_view(&[
        ("proxy.aliases", "web,metrics"),
        ("proxy.#0.port", "1:2"),
        ("proxy.#3.port", "3:4"),
        ("proxy.#x.port", "5:6"),
        ("proxy.#1.port", "8080:80"),
    ]));
    assert_eq!(
        errors(&r),
        vec![
            "label proxy.#0.port=\"1:2\": aliases are numbered from #1",
            "label proxy.#3.port=\"3:4\": #3 is beyond the aliases (2 listed: web, metrics)",
            "label proxy.#x.port=\"5:6\": #x is not an alias number; expected proxy.#N.<field> with N from 1",
        ]
    );
    assert_eq!(r.routes.len(), 1);
    assert_eq!(r.routes[0].alias, "web");
    assert_eq!(r.skipped, vec![SkippedAlias { alias: "metrics".into(), reason: "no port".into() }]);
}

#[test]
fn specific_fields_override_the_wildcard() {
    let r = parse(&host_view(&[
        ("proxy.aliases", "a,b,c"),
        ("proxy.*.scheme", "udp"),
        ("proxy.*.port", "5353:53"),
        ("proxy.b.scheme", "tcp"),
        ("proxy.#3.port", "6000:60"),
    ]));
    assert_eq!(errors(&r), Vec::<String>::new());
    assert_eq!(
        summary(&r),
        vec![
            ("a".into(), Protocol::Udp, sa("0.0.0.0:5353"), "127.0.0.1:53".into()),
            ("b".into(), Protocol::Tcp, sa("0.0.0.0:5353"), "127.0.0.1:53".into()),
            ("c".into(), Protocol::Udp, sa("0.0.0.0:6000"), "127.0.0.1:60".into()),
        ]
    );
}

#[test]
fn same_field_by_name_and_by_index_is_an_error_for_that_alias() {
    let r = parse(&host_view(&[
        ("proxy.aliases", "a,b"),
        ("proxy.#1.port", "1000:10"),
        ("proxy.a.port", "2000:20"),
        ("proxy.b.port", "3000:30"),
    ]));
    assert_eq!(
        errors(&r),
        vec!["label proxy.a.port=\"2000:20\": port of alias \"a\" is also set by proxy.#1.port; set it once"]
    );
    assert_eq!(summary(&r), vec![("b".into(), Protocol::Tcp, sa("0.0.0.0:3000"), "127.0.0.1:30".into())]);
}

#[test]
fn an_alias_seen_only_in_a_field_label_is_a_route() {
    let r = parse(&host_view(&[("proxy.aliases", "web"), ("proxy.ssh.port", "2222:22")]));
    assert_eq!(summary(&r), vec![("ssh".into(), Protocol::Tcp, sa("0.0.0.0:2222"), "127.0.0.1:22".into())]);
    assert_eq!(r.skipped, vec![SkippedAlias { alias: "web".into(), reason: "no port".into() }]);
}

#[test]
fn aliases_with_dots_are_addressed_by_name() {
    let r = parse(&host_view(&[("proxy.aliases", "app, app.example.com"), ("proxy.app.example.com.port", "81:80")]));
    assert_eq!(errors(&r), Vec::<String>::new());
    assert_eq!(summary(&r), vec![("app.example.com".into(), Protocol::Tcp, sa("0.0.0.0:81"), "127.0.0.1:80".into())]);
}

#[test]
fn exclude_true_ignores_the_container_and_a_garbled_one_opens_nothing() {
    let r = parse(&host_view(&[("proxy.exclude", "true"), ("proxy.a.port", "1:2"), ("proxy.b.prot", "x")]));
    assert!(r.excluded);
    assert!(r.routes.is_empty() && r.errors.is_empty());

    let r = parse(&host_view(&[("proxy.exclude", "false"), ("proxy.a.port", "1:2")]));
    assert_eq!(r.routes.len(), 1);

    let r = parse(&host_view(&[("proxy.exclude", "ture"), ("proxy.a.port", "1:2")]));
    assert!(r.routes.is_empty());
    assert_eq!(
        errors(&r),
        vec![
            "label proxy.exclude=\"ture\": expected true or false; no route of this container is opened until it is fixed"
        ]
    );
}

#[test]
fn bad_port_values_name_label_and_value() {
    let r = parse(&host_view(&[
        ("proxy.aliases", "ssh,a,b,web"),
        ("proxy.ssh.port", "22:22:22"),
        ("proxy.a.port", "abc"),
        ("proxy.b.port", "70000"),
        ("proxy.web.port", "8080:80"),
    ]));
    assert_eq!(
        errors(&r),
        vec![
            "label proxy.ssh.port=\"22:22:22\": too many ':'; expected LISTEN:TARGET or TARGET",
            "label proxy.a.port=\"abc\": \"abc\" is not a port number; expected LISTEN:TARGET or TARGET",
            "label proxy.b.port=\"70000\": 70000 is not a port (1-65535)",
        ]
    );
    assert_eq!(r.errors[0].alias(), Some("ssh"));
    assert_eq!(r.errors[0].key(), Some("proxy.ssh.port"));
    assert_eq!(summary(&r), vec![("web".into(), Protocol::Tcp, sa("0.0.0.0:8080"), "127.0.0.1:80".into())]);
}

#[test]
fn typos_get_a_did_you_mean() {
    let r = parse(&host_view(&[
        ("proxy.aliases", "a,b,c"),
        ("proxy.a.port", "1:2"),
        ("proxy.a.scheme", "tcpp"),
        ("proxy.b.prot", "22"),
        ("proxy.c.port", "3:4"),
        ("proxy.alias", "c"),
    ]));
    assert_eq!(
        errors(&r),
        vec![
            "label proxy.alias=\"c\": unknown label (did you mean proxy.aliases?)",
            "label proxy.b.prot=\"22\": unknown field (did you mean \"port\"?)",
            "label proxy.a.scheme=\"tcpp\": unknown scheme (did you mean \"tcp\"?)",
        ]
    );
    assert_eq!(summary(&r), vec![("c".into(), Protocol::Tcp, sa("0.0.0.0:3"), "127.0.0.1:4".into())]);
}

#[test]
fn a_bad_wildcard_is_reported_once_and_breaks_the_aliases_using_it() {
    let r = parse(&host_view(&[
        ("proxy.aliases", "a,b,c"),
        ("proxy.*.port", "nope"),
        ("proxy.*.conect_timeout", "5s"),
        ("proxy.c.port", "1:2"),
    ]));
    assert_eq!(
        errors(&r),
        vec![
            "label proxy.*.conect_timeout=\"5s\": unknown field (did you mean \"connect_timeout\"?)",
            "label proxy.*.port=\"nope\": \"nope\" is not a port number; expected LISTEN:TARGET or TARGET",
        ]
    );
    assert!(r.routes.is_empty(), "{:?}", summary(&r));
}

#[test]
fn godoxy_http_fields_and_schemes_are_ignored() {
    let r = parse(&host_view(&[
        ("proxy.aliases", "web,ssh"),
        ("proxy.web.scheme", "http"),
        ("proxy.web.port", "80"),
        ("proxy.web.homepage.name", "Web"),
        ("proxy.*.healthcheck.path", "/ping"),
        ("proxy.#1.middlewares.cidr_whitelist.allow", "10.0.0.0/8"),
        ("proxy.ssh.port", "2222:22"),
        ("proxy.ssh.load_balance.link", "x"),
        ("proxy.idle_timeout", "1h"),
        ("proxy.stop_method", "stop"),
    ]));
    assert_eq!(errors(&r), Vec::<String>::new());
    assert_eq!(summary(&r), vec![("ssh".into(), Protocol::Tcp, sa("0.0.0.0:2222"), "127.0.0.1:22".into())]);
    assert_eq!(
        r.skipped,
        vec![SkippedAlias { alias: "web".into(), reason: "scheme http is an HTTP route, not a stream route".into() }]
    );
}

#[test]
fn sub_keys_of_our_fields_are_errors() {
    let r = parse(&host_view(&[("proxy.a.port", "1:2"), ("proxy.b.port.listen", "1")]));
    assert_eq!(
        errors(&r),
        vec!["label proxy.b.port.listen=\"1\": port has no sub-fields; expected proxy.<alias>.port"]
    );
    assert_eq!(r.routes.len(), 1);
}

#[test]
fn every_proxy_core_field_is_a_label_field() {
    for f in fields::FIELDS {
        assert!(field_problem(f.name).is_none(), "{} is a route-spec field but not a label field", f.name);
    }
}

#[test]
fn options_and_family_come_through() {
    let r = parse(&host_view(&[
        ("proxy.dns.port", "5353:53"),
        ("proxy.dns.scheme", "udp6"),
        ("proxy.dns.udp_idle_timeout", "30s"),
        ("proxy.dns.bind", "::1"),
    ]));
    assert_eq!(errors(&r), Vec::<String>::new());
    let s = &r.routes[0];
    assert_eq!((s.protocol, s.family, s.listen), (Protocol::Udp, Family::V6, sa("[::1]:5353")));
    assert_eq!(s.options.udp_idle_timeout, std::time::Duration::from_secs(30));
}

#[test]
fn host_overrides_the_resolved_address() {
    let r = parse(&view(&[("proxy.a.port", "1:2"), ("proxy.a.host", "db.internal")]));
    assert_eq!(r.routes[0].targets, vec![Target::new("db.internal", 2)]);
}

#[test]
fn target_prefers_proxy_network_then_shared_then_first_sorted() {
    let mut v = view(&[("proxy.a.port", "1:2")]);
    v.networks = [
        ("zeta".to_string(), Some("10.9.0.2".parse().unwrap())),
        ("beta".to_string(), Some("10.2.0.2".parse().unwrap())),
        ("alpha".to_string(), None),
        ("myproj_front".to_string(), Some("10.3.0.2".parse().unwrap())),
    ]
    .into_iter()
    .collect();
    assert_eq!(parse_labels(&v, &[]).routes[0].targets[0].host, "10.2.0.2", "first with an IP, sorted");
    assert_eq!(parse_labels(&v, &["zeta".into(), "other".into()]).routes[0].targets[0].host, "10.9.0.2");

    v.labels.insert("proxy.network".into(), "zeta".into());
    assert_eq!(parse_labels(&v, &["beta".into()]).routes[0].targets[0].host, "10.9.0.2");

    v.labels.insert("proxy.network".into(), "front".into());
    v.labels.insert(COMPOSE_PROJECT_LABEL.into(), "myproj".into());
    assert_eq!(parse(&v).routes[0].targets[0].host, "10.3.0.2");

    v.labels.insert("proxy.network".into(), "myproj_frnt".into());
    let r = parse(&v);
    assert!(r.routes.is_empty());
    assert_eq!(
        errors(&r),
        vec![
            "label proxy.network=\"myproj_frnt\": no such network on this container (did you mean \"myproj_front\"?); \
             its networks: alpha, beta, myproj_front, zeta"
        ]
    );

    v.labels.insert("proxy.network".into(), "alpha".into());
    assert_eq!(
        errors(&parse(&v)),
        vec!["label proxy.network=\"alpha\": the container has no address on network alpha (is it running?)"]
    );
}

#[test]
fn host_network_mode_targets_loopback_even_with_proxy_network() {
    let mut v = host_view(&[("proxy.a.port", "1:2"), ("proxy.network", "whatever")]);
    v.networks.insert("host".into(), None);
    assert_eq!(parse(&v).routes[0].targets[0].host, "127.0.0.1");
}

#[test]
fn no_reachable_address_is_one_error_unless_host_is_set() {
    let mut v = view(&[("proxy.aliases", "a,b,c"), ("proxy.*.port", "1:2"), ("proxy.c.host", "10.0.0.1")]);
    v.network_mode = "none".into();
    v.networks.clear();
    let r = parse(&v);
    assert_eq!(
        errors(&r),
        vec![
            "no target address: network mode none gives the container no address; \
             set proxy.<alias>.host, or use a network dockward can reach"
        ]
    );
    assert_eq!(summary(&r), vec![("c".into(), Protocol::Tcp, sa("0.0.0.0:1"), "10.0.0.1:2".into())]);

    v.network_mode = "container:abc".into();
    assert!(errors(&parse(&v))[0].contains("shares the network of container abc"));
    v.network_mode = "bridge".into();
    v.state = ContainerState::Exited;
    assert_eq!(errors(&parse(&v)), vec!["no target address: the container is exited and has no address"]);
}

#[test]
fn containers_without_proxy_labels_give_nothing() {
    let r = parse(&view(&[("com.docker.compose.project", "x"), ("proxyish", "1")]));
    assert_eq!(r, ContainerRoutes { id: "0123456789ab".into(), name: "app".into(), ..Default::default() });
}

#[test]
fn odd_keys_are_errors_not_panics() {
    let r = parse(&host_view(&[
        ("proxy.", "x"),
        ("proxy..port", "1"),
        ("proxy.a.", "x"),
        ("proxy.*.", "x"),
        ("proxy.#", "x"),
        ("proxy.port", "80"),
        ("proxy.myapp", "scheme: tcp"),
    ]));
    assert_eq!(
        errors(&r),
        vec![
            "label proxy.=\"x\": unknown label; expected proxy.aliases, proxy.exclude, proxy.network or \
             proxy.<alias>.<field> (or proxy.<alias> holding a YAML mapping of fields)",
            "label proxy.#=\"x\": # is not an alias number; expected proxy.#N.<field> with N from 1",
            "label proxy.*.=\"x\": no field after the alias; expected proxy.<alias>.<field>",
            "label proxy..port=\"1\": the alias is empty",
            "label proxy.a.=\"x\": no field after the alias; expected proxy.<alias>.<field>",
            "label proxy.port=\"80\": port needs an alias: proxy.<alias>.port, proxy.#1.port or proxy.*.port",
        ]
    );
}

#[test]
fn bad_aliases_entries_are_errors() {
    let r = parse(&host_view(&[("proxy.aliases", "ok,#2,*"), ("proxy.*.port", "80"), ("proxy.*.scheme", "tcp")]));
    assert_eq!(r.errors.len(), 2);
    assert_eq!(r.routes.len(), 1);
}

#[test]
fn container_state_words() {
    for s in ["created", "running", "paused", "restarting", "removing", "exited", "dead"] {
        assert_eq!(ContainerState::parse(s).as_str(), s);
    }
    assert_eq!(ContainerState::parse("zombie"), ContainerState::Unknown);
}

mod fuzz {
    use super::*;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::{Just, ProptestConfig, Strategy, any, prop_assert, prop_assert_eq, prop_oneof, proptest};

    fn key() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            Just("*".to_string()),
            Just("#1".to_string()),
            Just("#0".to_string()),
            Just("#99999999999999999999".to_string()),
            Just("port".to_string()),
            Just("scheme".to_string()),
            Just("host".to_string()),
            Just("bind".to_string()),
            Just("aliases".to_string()),
            Just("network".to_string()),
            Just("exclude".to_string()),
            Just("homepage".to_string()),
            Just("".to_string()),
            "[a-z#*.]{0,6}",
            any::<String>(),
        ];
        (proptest::bool::weighted(0.9), vec(segment, 0..4)).prop_map(|(prefixed, segs)| {
            let body = segs.join(".");
            if prefixed { format!("proxy.{body}") } else { body }
        })
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9:]{0,12}",
            Just("udp".to_string()),
            Just("tcp6".to_string()),
            Just("true".to_string()),
            Just("::1".to_string()),
            Just("a, b c".to_string()),
            "[a-z0-9 ,.:#*]{0,16}",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn never_panics_and_every_route_is_from_the_container(
            labels in btree_map(key(), value(), 0..12),
            host_mode in any::<bool>(),
            self_nets in vec("[a-z]{0,3}", 0..3),
        ) {
            let v = ContainerView {
                id: "id".into(),
                name: "c".into(),
                labels,
                network_mode: if host_mode { "host".into() } else { "bridge".into() },
                networks: [("bridge".to_string(), Some("172.17.0.2".parse().unwrap()))].into_iter().collect(),
                ports: Default::default(),
                image: String::new(),
                state: ContainerState::Running,
            };
            let r = parse_labels(&v, &self_nets);
            for s in &r.routes {
                prop_assert_eq!(&s.source, "c");
                prop_assert!(s.validate().is_ok());
            }
            for e in &r.errors {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
