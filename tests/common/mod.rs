//! Helpers shared by the end-to-end tests.
//!
//! - `docker`: reaching a real engine, the locally built test image, and containers that
//!   carry this run's label and are removed even when a test fails.
//! - `dockward`: starting the built binary with a routes file and an admin address from
//!   the OS, and stopping it.
//! - `prometheus`: a strict reader of the Prometheus text format, for `/metrics`.

pub mod docker;
pub mod dockward;
pub mod prometheus;
