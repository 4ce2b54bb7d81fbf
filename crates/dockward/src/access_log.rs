//! The access log's writer: formats proxy-core's [`AccessEvent`]s, one line each, to
//! stdout, stderr or a file.
//!
//! The forwarders hand events to a bounded queue ([`proxy_core::AccessLog`]) and never wait;
//! this writer drains it on its own thread, writes what it took in one go and flushes once
//! the queue is empty. A file is opened for appending and reopened on SIGHUP, so logrotate's
//! default (rename, then signal) works.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::ValueEnum;
use proxy_core::{AccessEvent, AccessLog, Protocol};
use tokio::sync::mpsc;
use tracing::warn;

/// Events the queue holds before new ones are dropped (and counted).
pub const QUEUE: usize = 16 * 1024;

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A file, appended to, reopened on SIGHUP.
    File(PathBuf),
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "" => Err("an empty access-log destination: give stdout, stderr or a file path".into()),
            "stdout" | "-" => Ok(Destination::Stdout),
            "stderr" => Ok(Destination::Stderr),
            path => Ok(Destination::File(PathBuf::from(path))),
        }
    }
}

/// How access-log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `TIME ALIAS PROTOCOL LISTEN client=… target=… duration=…s in=… out=… outcome=… [error="…"]`.
    Text,
    /// One JSON object per line.
    Json,
}

/// Appends `event` as one line (with its newline) to `out`.
pub fn format_line(event: &AccessEvent, format: Format, out: &mut String) {
    let time = humantime::format_rfc3339_millis(event.time);
    let udp = event.protocol == Protocol::Udp;
    match format {
        Format::Json => {
            let mut line = serde_json::json!({
                "time": time.to_string(),
                "alias": &*event.alias,
                "protocol": event.protocol.as_str(),
                "listen": event.listen.to_string(),
                "client": event.client.to_string(),
                "target": event.target.map(|t| t.to_string()),
                "duration": event.duration.as_secs_f64(),
                "bytes_in": event.bytes_in,
                "bytes_out": event.bytes_out,
                "outcome": event.outcome.as_str(),
                "error": event.error,
            });
            if udp {
                line["datagrams_in"] = event.datagrams_in.into();
                line["datagrams_out"] = event.datagrams_out.into();
            }
            let _ = writeln!(out, "{line}");
        }
        Format::Text => {
            let _ = write!(
                out,
                "{time} {} {} {} client={} target={} duration={:.3}s in={} out={}",
                event.alias,
                event.protocol.as_str(),
                event.listen,
                event.client,
                event.target.map_or_else(|| "-".to_string(), |t| t.to_string()),
                event.duration.as_secs_f64(),
                event.bytes_in,
                event.bytes_out,
            );
            if udp {
                let _ = write!(out, " datagrams_in={} datagrams_out={}", event.datagrams_in, event.datagrams_out);
            }
            let _ = write!(out, " outcome={}", event.outcome);
            if let Some(error) = &event.error {
                // Debug quoting: one line whatever the error says.
                let _ = write!(out, " error={error:?}");
            }
            out.push('\n');
        }
    }
}

/// The running writer; [`Writer::finish`] writes what is queued and stops it.
#[derive(Debug)]
pub struct Writer {
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    /// Opens `destination` (an error names a file that cannot be opened), and starts the
    /// writer thread and, for a file, its SIGHUP listener. Returns the sink for the route
    /// table. Must be called inside a Tokio runtime.
    pub fn start(destination: Destination, format: Format) -> anyhow::Result<(AccessLog, Writer)> {
        let out = Output::open(&destination)?;
        let reopen = Arc::new(AtomicBool::new(false));
        if matches!(destination, Destination::File(_)) {
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot handle SIGHUP for the access log")?;
            let flag = reopen.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    flag.store(true, Ordering::Relaxed);
                }
            });
        }
        let (log, rx) = AccessLog::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || run(rx, out, destination, format, &reopen))
            .context("cannot start the access-log writer")?;
        Ok((log, Writer { thread }))
    }

    /// Waits, for up to `limit`, for the writer to write what is queued and stop; it stops
    /// once every sink (the table's and its routes') is dropped.
    pub async fn finish(self, limit: Duration) {
        let join = tokio::task::spawn_blocking(move || self.thread.join());
        if tokio::time::timeout(limit, join).await.is_err() {
            warn!("the access-log writer did not finish in time; lines still queued are lost");
        }
    }
}

/// The open destination.
enum Output {
    Stdout,
    Stderr,
    File(File),
}

