//! The agent's local state file: per service the current and previous
//! releases, the releases it can roll back to, the replica count and
//! maintenance; and the ids of executed commands. Written atomically (temp
//! file, fsync, rename, fsync of the directory) so a crash leaves either the
//! old or the new file, never half of one.
//!
//! This is a local file format, not a wire format: it is versioned by its
//! `format` field and read only by this crate.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_protocol::command::ReleaseSpec;
use ferry_protocol::event::MaintenanceInfo;
use ferry_protocol::{ServiceName, Version};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::Error;

const FORMAT: u32 = 1;
/// Releases kept per service for rollback.
pub const KNOWN_RELEASES: usize = 10;
/// Executed command ids kept at most; older ones are also dropped once their
/// command has expired, since an expired command is refused anyway.
pub const MAX_EXECUTED: usize = 100_000;

/// What the agent remembers about one service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The release serving now.
    pub current: Option<ReleaseSpec>,
    /// The release that served before it.
    pub previous: Option<ReleaseSpec>,
    /// Releases it can roll back to, newest last.
    #[serde(default)]
    pub known: Vec<ReleaseSpec>,
    /// Replicas wanted.
    pub replicas: u32,
    /// Maintenance in force.
    #[serde(default)]
    pub maintenance: Option<MaintenanceInfo>,
}

impl ServiceRecord {
    /// Records that `release` now serves: the old current becomes previous.
    pub fn promote(&mut self, release: ReleaseSpec) {
        if self.current.as_ref().map(|c| &c.version) != Some(&release.version) {
            self.previous = self.current.take();
        }
        self.known.retain(|r| r.version != release.version);
        self.known.push(release.clone());
        if self.known.len() > KNOWN_RELEASES {
            let excess = self.known.len() - KNOWN_RELEASES;
            self.known.drain(..excess);
        }
        self.current = Some(release);
    }

    /// A release this agent still knows.
    pub fn find(&self, version: &Version) -> Option<&ReleaseSpec> {
        self.known.iter().rev().find(|r| &r.version == version)
    }
}

/// An executed command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Executed {
    /// Its id.
    pub id: Uuid,
    /// Its expiry; after it the id need not be kept.
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    services: BTreeMap<ServiceName, ServiceRecord>,
    executed: VecDeque<Executed>,
}

/// The state, in memory and on disk.
#[derive(Debug)]
pub struct State {
    path: PathBuf,
    services: BTreeMap<ServiceName, ServiceRecord>,
    executed: VecDeque<Executed>,
    executed_ids: HashSet<Uuid>,
}

impl State {
    /// Loads `dir/state.json`, or starts empty when there is none.
    pub fn load(dir: &Path) -> Result<State, Error> {
        let path = dir.join("state.json");
        std::fs::create_dir_all(dir).map_err(|source| Error::State {
            path: dir.to_path_buf(),
            source,
        })?;
        let file: StateFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::CorruptState {
                path: path.clone(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile {
                format: FORMAT,
                ..Default::default()
            },
            Err(source) => return Err(Error::State { path, source }),
        };
        if file.format != FORMAT {
            return Err(Error::CorruptState {
                path,
                detail: format!("format {} is not the supported {FORMAT}", file.format),
            });
        }
        let executed_ids = file.executed.iter().map(|e| e.id).collect();
        Ok(State {
            path,
            services: file.services,
            executed: file.executed,
            executed_ids,
        })
    }

    /// The record of `service` (empty if never deployed).
    pub fn service(&self, service: &ServiceName) -> ServiceRecord {
        self.services.get(service).cloned().unwrap_or_default()
    }

    /// Replaces the record of `service` in memory; call [`State::save`] to persist.
    pub fn set_service(&mut self, service: &ServiceName, record: ServiceRecord) {
        self.services.insert(service.clone(), record);
    }

    /// Whether command `id` was executed.
    pub fn was_executed(&self, id: &Uuid) -> bool {
        self.executed_ids.contains(id)
    }

    /// Records command `id` as executed, pruning ids whose commands have expired.
    pub fn mark_executed(&mut self, id: Uuid, expires: OffsetDateTime, now: OffsetDateTime) {
        if self.executed_ids.insert(id) {
            self.executed.push_back(Executed { id, expires });
        }
        while let Some(front) = self.executed.front() {
            if front.expires < now || self.executed.len() > MAX_EXECUTED {
                self.executed_ids.remove(&front.id);
                self.executed.pop_front();
            } else {
                break;
            }
        }
    }

    /// Writes the state atomically.
    pub fn save(&self) -> Result<(), Error> {
        let file = StateFile {
            format: FORMAT,
            services: self.services.clone(),
            executed: self.executed.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| Error::CorruptState {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        let io = |source| Error::State {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or_else(|| Path::new("."));
        let tmp = dir.join(".state.json.tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }

    /// Every service with a record.
    pub fn services(&self) -> impl Iterator<Item = (&ServiceName, &ServiceRecord)> {
        self.services.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn release(v: &str) -> ReleaseSpec {
        ReleaseSpec {
            version: Version::new(v).unwrap(),
            artifact: "/bin/true".into(),
            digest: None,
            env: Default::default(),
        }
    }

    #[test]
    fn promote_keeps_previous_and_a_bounded_history() {
        let mut record = ServiceRecord::default();
        for i in 0..15 {
            record.promote(release(&format!("1.{i}")));
        }
        assert_eq!(record.current.as_ref().unwrap().version.as_str(), "1.14");
        assert_eq!(record.previous.as_ref().unwrap().version.as_str(), "1.13");
        assert_eq!(record.known.len(), KNOWN_RELEASES);
        assert!(record.find(&Version::new("1.5").unwrap()).is_some());
        assert!(record.find(&Version::new("1.4").unwrap()).is_none());
        // Redeploying the current version does not lose the previous one.
        record.promote(release("1.14"));
        assert_eq!(record.previous.as_ref().unwrap().version.as_str(), "1.13");
    }

    #[test]
    fn state_survives_a_reload_and_forgets_expired_ids() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let svc = ServiceName::new("web").unwrap();
        let (old, fresh) = (Uuid::new_v4(), Uuid::new_v4());
        {
            let mut state = State::load(dir.path()).unwrap();
            let mut record = state.service(&svc);
            record.promote(release("2.0"));
            record.replicas = 3;
            state.set_service(&svc, record);
            state.mark_executed(old, now + Duration::from_secs(1), now);
            state.mark_executed(fresh, now + Duration::from_secs(3600), now);
            state.save().unwrap();
        }
        let mut state = State::load(dir.path()).unwrap();
        assert_eq!(state.service(&svc).replicas, 3);
        assert!(state.was_executed(&old) && state.was_executed(&fresh));
        state.mark_executed(
            Uuid::new_v4(),
            now + Duration::from_secs(3600),
            now + Duration::from_secs(10),
        );
        assert!(!state.was_executed(&old));
        assert!(state.was_executed(&fresh));
    }

    #[test]
    fn a_corrupt_state_file_is_reported_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), b"{not json").unwrap();
        assert!(matches!(
            State::load(dir.path()),
            Err(Error::CorruptState { .. })
        ));
    }
}
