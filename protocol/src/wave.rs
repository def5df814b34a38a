//! Host-by-host deploys: when an environment has several hosts, a deploy
//! moves one canary host first (with the service's strategy and analysis),
//! then the others in batches of `max_parallel_hosts`, each gated on the
//! previous batch's success. A failure stops the wave and sends the hosts
//! already moved back to what they ran, so the environment converges on one
//! version. This is the wave as the controller stores it (without the
//! command it repeats, which may carry secrets) and as `ferry status`
//! shows it.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::names::{HostName, Version};

/// Hosts a wave moves at once after its canary host, when neither the
/// environment nor the deploy says.
pub const DEFAULT_MAX_PARALLEL_HOSTS: u32 = 1;
/// Most hosts one wave moves at once (a command names at most
/// [`crate::command::MAX_HOSTS`]).
pub const MAX_PARALLEL_HOSTS: u32 = crate::command::MAX_HOSTS as u32;

/// Where a wave stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveState {
    /// Hosts are moving.
    Running,
    /// Every host runs the new version.
    Succeeded,
    /// A host failed: the wave stopped and the moved hosts went back.
    Failed,
    /// A newer deploy to the environment replaced it.
    Superseded,
}

impl WaveState {
    /// The word `ferry status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            WaveState::Running => "running",
            WaveState::Succeeded => "succeeded",
            WaveState::Failed => "failed",
            WaveState::Superseded => "superseded",
        }
    }
}

impl fmt::Display for WaveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one host of a wave stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Waiting for its batch.
    Planned,
    /// Its deploy is issued.
    Issued,
    /// It runs the new version.
    Succeeded,
    /// Its deploy failed (or its agent stopped answering); it stopped the wave.
    Failed,
    /// Not moved: the wave stopped before its batch.
    Skipped,
    /// Moved, then sent back to its previous version; the rollback is issued.
    Reverting,
    /// Moved, then back on its previous version.
    Reverted,
}

impl StepState {
    /// The word `ferry status --hosts` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Planned => "planned",
            StepState::Issued => "issued",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::Reverting => "reverting",
            StepState::Reverted => "reverted",
        }
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host's part in a wave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveStep {
    /// The host.
    pub host: HostName,
    /// What it ran when the wave started (what a revert goes back to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Version>,
    /// Where it stands.
    pub state: StepState,
    /// Its deploy's command id (deterministic: the wave's id and the host).
    pub command_id: Uuid,
    /// Its revert's command id, once one is issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_id: Option<Uuid>,
    /// When its deploy (or revert) was last issued.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub issued_at: Option<OffsetDateTime>,
    /// Why it failed, or how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A host-by-host deploy of one service in one environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    /// The deploy's id (the command id a single-host deploy would have had).
    pub id: Uuid,
    /// The version it brings.
    pub version: Version,
    /// Where it stands.
    pub state: WaveState,
    /// Hosts moved at once after the canary host.
    pub max_parallel_hosts: u32,
    /// Every host, the canary host first, in the order they move.
    pub steps: Vec<WaveStep>,
    /// The version the environment converges on: the new one once the wave
    /// succeeded, the one its hosts ran before when it failed; none while
    /// it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled: Option<Version>,
    /// A sentence for people: the outcome, naming a failing host and why.
    pub detail: String,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Wave {
    /// The canary host: the first to move.
    pub fn canary_host(&self) -> Option<&HostName> {
        self.steps.first().map(|s| &s.host)
    }

    /// The step of `host`, if the wave has one.
    pub fn step(&self, host: &HostName) -> Option<&WaveStep> {
        self.steps.iter().find(|s| &s.host == host)
    }
}
