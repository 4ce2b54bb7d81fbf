//! What an `apply` will do, decided without touching a socket.
//!
//! [`plan`] takes the table's rows and the desired specs and says which routes to remove,
//! update in place, leave alone and start; [`Starts`] then hands out the routes to start,
//! oldest first, each with whether it may bind, must wait in conflict, or is invalid. The
//! executor (`super::execute`) carries the plan out; nothing here has side effects, so every
//! rule of the diff has a unit test of its own below.

pub mod clash;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use self::clash::{ClashIndex, Listen};
use route_spec::{RouteId, RouteSpec};

/// A route in the table, as the plan sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row<'a> {
    /// The spec it runs (or, while not listening, last tried).
    pub spec: &'a RouteSpec,
    /// Its age: of two routes claiming one address, the older (smaller) keeps it.
    pub seq: u64,
    /// Whether it is bound and serving.
    pub listening: bool,
}

/// What one `apply` does, from [`plan`].
#[derive(Debug)]
pub(crate) struct Plan {
    /// Replicas of one route whose options or hooks differ (the first one's are used).
    pub disagreements: Vec<Disagreement>,
    /// Routes no longer desired, in id order: to stop, before anything binds.
    pub remove: Vec<RouteId>,
    /// Listening routes whose spec is unchanged, in the order desired.
    pub unchanged: Vec<RouteId>,
    /// Listening routes with a new, valid spec, to update in place, in the order desired.
    pub update: Vec<(RouteId, RouteSpec)>,
    /// Listening routes whose new spec is invalid: they keep their previous settings. With
    /// the validation message, in the order desired.
    pub refuse: Vec<(RouteId, String)>,
    /// Routes to start: new ones and those not listening (retried).
    pub start: Starts,
}

/// A later replica whose options or hooks differ from the first one's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Disagreement {
    /// The route.
    pub id: RouteId,
    /// The source of the first replica, whose settings are used.
    pub first: String,
    /// The source of the replica that differs.
    pub other: String,
}

/// The routes to start, oldest first (rows by age, then new routes in the order desired),
/// and the addresses claimed so far. An iterator of [`Start`]s.
#[derive(Debug)]
pub(crate) struct Starts {
    queue: VecDeque<(RouteId, RouteSpec)>,
    /// Every listening route that stays, and every route told to bind so far.
    claims: ClashIndex<RouteId>,
    /// The port each port-0 route had when it last ran.
    remembered: HashMap<RouteId, u16>,
}

/// One route to start and what to do with it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Start {
    /// The route.
    pub id: RouteId,
    /// Its spec (replicas merged).
    pub spec: RouteSpec,
    /// Bind it, or why not.
    pub action: Action,
}

/// Whether a route to start may bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Bind it; a port-0 route that ran before asks first for the port it had.
    Bind {
        /// The remembered port to try before letting the OS pick.
        port: Option<u16>,
    },
    /// Leave it unbound: an older route holds its address.
    Conflict {
        /// The holder.
        with: RouteId,
    },
    /// Leave it unbound: its spec is invalid.
    Invalid {
        /// The validation message.
        message: String,
    },
}

