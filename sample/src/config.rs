//! The sample's configuration, read from environment variables.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Port to listen on (required).
pub const PORT: &str = "PORT";
/// Address to bind (default `127.0.0.1`).
pub const SAMPLE_BIND: &str = "SAMPLE_BIND";
/// Version, set by the ferry agent.
pub const FERRY_VERSION: &str = "FERRY_VERSION";
/// Version when not run by ferry.
pub const SAMPLE_VERSION: &str = "SAMPLE_VERSION";
/// Service name, set by the ferry agent (a label of `/metrics`).
pub const FERRY_SERVICE: &str = "FERRY_SERVICE";
/// Environment, set by the ferry agent (a label of `/metrics`).
pub const FERRY_ENVIRONMENT: &str = "FERRY_ENVIRONMENT";
/// `false` makes `/health` answer 503.
pub const SAMPLE_HEALTHY: &str = "SAMPLE_HEALTHY";
/// Share of `/` requests answered with 500, 0.0 to 1.0.
pub const SAMPLE_ERROR_RATE: &str = "SAMPLE_ERROR_RATE";
/// Milliseconds added to every `/` request.
pub const SAMPLE_LATENCY_MS: &str = "SAMPLE_LATENCY_MS";
/// Exit with code 3 after this many seconds.
pub const SAMPLE_EXIT_AFTER_SECS: &str = "SAMPLE_EXIT_AFTER_SECS";
/// `true` makes the sample exit 1 at once.
pub const SAMPLE_FAIL_START: &str = "SAMPLE_FAIL_START";

/// Error rates are held in millionths so the failure rule is exact integer arithmetic.
const RATE_SCALE: u64 = 1_000_000;

/// Everything the sample's behaviour depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// What to report as the version.
    pub version: String,
    /// The service it runs as (`/metrics` label; `ferry-sample` outside ferry).
    pub service: String,
    /// The environment it runs in (`/metrics` label; empty outside ferry).
    pub environment: String,
    /// Whether `/health` answers 200.
    pub healthy: bool,
    /// Share of `/` requests that fail.
    pub error_rate: ErrorRate,
    /// Added to every `/` request.
    pub latency: Duration,
    /// Exit with code 3 after this long.
    pub exit_after: Option<Duration>,
    /// Exit 1 at once.
    pub fail_start: bool,
}

/// One configuration problem: which variable and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    variable: &'static str,
    reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.reason)
    }
}

impl Config {
    /// Reads the configuration through `lookup` (the process environment in
    /// `main`, a map in tests), reporting every problem at once.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut check = Checker(&mut errors);

        let port = check.take(
            PORT,
            match lookup(PORT) {
                None => Err("is required: the port to listen on".to_owned()),
                Some(text) => match text.trim().parse::<u16>() {
                    Ok(port) if port > 0 => Ok(port),
                    _ => Err(format!("{text:?} is not a port number (1-65535)")),
                },
            },
        );
        let ip = check.take(
            SAMPLE_BIND,
            lookup(SAMPLE_BIND).map_or(Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)), |text| {
                text.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| format!("{text:?} is not an IP address"))
            }),
        );
        let healthy = check.take(SAMPLE_HEALTHY, parse_bool(lookup(SAMPLE_HEALTHY), true));
        let fail_start = check.take(
            SAMPLE_FAIL_START,
            parse_bool(lookup(SAMPLE_FAIL_START), false),
        );
        let error_rate = check.take(
            SAMPLE_ERROR_RATE,
            lookup(SAMPLE_ERROR_RATE).map_or(Ok(ErrorRate::NONE), |text| ErrorRate::parse(&text)),
        );
        let latency = check.take(
            SAMPLE_LATENCY_MS,
            parse_u64(lookup(SAMPLE_LATENCY_MS)).map(|ms| Duration::from_millis(ms.unwrap_or(0))),
        );
        let exit_after = check.take(
            SAMPLE_EXIT_AFTER_SECS,
            parse_u64(lookup(SAMPLE_EXIT_AFTER_SECS)).map(|s| s.map(Duration::from_secs)),
        );
        let version = lookup(FERRY_VERSION)
            .filter(|v| !v.is_empty())
            .or_else(|| lookup(SAMPLE_VERSION).filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "dev".to_owned());
        let service = lookup(FERRY_SERVICE)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "ferry-sample".to_owned());
        let environment = lookup(FERRY_ENVIRONMENT).unwrap_or_default();

        match (
            port, ip, healthy, fail_start, error_rate, latency, exit_after,
        ) {
            (
                Some(port),
                Some(ip),
                Some(healthy),
                Some(fail_start),
                Some(error_rate),
                Some(latency),
                Some(exit_after),
            ) if errors.is_empty() => Ok(Config {
                addr: SocketAddr::new(ip, port),
                version,
                service,
                environment,
                healthy,
                error_rate,
                latency,
                exit_after,
                fail_start,
            }),
            _ => Err(errors),
        }
    }
}

