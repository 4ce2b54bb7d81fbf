//! How to reach an engine and how patient to be with it: plain values, no I/O.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::targets::EngineSite;

/// Where the engine is when neither `--docker-host` nor an environment variable says, and
/// no Podman socket exists.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Rootful Podman's API socket (the systemd unit `podman.socket`).
pub const PODMAN_ROOTFUL_SOCKET: &str = "/run/podman/podman.sock";

/// How dockward finds its own container, for the "shared network" target rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OwnContainer {
    /// Look at /proc/self/mountinfo, /proc/self/cgroup and HOSTNAME, then ask the engine.
    #[default]
    Detect,
    /// Never use the rule.
    Disabled,
    /// This container id or name.
    Id(String),
}

/// How to reach the engine and how patient to be with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// `unix:///var/run/docker.sock`, `tcp://host:2375`, `http://host:2375`; `None` uses
    /// `DOCKER_HOST`, else the default socket.
    pub host: Option<String>,
    /// Timeout of each request (the event stream's only for its first answer). Default 30 s.
    pub request_timeout: Duration,
    /// Full re-list period. Default 60 s.
    pub resync_interval: Duration,
    /// First retry delay after a failure. Default 250 ms.
    pub backoff_min: Duration,
    /// Longest retry delay: how late, at worst, a returning engine is noticed. Default 1 s.
    pub backoff_max: Duration,
    /// How dockward's own container is found.
    pub own_container: OwnContainer,
    /// Containers inspected at once while applying a burst of events. Default 16.
    pub inspect_concurrency: usize,
    /// Only containers carrying every one of these labels are watched: Docker's label
    /// filter syntax, `key` or `key=value` (all must match). Empty (the default): every
    /// container. Lets several dockward instances share one engine, each serving its own
    /// project (`com.docker.compose.project=shop`).
    pub label_filters: Vec<String>,
    /// Where the engine runs. [`EngineSite::Remote`]: its containers are reached on that
    /// machine's address (host network, published ports), not on their own. Default: local.
    pub site: EngineSite,
    /// Write access for idle sleep: start, stop, pause, unpause and kill containers labelled
    /// `proxy.idle_timeout` (and their `depends_on`). Off (the default): dockward only reads
    /// the engine, and idle labels are an error row naming `--allow-container-control`.
    pub container_control: bool,
    /// TLS: the directory holding `ca.pem` (the CA that signed the engine's certificate),
    /// `cert.pem` and `key.pem` (dockward's client certificate; both or neither), as the
    /// docker CLI's `DOCKER_CERT_PATH`. `None` (the default): no TLS. [`resolve_engines`]
    /// fills it from `--docker-tls`, `DOCKER_TLS_VERIFY` and `https://` addresses.
    pub tls: Option<PathBuf>,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            host: None,
            request_timeout: Duration::from_secs(30),
            resync_interval: Duration::from_secs(60),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(1),
            own_container: OwnContainer::Detect,
            inspect_concurrency: 16,
            label_filters: Vec::new(),
            site: EngineSite::Local,
            container_control: false,
            tls: None,
        }
    }
}

impl DockerConfig {
    /// The default configuration for `host` (`None`: `DOCKER_HOST`, else the default socket).
    pub fn with_host(host: Option<String>) -> Self {
        DockerConfig { host, ..Default::default() }
    }

    /// The engine address this configuration uses.
    pub fn effective_host(&self) -> String {
        effective_host(self.host.as_deref())
    }
}

/// One `--docker-host` value: `URL`, or `NAME=URL` for one of several engines.
///
/// ```
/// use docker_watcher::{EngineAddress, EngineSite};
///
/// let nas = EngineAddress::parse("nas=tcp://10.0.0.5:2375").unwrap();
/// assert_eq!(nas.name.as_deref(), Some("nas"));
/// assert_eq!(nas.site(), EngineSite::Remote("10.0.0.5".into()));
/// let local = EngineAddress::parse("unix:///var/run/docker.sock").unwrap();
/// assert_eq!((local.site(), local.name), (EngineSite::Local, None));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineAddress {
    /// The engine's name: shown before its containers' names (`nas/minecraft`) when several
    /// engines are watched, and used by `dockward check --container nas/minecraft`.
    pub name: Option<String>,
    /// `unix:///path`, `tcp://host:port`, `http://host:port`, `https://host:port`, or a
    /// socket path.
    pub url: String,
    /// The engine's TLS certificate directory ([`DockerConfig::tls`]); `None`: no TLS.
    /// [`EngineAddress::parse`] leaves it `None`; [`resolve_engines`] settles it.
    pub tls: Option<PathBuf>,
}