/// Decides how to make the table's `rows` match `desired`; see `RouteTable::apply` for the
/// rules. `remembered` holds the port each port-0 route last had.
pub(crate) fn plan(
    rows: &BTreeMap<&RouteId, Row<'_>>,
    desired: Vec<RouteSpec>,
    remembered: &HashMap<RouteId, u16>,
) -> Plan {
    let (wanted, disagreements) = merge_replicas(desired);
    let wanted_ids: HashSet<&RouteId> = wanted.iter().map(|(id, _)| id).collect();
    let remove: Vec<RouteId> = rows.keys().filter(|id| !wanted_ids.contains(**id)).map(|id| (*id).clone()).collect();

    let mut plan = Plan {
        disagreements,
        remove,
        unchanged: Vec::new(),
        update: Vec::new(),
        refuse: Vec::new(),
        start: Starts { queue: VecDeque::new(), claims: ClashIndex::default(), remembered: HashMap::new() },
    };
    let mut retries: Vec<(u64, RouteId, RouteSpec)> = Vec::new();
    let mut new: Vec<(RouteId, RouteSpec)> = Vec::new();
    for (id, spec) in wanted {
        match rows.get(&id) {
            // A listening route keeps its address whatever its update brings (the id, and so
            // the address, is the same).
            Some(row) if row.listening => {
                plan.start.claims.insert(Listen::from(&id), id.clone());
                if *row.spec == spec {
                    plan.unchanged.push(id);
                } else {
                    match spec.validate() {
                        Ok(()) => plan.update.push((id, spec)),
                        Err(e) => plan.refuse.push((id, e.to_string())),
                    }
                }
            }
            Some(row) => retries.push((row.seq, id, spec)),
            None => new.push((id, spec)),
        }
    }
    retries.sort_by_key(|(seq, _, _)| *seq);
    let queue = retries.into_iter().map(|(_, id, spec)| (id, spec)).chain(new);
    for (id, spec) in queue {
        if let Some(&port) = remembered.get(&id).filter(|_| id.listen.port() == 0) {
            plan.start.remembered.insert(id.clone(), port);
        }
        plan.start.queue.push_back((id, spec));
    }
    plan
}

impl Starts {
    /// Releases the address of a route whose bind failed, so that the next route in line
    /// for it may bind in this same apply.
    pub(crate) fn bind_failed(&mut self, id: &RouteId) {
        self.claims.remove(Listen::from(id), id);
    }
}

impl Iterator for Starts {
    type Item = Start;

    /// The next route to start. A route told to bind holds its address from then on, unless
    /// [`Starts::bind_failed`] releases it.
    fn next(&mut self) -> Option<Start> {
        let (id, spec) = self.queue.pop_front()?;
        let at = Listen::from(&id);
        // The conflict is judged before validity: an invalid route on a held address says so.
        let action = match self.claims.rivals(at).min() {
            Some(holder) => Action::Conflict { with: holder.clone() },
            None => match spec.validate() {
                Err(e) => Action::Invalid { message: e.to_string() },
                Ok(()) => {
                    self.claims.insert(at, id.clone());
                    Action::Bind { port: self.remembered.get(&id).copied() }
                }
            },
        };
        Some(Start { id, spec, action })
    }
}

