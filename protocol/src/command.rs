//! Commands the controller sends to an environment's agent on
//! `ferry.v1.cmd.<env>.<service>`. Every command is signed and expires.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::approval::SignedApproval;
use crate::names::{EnvName, HostName, ServiceName, Version};
use crate::rollout::{RolloutControl, RolloutOptions};
use crate::{Error, Payload};

pub use crate::limits::MAX_REPLICAS;
/// Longest artifact reference accepted.
pub const MAX_ARTIFACT_LEN: usize = 1024;
/// Most environment variables a release may set.
pub const MAX_ENV_VARS: usize = 128;
/// Most approvals one deploy may carry.
pub const MAX_APPROVALS: usize = 32;
/// Longest maintenance message accepted.
pub const MAX_MESSAGE_LEN: usize = 1024;
/// Most hosts one command may name. A wave addresses one batch of hosts at
/// a time (`max_parallel_hosts`), and a command to every host names none.
pub const MAX_HOSTS: usize = 256;

/// What to run: one version of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSpec {
    /// The version.
    pub version: Version,
    /// What the runtime starts: a path to an executable for the process
    /// runtime, an image reference for Docker and Kubernetes.
    pub artifact: String,
    /// Content digest of the artifact (`sha256:...`), when CI knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Environment variables the release runs with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

impl ReleaseSpec {
    /// What approvals of this release sign: the digest, or the artifact
    /// reference when there is no digest.
    pub fn approval_digest(&self) -> String {
        self.digest.clone().unwrap_or_else(|| self.artifact.clone())
    }

    /// Checks sizes and characters: artifact and variables reach a runtime, so
    /// nothing that could smuggle a second argument or variable gets through.
    pub fn validate(&self) -> Result<(), Error> {
        if self.artifact.is_empty() || self.artifact.len() > MAX_ARTIFACT_LEN {
            return Err(Error::InvalidField {
                field: "artifact",
                reason: format!("must be 1 to {MAX_ARTIFACT_LEN} characters"),
            });
        }
        if self
            .artifact
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Error::InvalidField {
                field: "artifact",
                reason: "must not contain whitespace or control characters".into(),
            });
        }
        if self
            .artifact
            .split('/')
            .any(|segment| segment == ".." || segment == ".")
        {
            return Err(Error::InvalidField {
                field: "artifact",
                reason: format!(
                    "{:?} must not contain '.' or '..' path segments",
                    self.artifact.chars().take(80).collect::<String>()
                ),
            });
        }
        if self.env.len() > MAX_ENV_VARS {
            return Err(Error::InvalidField {
                field: "env",
                reason: format!("at most {MAX_ENV_VARS} variables"),
            });
        }
        for (name, value) in &self.env {
            let valid_name = !name.is_empty()
                && name.len() <= 128
                && name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                return Err(Error::InvalidField {
                    field: "env",
                    reason: format!("variable name {name:?} must match [A-Za-z_][A-Za-z0-9_]*"),
                });
            }
            if let Some(owner) = reserved_env_name(name) {
                return Err(Error::InvalidField {
                    field: "env",
                    reason: format!("variable {name} is reserved: {owner}"),
                });
            }
            if value.contains('\0') || value.len() > 32 * 1024 {
                return Err(Error::InvalidField {
                    field: "env",
                    reason: format!("value of {name} must be under 32 KiB without NUL bytes"),
                });
            }
        }
        Ok(())
    }
}

/// Why a release may not set the variable `name`, if it may not: ferry's own
/// (`PORT`, `FERRY_*`, which every runtime sets last anyway) and the dynamic
/// loader's (`LD_*`), which would change what code runs inside the artifact.
pub fn reserved_env_name(name: &str) -> Option<&'static str> {
    if name == "PORT" || name.starts_with("FERRY_") {
        Some("ferry sets it for every replica")
    } else if name.starts_with("LD_") {
        Some("dynamic-loader variables could load code the artifact does not contain")
    } else {
        None
    }
}

/// Per-deploy overrides of the service's configured health check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthOverride {
    /// HTTP path, e.g. `/health`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How long the new replicas have to become healthy, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout_secs: Option<u64>,
}

