//! Talking to a swarm manager: services and their running tasks become [`ServiceView`]s.
//!
//! Read-only endpoints only: `GET /info` (is this engine an active manager?), `/services`,
//! `/services/{id}`, `/tasks` (read with [`RawClient`] for the tasks' network addresses),
//! and `/nodes/{id}` only for a host-network task on another node (its address).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{LocalNodeState, Service};
use bollard::query_parameters::{InspectServiceOptions, ListServicesOptions};
use serde::Deserialize;
use tracing::debug;

use crate::error::WatchError;
use crate::io::http::RawClient;
use crate::swarm::{ServiceView, TaskView};
use crate::views::short_id;

/// The id of this engine's node when it is an active swarm manager (the only kind of node
/// that can list services); `None` otherwise, also when `/info` is refused (a socket proxy
/// that does not pass it): then only containers are watched, as before swarm support.
pub(crate) async fn manager_node(docker: &Docker, host: &str) -> Result<Option<String>, WatchError> {
    let info = match docker.info().await {
        Ok(info) => info,
        Err(e) if refused(&e) => {
            debug!(host, error = %e, "GET /info refused: swarm services are not watched");
            return Ok(None);
        }
        Err(source) => return Err(WatchError::engine(host, "info", source)),
    };
    let Some(swarm) = info.swarm else { return Ok(None) };
    let manager = swarm.local_node_state == Some(LocalNodeState::ACTIVE) && swarm.control_available == Some(true);
    Ok(manager.then(|| swarm.node_id.unwrap_or_default()))
}

/// A service as the watcher needs it: the view to parse, and whether it is still settling.
#[derive(Debug, Clone)]
pub(crate) struct ServiceListing {
    /// What the labels are parsed against.
    pub(crate) view: ServiceView,
    /// Some task is meant to run but is not running yet (or its container just died while the
    /// manager still calls it running): the watcher looks again shortly, because the swarm
    /// sends no event when a task's state changes.
    pub(crate) converging: bool,
    /// The containers of its tasks that are meant to run, running or not.
    pub(crate) containers: Vec<String>,
}

/// Lists services and tasks of one swarm manager.
#[derive(Debug, Clone)]
pub(crate) struct SwarmClient {
    docker: Docker,
    raw: RawClient,
    host: String,
    node_id: String,
    label_filters: Vec<String>,
}

/// What a swarm request got, besides an engine failure.
#[derive(Debug)]
pub(crate) enum Answer<T> {
    /// The answer.
    Listed(T),
    /// The engine is not (or no longer) a swarm manager: HTTP 503.
    NotAManager,
    /// The request was refused (HTTP 401/403: a socket proxy that does not pass it), with
    /// the engine's message.
    Refused(String),
}

/// HTTP 503: "this node is not a swarm manager".
fn not_a_manager(e: &BollardError) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code: 503, .. })
}

/// HTTP 401 or 403: a proxy in front of the engine does not pass this request.
fn refused(e: &BollardError) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code: 401 | 403, .. })
}

/// The [`Answer`] for a bollard failure that is not an engine trouble, or the error.
fn answer_for<T>(host: &str, request: &'static str, e: BollardError) -> Result<Answer<T>, WatchError> {
    if not_a_manager(&e) {
        Ok(Answer::NotAManager)
    } else if refused(&e) {
        Ok(Answer::Refused(format!("GET /{request}: {e}")))
    } else {
        Err(WatchError::engine(host, request, e))
    }
}

impl SwarmClient {
    /// A client for the manager `node_id`, reached through `docker` and `raw`, limited to
    /// services carrying every one of `label_filters` (`key` or `key=value`).
    pub(crate) fn new(docker: Docker, raw: RawClient, host: &str, node_id: String, label_filters: Vec<String>) -> Self {
        SwarmClient { docker, raw, host: host.to_string(), node_id, label_filters }
    }

    /// Every service (carrying the label filters) with its running tasks.
    pub(crate) async fn list(&self, dead: &HashSet<String>) -> Result<Answer<Vec<ServiceListing>>, WatchError> {
        let filters = (!self.label_filters.is_empty())
            .then(|| [("label".to_string(), self.label_filters.clone())].into_iter().collect());
        let options = ListServicesOptions { filters, ..Default::default() };
        let services = match self.docker.list_services(Some(options)).await {
            Ok(s) => s,
            Err(e) => return answer_for(&self.host, "services", e),
        };
        let tasks = match self.tasks(None).await? {
            Answer::Listed(tasks) => tasks,
            Answer::NotAManager => return Ok(Answer::NotAManager),
            Answer::Refused(why) => return Ok(Answer::Refused(why)),
        };
        let mut by_service: HashMap<String, Vec<RawTask>> = HashMap::new();
        for t in tasks {
            by_service.entry(t.service_id.clone().unwrap_or_default()).or_default().push(t);
        }
        let mut out = Vec::with_capacity(services.len());
        for service in services {
            let tasks = service.id.as_ref().and_then(|id| by_service.remove(id)).unwrap_or_default();
            if let Some(listing) = self.listing(service, tasks, dead).await {
                out.push(listing);
            }
        }
        Ok(Answer::Listed(out))
    }

