//! A fake Kubernetes API server, in-process on loopback HTTP: the REST paths
//! ferry's Kubernetes runtime and `kubectl get`/`rollout status` use (apps/v1
//! Deployments with `/status` and `/scale`, v1 Services, Pods and Events),
//! with resourceVersions, label and field selectors, lists and
//! `?watch=true` streams, and a small simulated Deployment controller: after
//! a configurable delay it creates the pods and moves the Deployment's status
//! (observedGeneration, updated/ready/available replicas) as the real one
//! does; pods of images marked as unpullable wait in `ErrImagePull`.
//!
//! Every object a client creates, replaces or patches (after the patch is
//! applied) is validated against the Kubernetes OpenAPI schemas of the
//! version the fake reports, as shipped by PyPI's `kubernetes-validate`
//! (installed in the project's virtualenv by
//! `scripts/ensure-kubernetes-validate`, loaded at test time): an invalid
//! one is refused as a real API server refuses it, 422 `Invalid` with a
//! `Status` naming each field, and nothing is stored.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// A change, as a watch reports it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: String,
    namespace: String,
    kind_of_change: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(String, String, String), Value>,
    log: Vec<Change>,
    unpullable: BTreeSet<String>,
    next_pod: u64,
    steps: BTreeMap<String, Vec<RolloutStep>>,
}

/// One step of the simulated controller on a Deployment: its pods then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RolloutStep {
    /// Pods of every template.
    pub pods: usize,
    /// Pods of the current template.
    pub updated: usize,
    /// Ready pods.
    pub ready: usize,
    /// The desired count.
    pub desired: usize,
}

struct Shared {
    store: Mutex<Store>,
    /// One controller step at a time.
    reconciling: Mutex<()>,
    changed: broadcast::Sender<()>,
    delay: Duration,
    schemas: Mutex<Schemas>,
}

/// The Kubernetes version whose schemas the fake validates against (the one
/// its `/version` reports).
const KUBERNETES_VERSION: &str = "1.34";

/// The schema validator: `tests/fixtures/kubernetes_validate_lines.py` in the
/// virtualenv's Python, one JSON object a line in, one answer a line out.
/// It exits when its stdin closes, with the fake.
struct Schemas {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Schemas {
    fn start() -> Schemas {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let ensure = workspace.join("scripts/ensure-kubernetes-validate");
        let out = Command::new(&ensure)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", ensure.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): the fake API server cannot validate objects without kubernetes-validate",
            ensure.display(),
            out.status
        );
        let python = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mut child = Command::new(&python)
            .arg(workspace.join("tests/fixtures/kubernetes_validate_lines.py"))
            .arg(KUBERNETES_VERSION)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start the schema validator with {python}: {e}"));
        let stdin = child.stdin.take().expect("the validator's stdin");
        let stdout = BufReader::new(child.stdout.take().expect("the validator's stdout"));
        Schemas {
            child,
            stdin,
            stdout,
        }
    }

    /// The causes a real API server would give for refusing `object` (empty:
    /// valid).
    fn causes(&mut self, object: &Value) -> Vec<Value> {
        let mut line = object.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .and_then(|()| self.stdin.flush())
            .expect("send an object to the schema validator");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("read the schema validator's answer");
        let answer: Value = serde_json::from_str(&answer).unwrap_or_else(|e| {
            panic!("the schema validator answered {answer:?} ({e}); did it exit?")
        });
        match answer["causes"].as_array() {
            Some(causes) => causes.clone(),
            None => panic!(
                "the schema validator could not check {}: {}",
                object["kind"], answer["error"]
            ),
        }
    }
}

