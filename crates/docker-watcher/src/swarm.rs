//! Swarm services → routes: the pure half of the Docker Swarm support, no Docker connection.
//!
//! On a swarm manager a service's labels (`docker service create --label`, a stack file's
//! `deploy.labels`) define routes with the same grammar as a container's, parsed by the same
//! code ([`parse_service_labels`] calls what [`parse_labels`](crate::parse_labels) calls). The
//! labels of the service's containers (`--container-label`, a stack file's `labels`) count
//! too, the service's own winning on the same key, so a stack file works with either.
//!
//! What a route forwards to (unless it sets `host`) is chosen by `proxy.swarm_target`:
//!
//! - `tasks` (the default): every running task, one target each, so the replicas share the
//!   route and proxy-core balances over them. A task is reached at its address on the chosen
//!   network: `proxy.network` (a stack's `<stack>_NAME` is found too), else a network
//!   dockward's own container shares, else the first in sorted name order, the routing mesh
//!   (`ingress`) last. A task on the host network (`--network host`) is reached at
//!   127.0.0.1 on the node dockward talks to, at the node's address elsewhere.
//! - `vip`: the service's virtual IP on the chosen network, one target; the swarm balances.
//!
//! A service without a running task has no route (like a stopped container), in either mode.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use route_spec::fields;

use crate::labels::target::{Pick, choose_network};
use crate::labels::{
    ContainerRoutes, LABEL_NETWORK, LABEL_SWARM_TARGET, LabelError, Subject, SwarmTarget, parse_subject,
};

/// The label Docker puts on a swarm task's container: the id of its service. A container
/// carrying it is the service's business, not a route source of its own, while dockward
/// watches services.
pub const SWARM_SERVICE_ID_LABEL: &str = "com.docker.swarm.service.id";

/// The label `docker stack deploy` puts on every service of a stack; `proxy.network=NAME`
/// also finds the network `<stack>_NAME` that the stack creates for a network named NAME.
pub const STACK_NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// One running task of a service, as [`parse_service_labels`] needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskView {
    /// The task id.
    pub id: String,
    /// The node it runs on.
    pub node_id: String,
    /// True when it runs on the host network (`--network host`).
    pub host_network: bool,
    /// Where a host-network task is reached: 127.0.0.1 on the node dockward talks to, the
    /// node's address on another node; `None` when unknown.
    pub node_address: Option<IpAddr>,
    /// Its networks by name, with its address on each (`None` while it has none).
    pub networks: BTreeMap<String, Option<IpAddr>>,
}

/// What [`parse_service_labels`] needs to know about a swarm service: a plain value, built
/// from the manager's answers, or by hand in tests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceView {
    /// The service id.
    pub id: String,
    /// The service name: the default alias and every route's source.
    pub name: String,
    /// Its containers' labels overlaid with its own (the service's win).
    pub labels: BTreeMap<String, String>,
    /// Its virtual IPs by network name; empty in endpoint mode `dnsrr` and on the host network.
    pub virtual_ips: BTreeMap<String, IpAddr>,
    /// The routing-mesh networks among its networks: chosen only when no other network has an
    /// address, or when `proxy.network` names one.
    pub ingress_networks: BTreeSet<String>,
    /// Its running tasks; tasks that are starting, stopping or whose container died are not here.
    pub tasks: Vec<TaskView>,
}

/// Turns one swarm service's labels into routes (and errors), pure and total.
///
/// `self_networks` are the networks of dockward's own container when it runs in one.
/// Every route's [`RouteSpec::source`](route_spec::RouteSpec::source) is the service name.
pub fn parse_service_labels(view: &ServiceView, self_networks: &[String]) -> ContainerRoutes {
    let subject =
        Subject { kind: "service", id: &view.id, name: &view.name, labels: &view.labels, exposed: &[], image: "" };
    parse_subject(&subject, || service_targets(view, self_networks))
}

