//! Conformance-style scenarios: the conformance suite's namespaces and backends (each an
//! in-process [`Echo`]), a real `gatewayd` serving manifests written to a temp dir, and a
//! small HTTP/1.1 + h2c client.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{HeaderMap, Method, Request};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

use crate::{
    echo::{runtime, Echo, Misbehaviour, RawBackend},
    free_port, http_get,
    tls::Leaf,
    Gatewayd,
};

/// The conformance suite's infrastructure namespace.
pub const INFRA: &str = "gateway-conformance-infra";
/// The namespace of `web-backend`.
pub const WEB: &str = "gateway-conformance-web-backend";
/// The namespace of `app-backend-v1`/`v2`.
pub const APP: &str = "gateway-conformance-app-backend";

/// A Service (port 8080, named `http`) and its EndpointSlice pointing at `endpoints`.
pub fn service(
    ns: &str,
    name: &str,
    endpoints: &[SocketAddr],
    app_protocol: Option<&str>,
) -> String {
    let app = app_protocol
        .map(|p| format!(", appProtocol: {p}"))
        .unwrap_or_default();
    // One EndpointSlice per distinct port: a slice has one port list.
    let mut slices = String::new();
    let mut ports: Vec<u16> = endpoints.iter().map(SocketAddr::port).collect();
    ports.sort_unstable();
    ports.dedup();
    for (i, p) in ports.iter().enumerate() {
        let eps: Vec<String> = endpoints
            .iter()
            .filter(|a| a.port() == *p)
            .map(|a| format!("{{addresses: ['{}']}}", a.ip()))
            .collect();
        slices.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-{i}, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {p}}}]\nendpoints: [{}]\n",
            eps.join(", ")
        ));
    }
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: 8080{app}}}]\n{slices}"
    )
}

/// The conformance backends, each an [`Echo`] named after its Service.
pub struct Infra {
    /// Echo backends by Service name.
    pub echoes: Vec<(String, Echo)>,
    /// Namespaces, Services and EndpointSlices.
    pub yaml: String,
}

