//! A process's footprint read from /proc (resident memory, open file
//! descriptors, child processes): what the soak and ingest benchmarks watch.

/// A process's footprint at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Footprint {
    /// Resident set size (VmRSS).
    pub rss_bytes: u64,
    /// Of which anonymous memory (RssAnon: heap, stacks).
    pub anon_bytes: u64,
    /// Open file descriptors.
    pub open_fds: usize,
    /// Processes whose parent it is.
    pub children: usize,
}

impl Footprint {
    /// Reads `pid`'s footprint now.
    pub fn of(pid: u32) -> Footprint {
        let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        let children = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| parent_of(stat) == Some(pid))
            .count();
        Footprint {
            rss_bytes: status_kib(pid, "VmRSS:") * 1024,
            anon_bytes: status_kib(pid, "RssAnon:") * 1024,
            open_fds,
            children,
        }
    }

    /// Resident memory in MiB.
    pub fn rss_mib(&self) -> f64 {
        mib(self.rss_bytes)
    }

    /// Prints one row: `when`, RSS MiB, anonymous MiB, open fds, children.
    pub fn row(&self, when: &str) {
        println!(
            "{when:<34} {:>8.1} {:>9.1} {:>9} {:>9}",
            self.rss_mib(),
            mib(self.anon_bytes),
            self.open_fds,
            self.children
        );
    }
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `pid`'s resident set size (VmRSS), bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// A KiB field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// The parent pid in a /proc/<pid>/stat line (the field after the
/// parenthesised command name, which may itself hold spaces).
fn parent_of(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}
