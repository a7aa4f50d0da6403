//! ingress-nginx compatibility: the Ingresses in tests/fixtures/ingress-nginx, written as teams
//! wrote them for ingress-nginx, served through the real proxy to real echo backends, and
//! ingress-nginx's answers asserted: status codes, `Location`, the path and `Host` the backend
//! sees, body limits, timeouts, regex ordering, and the refusals.

mod common;

use std::time::Duration;

use common::{Pods, Portico};
use portico::echo::Echo;

/// The fixture corpus, in file order.
fn fixtures() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ingress-nginx");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read_to_string(&p).expect("read fixture"))
        })
        .collect()
}

/// The Services the fixtures route to, one echo pod each.
const SERVICES: [&str; 5] = ["http-svc", "api", "assets", "admin", "web"];

struct Setup {
    p: Portico,
    _pods: Vec<Pods>,
}

async fn start(tweak: impl FnOnce(&mut portico::config::Flags)) -> Setup {
    let mut pods = Vec::new();
    for s in SERVICES {
        pods.push(Pods::start(s, 1).await);
    }
    let mut files = fixtures();
    for p in &pods {
        files.push((
            format!("svc-{}.yaml", p.service),
            p.manifests("default", "", 80),
        ));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let p = Portico::start_with(&refs, |f| {
        f.ingress_nginx_compat = Some(true);
        tweak(f);
    })
    .await;
    Setup { p, _pods: pods }
}

/// One request; the status, the `Location` and the body.
async fn send(
    p: &Portico,
    method: &str,
    host: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Option<String>, String) {
    let r = common::client()
        .request(method.parse().expect("method"), p.url(path))
        .header("host", host)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {host}{path}: {e}"));
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    (status, location, r.text().await.unwrap_or_default())
}

async fn get(p: &Portico, host: &str, path: &str) -> (u16, Option<String>, String) {
    send(p, "GET", host, path, Vec::new()).await
}

/// GET that must reach a backend; what it saw.
async fn echo(p: &Portico, host: &str, path: &str) -> Echo {
    let (status, _, body) = get(p, host, path).await;
    assert_eq!(status, 200, "GET {host}{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not an echo ({e}): {body}"))
}