impl Infra {
    /// `infra-backend-v1..v3` in the infra namespace, `web-backend`, `app-backend-v1/v2`.
    pub fn new() -> Infra {
        let mut infra = Infra {
            echoes: Vec::new(),
            yaml: format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {INFRA}}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {WEB}}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {APP}}}\n"
            ),
        };
        for (ns, name) in [
            (INFRA, "infra-backend-v1"),
            (INFRA, "infra-backend-v2"),
            (INFRA, "infra-backend-v3"),
            (WEB, "web-backend"),
            (APP, "app-backend-v1"),
            (APP, "app-backend-v2"),
        ] {
            infra.add(ns, name, None);
        }
        infra
    }

    /// Adds an echo backend behind a new Service.
    pub fn add(&mut self, ns: &str, name: &str, app_protocol: Option<&str>) -> SocketAddr {
        self.add_started(ns, name, Echo::start(name), app_protocol)
    }

    /// Adds a TLS echo backend ([`Echo::start_tls`]) with `cert` behind a new Service.
    pub fn add_tls(&mut self, ns: &str, name: &str, cert: &Leaf) -> SocketAddr {
        self.add_echo(ns, name, Echo::start_tls(name, cert))
    }

    /// Adds a started echo backend (e.g. [`Echo::start_tls_with`]) behind a new Service.
    pub fn add_echo(&mut self, ns: &str, name: &str, echo: Echo) -> SocketAddr {
        self.add_started(ns, name, echo, None)
    }

    /// Starts a backend that misbehaves as `how` behind a new Service `ns/name`.
    pub fn add_raw(&mut self, ns: &str, name: &str, how: Misbehaviour) -> RawBackend {
        let raw = RawBackend::start(how);
        self.yaml.push_str(&service(ns, name, &[raw.addr], None));
        raw
    }

    /// Adds a started echo backend behind a new Service whose port has `app_protocol`.
    pub fn add_started(
        &mut self,
        ns: &str,
        name: &str,
        echo: Echo,
        app_protocol: Option<&str>,
    ) -> SocketAddr {
        let addr = echo.addr;
        self.yaml
            .push_str(&service(ns, name, &[addr], app_protocol));
        self.echoes.push((name.to_string(), echo));
        addr
    }

    /// Adds a Service (port 8080) for a backend the test runs itself.
    pub fn add_service(&mut self, ns: &str, name: &str, addr: SocketAddr) {
        self.yaml.push_str(&service(ns, name, &[addr], None));
    }

    /// Adds a Service with several named ports, each `(name, service port, endpoint)`,
    /// and one EndpointSlice carrying them all (the endpoints must share one address).
    pub fn add_multi_port_service(
        &mut self,
        ns: &str,
        name: &str,
        ports: &[(&str, u16, SocketAddr)],
    ) {
        let svc_ports: Vec<String> = ports
            .iter()
            .map(|(n, p, _)| format!("{{name: {n}, port: {p}}}"))
            .collect();
        let slice_ports: Vec<String> = ports
            .iter()
            .map(|(n, _, a)| format!("{{name: {n}, port: {}}}", a.port()))
            .collect();
        let ip = ports
            .first()
            .map(|(_, _, a)| a.ip().to_string())
            .unwrap_or_else(|| "127.0.0.1".to_string());
        self.yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-0, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{}]\nendpoints: [{{addresses: ['{ip}']}}]\n",
            svc_ports.join(", "),
            slice_ports.join(", ")
        ));
    }

    /// The echo behind a Service.
    pub fn echo(&self, name: &str) -> &Echo {
        self.echoes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, e)| e)
            .expect("invariant: the test names an existing backend")
    }

    /// Starts gatewayd on these backends plus `manifests`.
    pub fn serve(&self, manifests: &[impl AsRef<str>]) -> Served {
        self.serve_with(manifests, &ServeOptions::default())
    }

    /// [`Infra::serve`] with `options`.
    pub fn serve_with(&self, manifests: &[impl AsRef<str>], options: &ServeOptions) -> Served {
        Served::start_with(&self.manifest(manifests), options).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The whole manifest gatewayd is given: these backends plus `manifests` (to rewrite
    /// [`Served::config`] with).
    pub fn manifest(&self, manifests: &[impl AsRef<str>]) -> String {
        let mut all = self.yaml.clone();
        for m in manifests {
            all.push_str("---\n");
            all.push_str(m.as_ref());
            all.push('\n');
        }
        all
    }
}

impl Default for Infra {
    fn default() -> Self {
        Self::new()
    }
}

/// The conformance `same-namespace` Gateway: one HTTP listener on 127.0.0.1:`port`
/// accepting routes of its own namespace.
pub fn same_namespace_gateway(port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: same-namespace, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - name: http\n    port: {port}\n    protocol: HTTP\n    allowedRoutes: {{namespaces: {{from: Same}}}}\n"
    )
}

/// A running gatewayd serving a manifest file.
pub struct Served {
    /// The process.
    pub gw: Gatewayd,
    /// The manifest file (rewrite it to reload).
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

/// How [`Served`] starts gatewayd.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// `--workers` (2 by default).
    pub workers: usize,
    /// Extra environment variables (e.g. `SSL_CERT_FILE`).
    pub env: Vec<(String, String)>,
    /// Extra `gatewayd run` arguments (e.g. `--forwarded-headers none`).
    pub args: Vec<String>,
}

impl ServeOptions {
    /// The defaults with `--workers workers`.
    pub fn with_workers(workers: usize) -> ServeOptions {
        ServeOptions {
            workers,
            ..ServeOptions::default()
        }
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            workers: 2,
            env: Vec::new(),
            args: Vec::new(),
        }
    }
}

impl Served {
    /// Writes `yaml`, starts `gatewayd run --ebpf off`, and waits for `/readyz`.
    pub fn start(yaml: &str) -> anyhow::Result<Served> {
        Self::start_with(yaml, &ServeOptions::default())
    }

    /// [`Served::start`] with `options`.
    pub fn start_with(yaml: &str, options: &ServeOptions) -> anyhow::Result<Served> {
        let dir = tempfile::tempdir()?;
        let config = crate::write_config(dir.path(), "gateway.yaml", yaml);
        let config_arg = config.to_string_lossy().into_owned();
        let workers = options.workers.to_string();
        let mut cmd = std::process::Command::new(crate::gatewayd_bin());
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let mut args = vec![
            "--config",
            &config_arg,
            "--ebpf",
            "off",
            "--workers",
            &workers,
        ];
        args.extend(options.args.iter().map(String::as_str));
        let mut gw = Gatewayd::start_with(cmd, &args)?;
        gw.wait_healthy()?;
        let served = Served {
            gw,
            config,
            _dir: dir,
        };
        served.wait_ready()?;
        Ok(served)
    }