    /// One service by id with its running tasks; `Listed(None)` when it is gone or does not
    /// carry the label filters.
    pub(crate) async fn one(
        &self,
        id: &str,
        dead: &HashSet<String>,
    ) -> Result<Answer<Option<ServiceListing>>, WatchError> {
        let service = match self.docker.inspect_service(id, None::<InspectServiceOptions>).await {
            Ok(s) => s,
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => return Ok(Answer::Listed(None)),
            Err(e) => return answer_for(&self.host, "services", e),
        };
        let labels = service.spec.as_ref().and_then(|s| s.labels.as_ref());
        if !matches_filters(labels, &self.label_filters) {
            return Ok(Answer::Listed(None));
        }
        match self.tasks(Some(id)).await? {
            Answer::Listed(tasks) => Ok(Answer::Listed(self.listing(service, tasks, dead).await)),
            Answer::NotAManager => Ok(Answer::NotAManager),
            Answer::Refused(why) => Ok(Answer::Refused(why)),
        }
    }

    /// Tasks meant to be running, of one service or of all.
    async fn tasks(&self, service: Option<&str>) -> Result<Answer<Vec<RawTask>>, WatchError> {
        let filters = match service {
            Some(id) => serde_json::json!({ "desired-state": ["running"], "service": [id] }),
            None => serde_json::json!({ "desired-state": ["running"] }),
        };
        match self.raw.get_json::<Vec<RawTask>>("tasks", "/tasks", &[("filters", &filters.to_string())]).await {
            Ok(tasks) => Ok(Answer::Listed(tasks)),
            Err(WatchError::Answer { status: Some(503), .. }) => Ok(Answer::NotAManager),
            Err(WatchError::Answer { status: Some(401 | 403), message, .. }) => {
                Ok(Answer::Refused(format!("GET /tasks: {message}")))
            }
            Err(e) => Err(e),
        }
    }

    async fn listing(&self, service: Service, tasks: Vec<RawTask>, dead: &HashSet<String>) -> Option<ServiceListing> {
        // Host-network tasks on other nodes are reached at their node's address.
        let mut nodes: HashMap<String, Option<IpAddr>> = HashMap::new();
        for t in tasks.iter().filter(|t| t.is_running() && t.on_host_network()) {
            let node = t.node_id.clone().unwrap_or_default();
            if !node.is_empty() && node != self.node_id && !nodes.contains_key(&node) {
                let addr = self.node_address(&node).await;
                nodes.insert(node, addr);
            }
        }
        service_listing(service, tasks, &self.node_id, &nodes, dead)
    }

    async fn node_address(&self, node: &str) -> Option<IpAddr> {
        match self.docker.inspect_node(node).await {
            Ok(n) => n.status.and_then(|s| s.addr).and_then(|a| a.parse().ok()),
            Err(e) => {
                debug!(host = %self.host, node, error = %e, "cannot read the node's address");
                None
            }
        }
    }
}

/// Whether `labels` carry every filter (`key` or `key=value`), as the engine's label filter
/// judges: used where the engine cannot filter (a service named by an event).
pub(crate) fn matches_filters(labels: Option<&HashMap<String, String>>, filters: &[String]) -> bool {
    filters.iter().all(|f| {
        let Some(labels) = labels else { return false };
        match f.split_once('=') {
            Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
            None => labels.contains_key(f.as_str()),
        }
    })
}