fn header<'e>(e: &'e Echo, name: &str) -> Option<&'e str> {
    e.headers.get(name).map(String::as_str)
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_target_with_capture_groups() {
    let s = start(|_| {}).await;
    let p = &s.p;
    for (request, upstream, query) in [
        ("/something", "/", None),
        ("/something/", "/", None),
        ("/something/new", "/new", None),
        ("/SOMETHING/new/deeper", "/new/deeper", None),
        ("/something/new?page=2&x=%20", "/new", Some("page=2&x=%20")),
    ] {
        let e = echo(p, "rewrite.bar.com", request).await;
        assert_eq!(e.service, "http-svc");
        assert_eq!((e.path.as_str(), e.query.as_deref()), (upstream, query), "{request}");
        // The Host is the client's, and the prefix is announced (x-forwarded-prefix).
        assert_eq!(header(&e, "host"), Some("rewrite.bar.com"));
        assert_eq!(header(&e, "x-forwarded-prefix"), Some("/something"));
    }
    // Anchored at the start: not a match in the middle of a path.
    assert_eq!(get(p, "rewrite.bar.com", "/x/something/new").await.0, 404);
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_spreads_to_every_path_of_the_host_longest_first() {
    let s = start(|_| {}).await;
    let p = &s.p;
    // A rewrite without groups replaces the whole path.
    let e = echo(p, "shop.example.com", "/v1/users/7").await;
    assert_eq!((e.service.as_str(), e.path.as_str()), ("api", "/api"));
    // The other Ingress's Prefix paths are case-insensitive regexes now, anchored at the start
    // only: "/staticfiles" matches "/static", which a Prefix path would not.
    for path in ["/static/app.js", "/STATIC/app.js", "/staticfiles/x"] {
        let e = echo(p, "shop.example.com", path).await;
        assert_eq!((e.service.as_str(), e.path.as_str()), ("assets", path));
    }
    // Longest first: "/v1/admin" wins over "/v1", whatever Ingress holds it.
    let e = echo(p, "shop.example.com", "/v1/admin/users").await;
    assert_eq!((e.service.as_str(), e.path.as_str()), ("admin", "/v1/admin/users"));
    assert_eq!(get(p, "shop.example.com", "/").await.0, 404);
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_blocks_redirect_with_308_even_without_a_secret() {
    let s = start(|_| {}).await;
    let p = &s.p;
    let (status, location, _) = get(p, "secure.example.com", "/pay?amount=5").await;
    assert_eq!(status, 308);
    let location = location.expect("Location");
    assert!(
        location.starts_with("https://secure.example.com:") && location.ends_with("/pay?amount=5"),
        "{location}"
    );
    // Another Ingress's path on that host is redirected too: the host has TLS.
    let (status, location, _) = get(p, "secure.example.com", "/api/v1").await;
    assert_eq!(status, 308);
    assert!(location.unwrap_or_default().ends_with("/api/v1"));
    // ssl-redirect "false" opts out.
    assert_eq!(echo(p, "optout.example.com", "/").await.service, "web");
    // force-ssl-redirect redirects a host without any tls block.
    let (status, location, _) = get(p, "forced.example.com", "/a").await;
    assert_eq!(status, 308);
    assert!(location.unwrap_or_default().starts_with("https://forced.example.com:"));
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_annotations_answer_without_the_backend() {
    let s = start(|_| {}).await;
    let p = &s.p;
    let cases = [
        ("old-site.example.com", "/any?x=1", 301, "https://www.new-site.example/welcome"),
        ("old-api.example.com", "/v2/items", 308, "https://api.new-site.example"),
        // Both set: temporal wins.
        ("maintenance.example.com", "/", 302, "https://status.example/maintenance"),
        // A capture group of a regex path.
        ("wiki.example.com", "/wiki/Main_Page", 301, "https://docs.example/Main_Page"),
        // app-root: exactly "/" only.
        ("portal.example.com", "/", 302, "http://portal.example.com/portal"),
    ];
    for (host, path, status, location) in cases {
        let got = get(p, host, path).await;
        assert_eq!((got.0, got.1.as_deref()), (status, Some(location)), "{host}{path}");
    }
    let e = echo(p, "portal.example.com", "/portal/home").await;
    assert_eq!(e.path, "/portal/home");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_size_and_read_timeout_in_ingress_nginx_units() {
    let s = start(|_| {}).await;
    let p = &s.p;
    let (status, _, _) = send(p, "POST", "upload.example.com", "/", vec![b'x'; 2048]).await;
    assert_eq!(status, 413);
    let (status, _, _) = send(p, "POST", "upload.example.com", "/", vec![b'x'; 1024]).await;
    assert_eq!(status, 200);
    // "0" is unlimited: above Portico's 1m default.
    let (status, _, body) =
        send(p, "POST", "bulk.example.com", "/", vec![b'x'; 3 << 20]).await;
    assert_eq!(status, 200, "{body}");
    // proxy-read-timeout "1": one second between two reads.
    let started = std::time::Instant::now();
    assert_eq!(get(p, "bulk.example.com", "/delay/2500").await.0, 504);
    assert!(started.elapsed() < Duration::from_millis(2400));
    assert_eq!(get(p, "bulk.example.com", "/delay/200").await.0, 200);
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_vhost_is_the_host_the_backend_sees() {
    let s = start(|_| {}).await;
    let e = echo(&s.p, "orders.example.com", "/orders/1").await;
    assert_eq!(header(&e, "host"), Some("orders.internal.svc"));
    // The forwarding fields still name the client's host.
    assert_eq!(header(&e, "x-forwarded-host"), Some("orders.example.com"));
    assert_eq!(e.path, "/orders/1");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snippets_and_allowlists_close_their_ingress_and_are_reported() {
    let s = start(|_| {}).await;
    let p = &s.p;
    assert_eq!(get(p, "snippet.example.com", "/").await.0, 404);
    // An allowlist that cannot be read keeps its Ingress out too.
    assert_eq!(get(p, "typo.example.com", "/").await.0, 404);
    // Not access control: served without it, and reported.
    let e = echo(p, "cors.example.com", "/").await;
    assert!(!e.headers.contains_key("access-control-allow-origin"));
    let metrics = p.metrics().await;
    let count = |reason: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("portico_rejected_objects{")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(count("AnnotationRefused"), 2.0, "{metrics}");
    // enable-cors, and the nginx annotation on Portico's own class.
    assert_eq!(count("AnnotationIgnored"), 2.0, "{metrics}");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classes_resolve_as_ingress_nginx_resolves_them() {
    let s = start(|_| {}).await;
    let p = &s.p;
    assert_eq!(echo(p, "legacy.example.com", "/").await.service, "web");
    // No class: not taken without --watch-ingress-without-class.
    assert_eq!(get(p, "classless.example.com", "/").await.0, 404);
    // Portico's own class keeps the spec's semantics: the rewrite is not applied.
    assert_eq!(echo(p, "native.example.com", "/app/x").await.path, "/app/x");
    drop(s);

    let s = start(|f| f.watch_ingress_without_class = Some(true)).await;
    assert_eq!(echo(&s.p, "classless.example.com", "/").await.service, "web");
    drop(s);

    // Off by default: ingress-nginx's Ingresses are not Portico's.
    let s = start(|f| f.ingress_nginx_compat = Some(false)).await;
    assert_eq!(get(&s.p, "legacy.example.com", "/").await.0, 404);
    assert_eq!(get(&s.p, "rewrite.bar.com", "/something/x").await.0, 404);
    assert_eq!(echo(&s.p, "native.example.com", "/app/x").await.path, "/app/x");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_path_kinds_www_redirect_and_server_alias() {
    let s = start(|_| {}).await;
    let p = &s.p;
    // `location /guide/`: the bare path gets nginx's 301, with the query.
    let (status, location, _) = get(p, "docs.example.com", "/guide?v=2").await;
    assert_eq!((status, location.as_deref()), (301, Some("http://docs.example.com/guide/?v=2")));
    assert_eq!(echo(p, "docs.example.com", "/guide/intro").await.path, "/guide/intro");
    // ImplementationSpecific is nginx's plain prefix: "/api" matches "/apiv2".
    assert_eq!(echo(p, "docs.example.com", "/apiv2/x").await.service, "api");
    // server-alias serves the same rules.
    assert_eq!(echo(p, "handbook.example.com", "/api").await.service, "api");
    // from-to-www-redirect: the bare name goes to www, with the path and query.
    let (status, location, _) = get(p, "brand.example.com", "/shoes?size=42").await;
    assert_eq!(
        (status, location.as_deref()),
        (308, Some("http://www.brand.example.com/shoes?size=42"))
    );
    assert_eq!(echo(p, "www.brand.example.com", "/shoes").await.service, "web");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configmap_is_followed_live() {
    let s = start(|_| {}).await;
    let p = &s.p;
    assert_eq!(get(p, "secure.example.com", "/").await.0, 308);
    let body = vec![b'x'; 1536];
    assert_eq!(send(p, "POST", "cors.example.com", "/", body.clone()).await.0, 200);
    let metrics = p.metrics().await;
    assert!(
        metrics.contains("portico_rejected_objects{kind=\"ConfigMap\",reason=\"UnknownKey\"} 2"),
        "{metrics}"
    );
    // The operator changes the redirect code and the body limit.
    let cm = std::fs::read_to_string(p.dir.path().join("10-configmap.yaml")).expect("read");
    let cm = cm.replace(
        "  use-gzip: \"true\"",
        "  use-gzip: \"true\"\n  http-redirect-code: \"301\"\n  proxy-body-size: 1k",
    );
    std::fs::write(p.dir.path().join("10-configmap.yaml"), cm).expect("write");
    p.eventually("secure.example.com", "/", Duration::from_secs(10), |status, _| status == 301)
        .await;
    assert_eq!(send(p, "POST", "cors.example.com", "/", body.clone()).await.0, 413);
    // An annotation wins over the ConfigMap.
    assert_eq!(send(p, "POST", "bulk.example.com", "/", body.clone()).await.0, 200);
    // A value Portico cannot parse is reported; the rest keeps working.
    let cm = std::fs::read_to_string(p.dir.path().join("10-configmap.yaml")).expect("read");
    std::fs::write(
        p.dir.path().join("10-configmap.yaml"),
        cm.replace("proxy-body-size: 1k", "proxy-body-size: lots"),
    )
    .expect("write");
    p.eventually("cors.example.com", "/", Duration::from_secs(10), |status, _| status == 200)
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while send(p, "POST", "cors.example.com", "/", body.clone()).await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "the invalid value was applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(p, "secure.example.com", "/").await.0, 301);
    let metrics = p.metrics().await;
    assert!(
        metrics.contains("portico_rejected_objects{kind=\"ConfigMap\",reason=\"InvalidValue\"} 1"),
        "{metrics}"
    );
}
}

/// GET from a given loopback address, with `X-Forwarded-For` lines; the status.
async fn get_from(p: &Portico, from: &str, host: &str, forwarded_for: &[&str]) -> u16 {
    let client = reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().ok())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut r = client.get(p.url("/")).header("host", host);
    for line in forwarded_for {
        r = r.header("x-forwarded-for", *line);
    }
    r.send().await.expect("request").status().as_u16()
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlists_check_the_real_client_ip_and_fail_closed() {
    let s = start(|_| {}).await;
    let p = &s.p;
    assert_eq!(get_from(p, "127.0.0.2", "partners.example.com", &[]).await, 200);
    assert_eq!(get_from(p, "127.0.0.1", "partners.example.com", &[]).await, 403);
    // A spoofed X-Forwarded-For from a peer that is not a trusted proxy is not believed.
    assert_eq!(get_from(p, "127.0.0.1", "partners.example.com", &["127.0.0.2"]).await, 403);
    assert_eq!(get_from(p, "127.0.0.1", "intranet.example.com", &["10.1.2.3"]).await, 403);
    assert_eq!(get_from(p, "127.0.0.3", "public.example.com", &[]).await, 403);
    assert_eq!(get_from(p, "127.0.0.4", "public.example.com", &[]).await, 200);
    drop(s);

    // Behind a trusted proxy (127.0.0.1): the rightmost address it did not add itself.
    let s = start(|f| f.trusted_proxies = vec!["127.0.0.1/32".into()]).await;
    let p = &s.p;
    assert_eq!(get_from(p, "127.0.0.1", "partners.example.com", &["127.0.0.2"]).await, 200);
    assert_eq!(get_from(p, "127.0.0.1", "partners.example.com", &["127.0.0.2, 127.0.0.1"]).await, 200);
    // The client prepended a forged address: the proxy's own entry is the rightmost.
    assert_eq!(get_from(p, "127.0.0.1", "partners.example.com", &["127.0.0.2, 127.0.0.9"]).await, 403);
    // A forged line before the proxy's line does not count either.
    assert_eq!(get_from(p, "127.0.0.1", "partners.example.com", &["127.0.0.2", "127.0.0.9"]).await, 403);
    // An entry that is no address: the client cannot be told, so it is refused.
    assert_eq!(get_from(p, "127.0.0.1", "partners.example.com", &["127.0.0.2, bogus"]).await, 403);
    // Without the header, the trusted peer itself is the client.
    assert_eq!(get_from(p, "127.0.0.1", "partners.example.com", &[]).await, 403);
    assert_eq!(get_from(p, "127.0.0.1", "public.example.com", &["127.0.0.3"]).await, 403);
    drop(s);

    // The ConfigMap's use-forwarded-headers, followed live: with proxy-real-ip-cidr, those
    // peers are believed instead of --trusted-proxies.
    let s = start(|_| {}).await;
    let p = &s.p;
    let file = p.dir.path().join("10-configmap.yaml");
    let cm = std::fs::read_to_string(&file).expect("read");
    std::fs::write(
        &file,
        format!("{cm}  use-forwarded-headers: \"true\"\n  proxy-real-ip-cidr: 127.0.0.5/32\n"),
    )
    .expect("write");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get_from(p, "127.0.0.5", "partners.example.com", &["127.0.0.2"]).await != 200 {
        assert!(std::time::Instant::now() < deadline, "use-forwarded-headers not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get_from(p, "127.0.0.1", "partners.example.com", &["127.0.0.2"]).await, 403);
    // ingress-nginx's default proxy-real-ip-cidr, 0.0.0.0/0, believes every peer.
    std::fs::write(&file, format!("{cm}  use-forwarded-headers: \"true\"\n")).expect("write");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get_from(p, "127.0.0.1", "partners.example.com", &["127.0.0.2"]).await != 200 {
        assert!(std::time::Instant::now() < deadline, "proxy-real-ip-cidr default not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // PROXY protocol is not read: the Ingresses with lists are not served rather than checked
    // against the load balancer's address.
    std::fs::write(&file, format!("{cm}  use-proxy-protocol: \"true\"\n")).expect("write");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get_from(p, "127.0.0.2", "partners.example.com", &[]).await != 404 {
        assert!(std::time::Instant::now() < deadline, "use-proxy-protocol not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(echo(p, "cors.example.com", "/").await.service, "web");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_allowlist_covers_its_default_backend() {
    let pods = Pods::start("web", 1).await;
    let class = &fixtures()[0].1;
    let ingress = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: catch-all
  namespace: default
  annotations:
    nginx.ingress.kubernetes.io/whitelist-source-range: 127.0.0.2
spec:
  ingressClassName: nginx
  defaultBackend:
    service:
      name: web
      port:
        number: 80
";
    let svc = pods.manifests("default", "", 80);
    let p = Portico::start_with(
        &[("class.yaml", class), ("catch-all.yaml", ingress), ("svc.yaml", &svc)],
        |f| f.ingress_nginx_compat = Some(true),
    )
    .await;
    assert_eq!(get_from(&p, "127.0.0.2", "any.example.com", &[]).await, 200);
    assert_eq!(get_from(&p, "127.0.0.1", "any.example.com", &[]).await, 403);
}
}

/// The status of a request sent as raw bytes (so that no client normalises its path).
async fn raw_status(p: &Portico, host: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(p.http)
        .await
        .expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_scoped_allowlist_is_not_bypassed_by_spelling_the_path_otherwise() {
    let s = start(|_| {}).await;
    let p = &s.p;
    assert_eq!(raw_status(p, "console.example.com", "/admin/users").await, 403);
    assert_eq!(raw_status(p, "console.example.com", "/public").await, 200);
    // Spelled so that only nginx's normalisation makes it /admin: refused, not served by "/".
    for path in ["/%61dmin/users", "//admin/users", "/x/../admin/users", "/./admin"] {
        assert_eq!(raw_status(p, "console.example.com", path).await, 400, "{path}");
    }
    // Normalising changes nothing about where these go: served.
    assert_eq!(raw_status(p, "console.example.com", "/files/a%20b").await, 200);
    assert_eq!(raw_status(p, "console.example.com", "/files//x").await, 200);
    // A bad escape is a bad request.
    assert_eq!(raw_status(p, "console.example.com", "/files/%zz").await, 400);
}
}