impl EngineAddress {
    /// Reads `URL` or `NAME=URL`; a name is letters, digits, `_`, `.` and `-`.
    pub fn parse(arg: &str) -> Result<Self, String> {
        let arg = arg.trim();
        let (name, url) = match arg.split_once('=') {
            Some((name, url)) if !name.contains([':', '/']) => (Some(name.trim()), url.trim()),
            _ => (None, arg),
        };
        if let Some(name) = name
            && !valid_engine_name(name)
        {
            return Err(format!("engine name {name:?}: use letters, digits, '_', '.' and '-' (NAME=URL)"));
        }
        if url.is_empty() {
            return Err("no engine URL, e.g. unix:///var/run/docker.sock or nas=tcp://10.0.0.5:2375".to_string());
        }
        Ok(EngineAddress { name: name.map(str::to_string), url: url.to_string(), tls: None })
    }

    /// The engine as messages name it: `engine "nas" (tcp://10.0.0.5:2376)`, or its URL alone
    /// when it has no name.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("engine {name:?} ({})", self.url),
            None => self.url.clone(),
        }
    }

    /// Where the engine runs. A named engine reached over `tcp://`, `http://` or `https://` at
    /// a host that is not a loopback address is on another machine; every other engine
    /// (unnamed, a unix socket, loopback) is on this one, as a single `--docker-host` always
    /// was (a socket proxy on a shared network included).
    pub fn site(&self) -> EngineSite {
        if self.name.is_none() {
            return EngineSite::Local;
        }
        let Some(rest) = ["tcp://", "http://", "https://"].iter().find_map(|s| self.url.strip_prefix(s)) else {
            return EngineSite::Local;
        };
        let authority = rest.split('/').next().unwrap_or("");
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        let loopback =
            host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if host.is_empty() || loopback { EngineSite::Local } else { EngineSite::Remote(host.to_string()) }
    }

    /// The watcher configuration for this engine (defaults otherwise).
    pub fn config(&self) -> DockerConfig {
        DockerConfig { host: Some(self.url.clone()), site: self.site(), tls: self.tls.clone(), ..Default::default() }
    }
}

/// Whether `name` may name an engine: letters, digits, `_`, `.` and `-`.
fn valid_engine_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// One `--docker-tls` value: `DIR`, or `NAME=DIR` for the engine named `NAME`. `DIR` holds
/// `ca.pem`, `cert.pem` and `key.pem`, as the docker CLI's `DOCKER_CERT_PATH`.
///
/// ```
/// use docker_watcher::EngineTls;
///
/// let nas = EngineTls::parse("nas=/etc/dockward/nas").unwrap();
/// assert_eq!((nas.engine.as_deref(), nas.dir.to_str()), (Some("nas"), Some("/etc/dockward/nas")));
/// assert_eq!(EngineTls::parse("/certs").unwrap().engine, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineTls {
    /// The engine it is for; `None`: the one engine that has no name.
    pub engine: Option<String>,
    /// The certificate directory.
    pub dir: PathBuf,
}

impl EngineTls {
    /// Reads `DIR` or `NAME=DIR` (a `NAME` has no `/`; a path with `=` starts with `/` or `.`).
    pub fn parse(arg: &str) -> Result<Self, String> {
        let arg = arg.trim();
        let (engine, dir) = match arg.split_once('=') {
            Some((name, dir)) if !name.contains('/') && !name.starts_with('.') => (Some(name.trim()), dir.trim()),
            _ => (None, arg),
        };
        if let Some(name) = engine
            && !valid_engine_name(name)
        {
            return Err(format!("engine name {name:?}: use letters, digits, '_', '.' and '-' (NAME=DIR)"));
        }
        if dir.is_empty() {
            return Err("no certificate directory, e.g. /etc/docker-certs or nas=/etc/docker-certs/nas".to_string());
        }
        Ok(EngineTls { engine: engine.map(str::to_string), dir: PathBuf::from(dir) })
    }
}

