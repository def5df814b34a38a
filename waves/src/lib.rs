//! The wave planner: a wave as the controller keeps it (`ferry_waves`,
//! keyed `<env>.<service>`) and how it moves, as pure transitions with no IO,
//! tested without a server; the controller applies them with the bucket's
//! compare-and-set. Each transition says which steps are now issued or
//! reverting; their commands carry deterministic ids ([`step_id`]), so
//! issuing them again (a second controller, a restarted one, the sweep)
//! stores nothing new.

use std::collections::BTreeMap;

use ferry_protocol::command::{Action, Command, RollbackTarget};
use ferry_protocol::wave::{StepState, Wave, WaveState, WaveStep};
use ferry_protocol::{EnvName, HostName, ServiceName, Version};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// One host's step of a wave: its deploy (`deploy`) or its revert
/// (`revert`), `wave/<wave id>/<host>/<what>`, so every controller instance
/// issues the same step under the same id.
pub fn step_id(wave: Uuid, host: &HostName, what: &str) -> Uuid {
    ferry_protocol::envelope::deterministic_id(&format!("wave/{wave}/{host}/{what}"))
}

/// A wave and the deploy each of its hosts repeats.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaveRecord {
    /// The environment.
    pub environment: EnvName,
    /// The service.
    pub service: ServiceName,
    /// Where it stands (what `ferry status` shows).
    pub wave: Wave,
    /// The deploy as asked, addressed to no host: each step sends it to one.
    /// Storage only: it may carry a release's variables, so it is never shown.
    pub command: Command,
}

/// A host the wave may move, and what it runs now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The host.
    pub host: HostName,
    /// The version it serves, if any.
    pub version: Option<Version>,
}

impl WaveRecord {
    /// Plans a wave of `command` (a deploy) under `id` across `hosts`: the
    /// first by name is the canary host, the others follow in name order.
    pub fn plan(
        id: Uuid,
        command: Command,
        mut hosts: Vec<Candidate>,
        max_parallel_hosts: u32,
        now: OffsetDateTime,
    ) -> Option<WaveRecord> {
        let Action::Deploy { release, .. } = &command.action else {
            return None;
        };
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        hosts.dedup_by(|a, b| a.host == b.host);
        let steps = hosts
            .into_iter()
            .map(|c| WaveStep {
                command_id: step_id(id, &c.host, "deploy"),
                host: c.host,
                previous: c.version,
                state: StepState::Planned,
                revert_id: None,
                issued_at: None,
                detail: None,
            })
            .collect();
        let wave = Wave {
            id,
            version: release.version.clone(),
            state: WaveState::Running,
            max_parallel_hosts: max_parallel_hosts.max(1),
            steps,
            settled: None,
            detail: String::new(),
            started_at: now,
            updated_at: now,
        };
        let mut record = WaveRecord {
            environment: command.environment.clone(),
            service: command.service.clone(),
            command: Command {
                hosts: Vec::new(),
                ..command
            },
            wave,
        };
        record.advance(now);
        Some(record)
    }

    /// The command of one step: the deploy to `host`, or its revert.
    pub fn step_command(&self, step: &WaveStep) -> Option<(Uuid, Command)> {
        match step.state {
            StepState::Issued => Some((
                step.command_id,
                Command {
                    hosts: vec![step.host.clone()],
                    ..self.command.clone()
                },
            )),
            StepState::Reverting => {
                let (Some(id), Some(previous)) = (step.revert_id, step.previous.as_ref()) else {
                    return None;
                };
                Some((
                    id,
                    Command {
                        environment: self.environment.clone(),
                        service: self.service.clone(),
                        actor: Some(format!("wave {} (revert)", self.wave.id)),
                        hosts: vec![step.host.clone()],
                        action: Action::Rollback {
                            to: RollbackTarget::Version(previous.clone()),
                            force: false,
                            dry_run: false,
                        },
                    },
                ))
            }
            _ => None,
        }
    }

    /// The steps whose commands are out (deploys issued, reverts under way).
    pub fn outstanding(&self) -> impl Iterator<Item = &WaveStep> {
        self.wave
            .steps
            .iter()
            .filter(|s| matches!(s.state, StepState::Issued | StepState::Reverting))
    }

