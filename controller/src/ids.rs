//! Deterministic message ids (UUID v5). The same intent always gets the same
//! id, so when it is issued twice (a redelivered release, a second controller
//! instance, a retried request) JetStream drops the copy by its
//! `Nats-Msg-Id`, and an agent refuses it as a replay after the window.

use ferry_protocol::{EnvName, HostName, ServiceName, Version};
use uuid::Uuid;

/// The CloudEvents `source` of everything the controller sends.
pub const SOURCE: &str = "/ferry/controller";

fn v5(name: &str) -> Uuid {
    ferry_protocol::envelope::deterministic_id(name)
}

/// The deploy a release triggers in `env`: `release/<service>/<version>/<env>`.
pub(crate) fn release_deploy(service: &ServiceName, version: &Version, env: &EnvName) -> Uuid {
    v5(&format!("release/{service}/{version}/{env}"))
}

/// The command an API request asks for, derived from the request's own
/// envelope id so that a client retrying the same request issues nothing new.
pub(crate) fn api_command(request_id: Uuid, env: &EnvName, service: &ServiceName) -> Uuid {
    v5(&format!("api/{request_id}/{env}/{service}"))
}

/// The history record about `subject_id` (a command or an event) with `outcome`.
pub(crate) fn history(subject_id: Uuid, outcome: &str) -> Uuid {
    v5(&format!("history/{subject_id}/{outcome}"))
}

/// A promotion's transition worth recording once (`awaiting_approval`,
/// `blocked`, `rejected`): `promotion/<service>/<version>/<env>/<what>`.
pub(crate) fn promotion(
    service: &ServiceName,
    version: &Version,
    env: &EnvName,
    what: &str,
) -> Uuid {
    v5(&format!("promotion/{service}/{version}/{env}/{what}"))
}

/// The deploy that brings `host` to the version its environment settled
/// on, once per agent process (`agent_id` changes at every start), so a
/// host that comes back or joins is converged once per start.
pub(crate) fn convergence(
    env: &EnvName,
    service: &ServiceName,
    host: &HostName,
    version: &Version,
    agent_id: &str,
) -> Uuid {
    v5(&format!(
        "converge/{env}/{service}/{host}/{version}/{agent_id}"
    ))
}

/// The history record of a release's publication.
pub(crate) fn release_published(service: &ServiceName, version: &Version) -> Uuid {
    v5(&format!("history/release/{service}/{version}/published"))
}

/// The history record of a release event the controller rejected, by the
/// service and the time JetStream stored the event.
pub(crate) fn release_rejected(service: &ServiceName, stored_at: time::OffsetDateTime) -> Uuid {
    v5(&format!(
        "history/release/{service}/{}/rejected",
        stored_at.unix_timestamp_nanos()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let web = ServiceName::new("web").unwrap();
        let v1 = Version::new("1.0.0").unwrap();
        let dev = EnvName::new("dev").unwrap();
        let acc = EnvName::new("acceptance").unwrap();
        let a = release_deploy(&web, &v1, &dev);
        assert_eq!(a, release_deploy(&web, &v1, &dev));
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(a, release_deploy(&web, &v1, &acc));
        assert_ne!(
            a,
            release_deploy(&web, &Version::new("1.0.1").unwrap(), &dev)
        );
        let request = Uuid::new_v4();
        assert_eq!(
            api_command(request, &dev, &web),
            api_command(request, &dev, &web)
        );
        assert_ne!(
            api_command(request, &dev, &web),
            api_command(Uuid::new_v4(), &dev, &web)
        );
        assert_ne!(history(a, "issued"), history(a, "succeeded"));
        // Pinned so that an accidental change of namespace or format is caught:
        // it would make every controller re-issue what it already issued.
        assert_eq!(a.to_string(), "91ce9d56-50c1-5403-b46e-53a8384d6a41");
    }
}
