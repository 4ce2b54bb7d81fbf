//! route-spec: the route vocabulary. What a provider asks the core to forward, as plain
//! values, and the one field grammar Docker labels and the routes file are written in.
//!
//! - [`RouteSpec`] and its parts ([`Protocol`], [`Family`], [`Target`] with its provider's
//!   [`Verdict`], [`RouteOptions`], [`Balance`], [`HealthCheck`], the PROXY settings,
//!   [`Hooks`]): the contract between the providers (docker-watcher, the routes file) and
//!   proxy-core's route table.
//! - [`fields`]: every route field declared once ([`fields::FIELDS`]: name, help, value
//!   kind, default), the [`RouteDraft`] that labels and files fill, did-you-mean
//!   hints, and the clipping and escaping of user input in error text.
//! - [`nets`]: lists of IP addresses and CIDR networks (`allow`, `deny`, `trusted`).
//!
//! No socket, no runtime: proxy-core runs routes, this crate only names them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod balance;
mod draft;
mod error;
pub mod fields;
pub mod hooks;
pub mod nets;
mod options;
mod protocol;
pub mod proxy_protocol;
mod rate;
mod route;
mod target;
mod text;

pub use balance::{Balance, HealthCheck};
pub use draft::RouteDraft;
pub use error::SpecError;
pub use hooks::{
    Arrival, ConnInfo, Direction, Hooks, OnReadHook, PreDialHook, Ready, WAKE_BUCKETS, WakeHook, WakePhase, WakeStatus,
};
pub use ipnet::IpNet;
pub use options::{OptionError, RouteOptions};
pub use protocol::{Family, Protocol, Scheme};
pub use proxy_protocol::{Accept as AcceptProxy, Version as ProxyVersion};
pub use rate::{Rate, RateError};
pub use route::{RouteId, RouteSpec};
pub use target::{ProviderHealth, Target, Verdict};
