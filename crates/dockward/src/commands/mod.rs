//! One module per command; `main` parses the command line and calls one of these.

pub mod check;
pub mod routes;
pub mod run;
