//! Which runtime runs a service's replicas, by the name configuration uses,
//! and what configuration needs to know of each: one table.

/// Which runtime runs a service's replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Each replica is a child process of the agent.
    Process,
    /// Each replica is a container on the local Docker engine.
    Docker,
    /// A Deployment per version and a Service on a Kubernetes cluster.
    Kubernetes,
}

/// Every runtime of this build: its name in configuration and events, and
/// whether the agent's proxy serves its stable address (not where a
/// cluster's own Service routes the traffic). How a service is started on
/// each is `runtime_registry.rs`.
const RUNTIMES: [(RuntimeKind, &str, bool); 3] = [
    (RuntimeKind::Process, "process", true),
    (RuntimeKind::Docker, "docker", true),
    (RuntimeKind::Kubernetes, "kubernetes", false),
];

impl RuntimeKind {
    /// The runtime a service gets when its configuration names none.
    pub const DEFAULT: RuntimeKind = RuntimeKind::Process;

    fn entry(self) -> (RuntimeKind, &'static str, bool) {
        RUNTIMES
            .into_iter()
            .find(|(kind, _, _)| *kind == self)
            .unwrap_or((self, "unknown", true))
    }

    /// The name used in configuration and events.
    pub fn as_str(self) -> &'static str {
        self.entry().1
    }

    /// Whether the agent's proxy serves the service's stable address.
    pub fn proxied(self) -> bool {
        self.entry().2
    }

    /// The runtime named `name` in configuration.
    pub fn from_name(name: &str) -> Option<RuntimeKind> {
        RUNTIMES
            .into_iter()
            .find(|(_, known, _)| *known == name)
            .map(|(kind, _, _)| kind)
    }

    /// The names configuration accepts, quoted, for error messages.
    pub fn supported() -> String {
        RUNTIMES
            .iter()
            .map(|(_, name, _)| format!("{name:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
