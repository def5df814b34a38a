//! The agent's local state: per service the current and previous releases,
//! the releases it can roll back to, the replica count and maintenance; and
//! the ids of executed commands, so a replay is refused.
//!
//! Two files. `executed.log` is a journal: each command's outcome is one
//! appended, synced line holding the id of the command and the records it
//! changed, so a command costs one sync (one filesystem journal commit,
//! about 0.2 ms here, where the atomic replacement of a file costs three
//! times that) and its record and its executed mark land together or not at
//! all. `state.json` is the snapshot the journal's record lines are replayed
//! over, by sequence number; both are rewritten atomically (temp file,
//! fsync, rename, fsync of the directory) when the agent starts and
//! whenever the journal has grown past what it holds live.
//!
//! This is a local file format, not a wire format: `state.json` is versioned
//! by its `format` field, and journal lines are JSON objects (the id-only
//! lines of earlier agents, `<uuid> <RFC 3339 expiry>`, are still read); it
//! is read only by this crate.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
/// Bytes of record lines the journal may hold before it is folded into a
/// new snapshot (a record line is a few KiB: a few hundred commands).
const JOURNAL_RECORD_BYTES: usize = 1024 * 1024;

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

    /// The journal holding just these ids, one line each.
    fn journal_text(&self) -> Result<String, serde_json::Error> {
        let mut text = String::with_capacity(self.expiries.len() * 80);
        for (id, expires) in &self.expiries {
            text.push_str(&JournalLine::executed(*id, *expires).to_line()?);
        }
        Ok(text)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    /// The last journal sequence number folded into `services`: record
    /// lines up to it are older than the snapshot and are not replayed.
    #[serde(default)]
    seq: u64,
    services: BTreeMap<ServiceName, ServiceRecord>,
}

/// One journal line: a command's executed mark and the records it changed,
/// applied whole or (torn by a crash mid-append) not at all.
#[derive(Debug, Default, Serialize, Deserialize)]
struct JournalLine {
    /// Orders record changes against the snapshot; absent without records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    services: BTreeMap<ServiceName, ServiceRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    executed: Option<ExecutedMark>,
}

/// An executed command's id and its command's expiry (Unix seconds).
#[derive(Debug, Serialize, Deserialize)]
struct ExecutedMark {
    id: Uuid,
    expires: i64,
}

impl JournalLine {
    fn executed(id: Uuid, expires: i64) -> JournalLine {
        JournalLine {
            executed: Some(ExecutedMark { id, expires }),
            ..JournalLine::default()
        }
    }

    fn to_line(&self) -> Result<String, serde_json::Error> {
        let mut line = serde_json::to_string(self)?;
        line.push('\n');
        Ok(line)
    }

    /// A JSON line, or the `<uuid> <RFC 3339>` line of earlier agents.
    fn parse(text: &str) -> Option<JournalLine> {
        if text.starts_with('{') {
            return serde_json::from_str(text).ok();
        }
        let (id, expires) = text.split_once(' ')?;
        let id = id.parse::<Uuid>().ok()?;
        let expires =
            OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339).ok()?;
        Some(JournalLine::executed(id, expires.unix_timestamp()))
    }
}

/// The state, in memory and on disk.
#[derive(Debug)]
pub struct State {
    path: PathBuf,
    journal: PathBuf,
    services: BTreeMap<ServiceName, ServiceRecord>,
    /// Services whose record changed since the last commit.
    changed: BTreeSet<ServiceName>,
    executed: ExecutedIds,
    /// The sequence number of the last record change written.
    seq: u64,
    journal_lines: usize,
    /// Bytes of record lines in the journal since the snapshot.
    journal_record_bytes: usize,
}

impl State {
    /// Loads `dir/state.json` and replays `dir/executed.log` over it, or
    /// starts empty when there is neither; then folds the journal into a new
    /// snapshot.
    pub fn load(dir: &Path) -> Result<State, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::State {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut state = State::read(dir)?;
        state.compact()?.perform()?;
        Ok(state)
    }