impl Output {
    fn open(destination: &Destination) -> anyhow::Result<Output> {
        Ok(match destination {
            Destination::Stdout => Output::Stdout,
            Destination::Stderr => Output::Stderr,
            Destination::File(path) => Output::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open the access log {}", path.display()))?,
            ),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Output::Stdout => io::stdout().lock().write_all(bytes),
            Output::Stderr => io::stderr().lock().write_all(bytes),
            Output::File(file) => file.write_all(bytes),
        }
    }
}

/// Lines written per write call at most.
const BATCH_BYTES: usize = 64 * 1024;
/// How long the writer rests after a write before it looks at the queue again. Waking the
/// writer for every line would cost each connection a thread wake-up and a write(2); resting
/// lets lines gather (up to [`QUEUE`] of them: hundreds of thousands a second) and go out
/// together, at most this late.
const REST: Duration = Duration::from_millis(25);

/// The writer thread: takes what is queued, writes it in one call, reopens the file when
/// asked, rests; ends when every sender is gone.
fn run(
    mut rx: mpsc::Receiver<AccessEvent>,
    mut out: Output,
    destination: Destination,
    format: Format,
    reopen: &AtomicBool,
) {
    let mut buf = String::with_capacity(BATCH_BYTES);
    let mut failing = false;
    while let Some(event) = rx.blocking_recv() {
        format_line(&event, format, &mut buf);
        while buf.len() < BATCH_BYTES
            && let Ok(event) = rx.try_recv()
        {
            format_line(&event, format, &mut buf);
        }
        if reopen.swap(false, Ordering::Relaxed) {
            match Output::open(&destination) {
                Ok(reopened) => out = reopened,
                Err(e) => warn!(error = %format!("{e:#}"), "cannot reopen the access log; writing to the old file"),
            }
        }
        match out.write_all(buf.as_bytes()) {
            Ok(()) => failing = false,
            Err(e) => {
                if !failing {
                    warn!(error = %e, "cannot write the access log; lines are lost until it works again");
                }
                failing = true;
            }
        }
        buf.clear();
        std::thread::sleep(REST);
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use proxy_core::Outcome;

    use super::*;

    fn event(protocol: Protocol) -> AccessEvent {
        AccessEvent {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            alias: Arc::from("ssh"),
            protocol,
            listen: "0.0.0.0:2222".parse().unwrap(),
            client: "[2001:db8::7]:40000".parse().unwrap(),
            target: Some("10.0.0.2:22".parse().unwrap()),
            duration: Duration::from_millis(1500),
            bytes_in: 12,
            bytes_out: 34,
            datagrams_in: 1,
            datagrams_out: 2,
            outcome: Outcome::Reset,
            error: Some("Connection reset by peer \"x\"".into()),
        }
    }

    #[test]
    fn text_lines_name_every_field_on_one_line() {
        let mut out = String::new();
        format_line(&event(Protocol::Tcp), Format::Text, &mut out);
        assert_eq!(
            out,
            "2023-11-14T22:13:20.123Z ssh tcp 0.0.0.0:2222 client=[2001:db8::7]:40000 target=10.0.0.2:22 \
             duration=1.500s in=12 out=34 outcome=reset error=\"Connection reset by peer \\\"x\\\"\"\n"
        );
        out.clear();
        let mut udp = event(Protocol::Udp);
        (udp.target, udp.error, udp.outcome) = (None, None, Outcome::IdleTimeout);
        format_line(&udp, Format::Text, &mut out);
        assert!(
            out.ends_with(
                " target=- duration=1.500s in=12 out=34 datagrams_in=1 datagrams_out=2 outcome=idle_timeout\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn json_lines_are_objects_with_datagrams_for_udp() {
        let mut out = String::new();
        format_line(&event(Protocol::Udp), Format::Json, &mut out);
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["client"], "[2001:db8::7]:40000");
        assert_eq!(v["outcome"], "reset");
        assert_eq!((v["bytes_in"].as_u64(), v["datagrams_out"].as_u64()), (Some(12), Some(2)));
        assert_eq!(v["duration"].as_f64(), Some(1.5));
        out.clear();
        format_line(&event(Protocol::Tcp), Format::Json, &mut out);
        assert!(!out.contains("datagrams"), "{out}");
    }

    #[test]
    fn destinations_parse() {
        assert_eq!("stdout".parse::<Destination>().unwrap(), Destination::Stdout);
        assert_eq!("stderr".parse::<Destination>().unwrap(), Destination::Stderr);
        assert_eq!("/var/log/a.log".parse::<Destination>().unwrap(), Destination::File("/var/log/a.log".into()));
        assert!("".parse::<Destination>().is_err());
    }
}
