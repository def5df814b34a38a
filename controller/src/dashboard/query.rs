//! Query strings of the dashboard's views (`?service=web&since=1h`).

use ferry_protocol::{EnvName, ServiceName};
use time::OffsetDateTime;

use super::views::{AuditFilter, MAX_AUDIT};

/// Default number of audit records shown.
const DEFAULT_AUDIT: u32 = 100;

/// A parsed query string; a key given twice keeps its last value.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(text: &str) -> Query {
        Query(
            text.split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(key), decode(value))
                })
                .collect(),
        )
    }

    /// A value, blank counting as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub(crate) fn service(&self, key: &str) -> Result<ServiceName, String> {
        let text = self.get(key).ok_or_else(|| format!("give ?{key}=NAME"))?;
        ServiceName::new(text).map_err(|e| format!("{key}: {e}"))
    }
}

/// `%XX` and `+` decoded; a malformed escape stays as written.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The audit trail's filters: `environment`, `service`, `actor`, `action`,
/// `since` (a duration back from now such as `1h`, or an RFC 3339 time) and
/// `limit`, as `ferry history` takes them.
pub(crate) fn audit_filter(query: &Query) -> Result<AuditFilter, String> {
    let environment = query
        .get("environment")
        .map(|e| EnvName::new(e).map_err(|e| format!("environment: {e}")))
        .transpose()?;
    let service = query
        .get("service")
        .map(|_| query.service("service"))
        .transpose()?;
    let since = query.get("since").map(parse_since).transpose()?;
    let limit = match query.get("limit") {
        None => DEFAULT_AUDIT,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_AUDIT).contains(n))
            .ok_or_else(|| format!("limit: {text:?} is not a number from 1 to {MAX_AUDIT}"))?,
    };
    Ok(AuditFilter {
        environment,
        service,
        actor: query.get("actor").map(str::to_owned),
        action: query.get("action").map(str::to_owned),
        since,
        limit,
    })
}

fn parse_since(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(OffsetDateTime::now_utc() - ago);
    }
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|_| {
        format!("since: {text:?} is neither a duration such as 1h nor a time such as 2024-06-01T12:00:00Z")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_and_blank_values_are_absent() {
        let q = Query::parse("service=web&actor=alice+%28dashboard%29&action=&bad=%zz&x");
        assert_eq!(q.get("service"), Some("web"));
        assert_eq!(q.get("actor"), Some("alice (dashboard)"));
        assert_eq!(q.get("action"), None);
        assert_eq!(q.get("bad"), Some("%zz"));
        assert_eq!(q.get("x"), None);
    }

    #[test]
    fn audit_filters_take_the_clis_forms_and_refuse_bad_ones() {
        let f = audit_filter(&Query::parse("environment=dev&since=1h&limit=20")).unwrap();
        assert_eq!(f.environment.unwrap().as_str(), "dev");
        assert_eq!(f.limit, 20);
        let since = f.since.unwrap();
        let ago = OffsetDateTime::now_utc() - since;
        assert!(ago >= time::Duration::minutes(59) && ago <= time::Duration::minutes(61));
        let at = audit_filter(&Query::parse("since=2024-06-01T12:00:00Z")).unwrap();
        assert_eq!(at.since.unwrap().year(), 2024);
        assert_eq!(
            audit_filter(&Query::parse("")).unwrap().limit,
            DEFAULT_AUDIT
        );
        for bad in [
            "since=yesterday",
            "limit=0",
            "limit=100000",
            "environment=Bad%20Env",
            "service=%2F",
        ] {
            assert!(audit_filter(&Query::parse(bad)).is_err(), "{bad}");
        }
    }
}