/// The desired specs by id, in the order each id was first given, with the specs of one id
/// merged into one route (see `RouteTable::apply`), and the replicas that disagree.
fn merge_replicas(desired: Vec<RouteSpec>) -> (Vec<(RouteId, RouteSpec)>, Vec<Disagreement>) {
    let mut index: HashMap<RouteId, usize> = HashMap::with_capacity(desired.len());
    let mut merged: Vec<(RouteId, RouteSpec, Vec<String>)> = Vec::with_capacity(desired.len());
    let mut disagreements = Vec::new();
    for spec in desired {
        let id = spec.id();
        let Some(&i) = index.get(&id) else {
            index.insert(id.clone(), merged.len());
            let sources = if spec.source.is_empty() { Vec::new() } else { vec![spec.source.clone()] };
            merged.push((id, spec, sources));
            continue;
        };
        let (_, first, sources) = &mut merged[i];
        if spec.options != first.options || spec.hooks != first.hooks {
            let first = sources.first().cloned().unwrap_or_default();
            disagreements.push(Disagreement { id, first, other: spec.source.clone() });
        }
        for target in spec.targets {
            // Told apart by address: one address with two verdicts is one target.
            if !first.targets.iter().any(|t| t.same_address(&target)) {
                first.targets.push(target);
            }
        }
        if !spec.source.is_empty() && !sources.contains(&spec.source) {
            sources.push(spec.source);
        }
    }
    let merged = merged
        .into_iter()
        .map(|(id, mut spec, sources)| {
            if sources.len() > 1 {
                spec.source = sources.join(", ");
            }
            (id, spec)
        })
        .collect();
    (merged, disagreements)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use route_spec::{Protocol, RouteOptions, Target};

    fn replica(source: &str, listen: &str, host: &str) -> RouteSpec {
        RouteSpec::new("app", Protocol::Tcp, listen.parse().unwrap(), vec![Target::new(host, 80)]).with_source(source)
    }

    fn route(alias: &str, listen: &str) -> RouteSpec {
        RouteSpec::new(alias, Protocol::Tcp, listen.parse().unwrap(), vec![Target::new("127.0.0.1", 80)])
    }

    /// A table's rows: (spec, seq, listening).
    struct Rows(Vec<(RouteId, RouteSpec, u64, bool)>);

    impl Rows {
        fn of(rows: &[(&RouteSpec, u64, bool)]) -> Self {
            Rows(rows.iter().map(|(spec, seq, listening)| (spec.id(), (*spec).clone(), *seq, *listening)).collect())
        }

        fn plan(&self, desired: &[&RouteSpec]) -> Plan {
            self.plan_remembering(desired, &HashMap::new())
        }

        fn plan_remembering(&self, desired: &[&RouteSpec], remembered: &HashMap<RouteId, u16>) -> Plan {
            let rows =
                self.0.iter().map(|(id, spec, seq, listening)| (id, Row { spec, seq: *seq, listening: *listening }));
            plan(&rows.collect(), desired.iter().map(|s| (*s).clone()).collect(), remembered)
        }
    }

    /// The starts of a plan whose binds all succeed: (alias, action).
    fn starts(plan: Plan) -> Vec<(String, Action)> {
        plan.start.map(|s| (s.id.alias, s.action)).collect()
    }

    fn want(alias: &str, action: Action) -> (String, Action) {
        (alias.to_string(), action)
    }

    const BIND: Action = Action::Bind { port: None };

    #[test]
    fn replicas_on_one_listen_port_merge_into_one_route_over_all_their_targets() {
        let mut slow = replica("app-3", "0.0.0.0:8080", "10.0.0.3");
        slow.options = RouteOptions { connect_timeout: Duration::from_secs(1), ..Default::default() };
        let (merged, disagreements) = merge_replicas(vec![
            replica("app-1", "0.0.0.0:8080", "10.0.0.1"),
            replica("app-2", "0.0.0.0:8080", "10.0.0.2"),
            replica("app-2", "0.0.0.0:8080", "10.0.0.1"),
            slow,
            replica("app-1", "0.0.0.0:9090", "10.0.0.1"),
        ]);
        assert_eq!(merged.len(), 2, "one route per listen port");
        let (id, spec) = &merged[0];
        assert_eq!(id.source, "", "the source is not part of an explicit port's id");
        assert_eq!(spec.source, "app-1, app-2, app-3");
        let hosts: Vec<&str> = spec.targets.iter().map(|t| t.host.as_str()).collect();
        assert_eq!(hosts, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "union in first-seen order, no duplicate");
        assert_eq!(spec.options, RouteOptions::default(), "the first replica's options");
        assert_eq!(merged[1].1.source, "app-1");
        assert_eq!(disagreements, [Disagreement { id: id.clone(), first: "app-1".into(), other: "app-3".into() }]);
    }

    #[test]
    fn routes_on_os_picked_ports_stay_one_per_source() {
        let (merged, _) =
            merge_replicas(vec![replica("app-1", "0.0.0.0:0", "10.0.0.1"), replica("app-2", "0.0.0.0:0", "10.0.0.2")]);
        assert_eq!(merged.len(), 2);
        assert_eq!((merged[0].0.source.as_str(), merged[1].0.source.as_str()), ("app-1", "app-2"));
    }

    #[test]
    fn a_replica_appearing_updates_its_route_in_place() {
        let one = replica("app-1", "0.0.0.0:8080", "10.0.0.1");
        let two = replica("app-2", "0.0.0.0:8080", "10.0.0.2");
        let plan = Rows::of(&[(&one, 0, true)]).plan(&[&one, &two]);
        assert_eq!(plan.update.len(), 1);
        assert_eq!(plan.update[0].1.targets, [Target::new("10.0.0.1", 80), Target::new("10.0.0.2", 80)]);
        assert_eq!((plan.remove.len(), plan.unchanged.len()), (0, 0));
        assert_eq!(starts(plan), Vec::new());
    }

    #[test]
    fn each_row_is_removed_updated_refused_or_left_alone_and_the_rest_start() {
        let same = route("same", "127.0.0.1:1");
        let old = route("changed", "127.0.0.1:2");
        let mut changed = old.clone();
        changed.targets = vec![Target::new("127.0.0.1", 81)];
        let bad_old = route("refused", "127.0.0.1:3");
        let mut refused = bad_old.clone();
        refused.targets.clear();
        let gone = route("gone", "127.0.0.1:4");
        let failed = route("failed", "127.0.0.1:5");
        let new = route("new", "127.0.0.1:6");
        let rows =
            Rows::of(&[(&same, 0, true), (&old, 1, true), (&bad_old, 2, true), (&gone, 3, true), (&failed, 4, false)]);

        let plan = rows.plan(&[&new, &refused, &failed, &changed, &same]);
        assert_eq!(plan.remove, [gone.id()]);
        assert_eq!(plan.unchanged, [same.id()]);
        assert_eq!(plan.update, [(changed.id(), changed.clone())]);
        assert_eq!(plan.refuse.len(), 1);
        assert_eq!(plan.refuse[0].0, refused.id());
        assert_eq!(plan.refuse[0].1, r#"route "refused": no target"#);
        assert_eq!(starts(plan), [want("failed", BIND), want("new", BIND)], "a route not listening is retried");
    }

    #[test]
    fn of_two_new_routes_on_one_address_the_one_given_first_binds_and_the_other_is_in_conflict() {
        // Named against alphabetical order: "given first" must not mean "sorts first".
        let zeta = route("zeta", "0.0.0.0:80");
        let alpha = route("alpha", "127.0.0.1:80");
        let plan = Rows::of(&[]).plan(&[&zeta, &alpha]);
        assert_eq!(starts(plan), [want("zeta", BIND), want("alpha", Action::Conflict { with: zeta.id() })]);
    }

    #[test]
    fn an_older_route_retried_comes_before_a_new_one_on_its_address() {
        let young = route("young", "127.0.0.1:80");
        let old = route("old", "127.0.0.1:80");
        let older = route("older", "127.0.0.1:81");
        let rows = Rows::of(&[(&old, 7, false), (&older, 3, false)]);
        let plan = rows.plan(&[&young, &old, &older]);
        assert_eq!(
            starts(plan),
            [want("older", BIND), want("old", BIND), want("young", Action::Conflict { with: old.id() })]
        );
    }

    #[test]
    fn a_listening_route_keeps_its_address_and_the_other_takes_over_once_it_is_gone() {
        let first = route("zeta", "127.0.0.1:80");
        let second = route("alpha", "0.0.0.0:80");
        let rows = Rows::of(&[(&first, 0, true), (&second, 1, false)]);
        let plan = rows.plan(&[&first, &second]);
        assert_eq!(plan.unchanged, [first.id()]);
        assert_eq!(starts(plan), [want("alpha", Action::Conflict { with: first.id() })], "still in conflict");

        let plan = rows.plan(&[&second]);
        assert_eq!(plan.remove, [first.id()]);
        assert_eq!(starts(plan), [want("alpha", BIND)], "takes over");
    }

    #[test]
    fn a_conflict_names_the_smallest_of_several_holders_and_other_protocols_or_ports_do_not_count() {
        let b = route("b", "127.0.0.2:80");
        let a = route("a", "127.0.0.1:80");
        let mut udp = route("udp", "0.0.0.0:80");
        udp.protocol = Protocol::Udp;
        let other_port = route("port", "0.0.0.0:81");
        let wild = route("wild", "0.0.0.0:80");
        let rows = Rows::of(&[(&b, 0, true), (&a, 1, true), (&udp, 2, true), (&other_port, 3, true)]);
        let plan = rows.plan(&[&b, &a, &udp, &other_port, &wild]);
        assert_eq!(starts(plan), [want("wild", Action::Conflict { with: a.id() })]);
    }

    #[test]
    fn an_invalid_route_claims_nothing_and_is_listed_with_its_message() {
        let mut invalid = route("invalid", "127.0.0.1:80");
        invalid.family = route_spec::Family::V6;
        let next = route("next", "0.0.0.0:80");
        let plan = Rows::of(&[]).plan(&[&invalid, &next]);
        let starts = starts(plan);
        let message = r#"route "invalid": scheme tcp6 but bind address 127.0.0.1 is IPv4"#.to_string();
        assert_eq!(starts[0], want("invalid", Action::Invalid { message }));
        assert_eq!(starts[1], want("next", BIND));
    }

    #[test]
    fn a_route_whose_bind_fails_hands_its_address_to_the_next_in_line() {
        let first = route("first", "10.9.9.9:80");
        let second = route("second", "0.0.0.0:80");
        let third = route("third", "127.0.0.1:80");
        let mut plan = Rows::of(&[]).plan(&[&first, &second, &third]);
        let start = plan.start.next().expect("first");
        assert_eq!(start.action, BIND);
        plan.start.bind_failed(&start.id);
        assert_eq!(starts(plan), [want("second", BIND), want("third", Action::Conflict { with: second.id() })]);
    }

    #[test]
    fn a_port_zero_route_that_comes_back_asks_for_the_port_it_had() {
        let back = route("back", "127.0.0.1:0").with_source("c1");
        let fresh = route("fresh", "127.0.0.1:0").with_source("c2");
        let explicit = route("explicit", "127.0.0.1:80");
        let remembered = HashMap::from([(back.id(), 40_000), (explicit.id(), 40_001)]);
        let plan = Rows::of(&[]).plan_remembering(&[&back, &fresh, &explicit], &remembered);
        assert_eq!(
            starts(plan),
            [want("back", Action::Bind { port: Some(40_000) }), want("fresh", BIND), want("explicit", BIND)]
        );
    }

    #[test]
    fn port_zero_routes_never_conflict() {
        let one = route("one", "0.0.0.0:0").with_source("c1");
        let two = route("two", "0.0.0.0:0").with_source("c2");
        let plan = Rows::of(&[(&one, 0, true)]).plan(&[&one, &two]);
        assert_eq!(starts(plan), [want("two", BIND)]);
    }

    #[test]
    fn twenty_thousand_new_routes_are_planned_in_one_pass() {
        // 10,000 ports on 127.0.0.1 and 127.0.0.2 (no conflict), and every hundredth port
        // also on 0.0.0.0 (in conflict with the 127.0.0.1 route, the smaller id).
        let mut desired = Vec::new();
        for port in 10_000..20_000u16 {
            for ip in [[127, 0, 0, 1], [127, 0, 0, 2]] {
                let listen = SocketAddr::from((ip, port));
                desired.push(RouteSpec::new(format!("r{port}"), Protocol::Tcp, listen, vec![Target::new("t", 1)]));
            }
        }
        for port in (10_000..20_000u16).step_by(100) {
            let listen = SocketAddr::from(([0, 0, 0, 0], port));
            desired.push(RouteSpec::new(format!("any{port}"), Protocol::Tcp, listen, vec![Target::new("t", 1)]));
        }
        let plan = plan(&BTreeMap::new(), desired, &HashMap::new());
        let starts: Vec<Start> = plan.start.collect();
        assert_eq!(starts.len(), 20_100);
        let conflicts: Vec<(&str, &RouteId)> = starts
            .iter()
            .filter_map(|s| match &s.action {
                Action::Conflict { with } => Some((s.id.alias.as_str(), with)),
                _ => None,
            })
            .collect();
        assert_eq!(conflicts.len(), 100);
        assert_eq!(conflicts[0].0, "any10000");
        assert_eq!(conflicts[0].1.listen, SocketAddr::from(([127, 0, 0, 1], 10_000)));
    }
}