/// The hosts a service's routes forward to, sorted and without duplicates; empty when it has
/// no running task.
fn service_targets(view: &ServiceView, self_networks: &[String]) -> Result<Vec<String>, LabelError> {
    let mode = match view.labels.get(LABEL_SWARM_TARGET) {
        Some(value) => SwarmTarget::from_label(value)?,
        None => SwarmTarget::Tasks,
    };
    if view.tasks.is_empty() {
        return Ok(Vec::new());
    }
    let mut hosts: BTreeSet<IpAddr> = BTreeSet::new();
    match mode {
        SwarmTarget::Tasks => {
            let attached: BTreeSet<&str> = view
                .tasks
                .iter()
                .filter(|t| !t.host_network)
                .flat_map(|t| t.networks.iter().filter(|(_, ip)| ip.is_some()).map(|(n, _)| n.as_str()))
                .collect();
            let network = if view.tasks.iter().all(|t| t.host_network) {
                None
            } else {
                Some(service_network(view, &attached, self_networks, "its tasks")?)
            };
            for task in &view.tasks {
                if task.host_network {
                    match task.node_address {
                        Some(ip) => hosts.insert(ip),
                        None => {
                            return Err(LabelError::NoTarget {
                                reason: format!(
                                    "task {} runs on the host network of node {}, whose address is unknown; \
                                     set proxy.<alias>.host",
                                    short(&task.id),
                                    short(&task.node_id)
                                ),
                            });
                        }
                    };
                } else if let Some(Some(ip)) = network.and_then(|n| task.networks.get(n)) {
                    hosts.insert(*ip);
                }
            }
        }
        SwarmTarget::Vip => {
            if view.virtual_ips.is_empty() {
                let value = view.labels.get(LABEL_SWARM_TARGET).map(String::as_str).unwrap_or("vip");
                let why = if view.tasks.iter().all(|t| t.host_network) {
                    "the service runs on the host network, which has no virtual IP"
                } else {
                    "the service has no virtual IP (endpoint mode dnsrr?)"
                };
                return Err(LabelError::label(
                    None,
                    LABEL_SWARM_TARGET,
                    value,
                    format!("{why}; remove the label to forward to its tasks"),
                ));
            }
            let names: BTreeSet<&str> = view.virtual_ips.keys().map(String::as_str).collect();
            let network = service_network(view, &names, self_networks, "its virtual IPs")?;
            if let Some(ip) = view.virtual_ips.get(network) {
                hosts.insert(*ip);
            }
        }
    }
    Ok(hosts.into_iter().map(|ip| ip.to_string()).collect())
}

