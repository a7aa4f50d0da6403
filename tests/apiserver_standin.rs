//! Tests of the API-server stand-in (`tests/support/apiserver.rs`), driven by
//! the real kube-rs client and runtime (and by raw HTTP for the wire format
//! and the error paths). Every test is bounded by [`T`].

mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference, Secret, Service};
use k8s_openapi::api::events::v1::Event as EventsV1Event;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use support::apiserver::ApiServer;

/// Upper bound for each test.
const T: Duration = Duration::from_secs(5);

/// Runs a test body under the [`T`] time limit.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(T, f)
        .await
        .expect("test exceeded its time limit");
}

/// `StreamExt::next` without a `futures` dependency: `WatchStreamExt` is
/// implemented for every `Stream`, so its supertrait's `poll_next` is
/// reachable through the bound.
async fn next<S: WatchStreamExt + Unpin>(s: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx)).await
}

/// Polls `cond` every 10 ms until it holds (the caller bounds the time).
async fn eventually(mut cond: impl FnMut() -> bool) {
    while !cond() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A kube client built the way Portico builds one: from a kubeconfig file.
async fn client_from_kubeconfig(server: &ApiServer) -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = server.kubeconfig(dir.path());
    let kc = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig reads");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kube accepts the kubeconfig");
    assert_eq!(cfg.cluster_url.to_string(), format!("{}/", server.url()));
    (Client::try_from(cfg).expect("client"), dir)
}

/// The stand-in speaks TLS with its own CA, as a real API server does: kube verifies it through
/// the kubeconfig's `certificate-authority-data`, a client that does not trust the CA fails the
/// handshake, plain HTTP gets nothing, and an HTTP/2 client gets HTTP/2 while kube's own client,
/// which offers no ALPN, stays on HTTP/1.1.
#[tokio::test]
async fn tls_with_its_own_ca_and_http2_for_clients_that_ask() {
    bounded(async {
        let server = ApiServer::start().await;
        server.apply(svc("a", "default"));
        assert!(server.url().starts_with("https://127.0.0.1:"));
        let kubeconfig = server.kubeconfig_yaml();
        assert!(kubeconfig.contains("certificate-authority-data: "));
        assert!(!kubeconfig.contains("insecure-skip-tls-verify"));

        let (client, _dir) = client_from_kubeconfig(&server).await;
        let api: Api<Service> = Api::namespaced(client, "default");
        assert_eq!(api.get("a").await.expect("kube over TLS").name_any(), "a");
        let kube_request = server.requests().into_iter().last().expect("recorded");
        assert_eq!(kube_request.path, "/api/v1/namespaces/default/services/a");
        assert_eq!(kube_request.version, http::Version::HTTP_11);

        // The system roots do not know this CA.
        let stranger = reqwest::Client::new()
            .get(format!("{}/version", server.url()))
            .send()
            .await;
        assert!(
            stranger.is_err(),
            "an untrusted CA was accepted: {stranger:?}"
        );
        // Plain HTTP on the TLS port is not served.
        let plain = reqwest::Client::new()
            .get(format!("http://{}/version", server.addr()))
            .send()
            .await;
        assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()));

        let h1 = server
            .http_client()
            .get(format!("{}/version", server.url()))
            .send()
            .await
            .expect("HTTP/1.1 over TLS");
        assert_eq!(h1.version(), reqwest::Version::HTTP_11);
        assert_eq!(h1.status(), 200);
        let ca = reqwest::Certificate::from_pem(server.ca_pem().as_bytes()).expect("CA");
        let h2 = reqwest::Client::builder()
            .add_root_certificate(ca)
            .http2_prior_knowledge()
            .build()
            .expect("client")
            .get(format!(
                "{}/api/v1/namespaces/default/services/a",
                server.url()
            ))
            .send()
            .await
            .expect("HTTP/2 over TLS");
        assert_eq!(h2.version(), reqwest::Version::HTTP_2);
        let body: Value = h2.json().await.expect("json");
        assert_eq!(body["metadata"]["name"], "a");
        let last = server.requests().into_iter().last().expect("recorded");
        assert_eq!(last.version, http::Version::HTTP_2);
    })
    .await;
}

fn svc(name: &str, ns: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "web"}},
    })
}

fn secret(name: &str, type_: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "type": type_, "data": {"k": "dg=="},
    })
}

fn ingress(name: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "ingressClassName": "portico",
            "rules": [{"host": "a.example", "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}
            }]}}]
        },
    })
}

fn names<K: ResourceExt>(items: &[K]) -> Vec<String> {
    items.iter().map(|o| o.name_any()).collect()
}