/// Which version a rollback goes to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackTarget {
    /// The version that ran before the current one.
    Previous,
    /// A named version the agent still knows.
    Version(Version),
}

impl fmt::Display for RollbackTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RollbackTarget::Previous => f.write_str("previous"),
            RollbackTarget::Version(v) => write!(f, "{v}"),
        }
    }
}

/// Maintenance on or off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum MaintenanceMode {
    /// Answer every request with 503 and `message` until disabled or `duration_secs` pass.
    Enable {
        /// Shown to callers.
        message: String,
        /// Ends by itself after this many seconds; `None` until disabled.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_secs: Option<u64>,
    },
    /// Serve again.
    Disable,
}

/// What an agent can be told to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Replace the running version with `release`, health-gated.
    Deploy {
        /// What to run.
        release: ReleaseSpec,
        /// Replicas; the current count (or the configured default) when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replicas: Option<u32>,
        /// Health check overrides.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        health: Option<HealthOverride>,
        /// Reviewers' signed approvals of exactly this release in this
        /// environment; an agent that requires approvals checks them itself.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        approvals: Vec<SignedApproval>,
        /// Strategy and analysis overrides (the service's configured ones
        /// otherwise).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollout: Option<Box<RolloutOptions>>,
        /// A hotfix takes the short canary: fewer, shorter steps, analysis kept.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hotfix: bool,
    },
    /// Go back to an earlier version.
    Rollback {
        /// Previous or a named version.
        to: RollbackTarget,
        /// Stop the current replicas before the target is healthy (for a current
        /// version that is itself broken or holding resources), and roll back even
        /// to the version already running.
        #[serde(default)]
        force: bool,
        /// Report what would happen; change nothing.
        #[serde(default)]
        dry_run: bool,
    },
    /// Change the number of replicas.
    Scale {
        /// The new count (0 stops the service).
        replicas: u32,
    },
    /// Maintenance on or off.
    Maintenance(MaintenanceMode),
    /// Acts on the rollout in progress (it goes to the running rollout, not
    /// into the service's command queue).
    Rollout {
        /// Pause, resume, promote or abort.
        control: RolloutControl,
    },
}

/// Short names of actions, for events, history and the CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// A deploy.
    Deploy,
    /// A rollback.
    Rollback,
    /// A scale.
    Scale,
    /// Maintenance on or off.
    Maintenance,
    /// Rollout control.
    Rollout,
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ActionKind::Deploy => "deploy",
            ActionKind::Rollback => "rollback",
            ActionKind::Scale => "scale",
            ActionKind::Maintenance => "maintenance",
            ActionKind::Rollout => "rollout",
        })
    }
}

impl Action {
    /// Its short name.
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Deploy { .. } => ActionKind::Deploy,
            Action::Rollback { .. } => ActionKind::Rollback,
            Action::Scale { .. } => ActionKind::Scale,
            Action::Maintenance(_) => ActionKind::Maintenance,
            Action::Rollout { .. } => ActionKind::Rollout,
        }
    }
}

/// A command to one service in one environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Target environment; must match the subject and the agent.
    pub environment: EnvName,
    /// Target service; must match the subject.
    pub service: ServiceName,
    /// Who asked for it (an operator, CI, or the controller's pipeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The hosts of the environment that carry it out; empty: every host.
    /// Inside the signed body, so a host cannot be added on the way, and the
    /// subject (and so every NATS permission) stays per environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostName>,
    /// What to do.
    #[serde(flatten)]
    pub action: Action,
}

impl Command {
    /// Whether the agent on `host` carries this command out.
    pub fn is_for(&self, host: &HostName) -> bool {
        self.hosts.is_empty() || self.hosts.contains(host)
    }