/// The network to take addresses from, among `available` (names with an address), by the
/// rule containers follow too ([`choose_network`]); the routing mesh comes last.
fn service_network<'a>(
    view: &ServiceView,
    available: &BTreeSet<&'a str>,
    self_networks: &[String],
    what: &str,
) -> Result<&'a str, LabelError> {
    let listed = || {
        if available.is_empty() { "none".to_string() } else { available.iter().copied().collect::<Vec<_>>().join(", ") }
    };
    let wanted = view.labels.get(LABEL_NETWORK).map(String::as_str);
    let stack = view.labels.get(STACK_NAMESPACE_LABEL).map(String::as_str);
    let names: Vec<&'a str> = available.iter().copied().collect();
    let named = |name: &str| available.get(name).copied();
    let mesh = |name: &str| view.ingress_networks.contains(name);
    match choose_network(wanted, stack, named, &names, self_networks, mesh) {
        Pick::Network(found) => Ok(found),
        Pick::NoSuchNetwork => {
            let wanted = wanted.unwrap_or("");
            let trimmed = wanted.trim();
            let mut reason = format!("no network of this name among {what}");
            if let Some(hint) = fields::did_you_mean(trimmed, available.iter().copied()) {
                reason.push_str(&format!(" (did you mean {hint:?}?)"));
            }
            reason.push_str(&format!("; networks with an address: {}", listed()));
            Err(LabelError::label(None, LABEL_NETWORK, wanted, reason))
        }
        Pick::Nothing => Err(LabelError::NoTarget {
            reason: format!("{what} have no address on any network; set proxy.<alias>.host"),
        }),
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use route_spec::{Protocol, Target};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn overlay_task(id: &str, networks: &[(&str, &str)]) -> TaskView {
        TaskView {
            id: id.into(),
            node_id: "node1".into(),
            host_network: false,
            node_address: None,
            networks: networks.iter().map(|(n, a)| (n.to_string(), Some(ip(a)))).collect(),
        }
    }

    fn host_task(id: &str, node_address: Option<&str>) -> TaskView {
        TaskView {
            id: id.into(),
            node_id: "node1".into(),
            host_network: true,
            node_address: node_address.map(ip),
            networks: [("host".to_string(), None)].into_iter().collect(),
        }
    }

    fn service(labels: &[(&str, &str)], tasks: Vec<TaskView>) -> ServiceView {
        ServiceView {
            id: "svc1".into(),
            name: "web".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            virtual_ips: [("backend".to_string(), ip("10.0.1.2")), ("ingress".to_string(), ip("10.0.0.2"))]
                .into_iter()
                .collect(),
            ingress_networks: ["ingress".to_string()].into_iter().collect(),
            tasks,
        }
    }

    fn targets(r: &ContainerRoutes) -> Vec<Vec<String>> {
        r.routes.iter().map(|s| s.targets.iter().map(Target::to_string).collect()).collect()
    }

    fn errors(r: &ContainerRoutes) -> Vec<String> {
        r.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_running_task_is_a_target_on_the_first_network_outside_the_mesh() {
        let v = service(
            &[("proxy.aliases", "app"), ("proxy.app.port", "8080:80")],
            vec![
                overlay_task("t2", &[("ingress", "10.0.0.6"), ("backend", "10.0.1.6")]),
                overlay_task("t1", &[("ingress", "10.0.0.5"), ("backend", "10.0.1.5")]),
            ],
        );
        let r = parse_service_labels(&v, &[]);
        assert_eq!(errors(&r), Vec::<String>::new());
        assert_eq!(targets(&r), vec![vec!["10.0.1.5:80".to_string(), "10.0.1.6:80".to_string()]]);
        assert_eq!((r.routes[0].source.as_str(), r.name.as_str(), r.id.as_str()), ("web", "web", "svc1"));
        assert_eq!(r.routes[0].protocol, Protocol::Tcp);
    }

    #[test]
    fn proxy_network_and_shared_networks_choose_the_address() {
        let tasks =
            vec![overlay_task("t1", &[("backend", "10.0.1.5"), ("front", "10.0.2.5"), ("shop_db", "10.0.3.5")])];
        let v = service(&[("proxy.app.port", "80"), ("proxy.app.scheme", "tcp")], tasks.clone());
        assert_eq!(targets(&parse_service_labels(&v, &["front".into()])), vec![vec!["10.0.2.5:80".to_string()]]);

        let v = service(
            &[("proxy.app.port", "80"), ("proxy.app.scheme", "tcp"), ("proxy.network", "front")],
            tasks.clone(),
        );
        assert_eq!(targets(&parse_service_labels(&v, &["backend".into()])), vec![vec!["10.0.2.5:80".to_string()]]);

        let v = service(
            &[
                ("proxy.app.port", "80"),
                ("proxy.app.scheme", "tcp"),
                ("proxy.network", "db"),
                (STACK_NAMESPACE_LABEL, "shop"),
            ],
            tasks.clone(),
        );
        assert_eq!(targets(&parse_service_labels(&v, &[])), vec![vec!["10.0.3.5:80".to_string()]]);

        let v = service(&[("proxy.app.port", "80"), ("proxy.app.scheme", "tcp"), ("proxy.network", "frnt")], tasks);
        let r = parse_service_labels(&v, &[]);
        assert!(r.routes.is_empty());
        assert_eq!(
            errors(&r),
            vec![
                "label proxy.network=\"frnt\": no network of this name among its tasks (did you mean \"front\"?); \
                 networks with an address: backend, front, shop_db"
            ]
        );
    }

    #[test]
    fn host_network_tasks_are_reached_on_their_node() {
        let v = service(
            &[("proxy.aliases", "echo"), ("proxy.echo.port", "9000:9001"), ("proxy.network", "ignored")],
            vec![host_task("t1", Some("127.0.0.1")), host_task("t2", Some("192.0.2.7"))],
        );
        let r = parse_service_labels(&v, &[]);
        assert_eq!(errors(&r), Vec::<String>::new());
        assert_eq!(targets(&r), vec![vec!["127.0.0.1:9001".to_string(), "192.0.2.7:9001".to_string()]]);

        let v = service(&[("proxy.echo.port", "9000:9001")], vec![host_task("0123456789abcdef", None)]);
        assert_eq!(
            errors(&parse_service_labels(&v, &[])),
            vec![
                "no target address: task 0123456789ab runs on the host network of node node1, whose address is \
                 unknown; set proxy.<alias>.host"
            ]
        );
    }

    #[test]
    fn no_running_task_means_no_route_and_no_error() {
        let v = service(&[("proxy.aliases", "a,b"), ("proxy.a.port", "1:2"), ("proxy.b.port", "3:4")], vec![]);
        let r = parse_service_labels(&v, &[]);
        assert!(r.routes.is_empty() && r.errors.is_empty(), "{r:?}");
        assert_eq!(r.skipped.len(), 2);
        assert_eq!(r.skipped[0].reason, "no running task to forward to");
    }

    #[test]
    fn an_explicit_host_does_not_need_tasks() {
        let v = service(&[("proxy.a.port", "1:2"), ("proxy.a.host", "db.internal")], vec![]);
        assert_eq!(targets(&parse_service_labels(&v, &[])), vec![vec!["db.internal:2".to_string()]]);
    }

    #[test]
    fn vip_mode_forwards_to_the_virtual_ip() {
        let tasks =
            vec![overlay_task("t1", &[("backend", "10.0.1.5")]), overlay_task("t2", &[("backend", "10.0.1.6")])];
        let v = service(&[("proxy.a.port", "1:2"), ("proxy.swarm_target", "vip")], tasks.clone());
        assert_eq!(targets(&parse_service_labels(&v, &[])), vec![vec!["10.0.1.2:2".to_string()]]);

        let mut dnsrr = service(&[("proxy.a.port", "1:2"), ("proxy.swarm_target", "VIP")], tasks);
        dnsrr.virtual_ips.clear();
        assert_eq!(
            errors(&parse_service_labels(&dnsrr, &[])),
            vec![
                "label proxy.swarm_target=\"VIP\": the service has no virtual IP (endpoint mode dnsrr?); remove the \
                 label to forward to its tasks"
            ]
        );

        let mut host = service(&[("proxy.a.port", "1:2"), ("proxy.swarm_target", "vip")], vec![host_task("t", None)]);
        host.virtual_ips.clear();
        assert!(errors(&parse_service_labels(&host, &[]))[0].contains("the service runs on the host network"));
    }

    #[test]
    fn a_bad_swarm_target_is_an_error_with_a_hint() {
        let v = service(&[("proxy.a.port", "1:2"), ("proxy.swarm_target", "vpi")], vec![overlay_task("t", &[])]);
        let r = parse_service_labels(&v, &[]);
        assert!(r.routes.is_empty());
        assert_eq!(errors(&r), vec!["label proxy.swarm_target=\"vpi\": expected tasks or vip (did you mean \"vip\"?)"]);
        assert_eq!(SwarmTarget::from_label(" Tasks ").ok(), Some(SwarmTarget::Tasks));
    }

    mod fuzz {
        use super::*;
        use proptest::collection::{btree_map, vec};
        use proptest::prelude::{
            Just, ProptestConfig, Strategy, any, prop_assert, prop_assert_eq, prop_oneof, proptest,
        };

        fn task() -> impl Strategy<Value = TaskView> {
            (
                any::<bool>(),
                proptest::option::of(any::<[u8; 4]>()),
                btree_map("[a-z_]{0,6}", proptest::option::of(any::<[u8; 4]>()), 0..3),
            )
                .prop_map(|(host_network, node, nets)| TaskView {
                    id: "t".into(),
                    node_id: "n".into(),
                    host_network,
                    node_address: node.map(IpAddr::from),
                    networks: nets.into_iter().map(|(n, ip)| (n, ip.map(IpAddr::from))).collect(),
                })
        }

        fn label() -> impl Strategy<Value = (String, String)> {
            let key = prop_oneof![
                Just("proxy.swarm_target".to_string()),
                Just("proxy.network".to_string()),
                Just("proxy.a.port".to_string()),
                Just("proxy.*.host".to_string()),
                Just(STACK_NAMESPACE_LABEL.to_string()),
                "proxy\\.[a-z#*0-9.]{0,8}",
            ];
            let value = prop_oneof![
                Just("vip".to_string()),
                Just("tasks".to_string()),
                Just("80".to_string()),
                "[a-z0-9:_ ,]{0,10}",
                any::<String>(),
            ];
            (key, value)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]
            #[test]
            fn never_panics_and_every_route_is_the_services(
                labels in vec(label(), 0..8),
                tasks in vec(task(), 0..4),
                vips in btree_map("[a-z_]{0,6}", any::<[u8; 4]>(), 0..3),
                self_nets in vec("[a-z_]{0,6}", 0..2),
            ) {
                let v = ServiceView {
                    id: "s".into(),
                    name: "svc".into(),
                    labels: labels.into_iter().collect(),
                    virtual_ips: vips.into_iter().map(|(n, ip)| (n, IpAddr::from(ip))).collect(),
                    ingress_networks: ["ingress".to_string()].into_iter().collect(),
                    tasks,
                };
                let r = parse_service_labels(&v, &self_nets);
                for s in &r.routes {
                    prop_assert_eq!(&s.source, "svc");
                    prop_assert!(!s.targets.is_empty());
                    prop_assert!(s.validate().is_ok());
                }
            }
        }
    }

    #[test]
    fn exclude_and_label_errors_work_as_for_containers() {
        let v = service(&[("proxy.exclude", "ture"), ("proxy.a.port", "1:2")], vec![overlay_task("t", &[])]);
        assert_eq!(
            errors(&parse_service_labels(&v, &[])),
            vec![
                "label proxy.exclude=\"ture\": expected true or false; no route of this service is opened until it \
                 is fixed"
            ]
        );
        let v = service(
            &[("proxy.aliases", "a,b"), ("proxy.a.prot", "1:2"), ("proxy.b.port", "3:4")],
            vec![overlay_task("t", &[("backend", "10.0.1.5")])],
        );
        let r = parse_service_labels(&v, &[]);
        assert_eq!(errors(&r), vec!["label proxy.a.prot=\"1:2\": unknown field (did you mean \"port\"?)"]);
        assert_eq!(targets(&r), vec![vec!["10.0.1.5:4".to_string()]]);
    }
}