/// The engines to watch, each with its TLS settled: `hosts` (none: the one engine
/// [`effective_host`] finds), named apart when there are several ([`check_engines`]), then
///
/// 1. `tls` (`--docker-tls [NAME=]DIR`) gives an engine its certificate directory; the
///    engine must be reached over `tcp://` or `https://`;
/// 2. an `https://` engine without one, and every `tcp://` engine when `DOCKER_TLS_VERIFY` is
///    set (non-empty, as the docker CLI reads it), use `DOCKER_CERT_PATH`, else
///    `$DOCKER_CONFIG`, else `~/.docker`;
/// 3. `http://`, `unix://` and socket paths stay plain.
///
/// The error names the flag value or variable at fault. Only the directory is settled here;
/// its files are read at each connect, so a missing one is an error of that engine, retried.
pub fn resolve_engines(hosts: &[EngineAddress], tls: &[EngineTls]) -> Result<Vec<EngineAddress>, String> {
    settle_engines(hosts, tls, |name| std::env::var(name).ok(), |path| std::path::Path::new(path).exists())
}

/// [`resolve_engines`] with the environment and the file system as arguments, for tests.
pub(crate) fn settle_engines(
    hosts: &[EngineAddress],
    tls: &[EngineTls],
    env: impl Fn(&str) -> Option<String>,
    exists: impl Fn(&str) -> bool,
) -> Result<Vec<EngineAddress>, String> {
    let mut engines = hosts.to_vec();
    if engines.is_empty() {
        engines.push(EngineAddress { name: None, url: choose_host(None, &env, exists), tls: None });
    }
    check_engines(&engines)?;
    let names =
        |engines: &[EngineAddress]| engines.iter().filter_map(|e| e.name.clone()).collect::<Vec<_>>().join(", ");
    for t in tls {
        let given = match &t.engine {
            Some(name) => format!("--docker-tls {name}={}", t.dir.display()),
            None => format!("--docker-tls {}", t.dir.display()),
        };
        let all = names(&engines);
        let Some(engine) = engines.iter_mut().find(|e| e.name == t.engine) else {
            return Err(match &t.engine {
                Some(name) => format!("{given}: no engine named {name:?} (engines: {all})"),
                None => format!("{given}: several engines are watched; write NAME=DIR (engines: {all})"),
            });
        };
        if engine.tls.is_some() {
            return Err(format!("{given}: {} has its certificates given twice", engine.describe()));
        }
        if !["tcp://", "https://"].iter().any(|s| engine.url.starts_with(s)) {
            return Err(format!(
                "{given}: {} is not reached over tcp:// or https://; TLS needs tcp://HOST:PORT",
                engine.describe()
            ));
        }
        engine.tls = Some(t.dir.clone());
    }
    let verify = env("DOCKER_TLS_VERIFY").is_some_and(|v| !v.is_empty());
    for engine in engines.iter_mut().filter(|e| e.tls.is_none()) {
        let https = engine.url.starts_with("https://");
        if https || (verify && engine.url.starts_with("tcp://")) {
            let why = if https { "an https:// engine" } else { "DOCKER_TLS_VERIFY is set" };
            engine.tls = Some(default_cert_dir(&env).ok_or_else(|| {
                format!(
                    "{}: {why}, but no certificate directory is known: set DOCKER_CERT_PATH or give --docker-tls",
                    engine.describe()
                )
            })?);
        }
    }
    Ok(engines)
}

/// The docker CLI's certificate directory: `DOCKER_CERT_PATH`, else `$DOCKER_CONFIG`, else
/// `$HOME/.docker`.
fn default_cert_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    set("DOCKER_CERT_PATH")
        .or_else(|| set("DOCKER_CONFIG"))
        .map(PathBuf::from)
        .or_else(|| set("HOME").map(|home| PathBuf::from(home).join(".docker")))
}

/// Which engine `dockward check --container ARG` means: `ENGINE/NAME` names it; a bare
/// `NAME` means the only engine. Returns the engine and the container's name.
pub fn pick_engine<'a>(engines: &'a [EngineAddress], arg: &'a str) -> Result<(&'a EngineAddress, &'a str), String> {
    let names = || engines.iter().filter_map(|e| e.name.as_deref()).collect::<Vec<_>>().join(", ");
    match arg.split_once('/') {
        Some((engine, name)) => engines
            .iter()
            .find(|e| e.name.as_deref() == Some(engine))
            .map(|e| (e, name))
            .ok_or_else(|| format!("{arg}: no engine named {engine:?} (engines: {})", names())),
        None if engines.len() == 1 => Ok((&engines[0], arg)),
        None => Err(format!("{arg}: several engines are watched; write ENGINE/{arg} (engines: {})", names())),
    }
}

