//! README's run command, `scripts/demo`, as a new user runs it: its output
//! piped into a program that goes away (`scripts/demo 2>&1 | tee demo.log`,
//! then Ctrl-C, which ends `tee` too), and what it leaves behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry_e2e::bins::without_cargo_test_env;
use ferry_e2e::free_port;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// The last line the demo prints once everything runs.
const READY: &str = "Press Ctrl-C to stop.";
/// Building (a no-op when the workspace is built), NATS, the controller,
/// three agents and dev's first deploy.
const START_TIMEOUT: Duration = Duration::from_secs(240);
/// Draining agents stop their replicas with a grace period.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Processes whose command line names `dir`, or whose output goes to a file
/// in it: what the demo started (nats-server's store, the controller's and
/// agents' configurations and logs, the replicas' logs in the agents' state).
fn started_in(dir: &Path) -> Vec<(i32, String)> {
    let dir = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let path = entry.path();
        let cmdline = std::fs::read(path.join("cmdline"))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
            .unwrap_or_default();
        let outputs = ["fd/1", "fd/2"]
            .iter()
            .filter_map(|fd| std::fs::read_link(path.join(fd)).ok())
            .any(|target| target.to_string_lossy().contains(&dir));
        if cmdline.contains(&dir) || outputs {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Kills whatever the demo left when the test ends, passed or not, so a
/// failure leaves this machine as it was.
struct KillLeftovers(PathBuf);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        for (pid, _) in started_in(&self.0) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[test]
fn ctrl_c_stops_everything_the_demo_started_even_when_its_output_pipe_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let _leftovers = KillLeftovers(demo_dir.clone());
    let dashboard_port = free_port();
    let mut command = Command::new("bash");
    // `2>&1`, as the user typed: the cleanup's messages meet the closed pipe
    // whichever stream they go to.
    command
        .args(["-c", "exec scripts/demo 2>&1"])
        .current_dir(workspace())
        .env("FERRY_DEMO_DIR", &demo_dir)
        .env("FERRY_DEMO_NATS_PORT", free_port().to_string())
        .env("FERRY_DEMO_DEV_PORT", free_port().to_string())
        .env("FERRY_DEMO_ACCEPTANCE_PORT", free_port().to_string())
        .env("FERRY_DEMO_PRODUCTION_PORT", free_port().to_string())
        .env("FERRY_DEMO_DASHBOARD_PORT", dashboard_port.to_string())
        .env_remove("FERRY_DEMO_RUNTIME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its own process group, as a shell job is: Ctrl-C signals the group.
        .process_group(0);
    without_cargo_test_env(&mut command);
    let mut demo = command.spawn().expect("run scripts/demo");
    let group = Pid::from_raw(demo.id() as i32);

    // Read until the demo is up, then close the pipe's only reader, as
    // `tee` does when Ctrl-C ends it.
    let stdout = demo.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let ready = line.contains(READY);
            if lines_tx.send(line).is_err() || ready {
                break;
            }
        }
        // The read end drops here.
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(READY) => break,
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = killpg(group, Signal::SIGINT);
                panic!(
                    "the demo did not come up within {START_TIMEOUT:?}:\n{}",
                    seen.join("\n")
                );
            }
        }
    }
    reader.join().unwrap();

    // The dashboard the demo announces answers with its page.
    let announced = format!("Dashboard: http://127.0.0.1:{dashboard_port}/");
    assert!(
        seen.iter().any(|l| l.contains(&announced)),
        "the demo did not announce {announced}:\n{}",
        seen.join("\n")
    );
    let page = http_get(dashboard_port, "/");
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("ferry"),
        "{page}"
    );

    // Everything the demo speaks of runs: nats-server, the controller, three
    // agents and dev's replicas (the finder finds them, so its empty answer
    // below means something).
    let running = started_in(&demo_dir);
    let named = |what: &str| running.iter().filter(|(_, c)| c.contains(what)).count();
    assert_eq!(named("nats-server"), 1, "{running:#?}");
    assert_eq!(named("ferry-controller"), 1, "{running:#?}");
    assert_eq!(named("ferry-agent"), 3, "{running:#?}");
    assert!(named("ferry-sample") >= 2, "dev's replicas: {running:#?}");

    // Ctrl-C.
    killpg(group, Signal::SIGINT).unwrap();
    let deadline = Instant::now() + STOP_TIMEOUT;
    let left = loop {
        let left = started_in(&demo_dir);
        if left.is_empty() || Instant::now() >= deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = demo.kill();
    let status = demo.wait().unwrap();
    assert!(
        left.is_empty(),
        "{STOP_TIMEOUT:?} after Ctrl-C these demo processes still ran (demo {status}):\n{left:#?}"
    );
}

/// A plain HTTP/1.1 GET on loopback; the whole response as text.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
