//! Supersession: a promotion a newer release has replaced stops waiting.
//!
//! An open promotion (waiting or blocked) of version V of a service into
//! environment E is **superseded** once the environment before E, E itself
//! or any later one runs a newer release W of that service. V can then no
//! longer advance (its previous environment does not run it any more, or a
//! newer release is already past it), and W's own promotion is the one that
//! matters. W is newer than V when both are semantic versions and W > V;
//! otherwise when W was published after V. Only published releases count.
//!
//! The rule is judged from current state (the deployments and releases
//! buckets), not from the event that triggered it, so a missed event is
//! caught by the next sweep, and a superseded promotion stays closed even if
//! an environment later rolls back to V. Marking one is a compare-and-set
//! from open to superseded, audited under a deterministic id: two controller
//! instances supersede and record it once.

use std::cmp::Ordering;
use std::collections::HashMap;

use ferry_protocol::api::{PromotionState, ReleaseRecord};
use ferry_protocol::{EnvName, ServiceName, Version};
use time::OffsetDateTime;
use tracing::info;

use crate::audit;
use crate::records::PromotionRecord;
use crate::{ids, Error, Shared};

/// Whether `newer` is a newer release than `older` (see the module's rule).
fn is_newer(newer: &ReleaseRecord, older: &ReleaseRecord) -> bool {
    let (new, old) = (&newer.release.version, &older.release.version);
    if new == old {
        return false;
    }
    match (
        semver::Version::parse(new.as_str()),
        semver::Version::parse(old.as_str()),
    ) {
        (Ok(new), Ok(old)) => new.cmp_precedence(&old) == Ordering::Greater,
        _ => newer.received_at > older.received_at,
    }
}

/// The environments whose releases can supersede `record`: the one before
/// its environment and every one from there on (none when its environment
/// left the pipeline).
fn watched<'a>(record: &PromotionRecord, environments: &'a [EnvName]) -> &'a [EnvName] {
    match environments.iter().position(|e| e == &record.environment) {
        Some(position) => &environments[position.saturating_sub(1)..],
        None => &[],
    }
}

/// The release superseding `record` and the environment where it runs, if
/// any: `environments` is the pipeline in order, `serving` what each
/// environment runs of the record's service, `releases` that service's
/// published releases.
pub(crate) fn superseding<'a>(
    record: &PromotionRecord,
    environments: &'a [EnvName],
    serving: &HashMap<EnvName, Version>,
    releases: &'a [ReleaseRecord],
) -> Option<(&'a Version, &'a EnvName)> {
    if !matches!(
        record.state,
        PromotionState::Waiting | PromotionState::Blocked
    ) {
        return None;
    }
    let own = releases
        .iter()
        .find(|r| r.release.version == record.version)?;
    watched(record, environments).iter().find_map(|env| {
        let running = serving.get(env)?;
        let release = releases.iter().find(|r| &r.release.version == running)?;
        is_newer(release, own).then_some((&release.release.version, env))
    })
}

/// Supersedes every open promotion of `service` that a newer release has
/// replaced (see the module's rule); returns how many it closed.
pub(crate) async fn reconcile(shared: &Shared, service: &ServiceName) -> Result<usize, Error> {
    let records = shared.store.promotions().await?;
    reconcile_among(shared, service, &records).await
}

/// [`reconcile`] with the promotions already read (the sweep's).
pub(crate) async fn reconcile_among(
    shared: &Shared,
    service: &ServiceName,
    records: &[PromotionRecord],
) -> Result<usize, Error> {
    let open: Vec<&PromotionRecord> = records
        .iter()
        .filter(|r| &r.service == service && !r.is_closed())
        .collect();
    if open.is_empty() {
        return Ok(0);
    }
    let environments = shared.config.environments();
    let mut serving = HashMap::new();
    for env in environments {
        if let Some(version) = shared
            .store
            .deployment(env, service)
            .await?
            .and_then(|d| d.serving)
        {
            serving.insert(env.clone(), version);
        }
    }
    // Most sweeps find every open promotion's environments still running
    // its own version: no need to read the releases then.
    let moved_on = open.iter().any(|record| {
        watched(record, environments)
            .iter()
            .filter_map(|env| serving.get(env))
            .any(|running| running != &record.version)
    });
    if !moved_on {
        return Ok(0);
    }
    let releases = shared.store.releases(Some(service)).await?;
    let mut closed = 0;
    for record in open {
        let Some((newer, running_in)) = superseding(record, environments, &serving, &releases)
        else {
            continue;
        };
        if supersede(shared, record, newer, running_in).await? {
            closed += 1;
        }
    }
    Ok(closed)
}

