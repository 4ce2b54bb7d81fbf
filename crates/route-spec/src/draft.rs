//! One route being assembled from `field = value` pairs, as labels and the routes file give
//! them, then built into [`RouteSpec`]s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::balance::HealthCheck;
use crate::fields::kind::{self, Kind};
use crate::fields::{self, FieldError, PortSpec, SchemeSpec, check_printable, did_you_mean};
use crate::options::RouteOptions;
use crate::protocol::{Family, Protocol, Scheme};
use crate::proxy_protocol::Version as ProxyVersion;
use crate::route::RouteSpec;
use crate::target::Target;

/// One route being assembled from fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteDraft {
    /// The route's alias.
    pub alias: String,
    /// `scheme`, if set.
    pub scheme: Option<SchemeSpec>,
    /// `bind`, if set.
    pub bind: Option<IpAddr>,
    /// `host`, if set: one host, or several to balance over.
    pub host: Option<Vec<String>>,
    /// `port`, if set.
    pub port: Option<PortSpec>,
    /// Options, defaults unless set.
    pub options: RouteOptions,
    /// GoDoxy's `relay_proxy_protocol_header`, if set; resolved against `proxy_protocol` by
    /// [`RouteDraft::build`], so the order fields are set in does not matter.
    pub relay_proxy_protocol_header: Option<bool>,
}

impl RouteDraft {
    /// An empty draft for `alias`.
    pub fn new(alias: impl Into<String>) -> Self {
        RouteDraft { alias: alias.into(), ..Default::default() }
    }

    /// Sets one field from its text, checking the value.
    pub fn set(&mut self, field: &str, value: &str) -> Result<(), FieldError> {
        let v = value.trim();
        match field {
            "port" => self.port = Some(PortSpec::parse(v)?),
            "scheme" => {
                let scheme = SchemeSpec::parse(&v.to_ascii_lowercase()).ok_or_else(|| {
                    let mut reason = format!("unknown scheme; expected one of {}", SchemeSpec::NAMES.join(", "));
                    if let Some(hint) = did_you_mean(v, SchemeSpec::NAMES) {
                        reason = format!("unknown scheme (did you mean {hint:?}?)");
                    }
                    FieldError::new(field, value, reason)
                })?;
                self.scheme = Some(scheme);
            }
            "bind" => self.bind = Some(kind::Address.parse(value).map_err(|r| FieldError::new(field, value, r))?),
            "host" => self.host = Some(kind::Hosts.parse(value).map_err(|r| FieldError::new(field, value, r))?),
            "relay_proxy_protocol_header" => {
                self.relay_proxy_protocol_header =
                    Some(kind::Bool.parse(value).map_err(|r| FieldError::new(field, value, r))?)
            }
            _ => match fields::field(field) {
                Some(f) if f.set_option(&mut self.options, value)? => {}
                _ => return Err(fields::unknown_field(field, value)),
            },
        }
        Ok(())
    }

    /// True once `port` is set: a draft without one is not a stream route.
    pub fn has_port(&self) -> bool {
        self.port.is_some()
    }