/// The view of `service` with its tasks, and whether it is settling; `None` without an id.
fn service_listing(
    service: Service,
    tasks: Vec<RawTask>,
    own_node: &str,
    nodes: &HashMap<String, Option<IpAddr>>,
    dead: &HashSet<String>,
) -> Option<ServiceListing> {
    let id = service.id?;
    let spec = service.spec.unwrap_or_default();
    let name = spec.name.clone().unwrap_or_else(|| short_id(&id).to_string());
    let mut labels: BTreeMap<String, String> = spec
        .task_template
        .and_then(|t| t.container_spec)
        .and_then(|c| c.labels)
        .map(|l| l.into_iter().collect())
        .unwrap_or_default();
    labels.extend(spec.labels.unwrap_or_default());

    // Network names (and which are the routing mesh), from the tasks' attachments.
    let mut network_names: HashMap<String, String> = HashMap::new();
    let mut ingress_networks: BTreeSet<String> = BTreeSet::new();
    for a in tasks.iter().flat_map(|t| t.networks_attachments.iter().flatten()) {
        let (Some(net_id), Some(net_name)) = (a.network.id.clone(), a.network.spec.name.clone()) else { continue };
        if a.network.spec.ingress == Some(true) {
            ingress_networks.insert(net_name.clone());
        }
        network_names.insert(net_id, net_name);
    }
    let virtual_ips: BTreeMap<String, IpAddr> = service
        .endpoint
        .and_then(|e| e.virtual_ips)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| {
            let name = network_names.get(v.network_id.as_deref()?)?.clone();
            Some((name, parse_cidr_ip(v.addr.as_deref()?)?))
        })
        .collect();

    let mut converging = false;
    let mut views = Vec::new();
    let mut containers = Vec::new();
    for t in tasks {
        let container =
            t.status.as_ref().and_then(|s| s.container_status.as_ref()).and_then(|c| c.container_id.clone());
        containers.extend(container.iter().cloned());
        let running = t.is_running();
        let died = container.as_ref().is_some_and(|c| dead.contains(c));
        if !running || died {
            converging = true;
            continue;
        }
        let node_id = t.node_id.clone().unwrap_or_default();
        let host_network = t.on_host_network();
        let node_address = match (host_network, node_id == own_node) {
            (false, _) => None,
            (true, true) => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            (true, false) => nodes.get(&node_id).copied().flatten(),
        };
        let networks = t
            .networks_attachments
            .iter()
            .flatten()
            .filter_map(|a| {
                let name = a.network.spec.name.clone()?;
                let ip = a.addresses.iter().flatten().find_map(|cidr| parse_cidr_ip(cidr));
                Some((name, ip))
            })
            .collect();
        views.push(TaskView { id: t.id.unwrap_or_default(), node_id, host_network, node_address, networks });
    }
    views.sort_by(|a, b| a.id.cmp(&b.id));
    let view = ServiceView { id, name, labels, virtual_ips, ingress_networks, tasks: views };
    Some(ServiceListing { view, converging, containers })
}

/// `10.0.1.5/24` → `10.0.1.5`.
fn parse_cidr_ip(cidr: &str) -> Option<IpAddr> {
    cidr.split('/').next()?.parse().ok()
}

/// The part of a task the engine sends that bollard's model drops (`NetworksAttachments`),
/// with what else is needed; every field optional, as the engine may omit any.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RawTask {
    #[serde(rename = "ID")]
    id: Option<String>,
    #[serde(rename = "ServiceID")]
    service_id: Option<String>,
    #[serde(rename = "NodeID")]
    node_id: Option<String>,
    status: Option<RawTaskStatus>,
    networks_attachments: Option<Vec<RawAttachment>>,
}

impl RawTask {
    /// True when the task's state is `running`.
    fn is_running(&self) -> bool {
        self.status.as_ref().and_then(|s| s.state.as_deref()) == Some("running")
    }

