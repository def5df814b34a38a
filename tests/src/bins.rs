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

/// Variables cargo sets for a test or bench of one package, not for a build.
const INHERITED_FROM_CARGO_TEST: &[&str] = &[
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

/// Removes from `command`'s environment what cargo set for this test run.
/// Cargo hands a test the variables of the package under test
/// (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...). Build scripts such as ring's
/// rerun when those change, so passing them on to a `cargo build` (the
/// harness's own, or one a script runs) would rebuild half the dependency
/// tree on every run, and again for the next plain `cargo build`.
pub fn without_cargo_test_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if INHERITED_FROM_CARGO_TEST
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            command.env_remove(name.as_ref());
        }
    }
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
        without_cargo_test_env(&mut command);
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

/// Path of workspace binary `name` of `package` linked statically against
/// glibc, as the images ship it and a host installs it
/// (`scripts/build-static`, release profile), built if needed.
pub fn static_bin(package: &str, name: &str) -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut command = Command::new(workspace.join("scripts/build-static"));
    command
        .current_dir(&workspace)
        .args(["-p", package])
        .env("FERRY_IMAGE_PROFILE", "release")
        // cargo's progress stays visible; stdout is the directory.
        .stderr(std::process::Stdio::inherit());
    without_cargo_test_env(&mut command);
    let output = command.output().expect("run scripts/build-static");
    assert!(
        output.status.success(),
        "scripts/build-static -p {package} failed"
    );
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let path = workspace.join(dir).join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}
