// The conformance driver, included by tests/gateway_conformance.rs (files mode) and
// tests/gateway_conformance_cluster.rs (the API stand-in), which set `CLUSTER`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{client, Pods, Portico};
use portico::echo::Echo;
use serde_json::Value;
use support::gateway::{conformance_yaml, CLASS, CONTROLLER};

const INFRA: &str = "gateway-conformance-infra";
/// The Gateways' addresses: enough for the base manifests' four and a test's own.
const POOL: &str = "127.0.0.2-127.0.0.13";

/// A Portico serving one conformance test's objects, with its echo pods.
struct Driver {
    portico: Portico,
    /// The socket of spec port 80.
    port: u16,
    /// The socket port of spec port 443 (bound on each pool address).
    tls_port: u16,
    /// The certificate of the suite's `tls-validity-checks-certificate` Secret (PEM).
    cert_pem: String,
    _pods: Vec<Pods>,
    /// Pods the driver added by hand (an IPv6 one, for the manual IPv6 EndpointSlices).
    _extra: Vec<tokio::task::JoinHandle<()>>,
    /// With `CLUSTER`: the API stand-in holding the objects, and each "file"'s objects (so that
    /// a rewrite deletes what it no longer has, as `kubectl apply --prune` would).
    cluster: Option<Cluster>,
}

struct Cluster {
    server: support::apiserver::ApiServer,
    _dir: tempfile::TempDir,
    files: std::sync::Mutex<BTreeMap<String, Vec<Value>>>,
}

impl Cluster {
    /// What an API server adds that the suite's objects rely on: a Secret's `stringData` becomes
    /// `data`, a Namespace gets its `kubernetes.io/metadata.name` label.
    fn admit(mut doc: Value) -> Value {
        use base64::Engine as _;
        if doc["kind"] == "Secret" {
            if let Some(strings) = doc.get("stringData").and_then(Value::as_object).cloned() {
                let data = doc["data"].as_object().cloned().unwrap_or_default();
                let mut data = data;
                for (k, v) in strings {
                    let b = base64::engine::general_purpose::STANDARD
                        .encode(v.as_str().unwrap_or_default());
                    data.insert(k, Value::String(b));
                }
                doc["data"] = Value::Object(data);
                doc.as_object_mut().map(|o| o.remove("stringData"));
            }
        }
        if doc["kind"] == "Namespace" {
            let name = str_at(&doc, "/metadata/name").to_string();
            doc["metadata"]["labels"]["kubernetes.io/metadata.name"] = Value::String(name);
        }
        doc
    }

    /// Replaces the objects of `file`: applies the new ones, deletes the ones it no longer has.
    fn write(&self, file: &str, text: &str) {
        let new: Vec<Value> = documents(text).into_iter().map(Cluster::admit).collect();
        let id = |d: &Value| {
            (
                str_at(d, "/apiVersion").to_string(),
                str_at(d, "/kind").to_string(),
                str_at(d, "/metadata/namespace").to_string(),
                str_at(d, "/metadata/name").to_string(),
            )
        };
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let old = files.remove(file).unwrap_or_default();
        let kept: std::collections::BTreeSet<_> = new.iter().map(id).collect();
        for gone in old.iter().filter(|d| !kept.contains(&id(d))) {
            let (v, k, ns, name) = id(gone);
            let ns = if ns.is_empty() && k != "GatewayClass" && k != "Namespace" {
                "default".to_string()
            } else {
                ns
            };
            self.server.delete(&v, &k, &ns, &name);
        }
        for d in &new {
            // Keep the status the stand-in holds: a client's apply does not touch it.
            let mut d = d.clone();
            let (v, k, ns, name) = id(&d);
            if let Some(stored) = self.server.get(&v, &k, &ns, &name) {
                if let Some(status) = stored.get("status") {
                    d["status"] = status.clone();
                }
            }
            self.server.apply(d);
        }
        files.insert(file.to_string(), new);
    }

    /// The status of every GatewayClass, Gateway and HTTPRoute, in `/status/gateway-api`'s shape.
    fn status(&self) -> Value {
        let mut out = serde_json::json!({"gatewayClasses": {}, "gateways": {}, "httpRoutes": {}});
        for (kind, section) in [
            ("GatewayClass", "gatewayClasses"),
            ("Gateway", "gateways"),
            ("HTTPRoute", "httpRoutes"),
        ] {
            for o in self.server.list("gateway.networking.k8s.io/v1", kind, None) {
                let Some(status) = o.get("status").filter(|s| !s.is_null()) else {
                    continue;
                };
                let name = str_at(&o, "/metadata/name");
                let key = match str_at(&o, "/metadata/namespace") {
                    "" => name.to_string(),
                    ns => format!("{ns}/{name}"),
                };
                out[section][key] = status.clone();
            }
        }
        out
    }
}

/// What a request must get.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// 200 from a pod of this Deployment in this namespace.
    Backend(&'static str, &'static str),
    Status(u16),
    /// A redirect with this status to this host (and, when set, this path).
    Redirect(u16, &'static str, Option<&'static str>),
}

/// One request of a test: `host` (else the Gateway's address), path, extra fields.
#[derive(Clone, Copy, Debug)]
struct Case {
    host: Option<&'static str>,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    want: Want,
}

const fn at(path: &'static str, want: Want) -> Case {
    Case {
        host: None,
        path,
        headers: &[],
        want,
    }
}

const fn on(host: &'static str, path: &'static str, want: Want) -> Case {
    Case {
        host: Some(host),
        path,
        headers: &[],
        want,
    }
}

const fn with(headers: &'static [(&'static str, &'static str)], want: Want) -> Case {
    Case {
        host: None,
        path: "/",
        headers,
        want,
    }
}

const fn infra(backend: &'static str) -> Want {
    Want::Backend(backend, INFRA)
}

const NOT_FOUND: Want = Want::Status(404);
const SERVER_ERROR: Want = Want::Status(500);
const WEB: &str = "gateway-conformance-web-backend";
const APP: &str = "gateway-conformance-app-backend";

/// A port free on every address, for the Gateway socket (`0.0.0.0:port`, so that each
/// Gateway's 127.0.0.N reaches it). Taken below the kernel's ephemeral range (32768 and up on
/// Linux), where the echo pods' and the other listeners' ports come from: a pod bound to
/// 127.x.y.z on the same port would make the wildcard bind fail.
fn wildcard_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 100) as u16 * 20;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// `ns/name`, the namespace being the infra one unless given.
fn route_key(route: &str) -> String {
    if route.contains('/') {
        route.to_string()
    } else {
        format!("{INFRA}/{route}")
    }
}

fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

fn str_at<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

