//! Fuzz target: container labels → routes ([`docker_watcher::parse_labels`]).
//!
//! Labels are mostly built from the grammar's own words (the `proxy.` prefix, alias
//! selectors, proxy-core's field names, values that almost parse), so the fuzzer spends its
//! time past the first check; raw keys and values cover everything else.
//!
//! Checked: no panic; every error displays as a non-empty text naming its label; every
//! route comes from this container.
#![no_main]

use std::collections::BTreeMap;
use std::net::IpAddr;

use arbitrary::Arbitrary;
use docker_watcher::{ContainerState, ContainerView, LabelError, parse_labels};
use libfuzzer_sys::fuzz_target;
use route_spec::fields::{Clipped, FIELDS};

/// Which aliases a label addresses.
#[derive(Debug, Arbitrary)]
enum Selector {
    Wildcard,
    Index(u8),
    Name(u8),
    Raw(String),
}

/// A label key.
#[derive(Debug, Arbitrary)]
enum Key {
    /// `proxy.<selector>.<field>`, with a field of the grammar.
    Field(Selector, u8),
    /// `proxy.<selector>.<anything>`.
    OddField(Selector, String),
    /// `proxy.aliases`, `proxy.exclude`, `proxy.network`.
    ContainerWide(u8),
    /// Anything at all.
    Raw(String),
}

/// A label value.
#[derive(Debug, Arbitrary)]
enum Value {
    /// One of a few values that parse for some field.
    Known(u8),
    /// `A:B` ports.
    Ports(u16, u16),
    /// `A-B:C-D` port ranges.
    Ranges(u16, u16, u16, u16),
    /// Anything at all.
    Raw(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    labels: Vec<(Key, Value)>,
    network_mode: u8,
    networks: Vec<(u8, Option<[u8; 4]>)>,
    self_networks: Vec<u8>,
}

const ALIASES: [&str; 5] = ["ssh", "dns", "web.example.com", "a", "b"];
const KNOWN: [&str; 24] = [
    "22",
    "2222:22",
    "tcp",
    "udp",
    "tcp+udp",
    "udp6",
    "127.0.0.1",
    "::1",
    "5s",
    "0",
    "off",
    "true",
    "v1",
    "v2",
    "required",
    "optional",
    "10.0.0.0/8,192.168.1.5",
    "ip_hash",
    "least_conn",
    "ssh,dns",
    "frontend",
    "1h30m",
    "27015-27020:27015-27020",
    "",
];
const NETWORKS: [&str; 4] = ["bridge", "frontend", "proj_frontend", "host"];

fn selector(s: &Selector) -> String {
    match s {
        Selector::Wildcard => "*".into(),
        Selector::Index(n) => format!("#{}", n % 8),
        Selector::Name(n) => ALIASES[usize::from(*n) % ALIASES.len()].into(),
        Selector::Raw(s) => s.clone(),
    }
}

fn key(k: &Key) -> String {
    match k {
        Key::Field(s, f) => format!("proxy.{}.{}", selector(s), FIELDS[usize::from(*f) % FIELDS.len()].name),
        Key::OddField(s, f) => format!("proxy.{}.{f}", selector(s)),
        Key::ContainerWide(n) => ["proxy.aliases", "proxy.exclude", "proxy.network"][usize::from(*n) % 3].into(),
        Key::Raw(s) => s.clone(),
    }
}

fn value(v: &Value) -> String {
    match v {
        Value::Known(n) => KNOWN[usize::from(*n) % KNOWN.len()].into(),
        Value::Ports(a, b) => format!("{a}:{b}"),
        Value::Ranges(a, b, c, d) => format!("{a}-{b}:{c}-{d}"),
        Value::Raw(s) => s.clone(),
    }
}

/// Images whose names GoDoxy's tables know (TCP, HTTP) and one they do not.
const IMAGES: &[&str] = &["postgres:16", "nginx", "busybox"];

fuzz_target!(|input: Input| {
    let labels: BTreeMap<String, String> = input.labels.iter().map(|(k, v)| (key(k), value(v))).collect();
    let view = ContainerView {
        id: "0123456789abcdef".into(),
        name: "box".into(),
        labels,
        network_mode: ["bridge", "host", "none", "container:abc", "frontend"][usize::from(input.network_mode) % 5]
            .into(),
        networks: input
            .networks
            .iter()
            .map(|(n, ip)| (NETWORKS[usize::from(*n) % NETWORKS.len()].to_string(), ip.map(IpAddr::from)))
            .collect(),
        ports: Default::default(),
        image: IMAGES[usize::from(input.network_mode) % IMAGES.len()].into(),
        state: ContainerState::Running,
    };
    let own: Vec<String> =
        input.self_networks.iter().map(|n| NETWORKS[usize::from(*n) % NETWORKS.len()].into()).collect();
    let out = parse_labels(&view, &own);
    for route in &out.routes {
        assert_eq!(route.source, "box");
    }
    for e in &out.errors {
        let text = e.to_string();
        match e {
            LabelError::Label { key, reason, .. } => {
                assert!(!reason.is_empty(), "an error without a reason: {text}");
                // Named as displayed: a long key is clipped (see route_spec::fields::Clipped).
                let named = Clipped::bare(key).to_string();
                assert!(text.contains(&named), "an error that does not name its label: {text}");
            }
            LabelError::NoTarget { reason } => assert!(!reason.is_empty(), "{text}"),
        }
    }
});