    /// Moves a running wave on: the canary host first; once it succeeded,
    /// the next batch of `max_parallel_hosts` when the previous batch has
    /// all succeeded; done when every host has. Returns whether it changed.
    pub fn advance(&mut self, now: OffsetDateTime) -> bool {
        if self.wave.state != WaveState::Running {
            return false;
        }
        if self.wave.steps.iter().any(|s| s.state == StepState::Issued) {
            return false;
        }
        if self
            .wave
            .steps
            .iter()
            .all(|s| s.state == StepState::Succeeded)
        {
            let hosts = self.wave.steps.len();
            self.wave.state = WaveState::Succeeded;
            self.wave.settled = Some(self.wave.version.clone());
            self.wave.detail = format!("{hosts}/{hosts} hosts on {}", self.wave.version);
            self.wave.updated_at = now;
            return true;
        }
        // The canary host alone, then batches.
        let batch = if self.wave.steps.first().map(|s| s.state) == Some(StepState::Planned) {
            1
        } else {
            self.wave.max_parallel_hosts.max(1) as usize
        };
        let mut issued = 0;
        for step in self.wave.steps.iter_mut() {
            if issued == batch {
                break;
            }
            if step.state == StepState::Planned {
                step.state = StepState::Issued;
                step.issued_at = Some(now);
                issued += 1;
            }
        }
        if issued > 0 {
            self.wave.updated_at = now;
        }
        issued > 0
    }

    /// An outcome of command `id` from `host`: a step's deploy or revert
    /// finished. Returns whether the wave changed.
    pub fn on_outcome(
        &mut self,
        id: Uuid,
        host: Option<&HostName>,
        succeeded: bool,
        detail: &str,
        now: OffsetDateTime,
    ) -> bool {
        let Some(index) = self
            .wave
            .steps
            .iter()
            .position(|s| s.command_id == id || s.revert_id == Some(id))
        else {
            return false;
        };
        let step = &self.wave.steps[index];
        if host.is_some_and(|h| h != &step.host) {
            // Only the addressed host runs a step; anything else is noise.
            return false;
        }
        let is_revert = step.revert_id == Some(id);
        match (is_revert, step.state, succeeded) {
            (false, StepState::Issued, true) => {
                if self.wave.state == WaveState::Running {
                    self.wave.steps[index].state = StepState::Succeeded;
                    self.wave.updated_at = now;
                    self.advance(now);
                } else {
                    // Finished after the wave stopped: it moved, so it goes back.
                    self.revert(index, now);
                }
                true
            }
            (false, StepState::Issued, false) => {
                let host = self.wave.steps[index].host.clone();
                self.wave.steps[index].state = StepState::Failed;
                self.wave.steps[index].detail = Some(detail.to_owned());
                self.fail(&host, detail, now);
                true
            }
            (true, StepState::Reverting, _) => {
                let step = &mut self.wave.steps[index];
                step.state = StepState::Reverted;
                if !succeeded {
                    step.detail = Some(format!("revert failed: {detail}"));
                }
                self.wave.updated_at = now;
                true
            }
            _ => false,
        }
    }

    /// `host`'s agent stopped sending heartbeats while its step was issued:
    /// the step fails with that reason. Returns whether the wave changed.
    pub fn host_lost(&mut self, host: &HostName, now: OffsetDateTime) -> bool {
        let Some(index) = self
            .wave
            .steps
            .iter()
            .position(|s| &s.host == host && s.state == StepState::Issued)
        else {
            return false;
        };
        if self.wave.state != WaveState::Running {
            return false;
        }
        let reason = "its agent stopped sending heartbeats";
        self.wave.steps[index].state = StepState::Failed;
        self.wave.steps[index].detail = Some(reason.to_owned());
        self.fail(host, reason, now);
        true
    }

    /// Replaced by a newer deploy to the environment.
    pub fn supersede(&mut self, by: Uuid, now: OffsetDateTime) {
        if self.wave.state == WaveState::Running {
            self.wave.state = WaveState::Superseded;
            self.wave.detail = format!("superseded by deploy {by}");
            self.wave.updated_at = now;
        }
    }