fn api_status(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// kube-rs client
// ---------------------------------------------------------------------------

#[tokio::test]
async fn list_paginates_with_limit_and_continue() {
    bounded(async {
        let server = ApiServer::start().await;
        for i in 0..5 {
            server.apply(svc(&format!("svc-{i}"), "default"));
        }
        server.apply(svc("other", "kube-system"));
        let (client, _dir) = client_from_kubeconfig(&server).await;
        let api: Api<Service> = Api::namespaced(client.clone(), "default");

        let mut lp = ListParams::default().limit(2);
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = api.list(&lp).await.expect("list page");
            pages += 1;
            assert!(page.items.len() <= 2, "page larger than the limit");
            assert!(!page
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default()
                .is_empty());
            seen.extend(names(&page.items));
            if pages == 1 {
                assert_eq!(page.metadata.remaining_item_count, Some(3));
                // Created between pages: not part of the snapshot being paged.
                server.apply(svc("svc-1a", "default"));
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => lp = lp.continue_token(&token),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, ["svc-0", "svc-1", "svc-2", "svc-3", "svc-4"]);

        // A fresh list sees the new object; all-namespace lists see all.
        assert_eq!(
            api.list(&ListParams::default()).await.unwrap().items.len(),
            6
        );
        let all: Api<Service> = Api::all(client);
        assert_eq!(
            all.list(&ListParams::default()).await.unwrap().items.len(),
            7
        );

        let paged = server
            .requests()
            .iter()
            .filter(|r| {
                r.path == "/api/v1/namespaces/default/services"
                    && r.query_param("limit").as_deref() == Some("2")
            })
            .count();
        assert_eq!(paged, 3);

        // A continue token from before a compaction has expired: 410.
        let first = api.list(&ListParams::default().limit(2)).await.unwrap();
        server.apply(svc("svc-5", "default"));
        server.compact();
        let token = first.metadata.continue_.expect("continue token");
        let err = api
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap_err();
        assert_eq!(api_status(err), (410, "Expired".to_string()));
    })
    .await;
}

#[tokio::test]
async fn watcher_and_reflector_see_added_modified_deleted() {
    bounded(async {
        let server = ApiServer::start().await;
        server.apply(svc("a", "default"));
        let (client, _dir) = client_from_kubeconfig(&server).await;
        let api: Api<Service> = Api::namespaced(client, "default");

        let (reader, writer) = reflector::store::<Service>();
        let stream = reflector::reflector(writer, watcher(api.clone(), watcher::Config::default()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let driver = tokio::spawn(async move {
            let mut stream = Box::pin(stream);
            while let Some(ev) = next(&mut stream).await {
                let line = match ev {
                    Ok(e) => e.to_string(),
                    Err(e) => format!("error: {e}"),
                };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        reader
            .wait_until_ready()
            .await
            .expect("store ready (InitDone)");
        let state: Vec<String> = reader.state().iter().map(|s| s.name_any()).collect();
        assert_eq!(state, ["a"]);
        assert!(server.wait_for_watches(1, T).await);

        let b: Service = serde_json::from_value(svc("b", "default")).unwrap();
        api.create(&PostParams::default(), &b)
            .await
            .expect("create b");
        let key = ObjectRef::<Service>::new("b").within("default");
        eventually(|| reader.get(&key).is_some()).await;

        let patch = json!({"metadata": {"labels": {"tier": "edge"}}});
        api.patch("b", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch b");
        eventually(|| {
            reader
                .get(&key)
                .is_some_and(|s| s.labels().get("tier").map(String::as_str) == Some("edge"))
        })
        .await;

        api.delete("b", &DeleteParams::default())
            .await
            .expect("delete b");
        eventually(|| reader.get(&key).is_none()).await;

        let mut lines = Vec::new();
        while lines.last().map(String::as_str) != Some("Delete(b)") {
            lines.push(rx.recv().await.expect("driver alive"));
        }
        assert_eq!(
            lines,
            [
                "Init",
                "InitApply(a)",
                "InitDone",
                "Apply(b)",
                "Apply(b)",
                "Delete(b)"
            ]
        );
        driver.abort();

        // The watch request carried what kube-runtime sends.
        let watch = server
            .requests()
            .into_iter()
            .find(|r| r.is_watch())
            .expect("a watch request");
        assert_eq!(
            watch.query_param("allowWatchBookmarks").as_deref(),
            Some("true")
        );
        assert_eq!(watch.query_param("timeoutSeconds").as_deref(), Some("290"));
        assert!(watch
            .query_param("resourceVersion")
            .is_some_and(|rv| rv.parse::<u64>().is_ok()));
    })
    .await;
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() {
    bounded(async {
        let server = ApiServer::start().await;
        server.apply(secret(
            "cert",
            "kubernetes.io/tls",
            json!({"app": "portico"}),
        ));
        server.apply(secret("plain", "Opaque", json!({"app": "other"})));
        server.apply(secret("bare", "kubernetes.io/tls", json!({})));
        let (client, _dir) = client_from_kubeconfig(&server).await;
        let api: Api<Secret> = Api::all(client);

        let list = |lp: ListParams| {
            let api = api.clone();
            async move {
                let mut n = names(&api.list(&lp).await.expect("list").items);
                n.sort();
                n
            }
        };
        assert_eq!(
            list(ListParams::default().fields("type=kubernetes.io/tls")).await,
            ["bare", "cert"]
        );
        assert_eq!(
            list(ListParams::default().fields("type!=kubernetes.io/tls")).await,
            ["plain"]
        );
        assert_eq!(
            list(ListParams::default().fields("type==kubernetes.io/tls,metadata.name=cert")).await,
            ["cert"]
        );
        assert_eq!(
            list(ListParams::default().fields("metadata.namespace=default"))
                .await
                .len(),
            3
        );
        assert_eq!(
            list(ListParams::default().labels("app=portico")).await,
            ["cert"]
        );
        assert_eq!(
            list(ListParams::default().labels("app")).await,
            ["cert", "plain"]
        );
        assert_eq!(list(ListParams::default().labels("!app")).await, ["bare"]);
        assert_eq!(
            list(ListParams::default().labels("app!=portico")).await,
            ["bare", "plain"]
        );
        assert_eq!(
            list(ListParams::default().labels("app in (portico,other)")).await,
            ["cert", "plain"]
        );
        assert_eq!(
            list(ListParams::default().labels("app notin (portico)")).await,
            ["bare", "plain"]
        );

        let err = api
            .list(&ListParams::default().fields("data.k=v"))
            .await
            .unwrap_err();
        assert_eq!(api_status(err), (400, "BadRequest".to_string()));

        // A watch with a field selector only sees TLS secrets; with a label
        // selector, relabelling out of the selector is a DELETED event.
        let cfg = watcher::Config::default()
            .fields("type=kubernetes.io/tls")
            .labels("app=portico");
        let mut w = Box::pin(watcher(api.clone(), cfg));
        let mut init = Vec::new();
        loop {
            match next(&mut w).await.expect("watcher stream") {
                Ok(watcher::Event::InitApply(s)) => init.push(s.name_any()),
                Ok(watcher::Event::InitDone) => break,
                Ok(_) => {}
                Err(e) => panic!("watcher error: {e}"),
            }
        }
        assert_eq!(init, ["cert"]);
        server.apply(secret(
            "other-tls",
            "kubernetes.io/tls",
            json!({"app": "nope"}),
        ));
        server.apply(secret("opaque2", "Opaque", json!({"app": "portico"})));
        server.apply(secret(
            "cert2",
            "kubernetes.io/tls",
            json!({"app": "portico"}),
        ));
        server.apply(secret(
            "cert",
            "kubernetes.io/tls",
            json!({"app": "retired"}),
        ));
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match next(&mut w).await.expect("watcher stream") {
                Ok(watcher::Event::Apply(s)) => seen.push(format!("apply {}", s.name_any())),
                Ok(watcher::Event::Delete(s)) => seen.push(format!("delete {}", s.name_any())),
                Ok(_) => {}
                Err(e) => panic!("watcher error: {e}"),
            }
        }
        assert_eq!(seen, ["apply cert2", "delete cert"]);
    })
    .await;
}

#[tokio::test]
async fn watcher_relists_after_compaction_410() {
    bounded(async {
        let server = ApiServer::start().await;
        server.apply(svc("a", "default"));
        let (client, _dir) = client_from_kubeconfig(&server).await;
        let api: Api<Service> = Api::namespaced(client, "default");
        let mut w = Box::pin(watcher(api, watcher::Config::default()));
        loop {
            if let Ok(watcher::Event::InitDone) = next(&mut w).await.expect("stream") {
                break;
            }
        }
        // Let the watcher open its watch, then stop polling it.
        tokio::select! {
            ev = next(&mut w) => panic!("unexpected watcher event {:?}", ev.map(|e| e.map(|e| e.to_string()))),
            ok = server.wait_for_watches(1, T) => assert!(ok),
        }

        // While it is not looking: the connection drops, an object is added
        // and the history is compacted, so its resourceVersion is too old.
        server.drop_watches();
        assert_eq!(server.watch_count(), 0);
        server.apply(svc("b", "default"));
        server.compact();

        let mut saw_410 = false;
        let mut relisted = BTreeSet::new();
        loop {
            match next(&mut w).await.expect("stream") {
                Err(watcher::Error::WatchError(status)) => {
                    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
                    saw_410 = true;
                }
                Err(_) => {}
                Ok(watcher::Event::InitApply(s)) => {
                    relisted.insert(s.name_any());
                }
                Ok(watcher::Event::InitDone) => break,
                Ok(_) => {}
            }
        }
        assert!(saw_410, "the re-watch from the old resourceVersion must get 410 Gone");
        // On the wire: watch (answered 200 + ERROR event), then a fresh list.
        let reqs = server.requests();
        let last_watch = reqs.iter().rposition(|r| r.is_watch()).unwrap();
        let relist = reqs.iter().rposition(|r| !r.is_watch()).unwrap();
        assert!(relist > last_watch, "a list must follow the expired watch");
        assert_eq!(reqs[last_watch].status, 200);
        assert_eq!(reqs[relist].query_param("resourceVersion"), None, "MostRecent relist");
        assert_eq!(relisted, BTreeSet::from(["a".to_string(), "b".to_string()]));

        // And it carries on watching after the relist.
        server.apply(svc("c", "default"));
        loop {
            if let Ok(watcher::Event::Apply(s)) = next(&mut w).await.expect("stream") {
                assert_eq!(s.name_any(), "c");
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn watcher_reconnects_after_restart() {
    bounded(async {
        let server = ApiServer::start().await;
        server.apply(svc("a", "default"));
        let (client, _dir) = client_from_kubeconfig(&server).await;
        let api: Api<Service> = Api::namespaced(client, "default");
        let mut w = Box::pin(watcher(api.clone(), watcher::Config::default()));
        loop {
            if let Ok(watcher::Event::InitDone) = next(&mut w).await.expect("stream") {
                break;
            }
        }
        tokio::select! {
            ev = next(&mut w) => panic!("unexpected watcher event {:?}", ev.map(|e| e.map(|e| e.to_string()))),
            ok = server.wait_for_watches(1, T) => assert!(ok),
        }

        let addr = server.addr();
        server.stop().await;
        assert!(!server.is_running());
        server.apply(svc("b", "default")); // changed during the outage

        // The watcher fails to reconnect while the server is down.
        let mut errors = 0;
        let outage_end = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(ev) = tokio::time::timeout_at(outage_end, next(&mut w)).await {
            match ev.expect("stream") {
                Err(_) => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(e) => panic!("unexpected event during the outage: {e}"),
            }
        }
        assert!(errors > 0, "the watcher should notice the outage");

        server.restart().await;
        assert_eq!(server.addr(), addr);
        assert!(server.is_running());
        loop {
            match next(&mut w).await.expect("stream") {
                Ok(watcher::Event::Apply(s)) => {
                    assert_eq!(s.name_any(), "b");
                    break;
                }
                Ok(e) => panic!("unexpected event {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }

        // Later changes made through the API arrive too.
        let c: Service = serde_json::from_value(svc("c", "default")).unwrap();
        api.create(&PostParams::default(), &c).await.expect("create after restart");
        loop {
            if let Ok(watcher::Event::Apply(s)) = next(&mut w).await.expect("stream") {
                assert_eq!(s.name_any(), "c");
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_end() {
    bounded(async {
        let server = ApiServer::start().await;
        server.apply(svc("a", "default"));
        server.apply(svc("b", "default"));
        let (client, _dir) = client_from_kubeconfig(&server).await;
        let api: Api<Service> = Api::namespaced(client, "default");
        let mut w = Box::pin(watcher(api, watcher::Config::default().streaming_lists()));
        let mut init = Vec::new();
        loop {
            match next(&mut w).await.expect("stream") {
                Ok(watcher::Event::InitApply(s)) => init.push(s.name_any()),
                Ok(watcher::Event::InitDone) => break,
                Ok(_) => {}
                Err(e) => panic!("watcher error: {e}"),
            }
        }
        assert_eq!(init, ["a", "b"]);
        let watch = server
            .requests()
            .into_iter()
            .find(|r| r.is_watch())
            .unwrap();
        assert_eq!(
            watch.query_param("sendInitialEvents").as_deref(),
            Some("true")
        );
        server.apply(svc("c", "default"));
        loop {
            if let Ok(watcher::Event::Apply(s)) = next(&mut w).await.expect("stream") {
                assert_eq!(s.name_any(), "c");
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn ingress_status_patch_and_replace() {
    bounded(async {
        let server = ApiServer::start().await;
        server.apply(ingress("web"));
        let (client, _dir) = client_from_kubeconfig(&server).await;
        let api: Api<Ingress> = Api::namespaced(client, "default");

        let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}});
        let ing = api
            .patch_status("web", &PatchParams::apply("portico"), &Patch::Merge(&patch))
            .await
            .expect("patch_status");
        let lb = ing
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.clone());
        assert_eq!(lb.unwrap()[0].ip.as_deref(), Some("192.0.2.10"));
        let stored = server
            .get("networking.k8s.io/v1", "Ingress", "default", "web")
            .unwrap();
        assert_eq!(
            stored["status"]["loadBalancer"]["ingress"][0]["ip"],
            "192.0.2.10"
        );
        assert_eq!(
            stored["metadata"]["generation"], 1,
            "a status write does not bump generation"
        );

        let writes = server.status_writes();
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].verb, "patch");
        assert_eq!(writes[0].name, "web");
        assert_eq!(
            writes[0].content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        assert_eq!(writes[0].body, patch);

        // replace_status changes only the status, even if the spec differs.
        let mut ing = api.get("web").await.unwrap();
        let mut status = ing.status.clone().unwrap();
        let lb = status
            .load_balancer
            .as_mut()
            .unwrap()
            .ingress
            .as_mut()
            .unwrap();
        lb[0].ip = None;
        lb[0].hostname = Some("lb.example".into());
        ing.status = Some(status);
        ing.spec.as_mut().unwrap().ingress_class_name = Some("someone-else".into());
        let replaced = api
            .replace_status("web", &PostParams::default(), &ing)
            .await
            .expect("replace_status");
        let lb0 = &replaced
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap()[0];
        assert_eq!(lb0.hostname.as_deref(), Some("lb.example"));
        assert_eq!(lb0.ip, None);
        assert_eq!(
            replaced.spec.unwrap().ingress_class_name.as_deref(),
            Some("portico")
        );
        assert_eq!(server.status_writes().len(), 2);
        assert_eq!(server.status_writes()[1].verb, "update");

        // Conversely, a write to the main resource cannot change the status,
        // and a spec change bumps generation.
        let patch = json!({"spec": {"ingressClassName": "other"}, "status": {"loadBalancer": {}}});
        let ing = api
            .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        assert_eq!(ing.metadata.generation, Some(2));
        assert!(ing.status.unwrap().load_balancer.unwrap().ingress.is_some());
        assert_eq!(server.status_writes().len(), 2);

        // Stale resourceVersion on a status write: 409.
        ing_conflict(&api).await;
    })
    .await;
}

async fn ing_conflict(api: &Api<Ingress>) {
    let mut stale = api.get("web").await.unwrap();
    stale.metadata.resource_version = Some("1".into());
    let err = api
        .replace_status("web", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(api_status(err), (409, "Conflict".to_string()));
}

#[tokio::test]
async fn lease_create_get_replace_and_conflicts() {
    bounded(async {
        let server = ApiServer::start().await;
        let (client, _dir) = client_from_kubeconfig(&server).await;
        let api: Api<Lease> = Api::namespaced(client, "portico-system");
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some("portico-leader".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("pod-a".into()),
                lease_duration_seconds: Some(15),
                ..LeaseSpec::default()
            }),
        };
        let created = api
            .create(&PostParams::default(), &lease)
            .await
            .expect("create lease");
        assert!(created.metadata.uid.is_some());
        assert!(created.metadata.creation_timestamp.is_some());
        let rv1: u64 = created.resource_version().unwrap().parse().unwrap();

        let err = api
            .create(&PostParams::default(), &lease)
            .await
            .unwrap_err();
        assert_eq!(api_status(err), (409, "AlreadyExists".to_string()));

        let mut got = api.get("portico-leader").await.expect("get lease");
        assert_eq!(
            got.spec.as_ref().unwrap().holder_identity.as_deref(),
            Some("pod-a")
        );
        let stale = got.clone();
        got.spec.as_mut().unwrap().holder_identity = Some("pod-b".into());
        let replaced = api
            .replace("portico-leader", &PostParams::default(), &got)
            .await
            .expect("replace");
        let rv2: u64 = replaced.resource_version().unwrap().parse().unwrap();
        assert!(rv2 > rv1);
        assert_eq!(replaced.metadata.uid, created.metadata.uid);

        // Replace with the stale resourceVersion: 409 Conflict, nothing changes.
        let mut stale = stale;
        stale.spec.as_mut().unwrap().holder_identity = Some("pod-c".into());
        let err = api
            .replace("portico-leader", &PostParams::default(), &stale)
            .await
            .unwrap_err();
        assert_eq!(api_status(err), (409, "Conflict".to_string()));
        let now = api.get("portico-leader").await.unwrap();
        assert_eq!(now.spec.unwrap().holder_identity.as_deref(), Some("pod-b"));

        let err = api.get("missing").await.unwrap_err();
        assert_eq!(api_status(err), (404, "NotFound".to_string()));
        assert!(api.get_opt("missing").await.unwrap().is_none());

        // Server-side apply creates a missing object, then merges into it.
        let ssa = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "ssa-lease"}, "spec": {"holderIdentity": "pod-x"},
        });
        let pp = PatchParams::apply("portico").force();
        let l = api
            .patch("ssa-lease", &pp, &Patch::Apply(&ssa))
            .await
            .expect("apply creates");
        assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("pod-x"));
        let ssa2 = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "ssa-lease"}, "spec": {"leaseDurationSeconds": 10},
        });
        let l = api
            .patch("ssa-lease", &pp, &Patch::Apply(&ssa2))
            .await
            .expect("apply merges");
        assert_eq!(l.spec.as_ref().unwrap().lease_duration_seconds, Some(10));
        assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("pod-x"));

        assert_eq!(server.leases().len(), 2);
        let verbs: Vec<_> = server.lease_writes().iter().map(|w| w.verb).collect();
        assert_eq!(verbs, ["create", "update", "patch", "patch"]);
    })
    .await;
}

#[tokio::test]
async fn events_core_v1_and_recorder_are_recorded() {
    bounded(async {
        let server = ApiServer::start().await;
        let (client, _dir) = client_from_kubeconfig(&server).await;

        let regarding = ObjectReference {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("Ingress".into()),
            name: Some("web".into()),
            namespace: Some("default".into()),
            ..ObjectReference::default()
        };
        let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
        let ev = CoreEvent {
            metadata: ObjectMeta {
                name: Some("web.0001".into()),
                ..ObjectMeta::default()
            },
            involved_object: regarding.clone(),
            reason: Some("Sync".into()),
            message: Some("synced".into()),
            type_: Some("Normal".into()),
            ..CoreEvent::default()
        };
        core.create(&PostParams::default(), &ev)
            .await
            .expect("core event");
        let by_object = core
            .list(&ListParams::default().fields("involvedObject.name=web,type=Normal"))
            .await
            .unwrap();
        assert_eq!(by_object.items.len(), 1);

        // kube 5's Recorder publishes events.k8s.io/v1 Events (a second,
        // identical event becomes a merge patch with a series).
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "portico".into(),
                instance: Some("portico-0".into()),
            },
        );
        let event = || RecorderEvent {
            type_: EventType::Normal,
            reason: "Reconciled".into(),
            note: Some("routes updated".into()),
            action: "Reconcile".into(),
            secondary: None,
        };
        recorder
            .publish(&event(), &regarding)
            .await
            .expect("publish");
        recorder
            .publish(&event(), &regarding)
            .await
            .expect("publish again");

        let events = server.events();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0]["apiVersion"], "v1");
        assert_eq!(events[0]["reason"], "Sync");
        assert_eq!(events[1]["apiVersion"], "events.k8s.io/v1");
        assert_eq!(events[1]["reason"], "Reconciled");
        assert_eq!(events[1]["reportingController"], "portico");
        assert_eq!(events[1]["regarding"]["name"], "web");
        assert_eq!(events[2]["series"]["count"], 2);
        let verbs: Vec<_> = server
            .writes()
            .iter()
            .map(|w| (w.group.clone(), w.verb))
            .collect();
        assert_eq!(
            verbs,
            [
                ("".to_string(), "create"),
                ("events.k8s.io".to_string(), "create"),
                ("events.k8s.io".to_string(), "patch")
            ]
        );
        let v1: Api<EventsV1Event> = Api::namespaced(client, "default");
        let listed = v1
            .list(&ListParams::default().fields("regarding.kind=Ingress"))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn metadata_api_and_discovery_work() {
    bounded(async {
        let server = ApiServer::start().await;
        server.apply(svc("a", "default"));
        let client = server.client().await;
        let api: Api<Service> = Api::namespaced(client.clone(), "default");
        let metas = api
            .list_metadata(&ListParams::default())
            .await
            .expect("list_metadata");
        assert_eq!(metas.items[0].metadata.name.as_deref(), Some("a"));
        let m = api.get_metadata("a").await.expect("get_metadata");
        assert_eq!(m.metadata.labels.unwrap()["app"], "web");

        let version = client.apiserver_version().await.expect("version");
        assert_eq!(version.major, "1");
        let discovery = kube::Discovery::new(client).run().await.expect("discovery");
        assert!(discovery.has_group("networking.k8s.io"));
        let (ar, caps) = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .find(|(ar, _)| ar.kind == "Ingress")
            .expect("ingress discovered");
        assert_eq!(ar.plural, "ingresses");
        assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Raw HTTP: wire format, test-facing helpers and error paths
// ---------------------------------------------------------------------------

async fn http(
    server: &ApiServer,
    method: &str,
    path: &str,
    ctype: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let client = server.http_client();
    let mut req = client.request(method.parse().unwrap(), format!("{}{}", server.url(), path));
    if let Some(ct) = ctype {
        req = req.header("content-type", ct);
    }
    let resp = req
        .body(body.to_string())
        .send()
        .await
        .expect("http request");
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn assert_status(resp: &(u16, Value), code: u16, reason: &str) {
    assert_eq!(resp.0, code, "unexpected response {resp:?}");
    assert_eq!(resp.1["kind"], "Status", "{resp:?}");
    assert_eq!(resp.1["reason"], reason, "{resp:?}");
    assert_eq!(resp.1["code"], code, "{resp:?}");
}

#[tokio::test]
async fn watch_wire_format_bookmarks_and_timeout() {
    bounded(async {
        let server = ApiServer::start().await;
        server.set_bookmark_interval(Duration::from_millis(100));
        server.apply(svc("a", "default"));
        let url = format!(
            "{}/api/v1/namespaces/default/services?watch=1&resourceVersion=0&allowWatchBookmarks=true&timeoutSeconds=1",
            server.url()
        );
        let started = std::time::Instant::now();
        let resp = server.http_client().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["transfer-encoding"], "chunked");
        server.apply(svc("b", "default"));
        let body = resp.text().await.unwrap(); // ends at timeoutSeconds
        assert!(started.elapsed() >= Duration::from_millis(900));
        let events: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(events[0]["type"], "ADDED");
        assert_eq!(events[0]["object"]["metadata"]["name"], "a");
        assert_eq!(events[0]["object"]["kind"], "Service");
        assert_eq!(events[1]["type"], "ADDED");
        assert_eq!(events[1]["object"]["metadata"]["name"], "b");
        let bookmarks: Vec<&Value> = events.iter().filter(|e| e["type"] == "BOOKMARK").collect();
        assert!(bookmarks.len() >= 3, "expected periodic bookmarks: {body}");
        assert_eq!(bookmarks[0]["object"]["kind"], "Service");
        assert_eq!(bookmarks[0]["object"]["apiVersion"], "v1");
        let last = bookmarks.last().unwrap();
        assert_eq!(last["object"]["metadata"]["resourceVersion"], server.resource_version().to_string());

        // Without allowWatchBookmarks there are none.
        let url = format!("{}/api/v1/services?watch=true&timeoutSeconds=1", server.url());
        let body = server.http_client().get(&url).send().await.unwrap().text().await.unwrap();
        assert_eq!(body.lines().count(), 2);
        assert!(!body.contains("BOOKMARK"));

        // From a resourceVersion: replay of the history after it.
        let rv = server.resource_version();
        server.delete("v1", "Service", "default", "a");
        let url = format!("{}/api/v1/namespaces/default/services?watch=true&resourceVersion={rv}&timeoutSeconds=1", server.url());
        let body = server.http_client().get(&url).send().await.unwrap().text().await.unwrap();
        let ev: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
        assert_eq!(ev["type"], "DELETED");
        assert_eq!(ev["object"]["metadata"]["resourceVersion"], (rv + 1).to_string());

        // From a compacted resourceVersion: one ERROR event with 410 Expired.
        server.compact();
        let url = format!("{}/api/v1/namespaces/default/services?watch=true&resourceVersion={rv}", server.url());
        let resp = server.http_client().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["type"], "ERROR");
        assert_eq!(lines[0]["object"]["kind"], "Status");
        assert_eq!(lines[0]["object"]["code"], 410);
        assert_eq!(lines[0]["object"]["reason"], "Expired");
    })
    .await;
}

#[tokio::test]
async fn list_options_validation_matches_the_real_server() {
    bounded(async {
        let server = ApiServer::start().await;
        server.apply(svc("a", "default"));
        let rv = server.resource_version();
        let base = "/api/v1/namespaces/default/services";
        assert_status(
            &http(
                &server,
                "GET",
                &format!("{base}?resourceVersionMatch=Exact"),
                None,
                "",
            )
            .await,
            422,
            "Invalid",
        );
        assert_status(
            &http(
                &server,
                "GET",
                &format!("{base}?resourceVersion=0&resourceVersionMatch=Exact"),
                None,
                "",
            )
            .await,
            422,
            "Invalid",
        );
        assert_status(
            &http(&server, "GET", &format!("{base}?continue=zzz"), None, "").await,
            400,
            "BadRequest",
        );
        assert_status(
            &http(
                &server,
                "GET",
                &format!("{base}?resourceVersion=abc"),
                None,
                "",
            )
            .await,
            400,
            "BadRequest",
        );
        assert_status(
            &http(
                &server,
                "GET",
                &format!("{base}?resourceVersion={}", rv + 100),
                None,
                "",
            )
            .await,
            504,
            "Timeout",
        );
        assert_status(
            &http(
                &server,
                "GET",
                &format!("{base}?labelSelector=a%20in%20b"),
                None,
                "",
            )
            .await,
            400,
            "BadRequest",
        );
        assert_status(
            &http(
                &server,
                "GET",
                &format!("{base}?watch=true&resourceVersionMatch=NotOlderThan"),
                None,
                "",
            )
            .await,
            422,
            "Invalid",
        );

        // Exact reads the snapshot at that version; NotOlderThan the latest.
        server.apply(svc("b", "default"));
        let (code, list) = http(
            &server,
            "GET",
            &format!("{base}?resourceVersion={rv}&resourceVersionMatch=Exact"),
            None,
            "",
        )
        .await;
        assert_eq!(code, 200);
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(list["metadata"]["resourceVersion"], rv.to_string());
        assert!(
            list["items"][0].get("kind").is_none(),
            "list items of built-in types carry no kind"
        );
        let (_, list) = http(
            &server,
            "GET",
            &format!("{base}?resourceVersion={rv}&resourceVersionMatch=NotOlderThan"),
            None,
            "",
        )
        .await;
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
        assert_eq!(list["kind"], "ServiceList");
        // Watch options: `sendInitialEvents=false` starts at the most recent
        // state (no synthetic ADDED); a version from the future skips the
        // events up to it.
        let now = server.resource_version();
        let quiet = server.http_client().get(format!(
            "{}{base}?watch=1&sendInitialEvents=false&resourceVersionMatch=NotOlderThan&timeoutSeconds=1",
            server.url()
        ))
        .send()
        .await
        .unwrap();
        let ahead = server.http_client().get(format!(
            "{}{base}?watch=1&resourceVersion={}&timeoutSeconds=1",
            server.url(),
            now + 1
        ))
        .send()
        .await
        .unwrap();
        server.apply(svc("c", "default")); // now + 1
        server.apply(svc("d", "default")); // now + 2
        let names_in = |body: String| -> Vec<String> {
            body.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .map(|e| format!("{} {}", e["type"].as_str().unwrap(), e["object"]["metadata"]["name"].as_str().unwrap()))
                .collect()
        };
        assert_eq!(names_in(quiet.text().await.unwrap()), ["ADDED c", "ADDED d"]);
        assert_eq!(names_in(ahead.text().await.unwrap()), ["ADDED d"]);

        server.compact();
        assert_status(
            &http(
                &server,
                "GET",
                &format!("{base}?resourceVersion={rv}&resourceVersionMatch=Exact"),
                None,
                "",
            )
            .await,
            410,
            "Expired",
        );
    })
    .await;
}

#[tokio::test]
async fn bad_requests_get_status_objects_not_panics() {
    bounded(async {
        let server = ApiServer::start().await;
        server.apply(svc("a", "default"));
        let svcs = "/api/v1/namespaces/default/services";
        let json_ct = Some("application/json");
        assert_status(
            &http(&server, "POST", svcs, json_ct, "{not json").await,
            400,
            "BadRequest",
        );
        assert_status(
            &http(&server, "POST", svcs, json_ct, "[1,2]").await,
            400,
            "BadRequest",
        );
        assert_status(
            &http(
                &server,
                "POST",
                svcs,
                json_ct,
                r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"x"}}"#,
            )
            .await,
            400,
            "BadRequest",
        );
        assert_status(
            &http(
                &server,
                "POST",
                svcs,
                json_ct,
                r#"{"metadata":{"namespace":"other","name":"x"}}"#,
            )
            .await,
            400,
            "BadRequest",
        );
        assert_status(
            &http(&server, "POST", svcs, json_ct, r#"{"metadata":{}}"#).await,
            422,
            "Invalid",
        );
        assert_status(
            &http(
                &server,
                "POST",
                svcs,
                json_ct,
                r#"{"metadata":{"name":"Bad_Name"}}"#,
            )
            .await,
            422,
            "Invalid",
        );
        assert_status(
            &http(
                &server,
                "POST",
                svcs,
                json_ct,
                r#"{"metadata":{"name":"a"}}"#,
            )
            .await,
            409,
            "AlreadyExists",
        );
        assert_status(
            &http(
                &server,
                "POST",
                svcs,
                Some("application/vnd.kubernetes.protobuf"),
                "x",
            )
            .await,
            415,
            "UnsupportedMediaType",
        );
        assert_status(
            &http(&server, "PUT", svcs, json_ct, "{}").await,
            405,
            "MethodNotAllowed",
        );
        assert_status(
            &http(&server, "POST", "/api/v1/services", json_ct, "{}").await,
            405,
            "MethodNotAllowed",
        );
        assert_status(
            &http(&server, "GET", "/api/v1/widgets", None, "").await,
            404,
            "NotFound",
        );
        assert_status(
            &http(&server, "GET", "/apis/nope.example/v1/things/x", None, "").await,
            404,
            "NotFound",
        );
        assert_status(
            &http(&server, "GET", "/nonsense", None, "").await,
            404,
            "NotFound",
        );
        assert_status(
            &http(&server, "GET", &format!("{svcs}/a/scale"), None, "").await,
            404,
            "NotFound",
        );
        assert_status(
            &http(&server, "GET", "/api/v1/secrets/x/status", None, "").await,
            404,
            "NotFound",
        );
        assert_status(
            &http(&server, "GET", &format!("{svcs}/missing"), None, "").await,
            404,
            "NotFound",
        );
        assert_status(
            &http(
                &server,
                "PATCH",
                &format!("{svcs}/a"),
                Some("text/plain"),
                "{}",
            )
            .await,
            415,
            "UnsupportedMediaType",
        );
        assert_status(
            &http(
                &server,
                "PATCH",
                &format!("{svcs}/a"),
                Some("application/merge-patch+json"),
                "{",
            )
            .await,
            400,
            "BadRequest",
        );
        assert_status(
            &http(
                &server,
                "PATCH",
                &format!("{svcs}/missing"),
                Some("application/merge-patch+json"),
                "{}",
            )
            .await,
            404,
            "NotFound",
        );
        assert_status(
            &http(
                &server,
                "PUT",
                &format!("{svcs}/a"),
                json_ct,
                r#"{"metadata":{"name":"b"}}"#,
            )
            .await,
            400,
            "BadRequest",
        );
        assert_status(
            &http(&server, "DELETE", &format!("{svcs}/a"), json_ct, "{oops").await,
            400,
            "BadRequest",
        );
        assert_status(
            &http(
                &server,
                "PATCH",
                &format!("{svcs}/a"),
                Some("application/apply-patch+yaml"),
                "apiVersion: v1\nkind: Service\n",
            )
            .await,
            422,
            "Invalid",
        );
        let (code, _) = http(&server, "GET", "/version", None, "").await;
        assert_eq!(code, 200);
        // The server is still fine and every request was recorded with its code.
        assert_eq!(
            http(&server, "GET", &format!("{svcs}/a"), None, "").await.0,
            200
        );
        let reqs = server.requests();
        assert!(reqs.iter().all(|r| r.status != 0));
        assert!(reqs
            .iter()
            .any(|r| r.method == "POST" && r.status == 409 && r.body.contains("\"a\"")));
    })
    .await;
}

#[tokio::test]
async fn patch_flavours_finalizers_dry_run_and_yaml() {
    bounded(async {
        let server = ApiServer::start().await;
        let applied = server.apply_yaml(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: portico\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: portico\n\
             spec:\n  controller: example.com/portico\n---\n\
             apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: portico\n\
             spec:\n  ports:\n  - port: 80\n",
        );
        assert_eq!(applied.len(), 3);
        assert!(server
            .get("networking.k8s.io/v1", "IngressClass", "", "portico")
            .is_some());
        let web = "/api/v1/namespaces/portico/services/web";

        // RFC 6902 JSON patch.
        let ops = r#"[{"op":"add","path":"/metadata/labels","value":{"a":"1"}},
                      {"op":"add","path":"/spec/ports/-","value":{"port":443}},
                      {"op":"replace","path":"/spec/ports/0/port","value":8080},
                      {"op":"copy","from":"/metadata/labels/a","path":"/metadata/labels/b"},
                      {"op":"test","path":"/metadata/labels/b","value":"1"}]"#;
        let (code, obj) = http(
            &server,
            "PATCH",
            web,
            Some("application/json-patch+json"),
            ops,
        )
        .await;
        assert_eq!(code, 200, "{obj}");
        assert_eq!(obj["spec"]["ports"][0]["port"], 8080);
        assert_eq!(obj["spec"]["ports"][1]["port"], 443);
        assert_eq!(obj["metadata"]["labels"]["b"], "1");
        let failing = r#"[{"op":"test","path":"/metadata/labels/a","value":"2"}]"#;
        assert_status(
            &http(
                &server,
                "PATCH",
                web,
                Some("application/json-patch+json"),
                failing,
            )
            .await,
            422,
            "Invalid",
        );
        let bad_path = r#"[{"op":"remove","path":"/spec/nope"}]"#;
        assert_status(
            &http(
                &server,
                "PATCH",
                web,
                Some("application/json-patch+json"),
                bad_path,
            )
            .await,
            422,
            "Invalid",
        );

        // Strategic merge patch (treated as a merge patch) and merge patch
        // with a stale resourceVersion precondition.
        let smp = r#"{"metadata":{"labels":{"a":null,"c":"3"}}}"#;
        let (code, obj) = http(
            &server,
            "PATCH",
            web,
            Some("application/strategic-merge-patch+json"),
            smp,
        )
        .await;
        assert_eq!(code, 200);
        assert_eq!(obj["metadata"]["labels"], json!({"b": "1", "c": "3"}));
        let stale = r#"{"metadata":{"resourceVersion":"1","labels":{"d":"4"}}}"#;
        assert_status(
            &http(
                &server,
                "PATCH",
                web,
                Some("application/merge-patch+json"),
                stale,
            )
            .await,
            409,
            "Conflict",
        );

        // A no-op patch does not bump the resourceVersion.
        let rv = server.resource_version();
        assert_eq!(
            http(
                &server,
                "PATCH",
                web,
                Some("application/merge-patch+json"),
                smp
            )
            .await
            .0,
            200
        );
        assert_eq!(server.resource_version(), rv);

        // dryRun=All does not persist.
        let body = r#"{"metadata":{"name":"dry"}}"#;
        assert_eq!(
            http(
                &server,
                "POST",
                "/api/v1/namespaces/portico/services?dryRun=All",
                Some("application/json"),
                body
            )
            .await
            .0,
            201
        );
        assert!(server.get("v1", "Service", "portico", "dry").is_none());

        // Finalizers hold a deletion until they are removed.
        let fin = r#"{"metadata":{"finalizers":["example.com/hold"]}}"#;
        assert_eq!(
            http(
                &server,
                "PATCH",
                web,
                Some("application/merge-patch+json"),
                fin
            )
            .await
            .0,
            200
        );
        let (code, obj) = http(&server, "DELETE", web, None, "").await;
        assert_eq!(code, 200);
        assert!(obj["metadata"]["deletionTimestamp"].is_string());
        assert!(server.get("v1", "Service", "portico", "web").is_some());
        let unfin = r#"{"metadata":{"finalizers":null}}"#;
        assert_eq!(
            http(
                &server,
                "PATCH",
                web,
                Some("application/merge-patch+json"),
                unfin
            )
            .await
            .0,
            200
        );
        assert!(server.get("v1", "Service", "portico", "web").is_none());

        // Delete of an object without finalizers answers a Success Status;
        // preconditions are checked.
        let ic = "/apis/networking.k8s.io/v1/ingressclasses/portico";
        let pre = r#"{"preconditions":{"uid":"not-the-uid"}}"#;
        assert_status(
            &http(&server, "DELETE", ic, Some("application/json"), pre).await,
            409,
            "Conflict",
        );
        let (code, status) = http(&server, "DELETE", ic, None, "").await;
        assert_eq!(code, 200);
        assert_eq!(status["status"], "Success");
        assert_eq!(status["details"]["kind"], "ingressclasses");
        assert_status(
            &http(&server, "DELETE", ic, None, "").await,
            404,
            "NotFound",
        );
    })
    .await;
}

#[tokio::test]
async fn drop_watches_aborts_the_connection_mid_stream() {
    bounded(async {
        let server = ApiServer::start().await;
        server.apply(svc("a", "default"));
        let url = format!(
            "{}/api/v1/namespaces/default/services?watch=true",
            server.url()
        );
        let mut resp = server.http_client().get(&url).send().await.unwrap();
        let first = resp.chunk().await.unwrap().expect("the ADDED event");
        assert!(String::from_utf8_lossy(&first).contains("\"ADDED\""));
        assert!(server.wait_for_watches(1, T).await);
        server.drop_watches();
        // Not a clean end of the chunked body: the connection is cut.
        let mut outcome = resp.chunk().await;
        while let Ok(Some(_)) = outcome {
            outcome = resp.chunk().await;
        }
        assert!(
            outcome.is_err(),
            "expected an aborted body, got a clean end"
        );
        assert_eq!(server.watch_count(), 0);
        // The server itself is unaffected.
        let (code, _) = http(
            &server,
            "GET",
            "/api/v1/namespaces/default/services/a",
            None,
            "",
        )
        .await;
        assert_eq!(code, 200);
    })
    .await;
}
