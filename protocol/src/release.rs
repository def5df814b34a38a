//! Release events CI publishes on `ferry.v1.release.<service>`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::ReleaseSpec;
use crate::names::{ServiceName, Version};
use crate::{Error, Payload};

/// A new release of a service, built and tested by CI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The service.
    pub service: ServiceName,
    /// Its version.
    pub version: Version,
    /// Executable path (process runtime) or image reference (Docker, Kubernetes).
    pub artifact: String,
    /// Content digest, e.g. `sha256:...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Environment variables the release runs with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Who made it (commit author or CI actor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Source commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// A hotfix takes the short canary path (see the progressive delivery docs).
    #[serde(default)]
    pub hotfix: bool,
}

impl Release {
    /// What an agent runs for this release.
    pub fn spec(&self) -> ReleaseSpec {
        ReleaseSpec {
            version: self.version.clone(),
            artifact: self.artifact.clone(),
            digest: self.digest.clone(),
            env: self.env.clone(),
        }
    }

    /// Size and character checks.
    pub fn validate(&self) -> Result<(), Error> {
        self.spec().validate()
    }
}

impl Payload for Release {
    fn event_type(&self) -> &'static str {
        "ferry.v1.release.published"
    }
}