    /// Stops the wave because `host` failed: hosts not reached are
    /// skipped, hosts already moved go back to what they ran, and the
    /// environment settles on the version most of its hosts ran before.
    fn fail(&mut self, host: &HostName, reason: &str, now: OffsetDateTime) {
        self.wave.state = WaveState::Failed;
        self.wave.updated_at = now;
        for index in 0..self.wave.steps.len() {
            match self.wave.steps[index].state {
                StepState::Planned => self.wave.steps[index].state = StepState::Skipped,
                StepState::Succeeded => self.revert(index, now),
                _ => {}
            }
        }
        self.wave.settled = settled_before(&self.wave.steps);
        let reverted: Vec<String> = self
            .wave
            .steps
            .iter()
            .filter(|s| s.revert_id.is_some())
            .map(|s| s.host.to_string())
            .collect();
        let back = match (&self.wave.settled, reverted.is_empty()) {
            (Some(v), false) => format!("; {} sent back to {v}", reverted.join(", ")),
            (Some(v), true) => format!("; no other host had moved, the environment stays on {v}"),
            (None, _) => String::new(),
        };
        self.wave.detail = format!(
            "wave of {} stopped: host {host} failed: {reason}{back}",
            self.wave.version
        );
    }

    /// Sends a moved host back to the version it ran before.
    fn revert(&mut self, index: usize, now: OffsetDateTime) {
        let wave_id = self.wave.id;
        let step = &mut self.wave.steps[index];
        match &step.previous {
            Some(previous) if previous != &self.wave.version => {
                step.state = StepState::Reverting;
                step.revert_id = Some(step_id(wave_id, &step.host, "revert"));
                step.issued_at = Some(now);
            }
            _ => {
                step.state = StepState::Reverted;
                step.detail = Some("ran nothing older to go back to".to_owned());
            }
        }
    }
}