/// Closes `record` as superseded by `newer` (compare-and-set: only while it
/// is still open) and audits it; whether this call closed it.
async fn supersede(
    shared: &Shared,
    record: &PromotionRecord,
    newer: &Version,
    running_in: &EnvName,
) -> Result<bool, Error> {
    let (service, version, env) = (&record.service, &record.version, &record.environment);
    let detail =
        format!("superseded by {service} {newer}, which runs in {running_in}: {version} goes no further into {env}");
    let mut closed_here = false;
    shared
        .store
        .update_promotion(service, version, env, |current| {
            closed_here = false;
            let mut r = current?;
            if r.is_closed() {
                return None;
            }
            closed_here = true;
            r.state = PromotionState::Superseded;
            r.superseded_by = Some(newer.clone());
            r.detail = detail.clone();
            r.updated_at = OffsetDateTime::now_utc();
            Some(r)
        })
        .await?;
    // Audited by whichever instance got here: of two racing, the
    // deterministic id keeps one record.
    let id = ids::promotion(service, version, env, "superseded");
    audit::promotion(
        shared,
        env,
        service,
        version,
        "promote",
        "superseded",
        detail.clone(),
        None,
        id,
    )
    .await?;
    if closed_here {
        info!(%service, %version, environment = %env, superseded_by = %newer, "promotion superseded");
    }
    Ok(closed_here)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::release::Release;

    fn env(name: &str) -> EnvName {
        EnvName::new(name).unwrap()
    }

    fn pipeline() -> Vec<EnvName> {
        vec![env("dev"), env("acceptance"), env("production")]
    }

    fn release(version: &str, published_secs: i64) -> ReleaseRecord {
        // From JSON, as CI sends it: only what a release must have.
        let release: Release = serde_json::from_value(
            serde_json::json!({"service": "web", "version": version, "artifact": "/bin/web"}),
        )
        .unwrap();
        ReleaseRecord {
            release,
            received_at: OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(published_secs),
        }
    }

    fn open(version: &str, into: &str) -> PromotionRecord {
        PromotionRecord::new(
            &ServiceName::new("web").unwrap(),
            &Version::new(version).unwrap(),
            &env(into),
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    fn serving(pairs: &[(&str, &str)]) -> HashMap<EnvName, Version> {
        pairs
            .iter()
            .map(|(e, v)| (env(e), Version::new(*v).unwrap()))
            .collect()
    }

    fn verdict(
        record: &PromotionRecord,
        running: &[(&str, &str)],
        releases: &[ReleaseRecord],
    ) -> Option<(String, String)> {
        let environments = pipeline();
        superseding(record, &environments, &serving(running), releases)
            .map(|(v, e)| (v.to_string(), e.to_string()))
    }

    #[test]
    fn a_newer_release_in_the_previous_environment_or_later_supersedes() {
        let releases = [release("1.0.0", 1), release("1.1.0", 2)];
        let waiting = open("1.0.0", "acceptance");
        // 1.1.0 shipped everywhere: the example.
        let everywhere = [
            ("dev", "1.1.0"),
            ("acceptance", "1.1.0"),
            ("production", "1.1.0"),
        ];
        assert_eq!(
            verdict(&waiting, &everywhere, &releases),
            Some(("1.1.0".into(), "dev".into()))
        );
        // Only in the previous environment: 1.0.0 can no longer leave dev.
        assert!(verdict(&waiting, &[("dev", "1.1.0")], &releases).is_some());
        // Only further on (acceptance was skipped by hand).
        assert!(verdict(&waiting, &[("production", "1.1.0")], &releases).is_some());
        // Blocked by the gate is open too.
        let blocked = PromotionRecord {
            state: PromotionState::Blocked,
            ..open("1.0.0", "production")
        };
        assert!(verdict(&blocked, &[("acceptance", "1.1.0")], &releases).is_some());
    }

    #[test]
    fn the_same_an_older_or_an_earlier_environment_does_not_supersede() {
        let releases = [release("1.0.0", 1), release("1.1.0", 2)];
        let into_production = open("1.0.0", "production");
        // Still running its own version where it waits.
        assert!(verdict(&into_production, &[("acceptance", "1.0.0")], &releases).is_none());
        // 1.1.0 only in dev: acceptance (before production's previous
        // environment) still runs 1.0.0, which may still go on.
        let running = [("dev", "1.1.0"), ("acceptance", "1.0.0")];
        assert!(verdict(&into_production, &running, &releases).is_none());
        // An older version running is no reason.
        let newer = open("1.1.0", "acceptance");
        assert!(verdict(&newer, &[("dev", "1.0.0")], &releases).is_none());
        // Closed promotions stay as they are.
        for state in [PromotionState::Issued, PromotionState::Rejected] {
            let closed = PromotionRecord {
                state,
                ..open("1.0.0", "acceptance")
            };
            assert!(verdict(&closed, &[("dev", "1.1.0")], &releases).is_none());
        }
        // An unpublished version running (deployed by hand) counts for nothing.
        assert!(verdict(&open("1.0.0", "acceptance"), &[("dev", "9.9.9")], &releases).is_none());
    }

    #[test]
    fn semver_decides_before_publication_order() {
        // A hotfix of the old line published after 1.1.0 does not supersede 1.1.0.
        let releases = [release("1.1.0", 1), release("1.0.1", 2)];
        assert!(verdict(
            &open("1.1.0", "production"),
            &[("acceptance", "1.0.1")],
            &releases
        )
        .is_none());
        // Prereleases rank below their release.
        let releases = [release("2.0.0", 1), release("2.0.0-rc.1", 2)];
        assert!(verdict(
            &open("2.0.0", "acceptance"),
            &[("dev", "2.0.0-rc.1")],
            &releases
        )
        .is_none());
        // Versions that are not semver: the later publication is the newer.
        let releases = [release("2026.06.01", 1), release("build-7", 2)];
        assert_eq!(
            verdict(
                &open("2026.06.01", "acceptance"),
                &[("dev", "build-7")],
                &releases
            ),
            Some(("build-7".into(), "dev".into()))
        );
    }
}