impl Driver {
    /// Starts pods and Portico for `tests/<test>.yaml`; `None` without the conformance data.
    async fn start(test: &str) -> Option<Driver> {
        let base = conformance_yaml("base-manifests.yaml")?;
        let objects = conformance_yaml(&format!("tests/{test}.yaml"))?;
        let docs: Vec<Value> = documents(&base)
            .into_iter()
            .chain(documents(&objects))
            .collect();
        // The kubelet: echo pods for each Deployment (not the TLS backends: no core HTTP test
        // reaches them), by namespace and `app` label.
        let mut pods: BTreeMap<(String, String), Pods> = BTreeMap::new();
        for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
            let (ns, name) = (
                str_at(d, "/metadata/namespace"),
                str_at(d, "/metadata/name"),
            );
            if name.starts_with("tls-backend") {
                continue;
            }
            let replicas = d
                .pointer("/spec/replicas")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            let app = str_at(d, "/spec/template/metadata/labels/app");
            let p = Pods::start(&format!("{ns}/{name}"), replicas as u8).await;
            pods.insert((ns.to_string(), app.to_string()), p);
        }
        // What HTTPRouteServiceTypes does by hand: the EndpointSlices of its selector-less
        // Services get the addresses of infra-backend-v1's pods (its IPv4 pods, and one IPv6
        // pod on ::1 for the IPv6 slices, as in a dual-stack cluster).
        let test_docs = documents(&objects);
        let manual: Vec<&Value> = test_docs
            .iter()
            .filter(|d| d["kind"] == "EndpointSlice")
            .collect();
        let mut extra = Vec::new();
        let mut slices = String::new();
        if !manual.is_empty() {
            let v1 = pods
                .get(&(INFRA.to_string(), "infra-backend-v1".to_string()))
                .expect("infra-backend-v1 pods");
            let v6 = tokio::net::TcpListener::bind("[::1]:0")
                .await
                .expect("IPv6 loopback");
            let v6_port = v6.local_addr().expect("addr").port();
            extra.push(tokio::spawn(portico::echo::serve(
                v6,
                portico::echo::Identity {
                    service: format!("{INFRA}/infra-backend-v1"),
                    pod: format!("{INFRA}/infra-backend-v1-ipv6"),
                },
            )));
            for slice in &manual {
                let mut slice = (*slice).clone();
                let (port, endpoints): (u16, Vec<String>) = match str_at(&slice, "/addressType") {
                    "IPv6" => (v6_port, vec!["::1".into()]),
                    _ => (v1.port, v1.ips.iter().map(|ip| ip.to_string()).collect()),
                };
                for p in slice["ports"].as_array_mut().into_iter().flatten() {
                    p["port"] = port.into();
                }
                slice["endpoints"] = endpoints
                    .iter()
                    .map(|ip| serde_json::json!({ "addresses": [ip], "conditions": { "ready": true } }))
                    .collect();
                slices.push_str(&format!("{slice}\n---\n"));
            }
        }
        // The test's own objects, without the slices filled in above.
        let objects_file = if manual.is_empty() {
            objects.clone()
        } else {
            test_docs
                .iter()
                .filter(|d| d["kind"] != "EndpointSlice")
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n---\n")
        };
        // The endpoints controller: a slice per Service whose selector has pods.
        for s in docs.iter().filter(|d| d["kind"] == "Service") {
            let (ns, name) = (
                str_at(s, "/metadata/namespace"),
                str_at(s, "/metadata/name"),
            );
            let app = str_at(s, "/spec/selector/app");
            let Some(p) = pods.get(&(ns.to_string(), app.to_string())) else {
                continue;
            };
            let ports: String = s
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|port| {
                    format!(
                        "  - {{ name: \"{}\", port: {} }}\n",
                        str_at(port, "/name"),
                        p.port
                    )
                })
                .collect();
            let endpoints: String = p
                .ips
                .iter()
                .enumerate()
                .map(|(i, ip)| {
                    format!(
                        "  - addresses: [\"{ip}\"]\n    conditions: {{ ready: true }}\n    \
                         targetRef: {{ kind: Pod, name: {name}-{i} }}\n"
                    )
                })
                .collect();
            slices.push_str(&format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: \
                 {name}-driver\n  namespace: {ns}\n  labels: {{ kubernetes.io/service-name: \
                 {name} }}\naddressType: IPv4\nports:\n{ports}endpoints:\n{endpoints}---\n"
            ));
        }
        // The Secrets the suite generates: self-signed, for the names the tests ask for.
        let cert = rcgen::generate_simple_self_signed(
            [
                "example.org",
                "second-example.org",
                "unknown-example.org",
                "*.wildcard.org",
            ]
            .map(String::from)
            .to_vec(),
        )
        .expect("rcgen");
        let cert_pem = cert.cert.pem();
        let secrets: String = [
            (INFRA, "tls-validity-checks-certificate"),
            (WEB, "certificate"),
        ]
        .iter()
        .map(|(ns, name)| {
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": { "name": name, "namespace": ns },
                "type": "kubernetes.io/tls",
                "stringData": { "tls.crt": cert_pem, "tls.key": cert.key_pair.serialize_pem() },
            })
            .to_string()
                + "\n---\n"
        })
        .collect();
        let class = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{ name: \
             {CLASS} }}\nspec: {{ controllerName: {CONTROLLER} }}\n"
        );
        let port = wildcard_port();
        let tls_port = wildcard_port();
        let files = [
            ("class.yaml", &class),
            ("base.yaml", &base),
            ("test.yaml", &objects_file),
            ("slices.yaml", &slices),
            ("secrets.yaml", &secrets),
        ];
        let gateway_flags = |f: &mut portico::config::Flags| {
            f.gateway_listen = vec![
                format!("80=0.0.0.0:{port}"),
                format!("https:443=0.0.0.0:{tls_port}"),
            ];
            f.gateway_address_pool = vec![POOL.into()];
        };
        let (portico, cluster) = if CLUSTER {
            let server = support::apiserver::ApiServer::start().await;
            let dir = tempfile::tempdir().expect("tempdir");
            let kubeconfig = server.kubeconfig(dir.path());
            support::gateway::register(&server);
            let cluster = Cluster {
                server,
                _dir: dir,
                files: Default::default(),
            };
            for (name, text) in files {
                cluster.write(name, text);
            }
            let portico = Portico::start_with(&[], |f| {
                gateway_flags(f);
                f.manifests = None;
                f.kubeconfig = Some(kubeconfig);
                f.election_lease_duration = Some("3s".into());
                f.election_renew_period = Some("500ms".into());
            })
            .await;
            (portico, Some(cluster))
        } else {
            let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
            (Portico::start_with(&files, gateway_flags).await, None)
        };
        Some(Driver {
            portico,
            port,
            tls_port,
            cert_pem,
            _pods: pods.into_values().collect(),
            _extra: extra,
            cluster,
        })
    }

    /// The status Portico computed (`/status/gateway-api`).
    async fn status(&self) -> Value {
        let url = format!("http://{}/status/gateway-api", self.portico.admin);
        let computed = || async {
            let r = client().get(&url).send().await.expect("status");
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.expect("status JSON")
        };
        let Some(c) = &self.cluster else {
            return computed().await;
        };
        // As the suite reads status from the API server, which the Lease holder writes a moment
        // after each compile: wait (bounded) until every status Portico computed is stored.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let want = computed().await;
            let stored = c.status();
            let synced = ["gatewayClasses", "gateways", "httpRoutes"].iter().all(|s| {
                want[s]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .all(|(k, v)| stored[s][k] == *v)
            });
            if synced || Instant::now() > deadline {
                return stored;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Replaces a manifest as an editor or `kubectl` would, atomically (a plain write can be
    /// read half-written by the file watcher, which then serves that until the next event).
    fn rewrite(&self, name: &str, text: &str) {
        match &self.cluster {
            Some(c) => c.write(name, text),
            None => self.portico.write_atomic(name, text),
        }
    }

    /// Polls the status until `check` holds (a file change reaches the snapshot after the
    /// watcher's debounce); panics with the last status after a few seconds.
    async fn status_until(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.status().await;
            if check(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}: {s:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the Gateway `ns/name` has an address and all its listeners are Accepted,
    /// ResolvedRefs and Programmed, and each of `routes` (in `ns`) has a parent status of ours
    /// for it that is Accepted (`GatewayAndHTTPRoutesMustBeAccepted`); returns where to send
    /// requests.
    async fn ready(&self, gateway: &str, routes: &[&str]) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.status().await;
            match self.check_ready(&status, gateway, routes) {
                Ok(addr) => return addr,
                Err(why) => assert!(Instant::now() < deadline, "{why}: {status:#}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_ready(
        &self,
        status: &Value,
        gateway: &str,
        routes: &[&str],
    ) -> Result<SocketAddr, String> {
        let key = format!("{INFRA}/{gateway}");
        let gw = &status["gateways"][&key];
        let addr = gw["addresses"][0]["value"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or(format!("Gateway {key} has no address"))?;
        let cond = |conds: &Value, t: &str| {
            conds
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == t && c["status"] == "True")
        };
        for l in gw["listeners"].as_array().into_iter().flatten() {
            for t in ["Accepted", "ResolvedRefs", "Programmed"] {
                if !cond(&l["conditions"], t) {
                    return Err(format!("listener {} of {key} is not {t}", l["name"]));
                }
            }
        }
        for r in routes {
            let rkey = route_key(r);
            let ok = status["httpRoutes"][&rkey]["parents"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| {
                    p["controllerName"] == CONTROLLER
                        && p["parentRef"]["name"] == *gateway
                        && cond(&p["conditions"], "Accepted")
                });
            if !ok {
                return Err(format!("HTTPRoute {rkey} is not Accepted by {key}"));
            }
        }
        Ok(SocketAddr::new(addr, self.port))
    }

    /// The `(status, reason)` of condition `type_` of the route's parent status for Gateway
    /// `gateway` (in the infra namespace).
    async fn route_condition(&self, route: &str, gateway: &str, type_: &str) -> (String, String) {
        let status = self.status().await;
        let parents = &status["httpRoutes"][route_key(route)]["parents"];
        parents
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["parentRef"]["name"] == gateway)
            .flat_map(|p| p["conditions"].as_array().into_iter().flatten())
            .find(|c| c["type"] == type_)
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or("").to_string(),
                    c["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .unwrap_or_else(|| panic!("no {type_} for {route} on {gateway}: {parents:#}"))
    }

    /// Sends one request over TLS to the Gateway's HTTPS socket, with `name` as SNI and Host,
    /// trusting the suite's certificate; its status and echo answer.
    async fn send_tls(&self, gw: SocketAddr, name: &str, path: &str) -> (u16, Option<Echo>) {
        let addr = SocketAddr::new(gw.ip(), self.tls_port);
        let client = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.cert_pem.as_bytes()).expect("PEM"),
            )
            .resolve(name, addr)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let r = client
            .get(format!("https://{name}:{}{path}", self.tls_port))
            .send()
            .await
            .unwrap_or_else(|e| panic!("TLS request to {name} via {addr}: {e:?}"));
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&body).ok())
    }

    /// Sends one request; its status, echo answer and `Location`.
    async fn send(&self, gw: SocketAddr, case: &Case) -> (u16, Option<Echo>, Option<String>) {
        let mut req = client().get(format!("http://{gw}{}", case.path));
        if let Some(h) = case.host {
            req = req.header("host", h);
        }
        for (n, v) in case.headers {
            req = req.header(*n, *v);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(str::to_string);
        let body = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&body).ok(), location)
    }

    /// Whether one answer is what `want` says, with the reason when not.
    fn verdict(want: Want, got: &(u16, Option<Echo>, Option<String>)) -> Result<(), String> {
        let (status, echo, location) = got;
        match want {
            Want::Status(s) if *status == s => Ok(()),
            Want::Backend(deployment, ns) => {
                let Some(e) = echo.as_ref().filter(|_| *status == 200) else {
                    return Err(format!("status {status}, no echo answer"));
                };
                if e.service == format!("{ns}/{deployment}") && e.pod.starts_with(&e.service) {
                    Ok(())
                } else {
                    Err(format!("answered by {} ({})", e.pod, e.service))
                }
            }
            Want::Redirect(s, host, path) if *status == s => {
                let url = location
                    .as_deref()
                    .and_then(|l| l.parse::<http::Uri>().ok())
                    .ok_or(format!("Location {location:?}"))?;
                let path_ok = path.is_none_or(|p| url.path() == p);
                if url.host() == Some(host) && path_ok {
                    Ok(())
                } else {
                    Err(format!("Location {location:?}"))
                }
            }
            _ => Err(format!("status {status}")),
        }
    }

    /// Every case, each retried until it holds (the suite's eventually consistent
    /// expectation), within a few seconds.
    async fn expect(&self, gw: SocketAddr, cases: &[Case]) {
        for case in cases {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let got = self.send(gw, case).await;
                match Self::verdict(case.want, &got) {
                    Ok(()) => break,
                    Err(why) => assert!(
                        Instant::now() < deadline,
                        "{case:?}: {why} (echo {:?})",
                        got.1
                    ),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

both_engines! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_simple_same_namespace() {
        let Some(d) = Driver::start("httproute-simple-same-namespace").await else { return };
        let gw = d.ready("same-namespace", &["gateway-conformance-infra-test"]).await;
        d.expect(gw, &[at("/", infra("infra-backend-v1"))]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_exact_path_matching() {
        let Some(d) = Driver::start("httproute-exact-path-matching").await else { return };
        let gw = d.ready("same-namespace", &["exact-matching"]).await;
        d.expect(gw, &[
            at("/one", infra("infra-backend-v1")),
            at("/two", infra("infra-backend-v2")),
            at("/", NOT_FOUND),
            at("/one/example", NOT_FOUND),
            at("/two/", NOT_FOUND),
            at("/Two", NOT_FOUND),
        ]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_matching() {
        let Some(d) = Driver::start("httproute-matching").await else { return };
        let gw = d.ready("same-namespace", &["matching"]).await;
        d.expect(gw, &[
            at("/", infra("infra-backend-v1")),
            at("/example", infra("infra-backend-v1")),
            with(&[("Version", "one")], infra("infra-backend-v1")),
            at("/v2", infra("infra-backend-v2")),
            at("/v2/example", infra("infra-backend-v2")),
            with(&[("Version", "two")], infra("infra-backend-v2")),
        ]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_path_match_order() {
        let Some(d) = Driver::start("httproute-path-match-order").await else { return };
        let gw = d.ready("same-namespace", &["path-matching-order"]).await;
        d.expect(gw, &[
            at("/match/exact/one", infra("infra-backend-v3")),
            at("/match/exact", infra("infra-backend-v2")),
            at("/match", infra("infra-backend-v1")),
            at("/match/prefix/one/any", infra("infra-backend-v2")),
            at("/match/prefix/any", infra("infra-backend-v1")),
            at("/match/any", infra("infra-backend-v3")),
        ]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_header_matching() {
        let Some(d) = Driver::start("httproute-header-matching").await else { return };
        let gw = d.ready("same-namespace", &["header-matching"]).await;
        d.expect(gw, &[
            with(&[("Version", "one")], infra("infra-backend-v1")),
            with(&[("Version", "two")], infra("infra-backend-v2")),
            with(&[("Version", "two"), ("Color", "orange")], infra("infra-backend-v1")),
            with(&[("Version", "two"), ("Color", "blue")], infra("infra-backend-v2")),
            with(&[("Color", "orange")], NOT_FOUND),
            with(&[("Some-Other-Header", "one")], NOT_FOUND),
            with(&[("Color", "blue")], infra("infra-backend-v1")),
            with(&[("Color", "green")], infra("infra-backend-v1")),
            with(&[("Color", "red")], infra("infra-backend-v2")),
            with(&[("Color", "yellow")], infra("infra-backend-v2")),
            with(&[("Color", "purple")], NOT_FOUND),
        ]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_hostname_intersection() {
        let Some(d) = Driver::start("httproute-hostname-intersection").await else { return };
        let gw = d.ready("httproute-hostname-intersection", &[
            "specific-host-matches-listener-specific-host",
            "specific-host-matches-listener-wildcard-host",
            "wildcard-host-matches-listener-specific-host",
            "wildcard-host-matches-listener-wildcard-host",
        ]).await;
        d.expect(gw, &[
            on("very.specific.com", "/s1", infra("infra-backend-v1")),
            // The port in Host is not part of the match.
            on("very.specific.com:1234", "/s1", infra("infra-backend-v1")),
            on("non.matching.com", "/s1", NOT_FOUND),
            on("foo.nonmatchingwildcard.io", "/s1", NOT_FOUND),
            on("foo.wildcard.io", "/s1", NOT_FOUND),
            on("very.specific.com", "/non-matching-prefix", NOT_FOUND),
            on("foo.wildcard.io", "/s2", infra("infra-backend-v2")),
            on("bar.wildcard.io", "/s2", infra("infra-backend-v2")),
            on("foo.bar.wildcard.io", "/s2", infra("infra-backend-v2")),
            on("non.matching.com", "/s2", NOT_FOUND),
            on("wildcard.io", "/s2", NOT_FOUND),
            on("very.specific.com", "/s2", NOT_FOUND),
            on("foo.wildcard.io", "/non-matching-prefix", NOT_FOUND),
            on("very.specific.com", "/s3", infra("infra-backend-v3")),
            on("non.matching.com", "/s3", NOT_FOUND),
            on("foo.specific.com", "/s3", NOT_FOUND),
            on("foo.wildcard.io", "/s3", NOT_FOUND),
            on("very.specific.com", "/non-matching-prefix", NOT_FOUND),
            on("foo.anotherwildcard.io", "/s4", infra("infra-backend-v1")),
            on("bar.anotherwildcard.io", "/s4", infra("infra-backend-v1")),
            on("foo.bar.anotherwildcard.io", "/s4", infra("infra-backend-v1")),
            on("anotherwildcard.io", "/s4", NOT_FOUND),
            on("foo.wildcard.io", "/s4", NOT_FOUND),
            on("very.specific.com", "/s4", NOT_FOUND),
            on("foo.anotherwildcard.io", "/non-matching-prefix", NOT_FOUND),
        ]).await;
        // The route without an intersecting hostname is refused, and counted nowhere.
        let status = d.status().await;
        let parent = &status["httpRoutes"][format!("{INFRA}/no-intersecting-hosts")]["parents"][0];
        let accepted = parent["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Accepted")
            .cloned()
            .unwrap_or_default();
        assert_eq!(accepted["status"], "False", "{parent:#}");
        assert_eq!(accepted["reason"], "NoMatchingListenerHostname", "{parent:#}");
        d.expect(gw, &[
            on("specific.but.wrong.com", "/s5", NOT_FOUND),
            on("wildcard.io", "/s5", NOT_FOUND),
        ]).await;
        let listeners = &status["gateways"][format!("{INFRA}/httproute-hostname-intersection")]["listeners"];
        let attached: Vec<_> = listeners
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| (l["name"].as_str().unwrap_or("").to_string(), l["attachedRoutes"].as_i64()))
            .collect();
        assert_eq!(attached, [
            ("listener-1".to_string(), Some(2)),
            ("listener-2".to_string(), Some(1)),
            ("listener-3".to_string(), Some(1)),
        ]);
        // A listener without hostname takes the route's own hostnames.
        let gw = d.ready("httproute-hostname-intersection-all", &["httproute-hostname-intersection-all"]).await;
        d.expect(gw, &[
            on("first.com", "/", infra("infra-backend-v2")),
            on("sub.first.com", "/", infra("infra-backend-v2")),
            on("second.com", "/", infra("infra-backend-v2")),
            on("sub.second.com", "/", infra("infra-backend-v2")),
            on("third.com", "/", NOT_FOUND),
            on("sub.third.com", "/", NOT_FOUND),
        ]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_weight() {
        let Some(d) = Driver::start("httproute-weight").await else { return };
        let gw = d.ready("same-namespace", &["weighted-backends"]).await;
        d.expect(gw, &[at("/", Want::Status(200))]).await;
        // The suite's check: 500 requests, 10 at a time, each backend's share within 5 points
        // of its weight, and no traffic to the weight-0 backend.
        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        let root = at("/", Want::Status(200));
        for _ in 0..50 {
            let batch = (0..10).map(|_| d.send(gw, &root));
            for (status, echo, _) in futures::future::join_all(batch).await {
                assert_eq!(status, 200);
                let echo = echo.expect("an echo answer");
                *seen.entry(echo.service).or_default() += 1;
            }
        }
        let share = |b: &str| f64::from(seen.get(&format!("{INFRA}/{b}")).copied().unwrap_or(0)) / 500.0;
        assert!((share("infra-backend-v1") - 0.7).abs() <= 0.05, "{seen:?}");
        assert!((share("infra-backend-v2") - 0.3).abs() <= 0.05, "{seen:?}");
        assert_eq!(share("infra-backend-v3"), 0.0, "{seen:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_redirect_host_and_status() {
        let Some(d) = Driver::start("httproute-redirect-host-and-status").await else { return };
        let gw = d.ready("same-namespace", &["redirect-host-and-status"]).await;
        d.expect(gw, &[
            at("/hostname-redirect", Want::Redirect(302, "example.org", Some("/hostname-redirect"))),
            at("/host-and-status", Want::Redirect(301, "example.org", Some("/host-and-status"))),
        ]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_matching_across_routes() {
        let Some(d) = Driver::start("httproute-matching-across-routes").await else { return };
        let gw = d.ready("same-namespace", &["matching-part1", "matching-part2"]).await;
        const ONE: &[(&str, &str)] = &[("Version", "one")];
        const TWO: &[(&str, &str)] = &[("Version", "two")];
        d.expect(gw, &[
            on("example.com", "/", infra("infra-backend-v1")),
            on("example.com", "/example", infra("infra-backend-v1")),
            on("example.net", "/example", infra("infra-backend-v1")),
            Case { headers: ONE, ..on("example.com", "/example", infra("infra-backend-v1")) },
            on("example.com", "/v2", infra("infra-backend-v2")),
            // The v2 matches are limited to example.com.
            on("example.net", "/v2", infra("infra-backend-v1")),
            on("example.com", "/v2/example", infra("infra-backend-v2")),
            Case { headers: TWO, ..on("example.com", "/", infra("infra-backend-v2")) },
        ]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_listener_hostname_matching() {
        let Some(d) = Driver::start("httproute-listener-hostname-matching").await else { return };
        let gw = d.ready("httproute-listener-hostname-matching", &["backend-v1", "backend-v2", "backend-v3"]).await;
        d.expect(gw, &[
            on("bar.com", "/", infra("infra-backend-v1")),
            on("foo.bar.com", "/", infra("infra-backend-v2")),
            on("baz.bar.com", "/", infra("infra-backend-v3")),
            on("boo.bar.com", "/", infra("infra-backend-v3")),
            on("multiple.prefixes.bar.com", "/", infra("infra-backend-v3")),
            on("multiple.prefixes.foo.com", "/", infra("infra-backend-v3")),
            on("foo.com", "/", NOT_FOUND),
            on("no.matching.host", "/", NOT_FOUND),
        ]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_cross_namespace() {
        let Some(d) = Driver::start("httproute-cross-namespace").await else { return };
        let gw = d.ready("backend-namespaces", &["gateway-conformance-web-backend/cross-namespace"]).await;
        d.expect(gw, &[at("/", Want::Backend("web-backend", WEB))]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_invalid_backend_refs() {
        // Four tests: a missing Service, a kind that is not Service, and another namespace's
        // Service without (or with only wrong) ReferenceGrants. Accepted, ResolvedRefs False
        // with the spec's reason, and 500 for the requests.
        for (test, route, reason) in [
            ("httproute-invalid-nonexistent-backendref", "invalid-nonexistent-backend-ref", "BackendNotFound"),
            ("httproute-invalid-backendref-unknown-kind", "invalid-backend-ref-unknown-kind", "InvalidKind"),
            ("httproute-invalid-cross-namespace-backend-ref", "invalid-cross-namespace-backend-ref", "RefNotPermitted"),
            ("httproute-invalid-reference-grant", "reference-grant", "RefNotPermitted"),
        ] {
            let Some(d) = Driver::start(test).await else { return };
            let gw = d.ready("same-namespace", &[route]).await;
            assert_eq!(d.route_condition(route, "same-namespace", "ResolvedRefs").await, ("False".into(), reason.into()), "{test}");
            d.expect(gw, &[at("/", SERVER_ERROR)]).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_partially_invalid_via_invalid_reference_grant() {
        let Some(d) = Driver::start("httproute-partially-invalid-via-invalid-reference-grant").await else { return };
        let gw = d.ready("same-namespace", &["invalid-reference-grant"]).await;
        assert_eq!(
            d.route_condition("invalid-reference-grant", "same-namespace", "ResolvedRefs").await,
            ("False".into(), "RefNotPermitted".into())
        );
        d.expect(gw, &[
            at("/v2", SERVER_ERROR),
            at("/", Want::Backend("app-backend-v1", APP)),
        ]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_reference_grant() {
        let Some(d) = Driver::start("httproute-reference-grant").await else { return };
        let gw = d.ready("same-namespace", &["reference-grant"]).await;
        d.expect(gw, &[at("/", Want::Backend("web-backend", WEB))]).await;
        // The grant deleted: the route loses its backend (500), and says why.
        let objects = conformance_yaml("tests/httproute-reference-grant.yaml").unwrap_or_default();
        let without_grant: Vec<String> = objects
            .split("\n---")
            .filter(|doc| !doc.contains("kind: ReferenceGrant"))
            .map(str::to_string)
            .collect();
        d.rewrite("test.yaml", &without_grant.join("\n---"));
        d.expect(gw, &[at("/", SERVER_ERROR)]).await;
        assert_eq!(
            d.route_condition("reference-grant", "same-namespace", "ResolvedRefs").await,
            ("False".into(), "RefNotPermitted".into())
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_no_backend_refs() {
        let Some(d) = Driver::start("httproute-omitted-backendrefs").await else { return };
        let gw = d.ready("same-namespace", &["omitted-backendrefs"]).await;
        d.expect(gw, &[
            at("/omitted-no-forward", SERVER_ERROR),
            at("/empty-no-forward", SERVER_ERROR),
            at("/", infra("infra-backend-v1")),
        ]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_multiple_gateways() {
        let Some(d) = Driver::start("httproute-multiple-gateways").await else { return };
        let same = d.ready("same-namespace", &["multiple-gateways-shared-route", "same-namespace-dedicated-route"]).await;
        let all = d.ready("all-namespaces", &["multiple-gateways-shared-route", "all-namespaces-dedicated-route"]).await;
        assert_ne!(same, all, "each Gateway has its own address");
        d.expect(same, &[
            at("/shared", infra("infra-backend-v1")),
            at("/", infra("infra-backend-v2")),
        ]).await;
        d.expect(all, &[
            at("/shared", infra("infra-backend-v1")),
            at("/", infra("infra-backend-v3")),
        ]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_request_header_modifier() {
        let Some(d) = Driver::start("httproute-request-header-modifier-backend").await else { return };
        let gw = d.ready("same-namespace", &["request-header-modifier"]).await;
        type Fields = &'static [(&'static str, &'static str)];
        let cases: &[(&str, Fields, Fields, &[&str])] = &[
            ("/set", &[("Some-Other-Header", "val")], &[("some-other-header", "val"), ("x-header-set", "set-overwrites-values")], &[]),
            ("/set", &[("Some-Other-Header", "val"), ("X-Header-Set", "some-other-value")], &[("some-other-header", "val"), ("x-header-set", "set-overwrites-values")], &[]),
            ("/add", &[("Some-Other-Header", "val")], &[("some-other-header", "val"), ("x-header-add", "add-appends-values")], &[]),
            ("/add", &[("Some-Other-Header", "val"), ("X-Header-Add", "some-other-value")], &[("some-other-header", "val"), ("x-header-add", "some-other-value,add-appends-values")], &[]),
            ("/remove", &[("X-Header-Remove", "val")], &[], &["x-header-remove"]),
            (
                "/multiple",
                &[("X-Header-Set-2", "set-val-2"), ("X-Header-Add-2", "add-val-2"), ("X-Header-Remove-2", "remove-val-2"), ("Another-Header", "another-header-val")],
                &[("x-header-set-1", "header-set-1"), ("x-header-set-2", "header-set-2"), ("x-header-add-1", "header-add-1"), ("x-header-add-2", "add-val-2,header-add-2"), ("x-header-add-3", "header-add-3"), ("another-header", "another-header-val")],
                &["x-header-remove-1", "x-header-remove-2"],
            ),
            (
                "/case-insensitivity",
                &[("x-header-set", "original-val-set"), ("x-header-add", "original-val-add"), ("x-header-remove", "original-val-remove"), ("Another-Header", "another-header-val")],
                &[("x-header-set", "header-set"), ("x-header-add", "original-val-add,header-add"), ("another-header", "another-header-val")],
                &["x-header-remove"],
            ),
        ];
        for (path, sent, want, absent) in cases {
            let case = Case { headers: sent, ..at(path, infra("infra-backend-v1")) };
            d.expect(gw, &[case]).await;
            let (_, echo, _) = d.send(gw, &case).await;
            let echo = echo.expect("an echo answer");
            assert_eq!(echo.path, *path);
            for (n, v) in *want {
                assert_eq!(echo.headers.get(*n).map(String::as_str), Some(*v), "{path} {n}: {:?}", echo.headers);
            }
            for n in *absent {
                assert!(!echo.headers.contains_key(*n), "{path} {n}: {:?}", echo.headers);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_service_types() {
        let Some(d) = Driver::start("httproute-service-types").await else { return };
        let gw = d.ready("same-namespace", &["service-types"]).await;
        d.expect(gw, &[
            at("/headless", infra("infra-backend-v1")),
            at("/manual-endpointslices", infra("infra-backend-v1")),
            at("/headless-manual-endpointslices", infra("infra-backend-v1")),
        ]).await;
        // Both address families serve: the IPv6 pod answers too, within a few rounds.
        let mut pods = std::collections::BTreeSet::new();
        for _ in 0..12 {
            if let (200, Some(e), _) = d.send(gw, &at("/manual-endpointslices", infra("infra-backend-v1"))).await {
                pods.insert(e.pod);
            }
        }
        assert!(pods.iter().any(|p| p.ends_with("-ipv6")), "{pods:?}");
        assert!(pods.iter().any(|p| !p.ends_with("-ipv6")), "{pods:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn httproute_https_listener() {
        let Some(d) = Driver::start("httproute-https-listener").await else { return };
        let gw = d.ready("same-namespace-with-https-listener", &["httproute-https-test", "httproute-https-test-no-hostname"]).await;
        for (name, want) in [
            ("example.org", infra("infra-backend-v1")),
            ("unknown-example.org", NOT_FOUND),
            ("second-example.org", infra("infra-backend-v2")),
        ] {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let (status, echo) = d.send_tls(gw, name, "/").await;
                match Driver::verdict(want, &(status, echo, None)) {
                    Ok(()) => break,
                    Err(why) => assert!(Instant::now() < deadline, "{name}: {why}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The `(status, reason)` of condition `type_` in a list of conditions.
fn condition(conditions: &Value, type_: &str) -> (String, String) {
    conditions
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

/// The status of Gateway `name` (infra namespace) and of its listener `listener`.
fn gateway_status<'s>(status: &'s Value, name: &str, listener: Option<&str>) -> &'s Value {
    let gw = &status["gateways"][format!("{INFRA}/{name}")];
    match listener {
        None => gw,
        Some(l) => gw["listeners"]
            .as_array()
            .and_then(|ls| ls.iter().find(|s| s["name"] == l))
            .unwrap_or(&Value::Null),
    }
}

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_string(), reason.to_string())
}

// The status-only core tests, in files mode: the conditions Portico computes for the suite's
// objects, read from /status/gateway-api. (The generation-bump tests need an API server that
// sets metadata.generation: they run against the stand-in in tests/gateway_api.rs.)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_invalid_route_kind() {
    let Some(d) = Driver::start("gateway-invalid-route-kind").await else {
        return;
    };
    let s = d.status().await;
    for gw in [
        "gateway-only-invalid-route-kind",
        "gateway-supported-and-invalid-route-kind",
    ] {
        let l = gateway_status(&s, gw, Some("http"));
        assert_eq!(
            condition(&l["conditions"], "ResolvedRefs"),
            pair("False", "InvalidRouteKinds"),
            "{gw}: {l:#}"
        );
    }
    let only = gateway_status(&s, "gateway-only-invalid-route-kind", Some("http"));
    assert_eq!(only["supportedKinds"], serde_json::json!([]));
    let mixed = gateway_status(&s, "gateway-supported-and-invalid-route-kind", Some("http"));
    assert_eq!(
        mixed["supportedKinds"],
        serde_json::json!([{ "group": "gateway.networking.k8s.io", "kind": "HTTPRoute" }])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_listener_unsupported_protocol() {
    let Some(d) = Driver::start("gateway-invalid-listeners-unsupported-protocol").await else {
        return;
    };
    let s = d.status().await;
    let only = gateway_status(&s, "gateway-only-unsupported-protocols", None);
    assert_eq!(
        condition(&only["conditions"], "Accepted"),
        pair("False", "ListenersNotValid")
    );
    let mixed = gateway_status(&s, "gateway-supported-and-unsupported-protocols", None);
    assert_eq!(
        condition(&mixed["conditions"], "Accepted"),
        pair("True", "ListenersNotValid")
    );
    let l = gateway_status(
        &s,
        "gateway-supported-and-unsupported-protocols",
        Some("invalid"),
    );
    assert_eq!(
        condition(&l["conditions"], "Accepted"),
        pair("False", "UnsupportedProtocol")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_invalid_parameters_ref() {
    let Some(d) = Driver::start("gateway-invalid-parameters-ref").await else {
        return;
    };
    let s = d.status().await;
    let g = gateway_status(&s, "gateway-invalid-parameters-ref", None);
    assert_eq!(
        condition(&g["conditions"], "Accepted"),
        pair("False", "InvalidParameters")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_tls_certificate_refs() {
    // GatewayInvalidTLSConfiguration, GatewaySecretMissingReferenceGrant,
    // GatewaySecretInvalidReferenceGrant, GatewaySecretReferenceGrantAllInNamespace,
    // GatewaySecretReferenceGrantSpecific.
    /// The test, its Gateways, the listener's ResolvedRefs, and its Programmed status.
    type TlsCase = (
        &'static str,
        &'static [&'static str],
        (&'static str, &'static str),
        &'static str,
    );
    let cases: &[TlsCase] = &[
        (
            "gateway-invalid-tls-configuration",
            &[
                "gateway-certificate-nonexistent-secret",
                "gateway-certificate-unsupported-group",
                "gateway-certificate-unsupported-kind",
                "gateway-certificate-malformed-secret",
            ],
            ("False", "InvalidCertificateRef"),
            "False",
        ),
        (
            "gateway-secret-missing-reference-grant",
            &["gateway-secret-missing-reference-grant"],
            ("False", "RefNotPermitted"),
            "False",
        ),
        (
            "gateway-secret-invalid-reference-grant",
            &["gateway-secret-invalid-reference-grant"],
            ("False", "RefNotPermitted"),
            "False",
        ),
        (
            "gateway-secret-reference-grant-all-in-namespace",
            &["gateway-secret-reference-grant-all-in-namespace"],
            ("True", "ResolvedRefs"),
            "True",
        ),
        (
            "gateway-secret-reference-grant-specific",
            &["gateway-secret-reference-grant-specific"],
            ("True", "ResolvedRefs"),
            "True",
        ),
    ];
    for (test, gateways, resolved, programmed) in cases {
        let Some(d) = Driver::start(test).await else {
            return;
        };
        let s = d.status().await;
        for gw in *gateways {
            let l = gateway_status(&s, gw, Some("https"));
            assert_eq!(
                condition(&l["conditions"], "ResolvedRefs"),
                pair(resolved.0, resolved.1),
                "{test} {gw}: {l:#}"
            );
            assert_eq!(
                condition(&l["conditions"], "Programmed").0,
                *programmed,
                "{test} {gw}: {l:#}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_with_attached_routes() {
    let Some(d) = Driver::start("gateway-with-attached-routes").await else {
        return;
    };
    let s = d.status().await;
    let attached = |gw: &str| gateway_status(&s, gw, Some("http"))["attachedRoutes"].as_i64();
    assert_eq!(attached("gateway-with-one-attached-route"), Some(1));
    // http-route-not-accepted (NoMatchingListenerHostname) is not counted.
    assert_eq!(attached("gateway-with-two-attached-routes"), Some(2));
    assert_eq!(
        d.route_condition(
            "http-route-not-accepted",
            "gateway-with-two-attached-routes",
            "Accepted"
        )
        .await,
        pair("False", "NoMatchingListenerHostname")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_parent_refs_that_do_not_attach() {
    // HTTPRouteInvalidParentRefNotMatchingSectionName and
    // HTTPRouteInvalidCrossNamespaceParentRef.
    let Some(d) = Driver::start("httproute-invalid-parentref-not-matching-section-name").await
    else {
        return;
    };
    assert_eq!(
        d.route_condition(
            "httproute-listener-not-matching-section-name",
            "same-namespace",
            "Accepted"
        )
        .await,
        pair("False", "NoMatchingParent")
    );
    let s = d.status().await;
    assert_eq!(
        gateway_status(&s, "same-namespace", Some("http"))["attachedRoutes"].as_i64(),
        Some(0)
    );
    let Some(d) = Driver::start("httproute-invalid-cross-namespace-parent-ref").await else {
        return;
    };
    assert_eq!(
        d.route_condition(
            &format!("{WEB}/invalid-cross-namespace-parent-ref"),
            "same-namespace",
            "Accepted"
        )
        .await,
        pair("False", "NotAllowedByListeners")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_modify_listeners() {
    let Some(d) = Driver::start("gateway-modify-listeners").await else {
        return;
    };
    let s = d.status().await;
    assert_eq!(
        gateway_status(&s, "gateway-add-listener", Some("https"))["attachedRoutes"].as_i64(),
        Some(1)
    );
    assert_eq!(
        gateway_status(&s, "gateway-remove-listener", None)["listeners"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    // What the suite patches: an HTTP listener in, the HTTPS one out (the file edited).
    let objects = conformance_yaml("tests/gateway-modify-listeners.yaml").unwrap_or_default();
    let mut docs = documents(&objects);
    for doc in &mut docs {
        let name = str_at(doc, "/metadata/name").to_string();
        let Some(listeners) = doc
            .pointer_mut("/spec/listeners")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        match name.as_str() {
            "gateway-add-listener" => listeners.push(serde_json::json!({
                "name": "http", "port": 80, "protocol": "HTTP",
                "allowedRoutes": { "namespaces": { "from": "All" } },
            })),
            "gateway-remove-listener" => {
                listeners.remove(0);
            }
            _ => {}
        }
    }
    let edited: Vec<String> = docs.iter().map(Value::to_string).collect();
    d.rewrite("test.yaml", &edited.join("\n---\n"));
    d.status_until("the listener added and the other removed", |s| {
        let removed = gateway_status(s, "gateway-remove-listener", None);
        let names: Vec<&str> = removed["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["name"].as_str())
            .collect();
        gateway_status(s, "gateway-add-listener", Some("http"))["attachedRoutes"].as_i64()
            == Some(1)
            && names == ["http"]
    })
    .await;
    // And the new listener serves.
    let gw = d.ready("gateway-add-listener", &["http-route-1"]).await;
    d.expect(gw, &[at("/", infra("infra-backend-v1"))]).await;
}

/// Whether every condition in `conditions` has `observedGeneration` `generation`.
fn observed(conditions: &Value, generation: i64) -> bool {
    conditions.as_array().is_some_and(|c| {
        !c.is_empty()
            && c.iter()
                .all(|c| c["observedGeneration"].as_i64() == Some(generation))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_generation_bumps() {
    // GatewayClassObservedGenerationBump, GatewayObservedGenerationBump and
    // HTTPRouteObservedGenerationBump. Files have no API server to count generations: the
    // driver plays it, writing metadata.generation 1, then 2 with a changed spec.
    for test in [
        "gatewayclass-observed-generation-bump",
        "gateway-observed-generation-bump",
        "httproute-observed-generation-bump",
    ] {
        let Some(d) = Driver::start(test).await else {
            return;
        };
        let objects = conformance_yaml(&format!("tests/{test}.yaml")).unwrap_or_default();
        for generation in [1, 2] {
            let mut docs = documents(&objects);
            for doc in &mut docs {
                doc["metadata"]["generation"] = generation.into();
                if generation == 1 {
                    continue;
                }
                match doc["kind"].as_str() {
                    Some("GatewayClass") => doc["spec"]["description"] = "new".into(),
                    Some("Gateway") => {
                        if let Some(l) = doc["spec"]["listeners"].as_array_mut() {
                            l.push(serde_json::json!({
                                "name": "http-2", "hostname": "foo.com", "port": 80,
                                "protocol": "HTTP",
                                "allowedRoutes": { "namespaces": { "from": "All" } },
                            }));
                        }
                    }
                    _ => {
                        doc["spec"]["rules"][0]["matches"] = serde_json::json!([{ "path": { "type": "PathPrefix", "value": "/bump" } }]);
                    }
                }
            }
            let text: Vec<String> = docs.iter().map(Value::to_string).collect();
            d.rewrite("test.yaml", &text.join("\n---\n"));
            let what = format!("{test}, generation {generation}");
            d.status_until(&what, |s| match test {
                "gatewayclass-observed-generation-bump" => observed(
                    &s["gatewayClasses"]["gatewayclass-observed-generation-bump"]["conditions"],
                    generation,
                ),
                "gateway-observed-generation-bump" => {
                    let g = gateway_status(s, "gateway-observed-generation-bump", None);
                    let listeners = g["listeners"].as_array().cloned().unwrap_or_default();
                    observed(&g["conditions"], generation)
                        && listeners.len() == generation as usize
                        && listeners
                            .iter()
                            .all(|l| observed(&l["conditions"], generation))
                }
                _ => s["httpRoutes"][format!("{INFRA}/observed-generation-bump")]["parents"]
                    .as_array()
                    .is_some_and(|p| {
                        !p.is_empty() && p.iter().all(|p| observed(&p["conditions"], generation))
                    }),
            })
            .await;
        }
    }
}

both_engines! {
    // Portico's own behaviour, beyond the suite: an Ingress and an HTTPRoute claiming the same
    // host on different sockets. Each API answers on its own sockets with its own rules, and a
    // Gateway socket of its own never falls back to the Ingress routes (the shared listener
    // below does).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ingress_and_an_httproute_on_the_same_host_each_serve_their_sockets() {
        let ingress_pods = Pods::start("ingress-backend", 1).await;
        let route_pods = Pods::start("route-backend", 1).await;
        let port = wildcard_port();
        let gateway = one_gateway(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: shop, namespace: default }
spec:
  parentRefs: [{ name: gw }]
  hostnames: [shop.example]
  rules: [{ backendRefs: [{ name: route-backend, port: 80 }] }]
",
        );
        let portico = Portico::start_with(
            &[
                ("class.yaml", common::INGRESS_CLASS),
                (
                    "ingress.yaml",
                    &common::ingress(
                        "default",
                        "shop",
                        "2024-01-01T00:00:00Z",
                        &[("shop.example", "/", "Prefix", "ingress-backend", 80)],
                    ),
                ),
                (
                    "ingress-backend.yaml",
                    &ingress_pods.manifests("default", "", 80),
                ),
                (
                    "route-backend.yaml",
                    &route_pods.manifests("default", "", 80),
                ),
                ("gateway.yaml", &gateway),
            ],
            |f| {
                f.gateway_listen = vec![format!("80=0.0.0.0:{port}")];
                f.gateway_address_pool = vec!["127.0.0.2".into()];
            },
        )
        .await;
        // The Ingress listener: the Ingress.
        assert_eq!(
            portico.echo("shop.example", "/").await.service,
            "ingress-backend"
        );
        // The Gateway's address: the HTTPRoute.
        let get = |addr: &str| {
            client()
                .get(format!("http://{addr}:{port}/"))
                .header("host", "shop.example")
                .send()
        };
        let r = get("127.0.0.2").await.expect("request");
        assert_eq!(r.status(), 200);
        let echo: Echo = r.json().await.expect("echo");
        assert_eq!(echo.service, "route-backend");
        // Another address of the Gateway socket: no Gateway there, 404 (no Ingress fallback).
        let r = get("127.0.0.3").await.expect("request");
        assert_eq!(r.status(), 404);
    }

    // The extended features the README lists as served, end to end (the extended conformance
    // tests are not in ../shared/gateway-api/): method and query matches, URLRewrite (prefix,
    // full path, hostname), ResponseHeaderModifier, and RequestRedirect scheme/port/path/code.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn extended_matches_rewrites_response_headers_and_redirects() {
        let pods = Pods::start("web", 1).await;
        let port = wildcard_port();
        let gateway = one_gateway(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: extended, namespace: default }
spec:
  parentRefs: [{ name: gw }]
  rules:
    - matches: [{ path: { type: PathPrefix, value: /m }, method: POST }]
      backendRefs: [{ name: web, port: 80 }]
      filters: [{ type: URLRewrite, urlRewrite: { path: { type: ReplaceFullPath, replaceFullPath: /posted } } }]
    - matches: [{ path: { type: PathPrefix, value: /m }, queryParams: [{ name: v, value: \"2\" }] }]
      backendRefs: [{ name: web, port: 80 }]
      filters: [{ type: URLRewrite, urlRewrite: { hostname: rewritten.example, path: { type: ReplacePrefixMatch, replacePrefixMatch: /v2 } } }]
    - matches: [{ path: { type: PathPrefix, value: /headers } }]
      backendRefs: [{ name: web, port: 80 }]
      filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            set: [{ name: X-Set, value: set }]
            add: [{ name: X-Add, value: added }]
            remove: [content-type]
    - matches: [{ path: { type: PathPrefix, value: /old } }]
      filters:
        - type: RequestRedirect
          requestRedirect: { scheme: https, port: 8443, statusCode: 308, path: { type: ReplacePrefixMatch, replacePrefixMatch: /new } }
",
        );
        let portico = Portico::start_with(
            &[
                ("web.yaml", &pods.manifests("default", "", 80)),
                ("gateway.yaml", &gateway),
            ],
            |f| {
                f.gateway_listen = vec![format!("80=0.0.0.0:{port}")];
                f.gateway_address_pool = vec!["127.0.0.2".into()];
            },
        )
        .await;
        let base = format!("http://127.0.0.2:{port}");
        let echo = |r: reqwest::Response| async move {
            assert_eq!(r.status(), 200);
            r.json::<Echo>().await.expect("echo")
        };
        // Method: POST /m/x is rewritten to /posted; a GET without the query matches nothing.
        let e = echo(client().post(format!("{base}/m/x?a=1")).send().await.unwrap()).await;
        assert_eq!((e.path.as_str(), e.query.as_deref()), ("/posted", Some("a=1")));
        let r = client().get(format!("{base}/m/x")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        // Query: the prefix replaced, the Host rewritten.
        let e = echo(client().get(format!("{base}/m/x?v=2")).send().await.unwrap()).await;
        assert_eq!(e.path, "/v2/x");
        assert_eq!(e.headers.get("host").map(String::as_str), Some("rewritten.example"));
        // Response headers: set, added, removed.
        let r = client().get(format!("{base}/headers")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers().get("x-set").unwrap(), "set");
        assert_eq!(r.headers().get("x-add").unwrap(), "added");
        assert!(r.headers().get("content-type").is_none(), "{:?}", r.headers());
        // Redirect: scheme, port, prefix path and code.
        let r = client()
            .get(format!("{base}/old/page?q=1"))
            .header("host", "shop.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 308);
        assert_eq!(
            r.headers().get("location").unwrap(),
            "https://shop.example:8443/new/page?q=1"
        );
        drop(portico);
    }
}

/// A GatewayClass of Portico's, a Gateway `default/gw` with one HTTP listener on port 80, and
/// `routes` (YAML documents) after them.
fn one_gateway(routes: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{ name: {CLASS} }}
spec: {{ controllerName: {CONTROLLER} }}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{ name: gw, namespace: default }}
spec:
  gatewayClassName: {CLASS}
  listeners: [{{ name: http, port: 80, protocol: HTTP }}]
---
{routes}"
    )
}

/// A backend that records every request it gets (method, target, Host, body) and answers 200:
/// the mirror of the tests below.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String, Vec<u8>)>>>;

async fn recording_backend(service: &str) -> (Pods, Seen) {
    use http_body_util::BodyExt;
    let seen: Seen = Default::default();
    let record = seen.clone();
    let pods = Pods::scripted(service, move |stream, _| {
        let record = record.clone();
        async move {
            let serve = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let record = record.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let host = parts
                        .headers
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    record.lock().unwrap().push((
                        parts.method.to_string(),
                        parts.uri.to_string(),
                        host,
                        body.to_vec(),
                    ));
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"mirror\n")),
                    ))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), serve)
                .await;
        }
    })
    .await;
    (pods, seen)
}

/// Waits until `seen` holds `n` requests (the copies are sent by their own tasks).
async fn wait_seen(seen: &Seen, n: usize) -> Vec<(String, String, String, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = seen.lock().unwrap().clone();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

both_engines! {
    // Ingress by Ingress on one port: with --gateway-listen given the Ingress listener's own
    // address, a Gateway on it is matched first and whatever none of its routes matches goes
    // on to the Ingress routes. No pool: the Gateway is reached at any address of the wildcard
    // socket (its published address is data, never contacted). The takeover is reported on
    // the Ingress (an Event in a cluster; the rejection metric here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_httproute_takes_over_ingress_paths_on_the_shared_listener() {
        let ingress_pods = Pods::start("ingress-backend", 1).await;
        let route_pods = Pods::start("route-backend", 1).await;
        let port = wildcard_port();
        let gateway = one_gateway(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: shop-api, namespace: default }
spec:
  parentRefs: [{ name: gw }]
  hostnames: [shop.example]
  rules:
    - matches: [{ path: { type: PathPrefix, value: /api } }]
      backendRefs: [{ name: route-backend, port: 80 }]
",
        );
        let portico = Portico::start_with(
            &[
                ("class.yaml", common::INGRESS_CLASS),
                (
                    "shop.yaml",
                    &common::ingress(
                        "default",
                        "shop",
                        "2024-01-01T00:00:00Z",
                        &[
                            ("shop.example", "/", "Prefix", "ingress-backend", 80),
                            ("shop.example", "/api", "Prefix", "ingress-backend", 80),
                        ],
                    ),
                ),
                (
                    "blog.yaml",
                    &common::ingress(
                        "default",
                        "blog",
                        "2024-01-01T00:00:00Z",
                        &[("blog.example", "/", "Prefix", "ingress-backend", 80)],
                    ),
                ),
                ("ingress-backend.yaml", &ingress_pods.manifests("default", "", 80)),
                ("route-backend.yaml", &route_pods.manifests("default", "", 80)),
                ("gateway.yaml", &gateway),
            ],
            |f| {
                f.http_listen = Some(format!("0.0.0.0:{port}"));
                f.gateway_listen = vec![format!("80=0.0.0.0:{port}")];
                f.publish_address = vec!["192.0.2.10".into()];
            },
        )
        .await;
        let get = |addr: &'static str, host: &'static str, path: &'static str| async move {
            let r = client()
                .get(format!("http://{addr}:{port}{path}"))
                .header("host", host)
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            let service = r.json::<Echo>().await.map(|e| e.service).unwrap_or_default();
            (status, service)
        };
        for addr in ["127.0.0.1", "127.0.0.3"] {
            // The HTTPRoute's path; the rest of the host and another host stay the Ingresses'.
            assert_eq!(get(addr, "shop.example", "/api/x").await, (200, "route-backend".into()));
            assert_eq!(get(addr, "shop.example", "/cart").await, (200, "ingress-backend".into()));
            assert_eq!(get(addr, "blog.example", "/").await, (200, "ingress-backend".into()));
            assert_eq!(get(addr, "none.example", "/").await.0, 404);
        }
        // Reported on the Ingress whose path the HTTPRoute took.
        let metrics = client()
            .get(format!("http://{}/metrics", portico.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            metrics.contains(
                "portico_rejected_objects{kind=\"Ingress\",reason=\"SharedWithHTTPRoute\"} 1"
            ),
            "{metrics}"
        );
    }

    // timeouts.request (504 once the response head is late, whatever the backend does after)
    // and RequestMirror (a copy with the body, after URLRewrite; a fraction spread exactly).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_timeouts_and_mirrors() {
        let pods = Pods::start("web", 1).await;
        let (mirror, seen) = recording_backend("mirror").await;
        let port = wildcard_port();
        let gateway = one_gateway(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: r, namespace: default }
spec:
  parentRefs: [{ name: gw }]
  rules:
    - matches: [{ path: { type: PathPrefix, value: /delay } }]
      timeouts: { request: 400ms }
      backendRefs: [{ name: web, port: 80 }]
    - matches: [{ path: { type: PathPrefix, value: /copied } }]
      filters:
        - type: URLRewrite
          urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: /rewritten } }
        - type: RequestMirror
          requestMirror: { backendRef: { name: mirror, port: 80 } }
      backendRefs: [{ name: web, port: 80 }]
    - matches: [{ path: { type: PathPrefix, value: /some } }]
      filters:
        - type: RequestMirror
          requestMirror: { backendRef: { name: mirror, port: 80 }, fraction: { numerator: 1, denominator: 4 } }
      backendRefs: [{ name: web, port: 80 }]
",
        );
        let portico = Portico::start_with(
            &[
                ("web.yaml", &pods.manifests("default", "", 80)),
                ("mirror.yaml", &mirror.manifests("default", "", 80)),
                ("gateway.yaml", &gateway),
            ],
            |f| {
                f.gateway_listen = vec![format!("80=0.0.0.0:{port}")];
                f.gateway_address_pool = vec!["127.0.0.2".into()];
            },
        )
        .await;
        let base = format!("http://127.0.0.2:{port}");
        // Within the timeout: served. Past it: 504, long before the backend would answer.
        let r = client().get(format!("{base}/delay/10")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let started = Instant::now();
        let r = client().get(format!("{base}/delay/20000")).send().await.unwrap();
        assert_eq!(r.status(), 504);
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        // Mirrored: the backend answers the client; the mirror gets the same request.
        let r = client()
            .post(format!("{base}/copied/x?q=1"))
            .header("host", "shop.example")
            .body("hello mirror")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let echo: Echo = r.json().await.unwrap();
        assert_eq!((echo.service.as_str(), echo.path.as_str()), ("web", "/rewritten/x"));
        let got = wait_seen(&seen, 1).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            got[0],
            (
                "POST".to_string(),
                "/rewritten/x?q=1".to_string(),
                "shop.example".to_string(),
                b"hello mirror".to_vec()
            )
        );
        // A quarter of the requests, exactly.
        for _ in 0..8 {
            let r = client().get(format!("{base}/some")).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
        let got = wait_seen(&seen, 3).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let got_after = seen.lock().unwrap().clone();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got_after.len(), 3, "{got_after:?}");
        assert!(got[1..].iter().all(|(m, p, _, _)| m == "GET" && p == "/some"));
        drop(portico);
    }
}
