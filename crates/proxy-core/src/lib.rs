//! proxy-core: TCP and UDP forwarders under a live, diffing route table.
//!
//! Providers describe the routes they want as [`RouteSpec`] values and hand the whole set
//! to [`RouteTable::apply`]; the table diffs it against what runs and touches only what
//! changed. The crate knows nothing of Docker or files.
//!
//! Specs with the same alias, protocol and listen port (replicas of one service) are one
//! route balanced over all their targets ([`Balance`]), with passive health, an optional
//! active check ([`HealthCheck`]) and each target's provider [`Verdict`] (Docker's health
//! check); [`RouteStatus::targets`] reports each target.
//!
//! ```no_run
//! use proxy_core::{Protocol, RouteSpec, RouteTable, Target};
//! # async fn demo() {
//! let table = RouteTable::new();
//! let ssh = RouteSpec::new("ssh", Protocol::Tcp, "127.0.0.1:2222".parse().unwrap(), vec![Target::new("127.0.0.1", 22)]);
//! table.apply(vec![ssh]).await;
//! for route in table.status() {
//!     println!("{} {:?} {}", route.spec.alias, route.bound, route.state.name());
//! }
//! table.shutdown().await;
//! # }
//! ```
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod access_log;
pub mod acl;
mod balance;
pub mod client_limits;
mod error;
pub mod fd_budget;
mod forward;
pub mod limits;
pub mod proxy_protocol;
mod stats;
mod table;

pub use access_log::{AccessEvent, AccessLog, Outcome};
pub use acl::Acl;
pub use client_limits::ClientLimits;
pub use error::{DialError, RouteError};
// The route values this crate's API takes and returns: `RouteTable::apply` takes
// `RouteSpec`s, `RouteStatus` holds one, hooks see a `ConnInfo`. The field grammar
// (`route_spec::fields`, `route_spec::nets`) is not re-exported: only providers use it.
pub use route_spec::{
    AcceptProxy, Balance, ConnInfo, Direction, Family, HealthCheck, Hooks, IpNet, OnReadHook, OptionError, PreDialHook,
    Protocol, ProviderHealth, ProxyVersion, Rate, RouteId, RouteOptions, RouteSpec, Scheme, SpecError, Target, Verdict,
};
pub use stats::{RouteState, RouteStatus, StatsSnapshot, TargetStatus};
pub use table::plan::clash::{Clash, clashes};
pub use table::{ApplyReport, RouteTable};