/// Collects errors, turning results into options.
struct Checker<'a>(&'a mut Vec<ConfigError>);

impl Checker<'_> {
    fn take<T>(&mut self, variable: &'static str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(reason) => {
                self.0.push(ConfigError { variable, reason });
                None
            }
        }
    }
}

fn parse_bool(value: Option<String>, default: bool) -> Result<bool, String> {
    let Some(text) = value else {
        return Ok(default);
    };
    match text.trim().to_ascii_lowercase().as_str() {
        "" => Ok(default),
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{text:?} is not true or false")),
    }
}

fn parse_u64(value: Option<String>) -> Result<Option<u64>, String> {
    match value {
        None => Ok(None),
        Some(text) if text.trim().is_empty() => Ok(None),
        Some(text) => text
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("{text:?} is not a whole number")),
    }
}

/// A share of requests to fail, in millionths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorRate(u64);

impl ErrorRate {
    /// Never fail.
    pub const NONE: ErrorRate = ErrorRate(0);

    /// Parses `0.0` to `1.0`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim().parse::<f64>() {
            Ok(rate) if (0.0..=1.0).contains(&rate) => {
                // In range, so the rounded product is 0..=RATE_SCALE.
                let millionths = (rate * RATE_SCALE as f64).round() as u64;
                Ok(ErrorRate(millionths))
            }
            _ => Err(format!("{text:?} is not a number from 0.0 to 1.0")),
        }
    }

    /// Whether request `n` (counting from 1) fails: it does when
    /// floor(n * rate) > floor((n - 1) * rate), so failures are spread evenly
    /// and a rate of 0.2 fails exactly every 5th request.
    pub fn fails(self, n: u64) -> bool {
        if n == 0 {
            return false;
        }
        let floor = |k: u64| (u128::from(k) * u128::from(self.0)) / u128::from(RATE_SCALE);
        floor(n) > floor(n - 1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, Vec<ConfigError>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_env(|name| map.get(name).cloned())
    }

    #[test]
    fn a_rate_of_one_fifth_fails_exactly_every_fifth_request() {
        let rate = ErrorRate::parse("0.2").unwrap();
        let failing: Vec<u64> = (1..=20).filter(|&n| rate.fails(n)).collect();
        assert_eq!(failing, vec![5, 10, 15, 20]);
    }

    #[test]
    fn failures_match_the_rate_exactly() {
        for (text, per_thousand) in [
            ("0", 0),
            ("0.0", 0),
            ("0.1", 100),
            ("0.25", 250),
            ("0.5", 500),
            ("0.57", 570),
            ("1", 1000),
        ] {
            let rate = ErrorRate::parse(text).unwrap();
            let count = (1..=1000).filter(|&n| rate.fails(n)).count();
            assert_eq!(count, per_thousand, "{text}");
        }
        let half = ErrorRate::parse("0.5").unwrap();
        assert!(!half.fails(1) && half.fails(2) && !half.fails(3) && half.fails(4));
        assert!(ErrorRate::parse("1.0").unwrap().fails(1));
        assert!(!ErrorRate::NONE.fails(0));
    }

    #[test]
    fn out_of_range_rates_are_refused() {
        for bad in ["-0.1", "1.01", "abc", "", "NaN"] {
            assert!(ErrorRate::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_and_version_precedence() {
        let c = config(&[("PORT", "8080")]).unwrap();
        assert_eq!(c.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.version, "dev");
        assert!(c.healthy && !c.fail_start);
        assert_eq!(c.error_rate, ErrorRate::NONE);
        assert_eq!(c.latency, Duration::ZERO);
        assert_eq!(c.exit_after, None);

        let c = config(&[("PORT", "1"), ("SAMPLE_VERSION", "1.0")]).unwrap();
        assert_eq!(c.version, "1.0");
        let c = config(&[
            ("PORT", "1"),
            ("SAMPLE_VERSION", "1.0"),
            ("FERRY_VERSION", "2.0"),
            ("SAMPLE_BIND", "0.0.0.0"),
            ("SAMPLE_HEALTHY", "false"),
            ("SAMPLE_LATENCY_MS", "250"),
            ("SAMPLE_EXIT_AFTER_SECS", "3"),
        ])
        .unwrap();
        assert_eq!(c.version, "2.0");
        assert_eq!(c.addr, "0.0.0.0:1".parse().unwrap());
        assert!(!c.healthy);
        assert_eq!(c.latency, Duration::from_millis(250));
        assert_eq!(c.exit_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors = config(&[]).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().starts_with("PORT: is required"));

        let errors = config(&[
            ("PORT", "70000"),
            ("SAMPLE_BIND", "localhost"),
            ("SAMPLE_ERROR_RATE", "2"),
            ("SAMPLE_HEALTHY", "maybe"),
        ])
        .unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(config(&[("PORT", "0")]).is_err());
        assert!(config(&[("PORT", "x")]).is_err());
    }
}
