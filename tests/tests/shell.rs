//! ferry in the shell: completion scripts and man pages, from the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use ferry_e2e::bin;

/// Subcommands a user completes most; each must be in the script and have a page.
const SUBCOMMANDS: [&str; 6] = [
    "release",
    "deploy",
    "rollback",
    "scale",
    "maintenance",
    "status",
];

/// Runs `ferry ARGS` with an empty environment (nothing here needs NATS)
/// and returns its stdout, failing the test unless it succeeded.
fn ferry(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(bin("ferry"))
        .args(args)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ferry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn ferry_completions_bash_prints_a_script_that_completes_the_subcommands() {
    let script = ferry(&["completions".as_ref(), "bash".as_ref()]);
    assert!(
        script.contains("complete -F _ferry"),
        "not a bash completion script for ferry:\n{script}"
    );
    // One case arm per subcommand (`ferry,deploy)`), nested ones too.
    for sub in SUBCOMMANDS.iter().chain(&["completions", "manpages"]) {
        assert!(
            script.contains(&format!("ferry,{sub})")),
            "{sub} is not completed"
        );
    }
    assert!(
        script.contains("ferry__subcmd__release,publish)"),
        "release publish is not completed"
    );
    assert!(
        script.contains("--artifact"),
        "publish's options are not completed"
    );
}

#[test]
fn ferry_completions_knows_zsh_and_fish_and_refuses_other_shells() {
    for (shell, marker) in [("zsh", "#compdef ferry"), ("fish", "complete -c ferry")] {
        let out = Command::new(bin("ferry"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(marker),
            "{shell} script lacks {marker:?}"
        );
    }
    let out = Command::new(bin("ferry"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn ferry_manpages_writes_ferry_1_and_a_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let man1 = dir.path().join("share/man/man1");
    let listed = ferry(&["manpages".as_ref(), man1.as_os_str()]);
    let main_page = std::fs::read_to_string(man1.join("ferry.1")).unwrap();
    assert!(
        main_page.contains(".TH ferry 1"),
        "not a section 1 page:\n{main_page}"
    );
    for page in SUBCOMMANDS
        .iter()
        .map(|sub| format!("ferry-{sub}.1"))
        .chain(["ferry-release-publish.1".to_owned()])
    {
        let text = std::fs::read_to_string(man1.join(&page))
            .unwrap_or_else(|e| panic!("{page} was not written: {e}"));
        assert!(text.contains(".SH SYNOPSIS"), "{page} has no synopsis");
        assert!(listed.contains(&page), "{page} is not listed in:\n{listed}");
    }
    let publish = std::fs::read_to_string(man1.join("ferry-release-publish.1")).unwrap();
    assert!(
        publish.contains("\\-\\-artifact"),
        "the page documents the options"
    );
}
