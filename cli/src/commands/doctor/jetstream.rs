//! The NATS server and JetStream: version, JetStream enabled, and every
//! stream and bucket ferry keeps, with the configuration ferry gives it.

use async_nats::jetstream::{self, Context};
use async_nats::Client;
use ferry_protocol::streams::{self, BucketSpec, StreamSpec};

use super::checks::Checks;

/// The oldest nats-server ferry supports.
const MIN_VERSION: (u64, u64) = (2, 11);
const CREATE_FIX: &str = "start ferry-controller once: it creates every missing stream and \
                          bucket with ferry's configuration";

/// Adds the NATS, JetStream, stream and bucket checks.
pub(super) async fn check(checks: &mut Checks, client: &Client) {
    let version = client.server_info().version;
    match major_minor(&version) {
        Some(found) if found >= MIN_VERSION => {
            checks.ok("nats", "server", format!("nats-server {version}"))
        }
        _ => checks.problem(
            "nats",
            "server",
            format!(
                "nats-server {version}; ferry needs {}.{} or newer",
                MIN_VERSION.0, MIN_VERSION.1
            ),
            "upgrade nats-server (https://github.com/nats-io/nats-server/releases)",
        ),
    }
    let js = jetstream::new(client.clone());
    match js.query_account().await {
        Ok(account) => checks.ok(
            "jetstream",
            "enabled",
            format!("{} streams in the account", account.streams),
        ),
        Err(e) => {
            checks.problem(
                "jetstream",
                "enabled",
                format!("JetStream does not answer: {e}"),
                "run nats-server with JetStream on (`-js`, or `jetstream { store_dir: ... }` in \
                 its configuration) and give this NATS user access to $JS.API.>",
            );
            return;
        }
    }
    for spec in streams::all_streams() {
        check_stream(checks, &js, &spec).await;
    }
    for spec in streams::BUCKETS {
        check_bucket(checks, &js, spec).await;
    }
}

fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

async fn check_stream(checks: &mut Checks, js: &Context, spec: &StreamSpec) {
    let name = format!("stream {}", spec.name);
    let mut stream = match js.get_stream(spec.name).await {
        Ok(stream) => stream,
        Err(e) => {
            return checks.problem("streams", name, format!("missing ({e})"), CREATE_FIX);
        }
    };
    let info = match stream.info().await {
        Ok(info) => info.clone(),
        Err(e) => {
            return checks.problem(
                "streams",
                name,
                format!("cannot read its configuration: {e}"),
                "give this NATS user access to $JS.API.STREAM.INFO.>",
            )
        }
    };
    let found = &info.config;
    let expected = spec.config();
    let mut differences = Vec::new();
    let mut differ = |what: &str, found: String, expected: String| {
        if found != expected {
            differences.push(format!("{what} is {found}, expected {expected}"));
        }
    };
    let mut subjects = found.subjects.clone();
    subjects.sort();
    let mut wanted = expected.subjects.clone();
    wanted.sort();
    differ("subjects", subjects.join(" "), wanted.join(" "));
    differ(
        "max_age",
        humantime::format_duration(found.max_age).to_string(),
        humantime::format_duration(expected.max_age).to_string(),
    );
    differ(
        "max_bytes",
        found.max_bytes.to_string(),
        expected.max_bytes.to_string(),
    );
    differ(
        "max_messages_per_subject",
        found.max_messages_per_subject.to_string(),
        expected.max_messages_per_subject.to_string(),
    );
    if spec.append_only {
        differ("deny_delete", found.deny_delete.to_string(), "true".into());
        differ("deny_purge", found.deny_purge.to_string(), "true".into());
    }
    let replicas = found.num_replicas.max(1);
    if differences.is_empty() {
        checks.ok(
            "streams",
            name,
            format!(
                "{} messages, {replicas} replica(s){}",
                info.state.messages,
                if spec.append_only {
                    ", append-only"
                } else {
                    ""
                }
            ),
        );
    } else {
        checks.problem(
            "streams",
            name,
            differences.join("; "),
            format!(
                "restore ferry's configuration of {} (`nats stream edit {}`), as in \
                 protocol/src/streams.rs",
                spec.name, spec.name
            ),
        );
    }
}

async fn check_bucket(checks: &mut Checks, js: &Context, spec: BucketSpec) {
    let name = format!("bucket {}", spec.name);
    let store = match js.get_key_value(spec.name).await {
        Ok(store) => store,
        Err(e) => return checks.problem("buckets", name, format!("missing ({e})"), CREATE_FIX),
    };
    match store.status().await {
        Ok(status) if status.history() == spec.history => checks.ok(
            "buckets",
            name,
            format!("{} keys, history {}", status.values(), spec.history),
        ),
        Ok(status) => checks.problem(
            "buckets",
            name,
            format!("history is {}, expected {}", status.history(), spec.history),
            format!("`nats kv edit {} --history {}`", spec.name, spec.history),
        ),
        Err(e) => checks.problem(
            "buckets",
            name,
            format!("cannot read its status: {e}"),
            "give this NATS user access to $JS.API.STREAM.INFO.>",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_compare_by_major_and_minor() {
        assert_eq!(major_minor("2.11.4"), Some((2, 11)));
        assert!(major_minor("2.10.22").unwrap() < MIN_VERSION);
        assert!(major_minor("2.12.0-RC.1").unwrap() >= MIN_VERSION);
        assert_eq!(major_minor("garbage"), None);
    }
}
