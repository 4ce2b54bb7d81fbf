//! Helpers shared by the end-to-end tests.
//!
//! - `certs`: a CA, an engine certificate and client certificates made in the test, for a
//!   TLS engine.
//! - `docker`: reaching a real engine, the locally built test image, and containers that
//!   carry this run's label and are removed even when a test fails.
//! - `dockward`: starting the built binary with a routes file and an admin address from
//!   the OS, and stopping it.
//! - `prometheus`: a strict reader of the Prometheus text format, for `/metrics`.
//! - `podman`: Podman's API service as a test engine, and `on_each_engine!`, which runs one
//!   test body against Docker and against Podman.
//! - `private_engine`: a second dockerd of the test's own, to stop and start at will (also
//!   on loopback TCP, plain or with TLS).
//! - `load`: checksummed TCP streams and sequence-numbered UDP datagrams, for load tests.
//! - `swarm`: a single-node Docker Swarm that is left at the end, and test services.
//! - `haproxy`: the host's HAProxy, or a skip.
//! - `idle`: a redis server to put to sleep and wake, and the engine's record of it.
//! - `skip`: printing SKIP and recording it for `make test`'s summary of what did not run.

pub mod certs;
pub mod docker;
pub mod dockward;
pub mod haproxy;
pub mod idle;
pub mod load;
pub mod podman;
pub mod private_engine;
pub mod prometheus;
pub mod skip;
pub mod swarm;
