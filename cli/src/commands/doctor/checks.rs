//! The list every group of `ferry doctor` checks adds to.

use ferry_protocol::doctor::DoctorCheck;

/// The checks so far, in the order they ran.
#[derive(Default)]
pub(super) struct Checks(pub(super) Vec<DoctorCheck>);

impl Checks {
    pub(super) fn ok(&mut self, group: &str, name: impl Into<String>, detail: impl Into<String>) {
        self.0.push(DoctorCheck {
            group: group.to_owned(),
            name: name.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        });
    }

    pub(super) fn problem(
        &mut self,
        group: &str,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(DoctorCheck {
            group: group.to_owned(),
            name: name.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }
}
