//! How a service is started on its runtime: the one place that knows every
//! runtime's backend. Adding a runtime is its module (a `ReplicaRuntime`
//! under `runtime/`, run by `ManagedService`, or a `ServiceBackend` of its
//! own, as `kubernetes/`), its row in `config/runtime_kind.rs`, and its arm
//! in [`start_service`].

use std::path::PathBuf;
use std::sync::Arc;

use ferry_protocol::EnvName;
use tokio_util::sync::CancellationToken;

use crate::backend::ServiceBackend;
use crate::config::{RuntimeKind, ServiceConfig};
use crate::events::EventSink;
use crate::kubernetes::{self, KubernetesService};
use crate::managed::ManagedService;
use crate::proxy::Proxy;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::process::ProcessRuntime;
use crate::runtime::{ReplicaContext, ReplicaRuntime};
use crate::Error;

/// What starting one service needs, whatever its runtime.
pub struct ServiceStart<'a> {
    /// The agent's environment.
    pub environment: &'a EnvName,
    /// The service.
    pub service: &'a ServiceConfig,
    /// Its stable address, already served if the agent's proxy fronts it
    /// (`None`: served now, if the runtime needs it).
    pub proxy: Option<Proxy>,
    /// Where replica output goes.
    pub log_dir: PathBuf,
    /// Where the service's events go.
    pub sink: &'a EventSink,
    /// The services' shutdown; each part of the service stops on a child of it.
    pub shutdown: &'a CancellationToken,
}

/// The engines the agent has connected to, shared by the services on them.
/// The Docker engine is connected to once, for the first docker service;
/// one that cannot be reached does not stop the agent.
#[derive(Default)]
pub struct Engines {
    docker: Option<Arc<DockerRuntime>>,
}

impl Engines {
    async fn docker(&mut self) -> Arc<DockerRuntime> {
        match &self.docker {
            Some(runtime) => runtime.clone(),
            None => {
                let runtime = Arc::new(DockerRuntime::connect().await);
                self.docker = Some(runtime.clone());
                runtime
            }
        }
    }

    /// The Docker engine, if a service uses it and it did not answer, with why.
    pub fn unreachable_docker(&self) -> Option<(Arc<DockerRuntime>, String)> {
        let runtime = self.docker.as_ref()?;
        runtime.unreachable().map(|why| (runtime.clone(), why))
    }
}

/// Starts `start.service` on its runtime: the registration point of runtimes.
pub async fn start_service(
    start: ServiceStart<'_>,
    engines: &mut Engines,
) -> Result<Arc<dyn ServiceBackend>, Error> {
    match start.service.runtime {
        RuntimeKind::Process => on_replicas(start, Arc::new(ProcessRuntime)).await,
        RuntimeKind::Docker => {
            let docker = engines.docker().await;
            on_replicas(start, docker).await
        }
        RuntimeKind::Kubernetes => on_cluster(start).await,
    }
}

/// A service whose replicas the agent owns, one by one through `runtime`,
/// behind its proxy.
async fn on_replicas(
    start: ServiceStart<'_>,
    runtime: Arc<dyn ReplicaRuntime>,
) -> Result<Arc<dyn ServiceBackend>, Error> {
    let name = &start.service.name;
    let proxy = match start.proxy {
        Some(proxy) => proxy,
        None => {
            Proxy::serve(
                name.as_str(),
                start.service.listen,
                start.shutdown.child_token(),
            )
            .await?
        }
    };
    let ctx = ReplicaContext {
        environment: start.environment.clone(),
        service: start.service.clone(),
        log_dir: start.log_dir,
    };
    let backend = ManagedService::start(
        ctx,
        proxy,
        runtime,
        start.sink.clone(),
        start.shutdown.child_token(),
    )
    .await?;
    Ok(backend)
}

/// A service whose replicas and traffic a Kubernetes cluster owns.
async fn on_cluster(start: ServiceStart<'_>) -> Result<Arc<dyn ServiceBackend>, Error> {
    let service = start.service;
    let client = kubernetes::connect(&service.kubernetes)
        .await
        .map_err(|e| Error::Config(vec![format!("services.{}.kubernetes: {e}", service.name)]))?;
    Ok(Arc::new(KubernetesService::new(
        start.environment.clone(),
        service.clone(),
        client,
        start.shutdown.child_token(),
    )))
}
