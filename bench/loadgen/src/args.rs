//! `--flag value` arguments, read once and checked: an unknown or unused flag is an error,
//! so a typo in bench/run.sh fails loudly instead of silently measuring something else.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

/// The flags given after a subcommand.
pub struct Args {
    flags: BTreeMap<String, String>,
}

impl Args {
    /// Parses `--name value` pairs.
    pub fn parse(raw: &[String]) -> Result<Args, String> {
        let mut flags = BTreeMap::new();
        let mut it = raw.iter();
        while let Some(name) = it.next() {
            let Some(key) = name.strip_prefix("--") else {
                return Err(format!("expected a --flag, found {name:?}"));
            };
            let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            if flags.insert(key.to_string(), value.clone()).is_some() {
                return Err(format!("--{key} given twice"));
            }
        }
        Ok(Args { flags })
    }

    /// A required flag.
    pub fn req<T: FromStr>(&mut self, key: &str) -> Result<T, String>
    where
        T::Err: Display,
    {
        let value = self.flags.remove(key).ok_or_else(|| format!("--{key} is required"))?;
        value.parse().map_err(|e| format!("--{key} {value:?}: {e}"))
    }

    /// An optional flag with a default.
    pub fn opt<T: FromStr>(&mut self, key: &str, default: T) -> Result<T, String>
    where
        T::Err: Display,
    {
        match self.flags.remove(key) {
            None => Ok(default),
            Some(value) => value.parse().map_err(|e| format!("--{key} {value:?}: {e}")),
        }
    }

    /// An optional flag without a default.
    pub fn maybe<T: FromStr>(&mut self, key: &str) -> Result<Option<T>, String>
    where
        T::Err: Display,
    {
        match self.flags.remove(key) {
            None => Ok(None),
            Some(value) => value.parse().map(Some).map_err(|e| format!("--{key} {value:?}: {e}")),
        }
    }

    /// Fails on any flag no subcommand asked for.
    pub fn finish(self) -> Result<(), String> {
        match self.flags.keys().next() {
            None => Ok(()),
            Some(k) => Err(format!("unknown flag --{k}")),
        }
    }
}