impl Drop for Schemas {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks `object` (of the collection `plural`, kind and apiVersion set)
/// against its schema: `None` when valid, else the 422 a real API server
/// answers, `<Kind>.<group> "<name>" is invalid: <field>: <why>` with a
/// cause per field.
fn refused(shared: &Shared, plural: &str, object: &Value) -> Option<Response> {
    let (kind, api_version) = kind_name(plural);
    let mut object = object.clone();
    object["kind"] = json!(kind);
    object["apiVersion"] = json!(api_version);
    let causes = shared.schemas.lock().unwrap().causes(&object);
    if causes.is_empty() {
        return None;
    }
    let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
    let qualified = if group.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}.{group}")
    };
    let name = object["metadata"]["name"].as_str().unwrap_or("");
    let each: Vec<String> = causes
        .iter()
        .map(|c| {
            format!(
                "{}: {}",
                c["field"].as_str().unwrap_or(""),
                c["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    let why = if each.len() == 1 {
        each[0].clone()
    } else {
        format!("[{}]", each.join(", "))
    };
    let code = StatusCode::UNPROCESSABLE_ENTITY;
    Some(
        (
            code,
            Json(json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": format!("{qualified} \"{name}\" is invalid: {why}"),
                "reason": "Invalid",
                "details": {"name": name, "group": group, "kind": kind, "causes": causes},
                "code": code.as_u16(),
            })),
        )
            .into_response(),
    )
}

/// The fake API server; stops with the test's runtime.
#[derive(Clone)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
    /// Where it listens.
    pub addr: SocketAddr,
}

type SharedState = Arc<Shared>;

