//! dockward: a label-driven TCP/UDP forwarder sidecar for Docker.
//!
//! Providers (routes files, Docker labels) publish the routes they want; the controller
//! merges them and applies the whole set to proxy-core's route table, which diffs it
//! against what runs. The admin API and `dockward routes` show the result.
//!
//! The binary (`main.rs`) only parses the command line and calls [`commands`]; everything
//! else lives here so that tests and fuzz targets can reach the pure parts, such as
//! [`routes_file::parse`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod cli;
pub mod commands;
pub mod controller;
pub mod counters;
pub mod history;
pub mod logging;
pub mod metrics;
pub mod provider_error;
pub mod providers;
pub mod reload;
pub mod routes_file;
pub mod routes_view;
pub mod status_page;
pub mod table;
