//! What can go wrong talking to the engine. Label problems are not errors of this kind:
//! they are values ([`LabelError`](crate::LabelError)) carried in the snapshot.

use bollard::errors::Error as BollardError;

/// A failure reaching or reading the Docker engine; the watcher retries after any of them.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The engine could not be reached, or its API version not negotiated.
    #[error("cannot reach the Docker engine at {host}")]
    Connect {
        /// The engine address tried.
        host: String,
        /// Why.
        #[source]
        source: BollardError,
    },
    /// TLS to the engine cannot be set up: a certificate file is missing, unreadable or not
    /// what it should be (the message names it), or the engine speaks TLS and was given no
    /// certificates.
    #[error("cannot reach the Docker engine at {host}: TLS: {message}")]
    Tls {
        /// The engine address tried.
        host: String,
        /// What is wrong, naming the file at fault.
        message: String,
    },
    /// A request to a reachable engine failed.
    #[error("Docker engine at {host}: {request} failed")]
    Engine {
        /// The engine address.
        host: String,
        /// Which request: `version`, `info`, `list`, `inspect`, `events`, `services`, `service`, `node`.
        request: &'static str,
        /// Why.
        #[source]
        source: BollardError,
    },
    /// A request made without bollard (swarm tasks) failed, or was answered with an error status.
    #[error("Docker engine at {host}: {request} failed: {message}")]
    Answer {
        /// The engine address.
        host: String,
        /// Which request: `tasks`.
        request: &'static str,
        /// The HTTP status of an error answer; `None` when there was no answer.
        status: Option<u16>,
        /// The engine's message, or why there was no answer.
        message: String,
    },
    /// The event stream ended without an error (the engine closed it).
    #[error("Docker engine at {host}: the event stream ended")]
    StreamEnded {
        /// The engine address.
        host: String,
    },
    /// `dockward check --container NAME` named a container the engine does not know.
    #[error("no container {name:?} on the Docker engine at {host}")]
    NoSuchContainer {
        /// The engine address.
        host: String,
        /// The name or id asked for.
        name: String,
    },
}

impl WatchError {
    pub(crate) fn engine(host: &str, request: &'static str, source: BollardError) -> Self {
        WatchError::Engine { host: host.to_string(), request, source }
    }

    /// The error and its causes on one line: `cannot reach …: error trying to connect: …`.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let s = c.to_string();
            if !text.contains(&s) {
                text.push_str(": ");
                text.push_str(&s);
            }
            cause = c.source();
        }
        text
    }
}