/// Checks a set of engines for watching together: with several, each needs a name of its
/// own (it prefixes its containers' names).
pub fn check_engines(engines: &[EngineAddress]) -> Result<(), String> {
    if engines.len() < 2 {
        return Ok(());
    }
    let mut seen = std::collections::BTreeSet::new();
    for e in engines {
        let Some(name) = e.name.as_deref() else {
            return Err(format!("several Docker engines: name each one, NAME=URL (unnamed: {})", e.url));
        };
        if !seen.insert(name) {
            return Err(format!("two Docker engines are named {name:?}"));
        }
    }
    Ok(())
}

/// The engine address for an explicit `--docker-host` (trimmed), else the environment's
/// (`DOCKER_HOST`, then `CONTAINER_HOST`), else the first socket that `exists` of Docker's,
/// rootful Podman's and rootless Podman's (`$XDG_RUNTIME_DIR/podman/podman.sock`), else
/// Docker's. `env` and `exists` are the process's in real use; tests pass their own.
pub(crate) fn choose_host(
    explicit: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    exists: impl Fn(&str) -> bool,
) -> String {
    let given = |h: Option<String>| h.map(|h| h.trim().to_string()).filter(|h| !h.is_empty());
    if let Some(h) = given(explicit.map(str::to_string)).or_else(|| given(env("DOCKER_HOST"))) {
        return h;
    }
    if let Some(h) = given(env("CONTAINER_HOST")) {
        return h;
    }
    let docker = DEFAULT_DOCKER_HOST.trim_start_matches("unix://");
    let rootless = given(env("XDG_RUNTIME_DIR")).map(|dir| format!("{}/podman/podman.sock", dir.trim_end_matches('/')));
    let candidates = [Some(docker.to_string()), Some(PODMAN_ROOTFUL_SOCKET.to_string()), rootless];
    match candidates.into_iter().flatten().find(|p| exists(p)) {
        Some(path) => format!("unix://{path}"),
        None => DEFAULT_DOCKER_HOST.to_string(),
    }
}

/// Whether `labels` carry every one of `filters` (`key` or `key=value`), as Docker's label
/// filter judges.
pub(crate) fn label_filters_hold(labels: &std::collections::BTreeMap<String, String>, filters: &[String]) -> bool {
    filters.iter().all(|f| match f.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(f.as_str()),
    })
}