    /// Builds the routes this draft describes; `default_host` is used when `host` is unset.
    ///
    /// One spec per listen port and protocol: `tcp+udp` gives a TCP and a UDP spec on the
    /// same port, a port range one spec per port, all with the same alias. Every host of a
    /// `host` list is a target of each.
    pub fn build(&self, source: &str, default_host: &str) -> Result<Vec<RouteSpec>, FieldError> {
        check_printable(&self.alias).map_err(|reason| FieldError::new("alias", &self.alias, reason))?;
        let port = self.port.ok_or_else(|| FieldError::new("port", "", "missing; every route needs a port"))?;
        let scheme = self.scheme.unwrap_or(SchemeSpec::One(Scheme { protocol: Protocol::Tcp, family: Family::Any }));
        if matches!(scheme, SchemeSpec::TcpAndUdp(_)) && port.listen == 0 {
            return Err(FieldError::new(
                "port",
                &port.to_string(),
                format!(
                    "{scheme} needs an explicit listen port (LISTEN:TARGET, e.g. {t}:{t}): with an OS-picked \
                     port TCP and UDP would each get a different one",
                    t = port.target
                ),
            ));
        }
        let family = scheme.family();
        let bind = match (self.bind, family) {
            (Some(ip), _) => ip,
            (None, Family::V6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            (None, _) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let hosts: Vec<&str> = match &self.host {
            Some(hosts) => hosts.iter().map(String::as_str).collect(),
            None => vec![default_host],
        };
        let mut options = self.options.clone();
        if self.relay_proxy_protocol_header == Some(true) {
            if options.proxy_protocol == Some(ProxyVersion::V1) {
                return Err(FieldError::new(
                    "relay_proxy_protocol_header",
                    "true",
                    "means proxy_protocol v2, but proxy_protocol is v1; keep one of them",
                ));
            }
            options.proxy_protocol = Some(ProxyVersion::V2);
        }
        // Each protocol's options: with tcp+udp, the active check is the TCP route's.
        let mut per_protocol = Vec::with_capacity(2);
        for &protocol in scheme.protocols() {
            let mut options = options.clone();
            if protocol == Protocol::Udp && matches!(scheme, SchemeSpec::TcpAndUdp(_)) {
                options.health_check = HealthCheck::Off;
            }
            options
                .check(protocol)
                .map_err(|e| FieldError::new(e.field, &fields::option_text(&options, e.field), e.reason))?;
            per_protocol.push((protocol, options));
        }
        let mut specs = Vec::with_capacity(usize::from(port.count) * per_protocol.len());
        for (listen, target) in port.pairs() {
            for (protocol, options) in &per_protocol {
                let targets = hosts.iter().map(|h| Target::new(*h, target)).collect();
                let spec = RouteSpec::new(self.alias.clone(), *protocol, SocketAddr::new(bind, listen), targets)
                    .with_source(source)
                    .with_family(family)
                    .with_options(options.clone());
                spec.validate().map_err(|e| {
                    let value = self.bind.map(|b| b.to_string()).unwrap_or_default();
                    FieldError::new("bind", &value, e.to_string())
                })?;
                specs.push(spec);
            }
        }
        Ok(specs)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ipnet::IpNet;

    use super::*;
    use crate::balance::Balance;
    use crate::fields::kind::duration;
    use crate::fields::{FIELDS, unknown_field};
    use crate::proxy_protocol::Accept as AcceptProxy;

    fn draft(pairs: &[(&str, &str)]) -> Result<RouteDraft, FieldError> {
        let mut d = RouteDraft::new("ssh");
        for (k, v) in pairs {
            d.set(k, v)?;
        }
        Ok(d)
    }

    #[test]
    fn port_forms() {
        assert_eq!(PortSpec::parse("2222:22").unwrap(), PortSpec::single(2222, 22));
        assert_eq!(PortSpec::parse("22").unwrap(), PortSpec::single(0, 22));
        assert_eq!(PortSpec::parse("0:22").unwrap(), PortSpec::single(0, 22));
        let cases = [
            ("22:22:22", "too many ':'"),
            ("abc", "\"abc\" is not a port number"),
            ("70000", "70000 is not a port (1-65535)"),
            ("2222:0", "the target port cannot be 0"),
            (":22", "the listen port is empty"),
            ("-1", "is not a port number"),
        ];
        for (input, want) in cases {
            let e = PortSpec::parse(input).unwrap_err().to_string();
            assert!(e.contains(want), "{input}: {e}");
            assert!(e.starts_with(&format!("port {input:?}")), "{e}");
        }
    }

    #[test]
    fn port_ranges_pair_each_listen_port_with_the_target_port_at_the_same_position() {
        let p = PortSpec::parse("27015-27020:27015-27020").unwrap();
        assert_eq!(p, PortSpec { listen: 27015, target: 27015, count: 6 });
        let p = PortSpec::parse(" 8000-8002 : 9000-9002 ").unwrap();
        assert_eq!(p.pairs().collect::<Vec<_>>(), vec![(8000, 9000), (8001, 9001), (8002, 9002)]);
        assert_eq!(p.to_string(), "8000-8002:9000-9002");
        assert_eq!(PortSpec::parse("5-5:6-6").unwrap(), PortSpec::single(5, 6), "a range of one is one port");
        let p = PortSpec::parse("1-1000:1-1000").unwrap();
        assert_eq!(p.count, PortSpec::MAX_RANGE, "the cap itself is allowed");
        let cases = [
            (
                "27015-27020:27015-27019",
                "the listen range 27015-27020 has 6 ports but the target range 27015-27019 has 5; \
                 they must be the same length",
            ),
            ("1-60000:1-60000", "port range 1-60000 has 60000 ports; at most 1000"),
            ("20-10:20-10", "port range 20-10 is reversed; write 10-20"),
            ("27015-27020", "a port range needs its listen side too, e.g. 27015-27020:27015-27020"),
            (
                "100-104:80",
                "the listen range 100-104 has 5 ports but the target is one port; give a target range of 5 ports",
            ),
            ("80:100-104", "the target range 100-104 has 5 ports but the listen side is one port"),
            ("0-4:100-104", "the listen port cannot be 0"),
            ("1-70000:1-70000", "70000 is not a port (1-65535)"),
            ("1-2-3:1-2", "\"1-2-3\" is not a port number"),
        ];
        for (input, want) in cases {
            let e = PortSpec::parse(input).unwrap_err().to_string();
            assert!(e.starts_with(&format!("port {input:?}: ")), "{e}");
            assert!(e.contains(want), "{input}: {e}");
        }
    }

    #[test]
    fn a_port_range_builds_one_route_per_port_and_tcp_udp_two_per_port() {
        let d = draft(&[("port", "7000-7002:8000-8002"), ("scheme", "tcp+udp"), ("host", "a, b")]).unwrap();
        let specs = d.build("f.yml", "x").unwrap();
        let got: Vec<(Protocol, u16, Vec<String>)> = specs
            .iter()
            .map(|s| (s.protocol, s.listen.port(), s.targets.iter().map(|t| t.to_string()).collect()))
            .collect();
        let t = |port: u16| vec![format!("a:{port}"), format!("b:{port}")];
        assert_eq!(
            got,
            vec![
                (Protocol::Tcp, 7000, t(8000)),
                (Protocol::Udp, 7000, t(8000)),
                (Protocol::Tcp, 7001, t(8001)),
                (Protocol::Udp, 7001, t(8001)),
                (Protocol::Tcp, 7002, t(8002)),
                (Protocol::Udp, 7002, t(8002)),
            ]
        );
        assert!(specs.iter().all(|s| s.alias == "ssh" && s.source == "f.yml"));
    }

    #[test]
    fn tcp_udp_schemes_force_the_family_and_need_an_explicit_listen_port() {
        let specs = draft(&[("port", "53:53"), ("scheme", "tcp6+udp6")]).unwrap().build("x", "::1").unwrap();
        assert_eq!(specs.len(), 2);
        assert!(specs.iter().all(|s| s.family == Family::V6 && s.listen == "[::]:53".parse().unwrap()));
        assert_eq!(specs[0].scheme().to_string(), "tcp6");
        assert_eq!(specs[1].scheme().to_string(), "udp6");
        let e = draft(&[("port", "53"), ("scheme", "tcp+udp")]).unwrap().build("x", "db").unwrap_err();
        assert_eq!(
            e.to_string(),
            "port \"53\": tcp+udp needs an explicit listen port (LISTEN:TARGET, e.g. 53:53): with an OS-picked \
             port TCP and UDP would each get a different one"
        );
        let e = draft(&[("scheme", "tcp+udpp")]).unwrap_err().to_string();
        assert_eq!(e, "scheme \"tcp+udpp\": unknown scheme (did you mean \"tcp+udp\"?)");
        assert_eq!(SchemeSpec::parse("tcp4+udp4").map(|s| s.to_string()).as_deref(), Some("tcp4+udp4"));
    }

    #[test]
    fn balance_and_health_fields_parse_and_are_checked() {
        let d = draft(&[
            ("port", "1:2"),
            ("balance", "least_conn"),
            ("health_check", "tcp"),
            ("health_interval", "3s"),
            ("health_timeout", "500ms"),
        ])
        .unwrap();
        assert_eq!(d.options.balance, Balance::LeastConn);
        assert_eq!(d.options.health_check, HealthCheck::Tcp);
        assert_eq!(d.options.health_interval, Duration::from_secs(3));
        assert_eq!(d.options.health_timeout, Duration::from_millis(500));
        assert!(d.build("x", "db").is_ok());

        let e = draft(&[("balance", "least_con")]).unwrap_err().to_string();
        assert_eq!(e, "balance \"least_con\": unknown strategy (did you mean \"least_conn\"?)");
        let e = draft(&[("balance", "random")]).unwrap_err().to_string();
        assert_eq!(e, "balance \"random\": unknown strategy; expected one of round_robin, least_conn, ip_hash");
        let e = draft(&[("health_check", "http")]).unwrap_err().to_string();
        assert_eq!(e, "health_check \"http\": expected tcp or off");
        assert!(draft(&[("health_interval", "0s")]).is_err());
        assert!(draft(&[("health_timeout", "2")]).unwrap_err().to_string().contains("needs a unit"));

        // UDP has no generic check; tcp+udp checks its TCP route only.
        let e = draft(&[("port", "53:53"), ("scheme", "udp"), ("health_check", "tcp")])
            .unwrap()
            .build("x", "db")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("health_check \"tcp\": health_check tcp is for TCP routes"), "{e}");
        let specs = draft(&[("port", "53:53"), ("scheme", "tcp+udp"), ("health_check", "tcp")])
            .unwrap()
            .build("x", "db")
            .unwrap();
        assert_eq!(
            (specs[0].options.health_check, specs[1].options.health_check),
            (HealthCheck::Tcp, HealthCheck::Off)
        );
    }

    #[test]
    fn host_takes_a_list_of_targets() {
        let d = draft(&[("port", "5432:5432"), ("host", "db-1, db-2 [::1],db-1")]).unwrap();
        let spec = &d.build("x", "unused").unwrap()[0];
        let want = vec![Target::new("db-1", 5432), Target::new("db-2", 5432), Target::new("::1", 5432)];
        assert_eq!(spec.targets, want, "in order, without duplicates");
        assert!(draft(&[("host", " , ")]).is_err());
        let e = draft(&[("host", "a, 10.0.0.0/8")]).unwrap_err().to_string();
        assert_eq!(e, "host \"a, 10.0.0.0/8\": \"10.0.0.0/8\" is not a host name or IP address");
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("5m").unwrap(), Duration::from_secs(300));
        let e = draft(&[("connect_timeout", "30")]).unwrap_err().to_string();
        assert_eq!(e, "connect_timeout \"30\": a duration needs a unit, e.g. 30s or 30ms");
    }

    #[test]
    fn misspelt_field_and_scheme_suggest_the_right_one() {
        let e = draft(&[("prot", "22")]).unwrap_err().to_string();
        assert_eq!(e, "prot \"22\": unknown field (did you mean \"port\"?)");
        let e = draft(&[("scheme", "tcpp")]).unwrap_err().to_string();
        assert_eq!(e, "scheme \"tcpp\": unknown scheme (did you mean \"tcp\"?)");
        let e = draft(&[("conect_timeout", "5s")]).unwrap_err().to_string();
        assert!(e.contains("did you mean \"connect_timeout\""), "{e}");
    }

    #[test]
    fn build_applies_defaults_and_family() {
        let d = draft(&[("port", "2222:22")]).unwrap();
        let spec = &d.build("file.yml", "127.0.0.1").unwrap()[0];
        assert_eq!(spec.listen, "0.0.0.0:2222".parse().unwrap());
        assert_eq!(spec.targets, vec![Target::new("127.0.0.1", 22)]);
        assert_eq!(spec.protocol, Protocol::Tcp);
        assert_eq!(spec.source, "file.yml");

        let d = draft(&[("port", "53"), ("scheme", "udp6")]).unwrap();
        let spec = &d.build("x", "db").unwrap()[0];
        assert_eq!(spec.listen, "[::]:0".parse().unwrap());
        assert_eq!(spec.family, Family::V6);

        let d = draft(&[("port", "53:53"), ("scheme", "udp6"), ("bind", "0.0.0.0")]).unwrap();
        let e = d.build("x", "db").unwrap_err().to_string();
        assert!(e.contains("scheme udp6 but bind address 0.0.0.0 is IPv4"), "{e}");
    }

    #[test]
    fn an_empty_allow_list_is_an_error_not_an_open_door() {
        for empty in ["", " ", ",", " , "] {
            let e = draft(&[("port", "1:2"), ("allow", empty)]).unwrap_err();
            assert_eq!(e.field, "allow");
            assert!(e.reason.starts_with("an empty allow list would let every client in"), "{e}");
        }
        // An empty deny list refuses no one, which is what it says: not an error.
        assert!(draft(&[("port", "1:2"), ("deny", "")]).unwrap().options.deny.is_empty());
    }

    #[test]
    fn an_alias_with_a_control_character_is_refused_by_name() {
        let mut d = RouteDraft::new("esc\u{1b}[31mRED");
        d.set("port", "22").unwrap();
        let e = d.build("f.yml", "db").unwrap_err();
        assert_eq!(e.field, "alias");
        assert_eq!(
            e.to_string(),
            "alias \"esc\\u{1b}[31mRED\": contains the control or bidirectional character '\\u{1b}' at byte 3; \
             only printable text is allowed"
        );
    }

    #[test]
    fn long_values_are_clipped_in_errors_but_kept_whole() {
        let value = "é".repeat(10_000);
        let e = draft(&[("scheme", &value)]).unwrap_err();
        assert_eq!(e.value, value);
        let shown = e.to_string();
        assert!(shown.len() < 400, "{} bytes shown", shown.len());
        assert!(shown.contains("… (20000 bytes)"), "{shown}");
        let field = "f".repeat(1_000);
        let shown = unknown_field(&field, "v").to_string();
        assert!(shown.starts_with(&format!("{}… (1000 bytes) \"v\": unknown field", "f".repeat(80))), "{shown}");
    }

    #[test]
    fn options_parse() {
        let d = draft(&[
            ("port", "1:2"),
            ("connect_timeout", "2s"),
            ("tcp_idle_timeout", "1h"),
            ("udp_idle_timeout", "30s"),
            ("max_connections", "10"),
            ("max_udp_sessions", "5"),
            ("drain_grace", "3s"),
        ])
        .unwrap();
        let o = &d.options;
        assert_eq!(o.connect_timeout, Duration::from_secs(2));
        assert_eq!(o.tcp_idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(o.udp_idle_timeout, Duration::from_secs(30));
        assert_eq!((o.max_connections, o.max_udp_sessions), (10, 5));
        assert_eq!(o.drain_grace, Duration::from_secs(3));
        assert!(draft(&[("max_udp_sessions", "0")]).is_err());
        assert!(draft(&[("max_connections", "-1")]).is_err());
        assert_eq!(draft(&[("tcp_idle_timeout", "off")]).unwrap().options.tcp_idle_timeout, None);
    }

    #[test]
    fn acl_lists_parse_and_bad_entries_are_named() {
        let d =
            draft(&[("port", "1:2"), ("allow", "10.0.0.0/8, 192.168.1.7"), ("deny", "10.0.0.66 fd00::/8")]).unwrap();
        let nets = |s: &[&str]| s.iter().map(|n| n.parse::<IpNet>().unwrap()).collect::<Vec<_>>();
        assert_eq!(d.options.allow, nets(&["10.0.0.0/8", "192.168.1.7/32"]));
        assert_eq!(d.options.deny, nets(&["10.0.0.66/32", "fd00::/8"]));
        let e = draft(&[("deny", "10.0.0.1, 10.0.0.300")]).unwrap_err().to_string();
        assert_eq!(
            e,
            "deny \"10.0.0.1, 10.0.0.300\": \"10.0.0.300\" is not an IP address or CIDR network \
             (e.g. 10.0.0.0/8, 192.168.1.7, fd00::/8)"
        );
    }

    #[test]
    fn proxy_protocol_fields_and_the_godoxy_alias() {
        let build =
            |pairs: &[(&str, &str)]| draft(pairs).and_then(|d| d.build("x", "db")).map(|s| s[0].options.clone());
        let o = build(&[("port", "1:2"), ("proxy_protocol", "V1")]).unwrap();
        assert_eq!(o.proxy_protocol, Some(ProxyVersion::V1));
        let o = build(&[("port", "1:2"), ("relay_proxy_protocol_header", "true")]).unwrap();
        assert_eq!(o.proxy_protocol, Some(ProxyVersion::V2));
        let o = build(&[("port", "1:2"), ("relay_proxy_protocol_header", "false")]).unwrap();
        assert_eq!(o.proxy_protocol, None);
        // The alias and the field agree whatever order labels come in; a clash is an error.
        let o = build(&[("relay_proxy_protocol_header", "true"), ("port", "1:2"), ("proxy_protocol", "v2")]).unwrap();
        assert_eq!(o.proxy_protocol, Some(ProxyVersion::V2));
        let e = build(&[("port", "1:2"), ("proxy_protocol", "v1"), ("relay_proxy_protocol_header", "True")]);
        assert!(
            e.unwrap_err().to_string().starts_with("relay_proxy_protocol_header \"true\": means proxy_protocol v2")
        );
        assert!(draft(&[("proxy_protocol", "v3")]).unwrap_err().to_string().contains("expected v1 or v2"));
        assert!(draft(&[("relay_proxy_protocol_header", "maybe")]).is_err());

        let o = build(&[
            ("port", "1:2"),
            ("accept_proxy_protocol", "optional"),
            ("trusted", "10.0.0.1"),
            ("proxy_protocol_timeout", "250ms"),
        ])
        .unwrap();
        assert_eq!(o.accept_proxy_protocol, Some(AcceptProxy::Optional));
        assert_eq!(o.proxy_protocol_timeout, Duration::from_millis(250));
        assert!(draft(&[("accept_proxy_protocol", "sometimes")]).is_err());
        assert!(draft(&[("proxy_protocol_timeout", "0s")]).is_err());
        assert_eq!(draft(&[("accept_proxy_protocol", "off")]).unwrap().options.accept_proxy_protocol, None);
    }

    #[test]
    fn proxy_protocol_combinations_are_checked_with_the_field_at_fault() {
        let build = |pairs: &[(&str, &str)]| draft(pairs).unwrap().build("x", "db").unwrap_err().to_string();
        let e = build(&[("port", "1:2"), ("accept_proxy_protocol", "required")]);
        assert!(e.starts_with("accept_proxy_protocol \"required\": accept_proxy_protocol needs trusted"), "{e}");
        let e = build(&[("port", "1:2"), ("trusted", "10.0.0.0/8")]);
        assert!(e.starts_with("trusted \"10.0.0.0/8\": trusted is only used with accept_proxy_protocol"), "{e}");
        let e = build(&[("port", "1:2"), ("scheme", "udp"), ("accept_proxy_protocol", "required"), ("trusted", "::1")]);
        assert!(
            e.starts_with("accept_proxy_protocol \"required\": accept_proxy_protocol is for TCP routes only"),
            "{e}"
        );
        let e = build(&[("port", "1:2"), ("scheme", "udp"), ("proxy_protocol", "v1")]);
        assert!(e.starts_with("proxy_protocol \"v1\": proxy_protocol v1 is a text header for TCP streams"), "{e}");
        let ok = draft(&[("port", "1:2"), ("scheme", "udp"), ("proxy_protocol", "v2")]).unwrap().build("x", "db");
        assert!(ok.is_ok());
    }

    #[test]
    fn every_documented_field_is_accepted() {
        for f in FIELDS {
            let mut d = RouteDraft::new("a");
            let e = d.set(f.name, "@@");
            if let Err(e) = e {
                assert!(!e.reason.starts_with("unknown field"), "{} is documented but unknown", f.name);
            }
        }
    }
}