    /// Waits for `/readyz` to answer 200.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match http_get(self.gw.admin, "/readyz") {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) if Instant::now() > deadline => {
                    bail!("not ready: {} {}\n{}", r.status, r.body, self.gw.stderr())
                }
                Err(e) if Instant::now() > deadline => bail!("readyz: {e}\n{}", self.gw.stderr()),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Replaces the manifest file's content (gatewayd reloads it on the change). Written
    /// to a temporary file and renamed over, so the reload never sees half a file.
    pub fn rewrite(&self, yaml: &str) {
        let tmp = self.config.with_extension("yaml.new");
        std::fs::write(&tmp, yaml).expect("invariant: the test's temp dir is writable");
        std::fs::rename(&tmp, &self.config).expect("invariant: rename within one directory");
    }

    /// `GET /status`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let r = self.gw.get("/status").expect("GET /status");
        serde_json::from_str(&r.body).expect("/status is JSON")
    }

    /// The value of one `/metrics` sample, by its exact name and labels as printed (e.g.
    /// `gatewayd_backend_tls_handshakes_total{kind="resumed"}`); 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let r = self.gw.get("/metrics").expect("GET /metrics");
        r.body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == sample).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }
}

/// The object of `kind` named `name` in a `/status` document.
pub fn status_item<'s>(
    status: &'s serde_json::Value,
    kind: &str,
    name: &str,
) -> &'s serde_json::Value {
    status["items"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find(|i| i["kind"] == kind && i["metadata"]["name"] == name)
        })
        .unwrap_or_else(|| panic!("{kind} {name} not in /status: {status}"))
}

/// The status of the listener `listener` of Gateway `gw` in a `/status` document.
pub fn listener_status<'s>(
    status: &'s serde_json::Value,
    gw: &str,
    listener: &str,
) -> &'s serde_json::Value {
    let g = status_item(status, "Gateway", gw);
    g["status"]["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == listener))
        .unwrap_or_else(|| panic!("Gateway {gw} has no listener {listener}: {g}"))
}

/// `(status, reason, observedGeneration)` of the condition `type_` of Gateway `gw`.
pub fn gateway_condition(
    status: &serde_json::Value,
    gw: &str,
    type_: &str,
) -> (String, String, i64) {
    condition_of(
        &status_item(status, "Gateway", gw)["status"]["conditions"],
        type_,
    )
}

/// A condition of `type_` among `conditions`: `(status, reason, observedGeneration)`.
pub fn condition_of(conditions: &serde_json::Value, type_: &str) -> (String, String, i64) {
    let c = conditions
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions}"));
    (
        c["status"].as_str().unwrap_or_default().to_string(),
        c["reason"].as_str().unwrap_or_default().to_string(),
        c["observedGeneration"].as_i64().unwrap_or(-1),
    )
}

/// A free port for a listener.
pub fn listener_port() -> u16 {
    free_port()
}

/// A request as a test writes it.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub h2: bool,
}

impl Req {
    /// `GET path`.
    pub fn get(path: &str) -> Req {
        Req {
            method: Method::GET,
            path: path.to_string(),
            host: None,
            headers: Vec::new(),
            body: Bytes::new(),
            h2: false,
        }
    }

    /// Sets the Host (HTTP/1.1) or `:authority` (HTTP/2).
    pub fn host(mut self, host: &str) -> Req {
        self.host = Some(host.to_string());
        self
    }

