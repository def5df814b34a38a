//! What the tests that need the local Docker engine share: whether the
//! engine and the images they need are there (skip, or fail loudly under CI).

use std::process::Command;

/// Whether the engine answers and every image in `images` is on it. When
/// not, panics under CI (`CI` set) and otherwise prints why `test` is
/// skipped; `build_hint` names what builds the images.
pub fn docker_ready(test: &str, images: &[&str], build_hint: &str) -> bool {
    let Some(reason) = docker_missing(images, build_hint) else {
        return true;
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {reason} (CI is set, so the Docker tests must run)");
    }
    eprintln!("SKIPPED {test}: {reason}");
    false
}

/// Why the engine or an image is missing; `None` when all is there.
fn docker_missing(images: &[&str], build_hint: &str) -> Option<String> {
    match Command::new("docker").args(["info"]).output() {
        Err(e) => return Some(format!("the docker CLI cannot run: {e}")),
        Ok(out) if !out.status.success() => {
            return Some(format!(
                "no Docker engine is reachable: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Ok(_) => {}
    }
    let missing: Vec<&str> = images
        .iter()
        .copied()
        .filter(|image| {
            !Command::new("docker")
                .args(["image", "inspect", image])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "image {} missing; run {build_hint}",
            missing.join(", ") + if missing.len() == 1 { " is" } else { " are" }
        )
    })
}

/// Removes the containers ferry manages for service `.0` when dropped, so a
/// test leaves none behind, passed or failed.
pub struct RemoveContainers(pub String);

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        remove_containers(&[
            "label=io.ferry.managed=true".to_owned(),
            format!("label=io.ferry.service={}", self.0),
        ]);
    }
}

/// Removes (with their anonymous volumes) every container matching all of
/// `filters` (`docker ps --filter` terms); quietly, for drop handlers.
pub fn remove_containers(filters: &[String]) {
    let mut list = Command::new("docker");
    list.args(["ps", "-aq"]);
    for filter in filters {
        list.args(["--filter", filter]);
    }
    let listed = list.output();
    let ids: Vec<String> = listed
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&ids)
            .output();
    }
}