    /// True when the task is attached to the host network (`--network host`).
    fn on_host_network(&self) -> bool {
        self.networks_attachments.iter().flatten().any(|a| {
            a.network.spec.name.as_deref() == Some("host")
                || a.network.spec.driver_configuration.as_ref().and_then(|d| d.name.as_deref()) == Some("host")
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawTaskStatus {
    state: Option<String>,
    container_status: Option<RawContainerStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RawContainerStatus {
    #[serde(rename = "ContainerID")]
    container_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawAttachment {
    #[serde(default)]
    network: RawNetwork,
    addresses: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawNetwork {
    #[serde(rename = "ID")]
    id: Option<String>,
    #[serde(default)]
    spec: RawNetworkSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawNetworkSpec {
    name: Option<String>,
    ingress: Option<bool>,
    driver_configuration: Option<RawDriver>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawDriver {
    name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped as a 20.10 engine answers `/services` and `/tasks` (trimmed).
    fn fixture() -> (Service, Vec<RawTask>) {
        let service: Service = serde_json::from_value(serde_json::json!({
            "ID": "svc1",
            "Spec": {
                "Name": "shop_web",
                "Labels": {"proxy.web.port": "8080:80", "com.docker.stack.namespace": "shop", "both": "service"},
                "TaskTemplate": {"ContainerSpec": {"Image": "x", "Labels": {"both": "container", "only": "c"}}}
            },
            "Endpoint": {"VirtualIPs": [
                {"NetworkID": "ing", "Addr": "10.0.0.2/24"},
                {"NetworkID": "back", "Addr": "10.0.1.2/24"}
            ]}
        }))
        .unwrap();
        let attachments = |ingress: &str, back: &str| {
            serde_json::json!([
                {"Network": {"ID": "ing", "Spec": {"Name": "ingress", "Ingress": true}}, "Addresses": [ingress]},
                {"Network": {"ID": "back", "Spec": {"Name": "shop_back"}}, "Addresses": [back]}
            ])
        };
        let tasks: Vec<RawTask> = serde_json::from_value(serde_json::json!([
            {"ID": "t2", "ServiceID": "svc1", "NodeID": "n1", "DesiredState": "running",
             "Status": {"State": "running", "ContainerStatus": {"ContainerID": "c2"}},
             "NetworksAttachments": attachments("10.0.0.6/24", "10.0.1.6/24")},
            {"ID": "t1", "ServiceID": "svc1", "NodeID": "n2", "DesiredState": "running",
             "Status": {"State": "running", "ContainerStatus": {"ContainerID": "c1"}},
             "NetworksAttachments": attachments("10.0.0.5/24", "10.0.1.5/24")},
            {"ID": "t3", "ServiceID": "svc1", "NodeID": "n1", "DesiredState": "running",
             "Status": {"State": "starting"}, "NetworksAttachments": null}
        ]))
        .unwrap();
        (service, tasks)
    }

    #[test]
    fn a_service_and_its_tasks_become_a_view() {
        let (service, tasks) = fixture();
        let listing = service_listing(service, tasks, "n1", &HashMap::new(), &HashSet::new()).unwrap();
        let v = &listing.view;
        assert!(listing.converging, "t3 is starting");
        assert_eq!((v.id.as_str(), v.name.as_str()), ("svc1", "shop_web"));
        assert_eq!(v.labels.get("both").map(String::as_str), Some("service"), "the service's label wins");
        assert_eq!(v.labels.get("only").map(String::as_str), Some("c"));
        assert_eq!(v.virtual_ips.get("shop_back"), Some(&"10.0.1.2".parse().unwrap()));
        assert_eq!(v.ingress_networks.iter().collect::<Vec<_>>(), ["ingress"]);
        let ids: Vec<&str> = v.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["t1", "t2"]);
        assert_eq!(v.tasks[0].networks.get("shop_back"), Some(&Some("10.0.1.5".parse().unwrap())));

        let routes = crate::parse_service_labels(v, &[]);
        let targets: Vec<String> = routes.routes[0].targets.iter().map(|t| t.to_string()).collect();
        assert_eq!(targets, ["10.0.1.5:80", "10.0.1.6:80"]);
    }

    #[test]
    fn a_task_whose_container_died_is_dropped_and_the_service_settles_again() {
        let (service, mut tasks) = fixture();
        tasks.pop();
        let listing =
            service_listing(service, tasks, "n1", &HashMap::new(), &["c2".to_string()].into_iter().collect()).unwrap();
        assert!(listing.converging);
        assert_eq!(listing.view.tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["t1"]);
    }

    #[test]
    fn host_network_tasks_are_at_loopback_here_and_at_their_node_elsewhere() {
        let service: Service =
            serde_json::from_value(serde_json::json!({"ID": "s", "Spec": {"Name": "echo"}})).unwrap();
        let host = serde_json::json!([
            {"Network": {"ID": "h", "Spec": {"Name": "host", "DriverConfiguration": {"Name": "host"}}}}
        ]);
        let tasks: Vec<RawTask> = serde_json::from_value(serde_json::json!([
            {"ID": "a", "NodeID": "here", "Status": {"State": "running"}, "NetworksAttachments": host},
            {"ID": "b", "NodeID": "there", "Status": {"State": "running"}, "NetworksAttachments": host}
        ]))
        .unwrap();
        let nodes = [("there".to_string(), Some("192.0.2.9".parse().unwrap()))].into_iter().collect();
        let listing = service_listing(service, tasks, "here", &nodes, &HashSet::new()).unwrap();
        assert!(!listing.converging);
        let addrs: Vec<Option<IpAddr>> = listing.view.tasks.iter().map(|t| t.node_address).collect();
        assert_eq!(addrs, [Some("127.0.0.1".parse().unwrap()), Some("192.0.2.9".parse().unwrap())]);
        assert!(listing.view.tasks.iter().all(|t| t.host_network));
    }

    #[test]
    fn label_filters_match_like_the_engine() {
        let labels: HashMap<String, String> = [("a".to_string(), "1".to_string())].into_iter().collect();
        assert!(matches_filters(Some(&labels), &[]));
        assert!(matches_filters(None, &[]));
        assert!(matches_filters(Some(&labels), &["a".into(), "a=1".into()]));
        assert!(!matches_filters(Some(&labels), &["a=2".into()]));
        assert!(!matches_filters(Some(&labels), &["b".into()]));
        assert!(!matches_filters(None, &["a".into()]));
    }
}
