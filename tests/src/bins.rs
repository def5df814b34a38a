//! Paths of the workspace's binaries (`ferry`, `ferry-sample`, ...). Cargo
//! only exposes binaries of the package under test to its tests, so the
//! harness builds the others once per test run and finds them beside itself.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

fn target_dir() -> PathBuf {
    // target/<profile>/deps/<test-binary>
    let exe = std::env::current_exe().expect("current test executable");
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .expect("target directory of the test binary")
}

fn build_once() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut command = Command::new(cargo);
        command.current_dir(&workspace).args([
            "build",
            "--bins",
            "-p",
            "ferry-cli",
            "-p",
            "ferry-sample",
            "-p",
            "ferry-agent",
            "-p",
            "ferry-controller",
        ]);
        if target_dir().file_name().is_some_and(|p| p == "release") {
            command.arg("--release");
        }
        let status = command
            .status()
            .expect("run cargo build for the workspace binaries");
        assert!(
            status.success(),
            "cargo build of the workspace binaries failed"
        );
    });
}

/// Path of workspace binary `name`, built if needed.
pub fn bin(name: &str) -> PathBuf {
    build_once();
    let path = target_dir().join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}