/// The version most hosts ran before the wave (ties: the canary host's).
fn settled_before(steps: &[WaveStep]) -> Option<Version> {
    let mut counts: BTreeMap<&Version, usize> = BTreeMap::new();
    for step in steps {
        if let Some(v) = &step.previous {
            *counts.entry(v).or_default() += 1;
        }
    }
    let best = counts.values().copied().max()?;
    steps
        .iter()
        .filter_map(|s| s.previous.as_ref())
        .find(|v| counts.get(v) == Some(&best))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::command::ReleaseSpec;

    fn host(name: &str) -> HostName {
        HostName::new(name).unwrap()
    }

    fn v(version: &str) -> Version {
        Version::new(version).unwrap()
    }

    fn deploy(version: &str) -> Command {
        Command {
            environment: EnvName::new("production").unwrap(),
            service: ServiceName::new("web").unwrap(),
            actor: Some("pipeline".into()),
            hosts: Vec::new(),
            action: Action::Deploy {
                release: ReleaseSpec {
                    version: v(version),
                    artifact: "/ferry-sample".into(),
                    digest: None,
                    env: Default::default(),
                },
                replicas: None,
                health: None,
                approvals: Vec::new(),
                rollout: None,
                hotfix: false,
            },
        }
    }

    fn three_hosts(parallel: u32) -> WaveRecord {
        let hosts = ["web-3", "web-1", "web-2"]
            .into_iter()
            .map(|h| Candidate {
                host: host(h),
                version: Some(v("1.3.0")),
            })
            .collect();
        WaveRecord::plan(
            Uuid::new_v4(),
            deploy("1.4.0"),
            hosts,
            parallel,
            OffsetDateTime::UNIX_EPOCH,
        )
        .unwrap()
    }

    fn states(record: &WaveRecord) -> Vec<StepState> {
        record.wave.steps.iter().map(|s| s.state).collect()
    }

    fn succeed(record: &mut WaveRecord, name: &str) -> bool {
        let id = record.wave.step(&host(name)).unwrap().command_id;
        record.on_outcome(
            id,
            Some(&host(name)),
            true,
            "ok",
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    use StepState::*;

    #[test]
    fn the_canary_host_goes_alone_first_then_the_others_in_batches() {
        let mut wave = three_hosts(1);
        assert_eq!(wave.wave.canary_host(), Some(&host("web-1")));
        assert_eq!(states(&wave), [Issued, Planned, Planned]);
        // The step is addressed to its host alone.
        let (id, command) = wave.step_command(&wave.wave.steps[0]).unwrap();
        assert_eq!(id, wave.wave.steps[0].command_id);
        assert_eq!(command.hosts, vec![host("web-1")]);
        assert!(succeed(&mut wave, "web-1"));
        assert_eq!(states(&wave), [Succeeded, Issued, Planned]);
        assert!(succeed(&mut wave, "web-2"));
        assert_eq!(states(&wave), [Succeeded, Succeeded, Issued]);
        assert!(succeed(&mut wave, "web-3"));
        assert_eq!(wave.wave.state, WaveState::Succeeded);
        assert_eq!(wave.wave.settled, Some(v("1.4.0")));
        assert_eq!(wave.wave.detail, "3/3 hosts on 1.4.0");
        // The same outcome again changes nothing.
        assert!(!succeed(&mut wave, "web-3"));

        let mut wide = three_hosts(2);
        assert!(succeed(&mut wide, "web-1"));
        assert_eq!(states(&wide), [Succeeded, Issued, Issued]);
        assert!(succeed(&mut wide, "web-3"));
        assert_eq!(states(&wide), [Succeeded, Issued, Succeeded]);
        assert_eq!(wide.wave.state, WaveState::Running);
        assert!(succeed(&mut wide, "web-2"));
        assert_eq!(wide.wave.state, WaveState::Succeeded);
    }

    #[test]
    fn a_failed_canary_host_stops_the_wave_before_any_other_host_moves() {
        let mut wave = three_hosts(1);
        let id = wave.wave.steps[0].command_id;
        assert!(wave.on_outcome(
            id,
            Some(&host("web-1")),
            false,
            "error rate 20% > 5%",
            OffsetDateTime::UNIX_EPOCH
        ));
        assert_eq!(wave.wave.state, WaveState::Failed);
        assert_eq!(states(&wave), [Failed, Skipped, Skipped]);
        assert_eq!(wave.wave.settled, Some(v("1.3.0")));
        assert!(
            wave.wave
                .detail
                .contains("host web-1 failed: error rate 20% > 5%"),
            "{}",
            wave.wave.detail
        );
        assert_eq!(wave.outstanding().count(), 0);
    }

    #[test]
    fn a_host_failing_later_sends_the_moved_hosts_back() {
        let mut wave = three_hosts(1);
        succeed(&mut wave, "web-1");
        assert!(wave.host_lost(&host("web-2"), OffsetDateTime::UNIX_EPOCH));
        assert_eq!(states(&wave), [Reverting, Failed, Skipped]);
        assert!(
            wave.wave.detail.contains(
                "host web-2 failed: its agent stopped sending heartbeats; web-1 sent back to 1.3.0"
            ),
            "{}",
            wave.wave.detail
        );
        let revert = wave.wave.steps[0].clone();
        let (id, command) = wave.step_command(&revert).unwrap();
        assert_eq!(Some(id), revert.revert_id);
        assert_eq!(command.hosts, vec![host("web-1")]);
        assert!(
            matches!(command.action, Action::Rollback { to: RollbackTarget::Version(ref to), .. } if to == &v("1.3.0"))
        );
        // A late success of the lost host's deploy sends it back too.
        let late = wave.wave.steps[1].command_id;
        assert!(
            !wave.on_outcome(
                late,
                Some(&host("web-2")),
                true,
                "ok",
                OffsetDateTime::UNIX_EPOCH
            ),
            "a failed step stays failed"
        );
        assert!(wave.on_outcome(
            id,
            Some(&host("web-1")),
            true,
            "ok",
            OffsetDateTime::UNIX_EPOCH
        ));
        assert_eq!(states(&wave), [Reverted, Failed, Skipped]);
        // A host lost after the wave stopped changes nothing.
        assert!(!wave.host_lost(&host("web-3"), OffsetDateTime::UNIX_EPOCH));
    }

    #[test]
    fn an_outcome_from_another_host_or_command_is_ignored() {
        let mut wave = three_hosts(1);
        let id = wave.wave.steps[0].command_id;
        assert!(!wave.on_outcome(
            id,
            Some(&host("web-2")),
            true,
            "ok",
            OffsetDateTime::UNIX_EPOCH
        ));
        assert!(!wave.on_outcome(
            Uuid::new_v4(),
            Some(&host("web-1")),
            true,
            "ok",
            OffsetDateTime::UNIX_EPOCH
        ));
        assert_eq!(states(&wave), [Issued, Planned, Planned]);
    }

    #[test]
    fn step_ids_are_the_same_for_every_controller_planning_the_same_wave() {
        let id = Uuid::new_v4();
        let hosts = || {
            vec![
                Candidate {
                    host: host("b"),
                    version: None,
                },
                Candidate {
                    host: host("a"),
                    version: None,
                },
            ]
        };
        let one =
            WaveRecord::plan(id, deploy("2.0.0"), hosts(), 1, OffsetDateTime::UNIX_EPOCH).unwrap();
        let two =
            WaveRecord::plan(id, deploy("2.0.0"), hosts(), 1, OffsetDateTime::UNIX_EPOCH).unwrap();
        assert_eq!(one, two);
        assert_ne!(one.wave.steps[0].command_id, one.wave.steps[1].command_id);
    }
}