    /// Range and size checks beyond what the types enforce.
    pub fn validate(&self) -> Result<(), Error> {
        if self.hosts.len() > MAX_HOSTS {
            return Err(Error::InvalidField {
                field: "hosts",
                reason: format!("at most {MAX_HOSTS}"),
            });
        }
        match &self.action {
            Action::Deploy {
                release,
                replicas,
                health,
                approvals,
                rollout,
                ..
            } => {
                if approvals.len() > MAX_APPROVALS {
                    return Err(Error::InvalidField {
                        field: "approvals",
                        reason: format!("at most {MAX_APPROVALS}"),
                    });
                }
                release.validate()?;
                if let Some(rollout) = rollout {
                    rollout.validate()?;
                }
                if let Some(r) = replicas {
                    check_replicas(*r, 1)?;
                }
                if let Some(path) = health.as_ref().and_then(|h| h.path.as_ref()) {
                    check_health_path(path)?;
                }
                Ok(())
            }
            Action::Scale { replicas } => check_replicas(*replicas, 0),
            Action::Rollback { .. } => Ok(()),
            Action::Maintenance(MaintenanceMode::Enable { message, .. }) => {
                if message.len() > MAX_MESSAGE_LEN {
                    return Err(Error::InvalidField {
                        field: "message",
                        reason: format!("at most {MAX_MESSAGE_LEN} bytes"),
                    });
                }
                Ok(())
            }
            Action::Maintenance(MaintenanceMode::Disable) => Ok(()),
            Action::Rollout { .. } => Ok(()),
        }
    }
}

fn check_replicas(replicas: u32, min: u32) -> Result<(), Error> {
    if replicas < min || replicas > MAX_REPLICAS {
        return Err(Error::InvalidField {
            field: "replicas",
            reason: format!("{replicas} is outside {min}..={MAX_REPLICAS}"),
        });
    }
    Ok(())
}

/// A health path is an absolute URL path without a scheme, host or traversal.
pub fn check_health_path(path: &str) -> Result<(), Error> {
    let ok = path.starts_with('/')
        && path.len() <= 256
        && !path.contains("..")
        && path.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidField {
            field: "health.path",
            reason: format!("{path:?} must be an absolute path of printable ASCII without '..'"),
        })
    }
}

impl Payload for Command {
    fn event_type(&self) -> &'static str {
        match self.action.kind() {
            ActionKind::Deploy => "ferry.v1.command.deploy",
            ActionKind::Rollback => "ferry.v1.command.rollback",
            ActionKind::Scale => "ferry.v1.command.scale",
            ActionKind::Maintenance => "ferry.v1.command.maintenance",
            ActionKind::Rollout => "ferry.v1.command.rollout",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scale(hosts: &[&str]) -> Command {
        Command {
            environment: EnvName::new("production").unwrap(),
            service: ServiceName::new("web").unwrap(),
            actor: None,
            hosts: hosts.iter().map(|h| HostName::new(*h).unwrap()).collect(),
            action: Action::Scale { replicas: 2 },
        }
    }

    #[test]
    fn a_command_naming_no_host_is_for_every_host_and_one_naming_hosts_only_for_them() {
        let web1 = HostName::new("web-1").unwrap();
        let web2 = HostName::new("web-2").unwrap();
        assert!(scale(&[]).is_for(&web1));
        assert!(scale(&["web-1"]).is_for(&web1));
        assert!(!scale(&["web-1"]).is_for(&web2));
        // Absent from the wire when empty, so older agents read it unchanged.
        let json = serde_json::to_value(scale(&[])).unwrap();
        assert!(json.get("hosts").is_none());
        let json = serde_json::to_value(scale(&["web-1"])).unwrap();
        assert_eq!(json["hosts"], serde_json::json!(["web-1"]));
        let back: Command = serde_json::from_value(json).unwrap();
        assert_eq!(back, scale(&["web-1"]));
        // A bad host name is refused at decode, like any other name.
        let mut bad = serde_json::to_value(scale(&[])).unwrap();
        bad["hosts"] = serde_json::json!(["Web_1"]);
        assert!(serde_json::from_value::<Command>(bad).is_err());
    }

    #[test]
    fn a_command_naming_too_many_hosts_is_invalid() {
        let names: Vec<String> = (0..=MAX_HOSTS).map(|i| format!("h-{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(scale(&refs[..MAX_HOSTS]).validate().is_ok());
        assert!(matches!(
            scale(&refs).validate(),
            Err(Error::InvalidField { field: "hosts", .. })
        ));
    }
}
