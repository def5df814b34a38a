//! Printing the checks: one line each (and its fix), or JSON.

use ferry_protocol::doctor::{DoctorCheck, DoctorReport};

use crate::args::OutputFormat;
use crate::error::{CliError, Result};
use crate::output;

/// Prints `checks` and fails (exit 1) when one of them found a problem.
pub(super) fn finish(format: OutputFormat, checks: Vec<DoctorCheck>) -> Result<()> {
    let problems = checks.iter().filter(|c| !c.ok).count();
    let total = checks.len();
    let report = DoctorReport {
        ok: problems == 0,
        checks,
    };
    output::emit(&match format {
        OutputFormat::Json => output::json(&report)?,
        OutputFormat::Table => table(&report.checks),
    })?;
    if problems == 0 {
        Ok(())
    } else {
        Err(CliError::failed(format!(
            "{problems} of {total} checks found a problem"
        )))
    }
}

fn table(checks: &[DoctorCheck]) -> String {
    let mut text = String::new();
    for check in checks {
        let mark = if check.ok { "ok     " } else { "PROBLEM" };
        text.push_str(&format!(
            "{mark}  {:<10} {}: {}\n",
            check.group, check.name, check.detail
        ));
        if let Some(fix) = &check.fix {
            text.push_str(&format!("         fix: {fix}\n"));
        }
    }
    let passed = checks.iter().filter(|c| c.ok).count();
    text.push_str(&format!("{passed} of {} checks passed", checks.len()));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_prints_its_fix_and_fails() {
        let checks = vec![
            DoctorCheck {
                group: "nats".into(),
                name: "server".into(),
                ok: true,
                detail: "2.11.4".into(),
                fix: None,
            },
            DoctorCheck {
                group: "agents".into(),
                name: "agent dev".into(),
                ok: false,
                detail: "no heartbeat".into(),
                fix: Some("start it".into()),
            },
        ];
        let text = table(&checks);
        assert!(
            text.contains("PROBLEM  agents     agent dev: no heartbeat"),
            "{text}"
        );
        assert!(text.contains("fix: start it"), "{text}");
        assert!(text.ends_with("1 of 2 checks passed"), "{text}");
    }
}
