//! A rate of new connections or sessions, as `rate_limit` writes it: `10/s`, `100/m`, `5/h`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `count` new connections or sessions per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    /// How many.
    pub count: u32,
    /// In how long: a second, a minute or an hour.
    pub per: Duration,
}

/// Why a rate did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate {text:?}: expected COUNT/UNIT with COUNT at least 1 and UNIT s, m or h (10/s, 100/m)")]
pub struct RateError {
    /// The text at fault.
    pub text: String,
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || RateError { text: text.to_string() };
        let (count, unit) = text.trim().split_once('/').ok_or_else(err)?;
        let count: u32 = count.trim().parse().map_err(|_| err())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(err()),
        };
        if count == 0 {
            return Err(err());
        }
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl TryFrom<String> for Rate {
    type Error = RateError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Rate> for String {
    fn from(rate: Rate) -> String {
        rate.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print_back() {
        assert_eq!("10/s".parse::<Rate>().unwrap(), Rate { count: 10, per: Duration::from_secs(1) });
        assert_eq!("100/m".parse::<Rate>().unwrap().to_string(), "100/m");
        assert_eq!("5/h".parse::<Rate>().unwrap().per, Duration::from_secs(3600));
        for bad in ["", "10", "0/s", "x/s", "10/d", "-1/s", "10/"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
    }
}
