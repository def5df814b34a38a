//! Which runtime runs a service's replicas, by the name configuration uses.

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

impl RuntimeKind {
    /// The name used in configuration and events.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Docker => "docker",
            RuntimeKind::Kubernetes => "kubernetes",
        }
    }
}
