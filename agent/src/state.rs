//! The agent's local state: `state.json`, per service the current and
//! previous releases, the releases it can roll back to, the replica count and
//! maintenance, written atomically (temp file, fsync, rename, fsync of the
//! directory) so a crash leaves either the old or the new file; and
//! `executed.log`, the ids of executed commands, one appended (and synced)
//! line per command so recording one costs the same after ten thousand,
//! compacted when the agent starts and whenever expired lines dominate.
//!
//! This is a local file format, not a wire format: it is versioned by its
//! `format` field and read only by this crate.

use std::collections::{BTreeMap, HashMap};
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

/// How long past its command's expiry an executed id may linger before a
/// prune drops it: pruning scans every id, so it runs at most this often
/// under a steady stream of commands, and an id kept a little longer is
/// harmless (its command is refused as expired anyway).
const PRUNE_GRACE_SECS: i64 = 5;

/// The ids of executed commands, each with its command's expiry in Unix
/// seconds: one map entry (about 25 bytes) per id, since the agent keeps
/// every id until its command expires (an hour by default) and ten thousand
/// commands must not grow its memory by more than a few percent.
#[derive(Debug, Default)]
struct ExecutedIds {
    expiries: HashMap<Uuid, i64>,
    /// The earliest expiry in `expiries` (`i64::MAX` when empty).
    earliest: i64,
}

impl ExecutedIds {
    fn new() -> Self {
        ExecutedIds {
            expiries: HashMap::new(),
            earliest: i64::MAX,
        }
    }

    fn contains(&self, id: &Uuid) -> bool {
        self.expiries.contains_key(id)
    }

    fn len(&self) -> usize {
        self.expiries.len()
    }

    /// Adds `id`; false when it was there already.
    fn insert(&mut self, id: Uuid, expires: i64) -> bool {
        if self.expiries.contains_key(&id) {
            return false;
        }
        self.expiries.insert(id, expires);
        self.earliest = self.earliest.min(expires);
        true
    }

    /// Drops the ids whose commands expired (once the earliest is
    /// [`PRUNE_GRACE_SECS`] past) and, above [`MAX_EXECUTED`], those expiring
    /// first.
    fn prune(&mut self, now: i64) {
        let expired = now > self.earliest.saturating_add(PRUNE_GRACE_SECS);
        let over = self.expiries.len() > MAX_EXECUTED;
        if !expired && !over {
            // `insert` keeps `earliest` up to date: nothing to scan.
            return;
        }
        if expired {
            self.expiries.retain(|_, expires| *expires >= now);
        }
        if self.expiries.len() > MAX_EXECUTED {
            let mut by_expiry: Vec<i64> = self.expiries.values().copied().collect();
            let excess = by_expiry.len() - MAX_EXECUTED;
            // The last expiry dropped: all below it go, and of those equal
            // to it as many as make up the excess.
            let (below, cut, _) = by_expiry.select_nth_unstable(excess - 1);
            let cut = *cut;
            let mut equal_to_drop = excess - below.iter().filter(|e| **e < cut).count();
            self.expiries.retain(|_, expires| {
                if *expires < cut {
                    return false;
                }
                if *expires == cut && equal_to_drop > 0 {
                    equal_to_drop -= 1;
                    return false;
                }
                true
            });
        }
        self.earliest = self.expiries.values().copied().min().unwrap_or(i64::MAX);
    }

    fn journal_text(&self) -> String {
        let mut text = String::with_capacity(self.expiries.len() * 64);
        for (id, expires) in &self.expiries {
            text.push_str(&journal_line(*id, *expires));
        }
        text
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    services: BTreeMap<ServiceName, ServiceRecord>,
}

/// The state, in memory and on disk.
#[derive(Debug)]
pub struct State {
    path: PathBuf,
    journal: PathBuf,
    services: BTreeMap<ServiceName, ServiceRecord>,
    executed: ExecutedIds,
    journal_lines: usize,
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
        let journal = dir.join("executed.log");
        let mut state = State {
            path,
            journal,
            services: file.services,
            executed: ExecutedIds::new(),
            journal_lines: 0,
        };
        state.load_journal(OffsetDateTime::now_utc())?;
        Ok(state)
    }