impl FakeApiServer {
    /// Starts it on a free loopback port; the simulated controller acts
    /// `delay` after each change of a Deployment.
    pub async fn start(delay: Duration) -> FakeApiServer {
        let (changed, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            reconciling: Mutex::new(()),
            changed,
            delay,
            schemas: Mutex::new(Schemas::start()),
        });
        let app = Router::new()
            .route("/version", get(|| async { Json(json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-fake"})) }))
            .route("/api", get(|| async { Json(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})) }))
            .route("/apis", get(|| async { Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}], "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}, {"name": "rbac.authorization.k8s.io", "versions": [{"groupVersion": "rbac.authorization.k8s.io/v1", "version": "v1"}], "preferredVersion": {"groupVersion": "rbac.authorization.k8s.io/v1", "version": "v1"}}]})) }))
            .route("/api/v1", get(|| async { Json(resource_list("v1", &[("pods", "Pod"), ("services", "Service"), ("events", "Event"), ("configmaps", "ConfigMap"), ("secrets", "Secret"), ("serviceaccounts", "ServiceAccount"), ("namespaces", "Namespace")])) }))
            .route("/apis/rbac.authorization.k8s.io/v1", get(|| async { Json(resource_list("rbac.authorization.k8s.io/v1", &[("roles", "Role"), ("rolebindings", "RoleBinding")])) }))
            .route("/apis/apps/v1", get(|| async { Json(resource_list("apps/v1", &[("deployments", "Deployment")])) }))
            .route("/api/v1/namespaces/{ns}/{kind}", get(collection).post(create))
            .route("/apis/apps/v1/namespaces/{ns}/{kind}", get(collection).post(create))
            .route("/api/v1/namespaces/{ns}/{kind}/{name}", get(read).patch(patch).put(replace).delete(remove))
            .route("/apis/apps/v1/namespaces/{ns}/{kind}/{name}", get(read).patch(patch).put(replace).delete(remove))
            .route("/apis/apps/v1/namespaces/{ns}/{kind}/{name}/{sub}", get(read_sub).patch(patch_sub))
            // What deploy/kubernetes/*.yaml applies besides: its namespaces
            // (cluster-scoped, stored under the namespace ""), the agent's
            // ConfigMap, Secret and ServiceAccount, its Role and RoleBinding;
            // created and read only (tests/tests/kubernetes.rs applies them).
            .route("/api/v1/namespaces", post(create_namespace))
            .route("/api/v1/namespaces/{name}", get(read_namespace))
            .route("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{kind}", get(collection).post(create))
            .route("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{kind}/{name}", get(read))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApiServer { shared, addr }
    }

    /// Pods of `image` will not pull (`ErrImagePull`).
    pub fn fail_pull(&self, image: &str) {
        self.shared
            .store
            .lock()
            .unwrap()
            .unpullable
            .insert(image.to_owned());
    }

    /// A kubeconfig for this server (context `fake`, namespace `namespace`), written to `dir`.
    pub fn kubeconfig(&self, dir: &Path, namespace: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\nusers:\n- name: fake\n  user:\n    token: fake-token\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }

    /// Every object of `kind` (plural: `deployments`) in `namespace`.
    pub fn objects(&self, kind: &str, namespace: &str) -> Vec<Value> {
        let store = self.shared.store.lock().unwrap();
        store
            .objects
            .iter()
            .filter(|((k, ns, _), _)| k == kind && ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// One object, if it exists.
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.shared.store.lock().unwrap();
        store
            .objects
            .get(&(kind.to_owned(), namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Pod `name` of `namespace` crash-loops, as its kubelet would report
    /// it: not ready, `CrashLoopBackOff`, `restarts` restarts; its
    /// Deployment's ready count follows.
    pub fn crash_loop(&self, namespace: &str, name: &str, restarts: u32) {
        let mut pod = self.object("pods", namespace, name).expect("the pod");
        let container = pod["spec"]["containers"][0]["name"].clone();
        pod["status"] = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}], "containerStatuses": [{"name": container, "ready": false, "restartCount": restarts, "image": "", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}}]});
        let owner = pod["metadata"]["annotations"]["fake.ferry.io/owner"]
            .as_str()
            .expect("an owner")
            .to_owned();
        put(&self.shared, "pods", namespace, name, pod, "MODIFIED");
        let mut deployment = self
            .object("deployments", namespace, &owner)
            .expect("its Deployment");
        let ready = owned_pods(&self.shared, namespace, &owner)
            .iter()
            .filter(|p| p["status"]["conditions"][0]["status"] == "True")
            .count();
        deployment["status"]["readyReplicas"] = json!(ready);
        deployment["status"]["availableReplicas"] = json!(ready);
        put(
            &self.shared,
            "deployments",
            namespace,
            &owner,
            deployment,
            "MODIFIED",
        );
    }

    /// The simulated controller's steps on Deployment `name`, oldest first.
    pub fn rollout_steps(&self, name: &str) -> Vec<RolloutStep> {
        let store = self.shared.store.lock().unwrap();
        store.steps.get(name).cloned().unwrap_or_default()
    }

    /// Stores `object` as someone other than ferry would create it.
    pub fn insert(&self, kind: &str, namespace: &str, object: Value) {
        let mut object = object;
        let name = object["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_owned();
        object["metadata"]["namespace"] = json!(namespace);
        put(&self.shared, kind, namespace, &name, object, "ADDED");
    }
}

fn resource_list(group_version: &str, kinds: &[(&str, &str)]) -> Value {
    let mut resources = Vec::new();
    for (name, kind) in kinds {
        let namespaced = *name != "namespaces";
        resources.push(json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": namespaced, "kind": kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}));
        if *name == "deployments" {
            resources.push(json!({"name": "deployments/status", "singularName": "", "namespaced": true, "kind": kind, "verbs": ["get", "patch", "update"]}));
            resources.push(json!({"name": "deployments/scale", "singularName": "", "namespaced": true, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

fn kind_name(plural: &str) -> (&'static str, &'static str) {
    match plural {
        "deployments" => ("Deployment", "apps/v1"),
        "services" => ("Service", "v1"),
        "pods" => ("Pod", "v1"),
        "configmaps" => ("ConfigMap", "v1"),
        "secrets" => ("Secret", "v1"),
        "serviceaccounts" => ("ServiceAccount", "v1"),
        "namespaces" => ("Namespace", "v1"),
        "roles" => ("Role", "rbac.authorization.k8s.io/v1"),
        "rolebindings" => ("RoleBinding", "rbac.authorization.k8s.io/v1"),
        _ => ("Event", "v1"),
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    (code, Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()}))).into_response()
}

/// Stores `object`, stamping metadata and logging the change; returns what was stored.
fn put(
    shared: &Shared,
    kind: &str,
    ns: &str,
    name: &str,
    mut object: Value,
    change: &'static str,
) -> Value {
    let mut store = shared.store.lock().unwrap();
    store.rv += 1;
    let rv = store.rv;
    let (kind_name, api_version) = kind_name(kind);
    object["kind"] = json!(kind_name);
    object["apiVersion"] = json!(api_version);
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    if object["metadata"]["uid"].is_null() {
        object["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
        object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    let key = (kind.to_owned(), ns.to_owned(), name.to_owned());
    if change == "DELETED" {
        store.objects.remove(&key);
    } else {
        store.objects.insert(key, object.clone());
    }
    store.log.push(Change {
        rv,
        kind: kind.to_owned(),
        namespace: ns.to_owned(),
        kind_of_change: change,
        object: object.clone(),
    });
    drop(store);
    let _ = shared.changed.send(());
    object
}

fn matches(object: &Value, query: &BTreeMap<String, String>) -> bool {
    let pairs = |text: &str| -> Vec<(String, String)> {
        text.split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                p.split_once('=').map(|(k, v)| {
                    (
                        k.trim_end_matches('=').to_owned(),
                        v.trim_start_matches('=').to_owned(),
                    )
                })
            })
            .collect()
    };
    let labels_ok = query.get("labelSelector").is_none_or(|s| {
        pairs(s)
            .iter()
            .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v))
    });
    let fields_ok = query.get("fieldSelector").is_none_or(|s| {
        pairs(s).iter().all(|(k, v)| match k.as_str() {
            "metadata.name" => object["metadata"]["name"].as_str() == Some(v),
            "metadata.namespace" => object["metadata"]["namespace"].as_str() == Some(v),
            _ => true,
        })
    });
    labels_ok && fields_ok
}

async fn collection(
    State(shared): State<SharedState>,
    UrlPath((ns, kind)): UrlPath<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch(shared, ns, kind, query);
    }
    let store = shared.store.lock().unwrap();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((k, n, _), v)| *k == kind && *n == ns && matches(v, &query))
        .map(|(_, v)| v.clone())
        .collect();
    let (kind_name, api_version) = kind_name(&kind);
    Json(json!({"kind": format!("{kind_name}List"), "apiVersion": api_version, "metadata": {"resourceVersion": store.rv.to_string()}, "items": items})).into_response()
}

fn watch(
    shared: SharedState,
    ns: String,
    kind: String,
    query: BTreeMap<String, String>,
) -> Response {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let changed = shared.changed.subscribe();
    let stream = futures::stream::unfold(
        (shared, changed, from),
        move |(shared, mut changed, mut cursor)| {
            let (ns, kind, query) = (ns.clone(), kind.clone(), query.clone());
            async move {
                loop {
                    let lines: String = {
                        let store = shared.store.lock().unwrap();
                        let fresh: Vec<&Change> =
                            store.log.iter().filter(|c| c.rv > cursor).collect();
                        cursor = store.rv;
                        fresh
                            .into_iter()
                            .filter(|c| {
                                c.kind == kind && c.namespace == ns && matches(&c.object, &query)
                            })
                            .map(|c| {
                                format!(
                                    "{}\n",
                                    json!({"type": c.kind_of_change, "object": c.object})
                                )
                            })
                            .collect()
                    };
                    if !lines.is_empty() {
                        return Some((
                            Ok::<Bytes, std::convert::Infallible>(Bytes::from(lines)),
                            (shared, changed, cursor),
                        ));
                    }
                    if let Err(broadcast::error::RecvError::Closed) = changed.recv().await {
                        return None;
                    }
                }
            }
        },
    );
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn create(
    State(shared): State<SharedState>,
    UrlPath((ns, kind)): UrlPath<(String, String)>,
    Json(mut object): Json<Value>,
) -> Response {
    let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: required".into(),
        );
    };
    if shared
        .store
        .lock()
        .unwrap()
        .objects
        .contains_key(&(kind.clone(), ns.clone(), name.clone()))
    {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{kind} \"{name}\" already exists"),
        );
    }
    if !ns.is_empty() {
        object["metadata"]["namespace"] = json!(ns);
    }
    if let Some(refusal) = refused(&shared, &kind, &object) {
        return refusal;
    }
    if kind == "deployments" {
        object["metadata"]["generation"] = json!(1);
        object["status"] = json!({});
    }
    let stored = put(&shared, &kind, &ns, &name, object, "ADDED");
    if kind == "deployments" {
        reconcile_later(shared, ns, name);
    }
    (StatusCode::CREATED, Json(stored)).into_response()
}