/// The engine address in use: the explicit one, else `DOCKER_HOST`, else `CONTAINER_HOST`
/// (Podman's), else the first socket that exists of Docker's, rootful Podman's
/// (`/run/podman/podman.sock`) and rootless Podman's (`$XDG_RUNTIME_DIR/podman/podman.sock`),
/// else Docker's.
pub fn effective_host(explicit: Option<&str>) -> String {
    choose_host(explicit, |name| std::env::var(name).ok(), |path| std::path::Path::new(path).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(explicit: Option<&str>, env: &[(&str, &str)], sockets: &[&str]) -> String {
        choose_host(
            explicit,
            |name| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()),
            |path| sockets.contains(&path),
        )
    }

    fn settle(hosts: &[&str], tls: &[&str], env: &[(&str, &str)]) -> Result<Vec<(String, Option<String>)>, String> {
        let hosts: Vec<EngineAddress> = hosts.iter().map(|h| EngineAddress::parse(h).unwrap()).collect();
        let tls: Vec<EngineTls> = tls.iter().map(|t| EngineTls::parse(t).unwrap()).collect();
        let engines = settle_engines(
            &hosts,
            &tls,
            |name| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()),
            |_| false,
        )?;
        Ok(engines.into_iter().map(|e| (e.url, e.tls.map(|d| d.display().to_string()))).collect())
    }

    #[test]
    fn tls_comes_from_the_flag_then_https_and_docker_tls_verify_and_plain_schemes_stay_plain() {
        let one = |url: &str, dir: Option<&str>| vec![(url.to_string(), dir.map(str::to_string))];
        // --docker-tls for the unnamed engine, or for one named engine.
        assert_eq!(settle(&["tcp://h:2376"], &["/c"], &[]), Ok(one("tcp://h:2376", Some("/c"))));
        assert_eq!(
            settle(&["nas=tcp://10.0.0.5:2376", "local=unix:///var/run/docker.sock"], &["nas=/c/nas"], &[]),
            Ok(vec![
                ("tcp://10.0.0.5:2376".to_string(), Some("/c/nas".to_string())),
                ("unix:///var/run/docker.sock".to_string(), None)
            ])
        );
        // https:// always, tcp:// with DOCKER_TLS_VERIFY: DOCKER_CERT_PATH, else DOCKER_CONFIG, else ~/.docker.
        let home = [("HOME", "/home/u")];
        assert_eq!(settle(&["https://h"], &[], &home), Ok(one("https://h", Some("/home/u/.docker"))));
        assert_eq!(settle(&["tcp://h:2375"], &[], &home), Ok(one("tcp://h:2375", None)));
        let verify = [("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", "/certs"), ("HOME", "/home/u")];
        assert_eq!(settle(&["tcp://h:2376"], &[], &verify), Ok(one("tcp://h:2376", Some("/certs"))));
        let config = [("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CONFIG", "/cfg"), ("HOME", "/home/u")];
        assert_eq!(settle(&["tcp://h:2376"], &[], &config), Ok(one("tcp://h:2376", Some("/cfg"))));
        // As the docker CLI reads it: any non-empty value turns it on; empty is off.
        assert_eq!(settle(&["tcp://h"], &[], &[("DOCKER_TLS_VERIFY", "")]), Ok(one("tcp://h", None)));
        // The default engine (DOCKER_HOST) follows DOCKER_TLS_VERIFY as the docker CLI's does.
        let env = [("DOCKER_HOST", "tcp://h:2376"), ("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", "/certs")];
        assert_eq!(settle(&[], &[], &env), Ok(one("tcp://h:2376", Some("/certs"))));
        // With DOCKER_TLS_VERIFY, http://, unix:// and the flag's own directory are kept.
        assert_eq!(
            settle(&["a=http://127.0.0.1:2375", "b=tcp://h:2376", "c=unix:///s", "d=tcp://i:2376"], &["d=/d"], &verify),
            Ok(vec![
                ("http://127.0.0.1:2375".to_string(), None),
                ("tcp://h:2376".to_string(), Some("/certs".to_string())),
                ("unix:///s".to_string(), None),
                ("tcp://i:2376".to_string(), Some("/d".to_string())),
            ])
        );
    }

    #[test]
    fn a_misplaced_docker_tls_is_an_error_naming_it() {
        let two = ["nas=tcp://10.0.0.5:2376", "local=unix:///var/run/docker.sock"];
        assert_eq!(
            settle(&two, &["pi=/c"], &[]).unwrap_err(),
            "--docker-tls pi=/c: no engine named \"pi\" (engines: nas, local)"
        );
        assert_eq!(
            settle(&two, &["/c"], &[]).unwrap_err(),
            "--docker-tls /c: several engines are watched; write NAME=DIR (engines: nas, local)"
        );
        assert_eq!(
            settle(&two, &["local=/c"], &[]).unwrap_err(),
            "--docker-tls local=/c: engine \"local\" (unix:///var/run/docker.sock) is not reached over tcp:// or \
             https://; TLS needs tcp://HOST:PORT"
        );
        assert!(settle(&two, &["nas=/a", "nas=/b"], &[]).unwrap_err().contains("given twice"));
        assert_eq!(
            settle(&["https://h"], &[], &[]).unwrap_err(),
            "https://h: an https:// engine, but no certificate directory is known: set DOCKER_CERT_PATH or give \
             --docker-tls"
        );
        assert_eq!(EngineTls::parse("./a=b").map(|t| t.engine), Ok(None));
        assert!(EngineTls::parse("n a=/c").is_err());
        assert!(EngineTls::parse("nas=").is_err());
    }

    #[test]
    fn engine_addresses_name_their_engine_and_say_where_it_runs() {
        let parse = |s: &str| EngineAddress::parse(s);
        let remote = |s: &str| parse(s).map(|e| e.site());
        assert_eq!(
            parse("nas=tcp://10.0.0.5:2375").map(|e| (e.name, e.url)),
            Ok((Some("nas".into()), "tcp://10.0.0.5:2375".into()))
        );
        assert_eq!(parse("tcp://10.0.0.5:2375").map(|e| e.name), Ok(None));
        assert_eq!(parse("/var/run/docker.sock").map(|e| e.url), Ok("/var/run/docker.sock".into()));
        assert_eq!(remote("tcp://10.0.0.5:2375"), Ok(EngineSite::Local), "an unnamed engine is local, as always");
        assert_eq!(remote("nas=tcp://nas.lan:2375"), Ok(EngineSite::Remote("nas.lan".into())));
        assert_eq!(remote("nas=https://[fd00::5]:2376/"), Ok(EngineSite::Remote("fd00::5".into())));
        assert_eq!(remote("b=tcp://127.0.0.1:2375"), Ok(EngineSite::Local));
        assert_eq!(remote("b=tcp://localhost:2375"), Ok(EngineSite::Local));
        assert_eq!(remote("b=tcp://[::1]:2375"), Ok(EngineSite::Local));
        assert_eq!(remote("local=unix:///var/run/docker.sock"), Ok(EngineSite::Local));
        assert!(parse("n a=tcp://x:1").is_err());
        assert!(parse("nas=").is_err());
        assert!(parse(" ").is_err());
    }

    #[test]
    fn several_engines_need_distinct_names_and_check_picks_one() {
        let e = |s: &str| EngineAddress::parse(s).unwrap();
        let two = [e("nas=tcp://10.0.0.5:2375"), e("local=unix:///var/run/docker.sock")];
        assert_eq!(check_engines(&two), Ok(()));
        assert_eq!(check_engines(&[e("unix:///a")]), Ok(()));
        assert!(check_engines(&[e("a=unix:///a"), e("unix:///b")]).unwrap_err().contains("name each one"));
        assert!(check_engines(&[e("a=unix:///a"), e("a=unix:///b")]).unwrap_err().contains("named \"a\""));
        assert_eq!(
            pick_engine(&two, "nas/minecraft").map(|(e, n)| (e.url.as_str(), n)),
            Ok(("tcp://10.0.0.5:2375", "minecraft"))
        );
        assert_eq!(
            pick_engine(&two, "minecraft").unwrap_err(),
            "minecraft: several engines are watched; write ENGINE/minecraft (engines: nas, local)"
        );
        assert_eq!(pick_engine(&two, "pi/x").unwrap_err(), "pi/x: no engine named \"pi\" (engines: nas, local)");
        assert_eq!(pick_engine(&two[..1], "web").map(|(_, n)| n), Ok("web"));
    }

    #[test]
    fn every_label_filter_must_hold() {
        let labels = [("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())].into_iter().collect();
        assert!(label_filters_hold(&labels, &[]));
        assert!(label_filters_hold(&labels, &["a=1".into(), "b".into()]));
        assert!(!label_filters_hold(&labels, &["a=1".into(), "c".into()]));
        assert!(!label_filters_hold(&labels, &["a=2".into()]));
    }

    #[test]
    fn the_engine_is_the_flag_then_the_environment_then_the_first_socket_found() {
        let env = [("DOCKER_HOST", "tcp://a:2375"), ("CONTAINER_HOST", "unix:///c.sock")];
        assert_eq!(host(Some(" unix:///x.sock "), &env, &[]), "unix:///x.sock");
        assert_eq!(host(None, &env, &[]), "tcp://a:2375");
        assert_eq!(host(Some(""), &env[1..], &[]), "unix:///c.sock");
        let rootless = [("XDG_RUNTIME_DIR", "/run/user/1000/")];
        assert_eq!(host(None, &rootless, &[]), "unix:///var/run/docker.sock");
        assert_eq!(
            host(None, &rootless, &["/run/user/1000/podman/podman.sock"]),
            "unix:///run/user/1000/podman/podman.sock"
        );
        assert_eq!(
            host(None, &rootless, &["/run/podman/podman.sock", "/run/user/1000/podman/podman.sock"]),
            "unix:///run/podman/podman.sock"
        );
        assert_eq!(
            host(None, &[], &["/var/run/docker.sock", "/run/podman/podman.sock"]),
            "unix:///var/run/docker.sock"
        );
    }
}