    /// Sets the method.
    pub fn method(mut self, m: &str) -> Req {
        self.method = Method::from_bytes(m.as_bytes()).expect("invariant: a valid method");
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Req {
        self.body = body.into();
        self
    }

    /// Sends it over HTTP/2 with prior knowledge.
    pub fn h2(mut self) -> Req {
        self.h2 = true;
        self
    }
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Set when the body ended with an error (a truncated response).
    pub body_error: Option<String>,
}

impl Reply {
    /// The echo backend's JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The echo backend's JSON carried in a gRPC message (5-byte frame header).
    pub fn json_of_grpc(&self) -> serde_json::Value {
        self.body
            .get(5..)
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Which echo backend answered (`pod`), if one did.
    pub fn backend(&self) -> Option<String> {
        self.json()["pod"].as_str().map(str::to_string)
    }

    /// The values the backend saw for a request header, joined with `,` (as the
    /// conformance suite compares them); `None` when absent.
    pub fn seen_header(&self, name: &str) -> Option<String> {
        let v = &self.json()["headers"][name.to_ascii_lowercase()];
        v.as_array().map(|vals| {
            vals.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    /// The path (with query) the backend saw.
    pub fn seen_path(&self) -> Option<String> {
        self.json()["path"].as_str().map(str::to_string)
    }

    /// A response header's values joined with `,`.
    pub fn header(&self, name: &str) -> Option<String> {
        let vals: Vec<&str> = self
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!vals.is_empty()).then(|| vals.join(","))
    }
}

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn clients() -> &'static (TestClient, TestClient) {
    static CLIENTS: OnceLock<(TestClient, TestClient)> = OnceLock::new();
    CLIENTS.get_or_init(|| {
        let _guard = runtime().enter();
        let h1 = Client::builder(TokioExecutor::new()).build_http();
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        (h1, h2)
    })
}

/// Sends `req` to the gateway at `addr` and reads the whole response.
pub fn send(addr: SocketAddr, req: &Req) -> anyhow::Result<Reply> {
    let (h1, h2) = clients();
    let client = if req.h2 { h2 } else { h1 };
    let mut builder = Request::builder()
        .method(req.method.clone())
        .uri(format!("http://{addr}{}", req.path));
    if let Some(host) = &req.host {
        if req.h2 {
            builder = builder.uri(format!("http://{host}{}", req.path));
        } else {
            builder = builder.header("host", host);
        }
    }
    for (n, v) in &req.headers {
        builder = builder.header(n, v);
    }
    let request = builder.body(Full::new(req.body.clone()))?;
    runtime().block_on(async move {
        tokio::time::timeout(Duration::from_secs(20), async move {
            let resp = if req.h2 && req.host.is_some() {
                // The authority names the virtual host; connect to the gateway anyway.
                send_h2_to(addr, request).await?
            } else {
                client.request(request).await?
            };
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let mut body = Vec::new();
            let mut body_error = None;
            let mut incoming = resp.into_body();
            while let Some(frame) = incoming.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            body.extend_from_slice(d);
                        }
                    }
                    Err(e) => {
                        body_error = Some(e.to_string());
                        break;
                    }
                }
            }
            Ok::<_, anyhow::Error>(Reply {
                status,
                headers,
                body: Bytes::from(body),
                body_error,
            })
        })
        .await
        .context("request timed out")?
    })
}

/// HTTP/2 with prior knowledge to `addr`, whatever the request's authority says.
async fn send_h2_to(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await?;
    tokio::spawn(conn);
    Ok(tx.send_request(request).await?)
}

/// Expected outcome of one request in a table-driven test.
#[derive(Clone, Copy, Debug)]
pub enum Expect<'a> {
    /// 200 from this echo backend.
    Backend(&'a str),
    /// This status from the gateway.
    Status(u16),
}