/// Creates a Namespace (cluster-scoped: no namespace in its path).
async fn create_namespace(State(shared): State<SharedState>, object: Json<Value>) -> Response {
    let path = UrlPath((String::new(), "namespaces".to_owned()));
    create(State(shared), path, object).await
}

async fn read_namespace(
    State(shared): State<SharedState>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let path = UrlPath((String::new(), "namespaces".to_owned(), name));
    read(State(shared), path).await
}

fn get_object(shared: &Shared, kind: &str, ns: &str, name: &str) -> Option<Value> {
    shared
        .store
        .lock()
        .unwrap()
        .objects
        .get(&(kind.to_owned(), ns.to_owned(), name.to_owned()))
        .cloned()
}

fn not_found(kind: &str, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{kind} \"{name}\" not found"),
    )
}

async fn read(
    State(shared): State<SharedState>,
    UrlPath((ns, kind, name)): UrlPath<(String, String, String)>,
) -> Response {
    match get_object(&shared, &kind, &ns, &name) {
        Some(object) => Json(object).into_response(),
        None => not_found(&kind, &name),
    }
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (key, value) in fields {
                if value.is_null() {
                    if let Some(map) = target.as_object_mut() {
                        map.remove(key);
                    }
                } else {
                    merge(&mut target[key], value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Why the API server would refuse `new` in place of `old` (`None`: it
/// would not): apps/v1 makes `spec.selector` immutable, and the pod
/// template must carry the labels it selects.
fn invalid_deployment(old: &Value, new: &Value) -> Option<String> {
    if old["spec"]["selector"] != new["spec"]["selector"] {
        return Some("spec.selector: Invalid value: field is immutable".into());
    }
    let labels = &new["spec"]["template"]["metadata"]["labels"];
    let selected = new["spec"]["selector"]["matchLabels"].as_object()?;
    selected
        .iter()
        .find(|(k, v)| labels[k.as_str()] != **v)
        .map(|(k, _)| format!("spec.template.metadata.labels: Invalid value: `selector` does not match template `labels` ({k})"))
}

/// Stores a changed Deployment or other object; a Deployment whose spec
/// changed gets a new generation and a controller pass.
fn update(
    shared: SharedState,
    kind: &str,
    ns: &str,
    name: &str,
    old: &Value,
    mut new: Value,
) -> Response {
    let spec_changed = old["spec"] != new["spec"];
    if let Some(refusal) = refused(&shared, kind, &new) {
        return refusal;
    }
    if kind == "deployments" {
        if let Some(why) = invalid_deployment(old, &new) {
            return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", why);
        }
    }
    if kind == "deployments" && spec_changed {
        new["metadata"]["generation"] =
            json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
    }
    let stored = put(&shared, kind, ns, name, new, "MODIFIED");
    if kind == "deployments" && spec_changed {
        reconcile_later(shared, ns.to_owned(), name.to_owned());
    }
    Json(stored).into_response()
}

async fn patch(
    State(shared): State<SharedState>,
    UrlPath((ns, kind, name)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(old) = get_object(&shared, &kind, &ns, &name) else {
        return not_found(&kind, &name);
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.contains("merge-patch") {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the fake takes merge patches only, not {content_type}"),
        );
    }
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON".into());
    };
    let mut new = old.clone();
    merge(&mut new, &patch);
    update(shared, &kind, &ns, &name, &old, new)
}

async fn replace(
    State(shared): State<SharedState>,
    UrlPath((ns, kind, name)): UrlPath<(String, String, String)>,
    Json(new): Json<Value>,
) -> Response {
    let Some(old) = get_object(&shared, &kind, &ns, &name) else {
        return not_found(&kind, &name);
    };
    update(shared, &kind, &ns, &name, &old, new)
}

async fn remove(
    State(shared): State<SharedState>,
    UrlPath((ns, kind, name)): UrlPath<(String, String, String)>,
) -> Response {
    let Some(old) = get_object(&shared, &kind, &ns, &name) else {
        return not_found(&kind, &name);
    };
    put(&shared, &kind, &ns, &name, old.clone(), "DELETED");
    if kind == "deployments" {
        for pod in owned_pods(&shared, &ns, &name) {
            let pod_name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            put(&shared, "pods", &ns, &pod_name, pod, "DELETED");
        }
    }
    Json(old).into_response()
}

fn scale_of(deployment: &Value) -> Value {
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": {"name": deployment["metadata"]["name"], "namespace": deployment["metadata"]["namespace"], "resourceVersion": deployment["metadata"]["resourceVersion"]}, "spec": {"replicas": deployment["spec"]["replicas"]}, "status": {"replicas": deployment["status"]["replicas"].as_i64().unwrap_or(0)}})
}

async fn read_sub(
    State(shared): State<SharedState>,
    UrlPath((ns, kind, name, sub)): UrlPath<(String, String, String, String)>,
) -> Response {
    match get_object(&shared, &kind, &ns, &name) {
        Some(object) if sub == "scale" => Json(scale_of(&object)).into_response(),
        Some(object) => Json(object).into_response(),
        None => not_found(&kind, &name),
    }
}

async fn patch_sub(
    State(shared): State<SharedState>,
    UrlPath((ns, kind, name, sub)): UrlPath<(String, String, String, String)>,
    Json(patch): Json<Value>,
) -> Response {
    let Some(old) = get_object(&shared, &kind, &ns, &name) else {
        return not_found(&kind, &name);
    };
    let mut new = old.clone();
    match sub.as_str() {
        "scale" => merge(
            &mut new["spec"],
            &json!({"replicas": patch["spec"]["replicas"]}),
        ),
        _ => merge(&mut new["status"], &patch["status"]),
    }
    let response = update(shared.clone(), &kind, &ns, &name, &old, new);
    match (sub.as_str(), get_object(&shared, &kind, &ns, &name)) {
        ("scale", Some(d)) => Json(scale_of(&d)).into_response(),
        _ => response,
    }
}

fn owned_pods(shared: &Shared, ns: &str, deployment: &str) -> Vec<Value> {
    let store = shared.store.lock().unwrap();
    store
        .objects
        .iter()
        .filter(|((k, n, _), v)| {
            k == "pods"
                && n == ns
                && v["metadata"]["annotations"]["fake.ferry.io/owner"] == deployment
        })
        .map(|(_, v)| v.clone())
        .collect()
}

fn reconcile_later(shared: SharedState, ns: String, name: String) {
    tokio::spawn(async move {
        tokio::time::sleep(shared.delay).await;
        let more = reconcile(&shared, &ns, &name);
        if more {
            reconcile_later(shared, ns, name);
        }
    });
}

/// A rolling update's pace from `spec.strategy`: (maxSurge, maxUnavailable)
/// as pod counts; without one, everything at once (the fake's shortcut for
/// a fresh Deployment).
fn pace(deployment: &Value, desired: usize) -> (usize, usize) {
    let rolling = &deployment["spec"]["strategy"]["rollingUpdate"];
    match (
        rolling["maxSurge"].as_u64(),
        rolling["maxUnavailable"].as_u64(),
    ) {
        (Some(surge), Some(unavailable)) => (surge as usize, unavailable as usize),
        _ => (desired.max(1), desired.max(1)),
    }
}

/// The simulated Deployment controller, one step: pods of older templates
/// are replaced at the Deployment's pace (never more than maxSurge above
/// the desired count, never fewer ready than maxUnavailable below it), the
/// status follows. Returns whether more steps are due.
fn reconcile(shared: &Shared, ns: &str, name: &str) -> bool {
    let _one_at_a_time = shared.reconciling.lock().unwrap();
    let Some(deployment) = get_object(shared, "deployments", ns, name) else {
        return false;
    };
    let desired = deployment["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
    let (surge, unavailable) = pace(&deployment, desired);
    let template = &deployment["spec"]["template"];
    let image = template["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let unpullable = shared.store.lock().unwrap().unpullable.contains(&image);
    let pods = owned_pods(shared, ns, name);
    let (mut new, mut old): (Vec<Value>, Vec<Value>) = pods.into_iter().partition(|p| {
        p["spec"] == template["spec"] && p["metadata"]["labels"] == template["metadata"]["labels"]
    });
    let remove = |pod: &Value| {
        let pod_name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        put(shared, "pods", ns, &pod_name, pod.clone(), "DELETED");
    };
    // Surplus new pods go first (a scale down).
    while new.len() > desired {
        remove(&new.pop().unwrap());
    }
    let ready_new = |new: &[Value]| if unpullable { 0 } else { new.len() };
    // Old pods go while enough stay ready; all of them once the new are.
    let min_ready = desired.saturating_sub(unavailable);
    while let Some(pod) = old.last() {
        let ready = old.len() - 1 + ready_new(&new);
        if ready < min_ready && ready_new(&new) < desired {
            break;
        }
        remove(pod);
        old.pop();
    }
    while new.len() < desired && old.len() + new.len() < desired + surge {
        let n = {
            let mut store = shared.store.lock().unwrap();
            store.next_pod += 1;
            store.next_pod
        };
        let pod_name = format!("{name}-{n:05x}");
        let container = template["spec"]["containers"][0]["name"].clone();
        let status = if unpullable {
            json!({"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}], "containerStatuses": [{"name": container, "ready": false, "restartCount": 0, "image": image, "imageID": "", "state": {"waiting": {"reason": "ErrImagePull", "message": format!("failed to pull image \"{image}\": not found")}}}]})
        } else {
            json!({"phase": "Running", "podIP": format!("10.0.0.{}", n % 250), "conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": [{"name": container, "ready": true, "restartCount": 0, "image": image, "imageID": "", "state": {"running": {}}}]})
        };
        let mut annotations = template["metadata"]["annotations"].clone();
        if !annotations.is_object() {
            annotations = json!({});
        }
        annotations["fake.ferry.io/owner"] = json!(name);
        let pod = json!({"metadata": {"name": pod_name, "namespace": ns, "labels": template["metadata"]["labels"], "annotations": annotations}, "spec": template["spec"], "status": status});
        new.push(put(shared, "pods", ns, &pod_name, pod, "ADDED"));
    }
    let total = old.len() + new.len();
    let ready = old.len() + ready_new(&new);
    shared
        .store
        .lock()
        .unwrap()
        .steps
        .entry(name.to_owned())
        .or_default()
        .push(RolloutStep {
            pods: total,
            updated: new.len(),
            ready,
            desired,
        });
    let Some(mut deployment) = get_object(shared, "deployments", ns, name) else {
        return false;
    };
    let done = old.is_empty() && ready == desired;
    let conditions = if done {
        json!([{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": format!("ReplicaSet \"{name}\" has successfully progressed.")}, {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}])
    } else {
        json!([{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated", "message": "waiting for pods"}, {"type": "Available", "status": if ready >= min_ready { "True" } else { "False" }, "reason": "MinimumReplicasUnavailable"}])
    };
    deployment["status"] = json!({"observedGeneration": deployment["metadata"]["generation"], "replicas": total, "updatedReplicas": new.len(), "readyReplicas": ready, "availableReplicas": ready, "unavailableReplicas": desired.saturating_sub(ready), "conditions": conditions});
    put(shared, "deployments", ns, name, deployment, "MODIFIED");
    // Pods that cannot pull wait as they are; anything else moves on.
    !old.is_empty() && !unpullable
}