    /// What `dir` holds, read without writing anything: what an agent
    /// started on it now would restore.
    pub fn read(dir: &Path) -> Result<State, Error> {
        let path = dir.join("state.json");
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
            changed: BTreeSet::new(),
            executed: ExecutedIds::new(),
            seq: file.seq,
            journal_lines: 0,
            journal_record_bytes: 0,
        };
        state.replay_journal(OffsetDateTime::now_utc())?;
        Ok(state)
    }

    fn replay_journal(&mut self, now: OffsetDateTime) -> Result<(), Error> {
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
        for text in text.lines() {
            // A torn last line (a crash mid-append) is skipped whole: that
            // command's outcome was neither recorded nor acknowledged, so
            // JetStream delivers it again.
            let Some(line) = JournalLine::parse(text) else {
                continue;
            };
            if let Some(seq) = line.seq {
                // Lines the snapshot already holds (a crash between writing
                // a snapshot and the journal that follows it) are older.
                if seq > self.seq {
                    self.services.extend(line.services);
                    self.seq = seq;
                }
            }
            if let Some(mark) = line.executed {
                if mark.expires >= now.unix_timestamp() {
                    self.executed.insert(mark.id, mark.expires);
                }
            }
        }
        self.executed.prune(now.unix_timestamp());
        Ok(())
    }

    /// The writes that fold everything into a new snapshot and a journal of
    /// the live ids alone: the snapshot first, so a crash between the two
    /// leaves record lines the snapshot's sequence number marks as older.
    fn compact(&mut self) -> Result<StateWrite, Error> {
        let corrupt = |path: &Path, e: serde_json::Error| Error::CorruptState {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        let file = StateFile {
            format: FORMAT,
            seq: self.seq,
            services: self.services.clone(),
        };
        let snapshot = serde_json::to_vec_pretty(&file).map_err(|e| corrupt(&self.path, e))?;
        let journal = self
            .executed
            .journal_text()
            .map_err(|e| corrupt(&self.journal, e))?;
        self.changed.clear();
        self.journal_lines = self.executed.len();
        self.journal_record_bytes = 0;
        Ok(StateWrite::Compact {
            snapshot: (self.path.clone(), snapshot),
            journal: (self.journal.clone(), journal.into_bytes()),
        })
    }

    /// The record of `service` (empty if never deployed).
    pub fn service(&self, service: &ServiceName) -> ServiceRecord {
        self.services.get(service).cloned().unwrap_or_default()
    }

    /// Replaces the record of `service` in memory; it reaches the disk with
    /// the next [`State::commit`].
    pub fn set_service(&mut self, service: &ServiceName, record: ServiceRecord) {
        self.services.insert(service.clone(), record);
        self.changed.insert(service.clone());
    }

    /// Whether command `id` was executed.
    pub fn was_executed(&self, id: &Uuid) -> bool {
        self.executed.contains(id)
    }

    /// Records command `id` as executed, with every record changed since the
    /// last commit, in memory (pruning ids whose commands have expired);
    /// returns the write that makes both durable at once (one appended,
    /// synced journal line, or a compaction), for the caller to perform off
    /// the async runtime, and whether it carries record changes.
    pub fn commit(
        &mut self,
        id: Uuid,
        expires: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Commit, Error> {
        let expires = expires.unix_timestamp();
        let newly_executed = self.executed.insert(id, expires);
        self.executed.prune(now.unix_timestamp());
        let services: Vec<ServiceName> = std::mem::take(&mut self.changed).into_iter().collect();
        let records = !services.is_empty();
        if !newly_executed && !records {
            return Ok(Commit {
                write: None,
                services,
            });
        }
        let mut line = JournalLine::default();
        if newly_executed {
            line.executed = Some(ExecutedMark { id, expires });
        }
        if records {
            self.seq += 1;
            line.seq = Some(self.seq);
            for service in &services {
                if let Some(record) = self.services.get(service) {
                    line.services.insert(service.clone(), record.clone());
                }
            }
        }
        let text = line.to_line().map_err(|e| Error::CorruptState {
            path: self.journal.clone(),
            detail: e.to_string(),
        })?;
        if records {
            self.journal_record_bytes += text.len();
        }
        self.journal_lines += 1;
        let write = if self.journal_lines > 2 * self.executed.len() + 1000
            || self.journal_record_bytes > JOURNAL_RECORD_BYTES
        {
            self.compact()?
        } else {
            StateWrite::Append {
                path: self.journal.clone(),
                line: text,
            }
        };
        Ok(Commit {
            write: Some(write),
            services,
        })
    }

    /// A commit's write failed: its services' records (as they are in
    /// memory then) go with the next commit instead.
    pub fn not_written(&mut self, services: Vec<ServiceName>) {
        self.changed.extend(services);
    }

    /// Every service with a record.
    pub fn services(&self) -> impl Iterator<Item = (&ServiceName, &ServiceRecord)> {
        self.services.iter()
    }
}

/// What [`State::commit`] returns.
#[derive(Debug)]
pub struct Commit {
    /// The disk write, if anything is new.
    pub write: Option<StateWrite>,
    /// The services whose changed records it carries (none: an executed
    /// mark alone).
    pub services: Vec<ServiceName>,
}

/// A change of the state on disk. Made under the state's lock, performed
/// outside it and off the async runtime: fsync takes milliseconds, and the
/// proxy and the command intake share the runtime's threads.
#[derive(Debug)]
pub enum StateWrite {
    /// One line appended to the journal and synced.
    Append {
        /// The journal.
        path: PathBuf,
        /// The line, with its newline.
        line: String,
    },
    /// A new snapshot, then a new journal, each replaced atomically.
    Compact {
        /// `state.json` and its content.
        snapshot: (PathBuf, Vec<u8>),
        /// `executed.log` and its content.
        journal: (PathBuf, Vec<u8>),
    },
}

impl StateWrite {
    /// Performs the write (blocking).
    pub fn perform(self) -> Result<(), Error> {
        match self {
            StateWrite::Compact { snapshot, journal } => {
                write_atomically(&snapshot.0, &snapshot.1)?;
                write_atomically(&journal.0, &journal.1)
            }
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

    fn commit(state: &mut State, id: Uuid, expires: OffsetDateTime, now: OffsetDateTime) {
        if let Some(write) = state.commit(id, expires, now).unwrap().write {
            write.perform().unwrap();
        }
    }

    /// What a deploy of `version` does to `service`'s record, in memory.
    fn promote(state: &mut State, service: &ServiceName, version: &str) {
        let mut record = state.service(service);
        record.promote(release(version));
        state.set_service(service, record);
    }

    fn journal(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("executed.log")).unwrap()
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
                commit(&mut state, id, expires, now);
            }
        }
        let mut state = State::load(dir.path()).unwrap();
        assert_eq!(state.service(&svc).replicas, 3);
        assert!(state.was_executed(&old) && state.was_executed(&fresh));
        commit(
            &mut state,
            Uuid::new_v4(),
            now + Duration::from_secs(3600),
            now + Duration::from_secs(10),
        );
        // The journal is what survives: a reload sees the same live ids.
        let reloaded = State::load(dir.path()).unwrap();
        assert!(reloaded.was_executed(&fresh));
        assert!(!state.was_executed(&old));
        assert!(state.was_executed(&fresh));
    }

    #[test]
    fn a_command_s_record_and_executed_mark_are_one_appended_line() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let svc = ServiceName::new("web").unwrap();
        let id = Uuid::new_v4();
        let mut state = State::load(dir.path()).unwrap();
        let snapshot_before = std::fs::read(dir.path().join("state.json")).unwrap();
        promote(&mut state, &svc, "2.0");
        let written = state
            .commit(id, now + Duration::from_secs(3600), now)
            .unwrap();
        assert_eq!(written.services, vec![svc.clone()]);
        assert!(matches!(written.write, Some(StateWrite::Append { .. })));
        written.write.unwrap().perform().unwrap();

        // Nothing but the journal was written: the snapshot is the old one.
        assert_eq!(
            std::fs::read(dir.path().join("state.json")).unwrap(),
            snapshot_before
        );
        let lines = journal(dir.path());
        assert_eq!(lines.lines().count(), 1, "{lines}");
        assert!(lines.contains(&id.to_string()) && lines.contains("\"2.0\""));

        // A command that changed nothing writes its mark alone.
        let plain = state
            .commit(Uuid::new_v4(), now + Duration::from_secs(3600), now)
            .unwrap();
        assert!(plain.services.is_empty());
        plain.write.unwrap().perform().unwrap();

        let reloaded = State::load(dir.path()).unwrap();
        assert_eq!(
            reloaded.service(&svc).current.unwrap().version.as_str(),
            "2.0"
        );
        assert!(reloaded.was_executed(&id));
    }

    #[test]
    fn a_torn_last_line_loses_that_command_alone() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let svc = ServiceName::new("web").unwrap();
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let mut state = State::load(dir.path()).unwrap();
        for (id, version) in [(first, "1.0"), (second, "2.0")] {
            promote(&mut state, &svc, version);
            commit(&mut state, id, now + Duration::from_secs(3600), now);
        }
        // A crash mid-append: the second line is cut short.
        let text = journal(dir.path());
        let cut = text.len() - 40;
        std::fs::write(dir.path().join("executed.log"), &text[..cut]).unwrap();

        let reloaded = State::load(dir.path()).unwrap();
        assert_eq!(
            reloaded.service(&svc).current.unwrap().version.as_str(),
            "1.0"
        );
        assert!(reloaded.was_executed(&first));
        assert!(
            !reloaded.was_executed(&second),
            "JetStream delivers it again"
        );
        // The load folded the journal into the snapshot and left it whole.
        assert!(journal(dir.path())
            .lines()
            .all(|l| JournalLine::parse(l).is_some()));
    }

    #[test]
    fn record_lines_older_than_the_snapshot_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let svc = ServiceName::new("web").unwrap();
        let mut state = State::load(dir.path()).unwrap();
        promote(&mut state, &svc, "1.0");
        commit(
            &mut state,
            Uuid::new_v4(),
            now + Duration::from_secs(3600),
            now,
        );
        let old_journal = journal(dir.path());
        promote(&mut state, &svc, "2.0");
        commit(
            &mut state,
            Uuid::new_v4(),
            now + Duration::from_secs(3600),
            now,
        );
        // The compaction at load wrote a snapshot holding 2.0; a crash
        // before the journal was replaced leaves the journal with 1.0's line.
        drop(State::load(dir.path()).unwrap());
        std::fs::write(dir.path().join("executed.log"), old_journal).unwrap();

        let reloaded = State::load(dir.path()).unwrap();
        assert_eq!(
            reloaded.service(&svc).current.unwrap().version.as_str(),
            "2.0"
        );
    }

    #[test]
    fn the_journal_is_folded_into_the_snapshot_once_its_records_grow() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let svc = ServiceName::new("web").unwrap();
        let mut state = State::load(dir.path()).unwrap();
        let mut compactions = 0;
        for i in 0..2000 {
            let mut record = state.service(&svc);
            record.promote(release(&format!("1.{}", i % 20)));
            state.set_service(&svc, record);
            let written = state
                .commit(Uuid::new_v4(), now + Duration::from_secs(3600), now)
                .unwrap();
            if matches!(written.write, Some(StateWrite::Compact { .. })) {
                compactions += 1;
            }
            written.write.unwrap().perform().unwrap();
        }
        assert!(compactions >= 1, "records grew past the bound uncompacted");
        let bytes = std::fs::metadata(dir.path().join("executed.log"))
            .unwrap()
            .len();
        assert!(
            bytes < 2 * JOURNAL_RECORD_BYTES as u64,
            "journal of {bytes} bytes"
        );
        let reloaded = State::load(dir.path()).unwrap();
        assert_eq!(
            reloaded.service(&svc).current.unwrap().version.as_str(),
            "1.19"
        );
        assert_eq!(reloaded.executed.len(), 2000);
    }

    #[test]
    fn id_lines_of_earlier_agents_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        let expires = (OffsetDateTime::now_utc() + Duration::from_secs(3600))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        std::fs::write(dir.path().join("executed.log"), format!("{id} {expires}\n")).unwrap();
        let state = State::load(dir.path()).unwrap();
        assert!(state.was_executed(&id));
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