/// Sends every request and checks status and backend, reporting all mismatches at once.
pub fn check_all(addr: SocketAddr, cases: &[(Req, Expect<'_>)]) {
    let mut failures = Vec::new();
    for (req, want) in cases {
        let got = match send(addr, req) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{req:?}: {e:#}"));
                continue;
            }
        };
        let ok = match want {
            Expect::Backend(b) => got.status == 200 && got.backend().as_deref() == Some(*b),
            Expect::Status(s) => got.status == *s,
        };
        if !ok {
            failures.push(format!(
                "{} {} host={:?} headers={:?}: want {want:?}, got {} from {:?}",
                req.method,
                req.path,
                req.host,
                req.headers,
                got.status,
                got.backend()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A Gateway in the infra namespace on 127.0.0.1 with `listeners` (from
/// [`http_listener`], [`https_listener`], [`tls_terminate_listener`]) and, when given,
/// `spec.tls` as a YAML flow mapping (e.g. `{backend: {clientCertificateRef: {name: c}}}`).
pub fn gateway(name: &str, listeners: &[String], tls: Option<&str>) -> String {
    let tls = tls.map_or(String::new(), |t| format!("  tls: {t}\n"));
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n{tls}  listeners:\n{}",
        listeners.concat()
    )
}

/// An HTTP listener accepting routes of its namespace.
pub fn http_listener(name: &str, port: u16) -> String {
    format!("  - {{name: {name}, port: {port}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: Same}}}}}}\n")
}

/// An HTTPS listener terminating with the `kubernetes.io/tls` Secret `secret`.
pub fn https_listener(name: &str, port: u16, secret: &str) -> String {
    format!("  - {{name: {name}, port: {port}, protocol: HTTPS, allowedRoutes: {{namespaces: {{from: Same}}}}, tls: {{certificateRefs: [{{name: {secret}}}]}}}}\n")
}

/// A TLS listener in Terminate mode for TLSRoutes, with the Secret `secret`.
pub fn tls_terminate_listener(name: &str, port: u16, secret: &str) -> String {
    format!("  - {{name: {name}, port: {port}, protocol: TLS, allowedRoutes: {{namespaces: {{from: Same}}, kinds: [{{kind: TLSRoute}}]}}, tls: {{mode: Terminate, certificateRefs: [{{name: {secret}}}]}}}}\n")
}

/// A BackendTLSPolicy in the infra namespace. `targets`: Service names, `name#section`
/// for one port; `validation`: the `spec.validation` flow mapping; `metadata`: extra
/// metadata entries (e.g. `generation: 2, creationTimestamp: '2024-01-01T00:00:00Z'`).
pub fn backend_tls_policy(
    name: &str,
    metadata: &str,
    targets: &[&str],
    validation: &str,
) -> String {
    let metadata = if metadata.is_empty() {
        String::new()
    } else {
        format!(", {metadata}")
    };
    let targets: Vec<String> = targets
        .iter()
        .map(|t| match t.split_once('#') {
            Some((svc, section)) => {
                format!("{{group: '', kind: Service, name: {svc}, sectionName: {section}}}")
            }
            None => format!("{{group: '', kind: Service, name: {t}}}"),
        })
        .collect();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {name}, namespace: {INFRA}{metadata}}}\nspec:\n  targetRefs: [{}]\n  validation: {validation}\n",
        targets.join(", ")
    )
}

/// The `validation` of a policy trusting the CA ConfigMap `config_map` for `hostname`.
pub fn validate_with(config_map: &str, hostname: &str) -> String {
    format!("{{caCertificateRefs: [{{group: '', kind: ConfigMap, name: {config_map}}}], hostname: {hostname}}}")
}

/// An HTTPRoute in the infra namespace: `parents` the parentRefs flow list items (e.g.
/// `{name: gw}`), each rule `(exact path or "" for any, Service, port)`.
pub fn http_route(
    name: &str,
    parents: &[&str],
    rules: &[(impl AsRef<str>, impl AsRef<str>, u16)],
) -> String {
    let mut out = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{}]\n  rules:\n",
        parents.join(", ")
    );
    for (path, svc, port) in rules {
        let (path, svc) = (path.as_ref(), svc.as_ref());
        if path.is_empty() {
            out.push_str(&format!(
                "  - backendRefs: [{{name: {svc}, port: {port}}}]\n"
            ));
        } else {
            out.push_str(&format!(
                "  - matches: [{{path: {{type: Exact, value: '{path}'}}}}]\n    backendRefs: [{{name: {svc}, port: {port}}}]\n"
            ));
        }
    }
    out
}

/// `(status, reason, observedGeneration)` of a BackendTLSPolicy's condition for its
/// ancestor Gateway `gw`.
pub fn policy_condition(
    status: &serde_json::Value,
    policy: &str,
    gw: &str,
    type_: &str,
) -> (String, String, i64) {
    let p = status_item(status, "BackendTLSPolicy", policy);
    let ancestor = p["status"]["ancestors"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["ancestorRef"]["name"] == gw))
        .unwrap_or_else(|| panic!("BackendTLSPolicy {policy} has no ancestor {gw}: {p}"));
    condition_of(&ancestor["conditions"], type_)
}

/// `(status, reason, observedGeneration)` of a route's condition for its parent `gw`.
pub fn route_condition(
    status: &serde_json::Value,
    kind: &str,
    route: &str,
    gw: &str,
    type_: &str,
) -> (String, String, i64) {
    let r = status_item(status, kind, route);
    let parent = r["status"]["parents"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["parentRef"]["name"] == gw))
        .unwrap_or_else(|| panic!("{kind} {route} has no parent {gw}: {r}"));
    condition_of(&parent["conditions"], type_)
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `limit`; returns the value
/// and how long it took, or `None` with the last try's description.
pub fn wait_for<T>(
    limit: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<(T, Duration), String> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok((v, start.elapsed())),
            Err(last) if start.elapsed() > limit => {
                return Err(format!("not within {limit:?}: {last}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