    fn load_journal(&mut self, now: OffsetDateTime) -> Result<(), Error> {
        let text = match std::fs::read_to_string(&self.journal) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(Error::State {
                    path: self.journal.clone(),
                    source,
                })
            }
        };
        for line in text.lines() {
            // A torn last line (a crash mid-append) is skipped: that command's
            // outcome was not acknowledged, so JetStream delivers it again.
            let Some((id, expires)) = line.split_once(' ') else {
                continue;
            };
            let (Ok(id), Ok(expires)) = (
                id.parse::<Uuid>(),
                OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339),
            ) else {
                continue;
            };
            let expires = expires.unix_timestamp();
            if expires >= now.unix_timestamp() {
                self.executed.insert(id, expires);
            }
        }
        self.executed.prune(now.unix_timestamp());
        self.compact()
    }

    /// Rewrites the journal with only the live ids, atomically.
    fn compact(&mut self) -> Result<(), Error> {
        write_atomically(&self.journal, self.executed.journal_text().as_bytes())?;
        self.journal_lines = self.executed.len();
        Ok(())
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
        self.executed.contains(id)
    }

    /// Records command `id` as executed in memory, pruning ids whose commands
    /// have expired; returns the journal write (one appended, synced line, or
    /// a compaction) for the caller to perform off the async runtime.
    pub fn mark_executed(
        &mut self,
        id: Uuid,
        expires: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Option<StateWrite> {
        let expires = expires.unix_timestamp();
        if !self.executed.insert(id, expires) {
            return None;
        }
        self.executed.prune(now.unix_timestamp());
        if self.journal_lines > 2 * self.executed.len() + 1000 {
            self.journal_lines = self.executed.len();
            return Some(StateWrite::Replace {
                path: self.journal.clone(),
                bytes: self.executed.journal_text().into_bytes(),
            });
        }
        self.journal_lines += 1;
        Some(StateWrite::Append {
            path: self.journal.clone(),
            line: journal_line(id, expires),
        })
    }

    /// The write that replaces `state.json` with what is in memory now.
    pub fn snapshot(&self) -> Result<StateWrite, Error> {
        let file = StateFile {
            format: FORMAT,
            services: self.services.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| Error::CorruptState {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        Ok(StateWrite::Replace {
            path: self.path.clone(),
            bytes,
        })
    }

    /// Every service with a record.
    pub fn services(&self) -> impl Iterator<Item = (&ServiceName, &ServiceRecord)> {
        self.services.iter()
    }
}

/// A change of the state on disk. Made under the state's lock, performed
/// outside it and off the async runtime: fsync takes milliseconds, and the
/// proxy and the command intake share the runtime's threads.
#[derive(Debug)]
pub enum StateWrite {
    /// Temp file, fsync, rename, fsync of the directory.
    Replace {
        /// The file replaced.
        path: PathBuf,
        /// Its new content.
        bytes: Vec<u8>,
    },
    /// One line appended and synced.
    Append {
        /// The journal.
        path: PathBuf,
        /// The line, with its newline.
        line: String,
    },
}

impl StateWrite {
    /// Performs the write (blocking).
    pub fn perform(self) -> Result<(), Error> {
        match self {
            StateWrite::Replace { path, bytes } => write_atomically(&path, &bytes),
            StateWrite::Append { path, line } => {
                let io = |source| Error::State {
                    path: path.clone(),
                    source,
                };
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io)?;
                file.write_all(line.as_bytes()).map_err(io)?;
                file.sync_data().map_err(io)
            }
        }
    }
}

fn journal_line(id: Uuid, expires_unix: i64) -> String {
    let expires = OffsetDateTime::from_unix_timestamp(expires_unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    format!("{id} {expires}\n")
}

/// Temp file, fsync, rename, fsync of the directory: a crash leaves the old
/// file or the new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |source| Error::State {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
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
            for id in [old, fresh] {
                let expires = now + Duration::from_secs(if id == old { 1 } else { 3600 });
                state
                    .mark_executed(id, expires, now)
                    .unwrap()
                    .perform()
                    .unwrap();
            }
            state.snapshot().unwrap().perform().unwrap();
        }
        let mut state = State::load(dir.path()).unwrap();
        assert_eq!(state.service(&svc).replicas, 3);
        assert!(state.was_executed(&old) && state.was_executed(&fresh));
        state
            .mark_executed(
                Uuid::new_v4(),
                now + Duration::from_secs(3600),
                now + Duration::from_secs(10),
            )
            .unwrap()
            .perform()
            .unwrap();
        // The journal is what survives: a reload sees the same live ids.
        let reloaded = State::load(dir.path()).unwrap();
        assert!(reloaded.was_executed(&fresh));
        assert!(!state.was_executed(&old));
        assert!(state.was_executed(&fresh));
    }

    #[test]
    fn executed_ids_past_the_cap_drop_those_expiring_first() {
        let mut ids = ExecutedIds::new();
        let now = 1_000;
        let first: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
        for id in &first {
            assert!(ids.insert(*id, now + 10));
        }
        for i in 0..MAX_EXECUTED {
            ids.insert(Uuid::new_v4(), now + 100 + i as i64);
        }
        assert!(!ids.insert(first[0], now + 10), "an id is recorded once");
        ids.prune(now);
        assert_eq!(ids.len(), MAX_EXECUTED);
        assert!(first.iter().all(|id| !ids.contains(id)));
        // Expired ones go once the earliest is past its grace.
        ids.prune(now + 100 + PRUNE_GRACE_SECS + 1);
        assert_eq!(ids.len(), MAX_EXECUTED - (PRUNE_GRACE_SECS as usize + 1));
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
