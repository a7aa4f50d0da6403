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
    // proxy-read-timeout "1": one second between two reads; a timeout before the response is
    // retried ("error timeout", 3 tries: the same, only endpoint), then 504, as ingress-nginx.
    let started = std::time::Instant::now();
    assert_eq!(get(p, "bulk.example.com", "/delay/2500").await.0, 504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_millis(6000),
        "{took:?}"
    );
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
    assert_eq!(echo(p, "ewma.example.com", "/").await.service, "web");
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
    // The two above; the custom-headers Ingresses whose ConfigMap is missing, of another
    // namespace or sets a header that is not allowed; basic auth with a missing Secret, digest,
    // and no auth-type.
    assert_eq!(count("AnnotationRefused"), 8.0, "{metrics}");
    // load-balance, the nginx annotation on Portico's own class, and the htpasswd line in a
    // format Portico does not check.
    assert_eq!(count("AnnotationIgnored"), 3.0, "{metrics}");
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
    assert_eq!(send(p, "POST", "ewma.example.com", "/", body.clone()).await.0, 200);
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
    assert_eq!(send(p, "POST", "ewma.example.com", "/", body.clone()).await.0, 413);
    // An annotation wins over the ConfigMap.
    assert_eq!(send(p, "POST", "bulk.example.com", "/", body.clone()).await.0, 200);
    // A value Portico cannot parse is reported; the rest keeps working.
    let cm = std::fs::read_to_string(p.dir.path().join("10-configmap.yaml")).expect("read");
    std::fs::write(
        p.dir.path().join("10-configmap.yaml"),
        cm.replace("proxy-body-size: 1k", "proxy-body-size: lots"),
    )
    .expect("write");
    p.eventually("ewma.example.com", "/", Duration::from_secs(10), |status, _| status == 200)
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while send(p, "POST", "ewma.example.com", "/", body.clone()).await.0 != 200 {
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
    // use-proxy-protocol: see use_proxy_protocol_gives_the_allowlist_the_real_client.
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

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_headers_come_from_an_allowed_configmap_in_the_namespace() {
    let s = start(|_| {}).await;
    let p = &s.p;
    let headers = |host: &'static str| async move {
        let r = common::client()
            .get(p.url("/"))
            .header("host", host)
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.headers().clone())
    };
    let (status, h) = headers("headers.example.com").await;
    assert_eq!(status, 200);
    let all = |name: &str| -> Vec<&str> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or_default())
            .collect()
    };
    assert_eq!(all("x-frame-options"), ["DENY"]);
    assert_eq!(all("x-content-type-options"), ["nosniff"]);
    // Set, not added: the backend's own Content-Type is replaced.
    assert_eq!(all("content-type"), ["text/plain; charset=utf-8"]);
    // Routes without the annotation are untouched.
    let (_, plain) = headers("ewma.example.com").await;
    assert!(plain.get("x-frame-options").is_none());
    // A header outside global-allowed-response-headers, or a missing ConfigMap: not served, as
    // ingress-nginx denies the location.
    assert_eq!(get(p, "leaky-headers.example.com", "/").await.0, 404);
    assert_eq!(get(p, "missing-headers.example.com", "/").await.0, 404);
    // An existing, allowed ConfigMap of another namespace is not read either.
    assert_eq!(get(p, "elsewhere-headers.example.com", "/").await.0, 404);
    // Both ConfigMaps are followed live: the missing one appears, the other changes.
    std::fs::write(
        p.dir.path().join("13-late.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: no-such-configmap, namespace: default}\n\
         data: {X-Frame-Options: SAMEORIGIN}\n",
    )
    .expect("write");
    p.eventually("missing-headers.example.com", "/", Duration::from_secs(10), |s, _| s == 200)
        .await;
    let file = p.dir.path().join("12-custom-headers.yaml");
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, text.replacen("X-Frame-Options: DENY", "X-Frame-Options: SAMEORIGIN", 1))
        .expect("write");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, h) = headers("headers.example.com").await;
        if h.get("x-frame-options").is_some_and(|v| v == "SAMEORIGIN") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the change was not applied: {h:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
}

/// A certificate authority for the backend TLS tests.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA");
        Ca { cert, key }
    }

    /// A leaf for `names`, for a server or a client; `(cert PEM, key PEM)`.
    fn issue(&self, names: &[&str], client: bool) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// An HTTPS backend with a certificate from `ca` for `names`, which asks for (but does not
/// require) a client certificate from `ca`. It answers `client-cert=yes|no sni=NAME`.
async fn verified_backend(ca: &Ca, names: &[&str]) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;
    let (cert, key) = ca.issue(names, false);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .expect("verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let answer = format!(
                    "client-cert={} sni={}",
                    if conn.peer_certificates().is_some() {
                        "yes"
                    } else {
                        "no"
                    },
                    conn.server_name().unwrap_or("-")
                );
                let svc = hyper::service::service_fn(move |_req| {
                    let answer = answer.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(answer)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

/// A Secret of `type` with these PEM fields, in YAML (as `stringData`).
fn pem_secret(ns: &str, name: &str, type_: &str, fields: &[(&str, &str)]) -> String {
    let data: String = fields
        .iter()
        .map(|(k, v)| {
            let body: String = v.lines().map(|l| format!("    {l}\n")).collect();
            format!("  {k}: |\n{body}")
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         type: {type_}\nstringData:\n{data}"
    )
}

/// An Ingress of class nginx for `host`, to Service `tlsweb` over HTTPS, with annotations.
fn https_ingress(name: &str, host: &str, annotations: &[(&str, &str)]) -> String {
    let mut a: String = annotations
        .iter()
        .map(|(k, v)| format!("    nginx.ingress.kubernetes.io/{k}: \"{v}\"\n"))
        .collect();
    a.push_str("    nginx.ingress.kubernetes.io/backend-protocol: HTTPS\n");
    format!(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: default
  annotations:
{a}spec:
  ingressClassName: nginx
  rules:
    - host: {host}
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service: {{name: tlsweb, port: {{number: 443}}}}
"
    )
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_ssl_verifies_the_backend_and_presents_a_client_certificate() {
    let ca = Ca::new("cluster ca");
    let other = Ca::new("another ca");
    let port = verified_backend(&ca, &["backend.internal", "tlsweb.default.svc"]).await;
    let (client_cert, client_key) = ca.issue(&["portico"], true);
    let ca_pem = ca.cert.pem();
    let other_pem = other.cert.pem();
    let mut files = vec![
        ("00-class.yaml".to_string(), fixtures()[0].1.clone()),
        (
            "svc.yaml".into(),
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: tlsweb, namespace: default}}\n\
                 spec: {{ports: [{{port: 443, targetPort: {port}}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: tlsweb-1\n  \
                 namespace: default\n  labels: {{kubernetes.io/service-name: tlsweb}}\n\
                 addressType: IPv4\nports: [{{port: {port}}}]\n\
                 endpoints: [{{addresses: [\"127.0.0.1\"], conditions: {{ready: true}}}}]\n"
            ),
        ),
        ("ca.yaml".into(), pem_secret("default", "backend-ca", "Opaque", &[("ca.crt", &ca_pem)])),
        (
            "mtls-secret.yaml".into(),
            pem_secret(
                "default",
                "backend-mtls",
                "kubernetes.io/tls",
                &[("ca.crt", &ca_pem), ("tls.crt", &client_cert), ("tls.key", &client_key)],
            ),
        ),
        ("other.yaml".into(), pem_secret("default", "other-ca", "Opaque", &[("ca.crt", &other_pem)])),
        ("elsewhere.yaml".into(), pem_secret("kube-system", "backend-ca", "Opaque", &[("ca.crt", &ca_pem)])),
    ];
    let verify = |secret: &'static str| [("proxy-ssl-secret", secret), ("proxy-ssl-verify", "on")];
    for (name, host, extra) in [
        ("named", "named.test", vec![("proxy-ssl-name", "backend.internal")]),
        ("default-name", "default-name.test", vec![]),
        ("wrong-name", "wrong-name.test", vec![("proxy-ssl-name", "other.internal")]),
        ("mtls", "mtls.test", vec![("proxy-ssl-name", "backend.internal")]),
    ] {
        let secret = if name == "mtls" { "default/backend-mtls" } else { "default/backend-ca" };
        let mut a = verify(secret).to_vec();
        a.extend(extra);
        files.push((format!("{name}.yaml"), https_ingress(name, host, &a)));
    }
    files.push(("wrong-ca.yaml".into(), https_ingress("wrong-ca", "wrong-ca.test", &verify("default/other-ca"))));
    // Not verified (proxy-ssl-verify off, ingress-nginx's default), and the plain HTTPS route:
    // connections they make must never serve the verifying routes.
    files.push((
        "unverified.yaml".into(),
        https_ingress("unverified", "unverified.test", &[("proxy-ssl-secret", "default/other-ca")]),
    ));
    files.push(("plain.yaml".into(), https_ingress("plain", "plain.test", &[])));
    // Refused: verifying without a Secret, and a Secret of another namespace.
    files.push((
        "no-secret.yaml".into(),
        https_ingress("no-secret", "no-secret.test", &[("proxy-ssl-verify", "on")]),
    ));
    files.push((
        "elsewhere-ing.yaml".into(),
        https_ingress("elsewhere", "elsewhere.test", &verify("kube-system/backend-ca")),
    ));
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let p = Portico::start_with(&refs, |f| f.ingress_nginx_compat = Some(true)).await;

    // Unverified connections first, so that pooled ones exist when the verified routes ask.
    assert_eq!(get(&p, "plain.test", "/").await, (200, None, "client-cert=no sni=-".into()));
    assert_eq!(
        get(&p, "unverified.test", "/").await,
        (200, None, "client-cert=no sni=-".into())
    );
    assert_eq!(get(&p, "wrong-ca.test", "/").await.0, 502);
    assert_eq!(get(&p, "wrong-name.test", "/").await.0, 502);
    assert_eq!(
        get(&p, "named.test", "/").await,
        (200, None, "client-cert=no sni=backend.internal".into())
    );
    // Without proxy-ssl-name, the Service's cluster name.
    assert_eq!(
        get(&p, "default-name.test", "/").await,
        (200, None, "client-cert=no sni=tlsweb.default.svc".into())
    );
    assert_eq!(
        get(&p, "mtls.test", "/").await,
        (200, None, "client-cert=yes sni=backend.internal".into())
    );
    // And again, over whatever is pooled now.
    assert_eq!(get(&p, "wrong-ca.test", "/").await.0, 502);
    assert_eq!(get(&p, "plain.test", "/").await.1, None);
    assert_eq!(get(&p, "mtls.test", "/").await.2, "client-cert=yes sni=backend.internal");
    assert_eq!(get(&p, "no-secret.test", "/").await.0, 404);
    assert_eq!(get(&p, "elsewhere.test", "/").await.0, 404);
}
}

/// A Service whose endpoints are a live echo pod and a port where nothing listens (a second
/// EndpointSlice), behind an Ingress with `annotations`.
fn flaky_service(pods: &Pods, name: &str, annotations: &str) -> String {
    let dead = common::free_port();
    two_endpoints(pods, "127.0.0.1", dead, name, annotations)
}

/// A Service whose endpoints are `pods` and `other_ip:other_port` (a second EndpointSlice),
/// behind an Ingress `name` for host `{name}.example.com` with `annotations`.
fn two_endpoints(
    pods: &Pods,
    other_ip: &str,
    other_port: u16,
    name: &str,
    annotations: &str,
) -> String {
    let (dead, ip) = (other_port, other_ip);
    let live = pods
        .manifests("default", "", 80)
        .replace(&format!("name: {}", pods.service), &format!("name: {name}"));
    let live = live.replace(
        &format!("kubernetes.io/service-name: {}", pods.service),
        &format!("kubernetes.io/service-name: {name}"),
    );
    format!(
        "{live}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-dead
  namespace: default
  labels: {{ kubernetes.io/service-name: {name} }}
addressType: IPv4
ports:
  - port: {dead}
endpoints:
  - addresses: [\"{ip}\"]
    conditions: {{ ready: true }}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: default
  annotations:
{annotations}
spec:
  ingressClassName: nginx
  rules:
    - host: {name}.example.com
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service: {{name: {name}, port: {{number: 80}}}}
"
    )
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_next_upstream_retries_as_configured() {
    let pods = Pods::start("retry-echo", 1).await;
    let files = [
        ("00-class.yaml".to_string(), fixtures()[0].1.clone()),
        // ingress-nginx's default: "error timeout", 3 tries.
        ("default.yaml".into(), flaky_service(&pods, "retried", "    x: y")),
        (
            "off.yaml".into(),
            flaky_service(&pods, "unretried", "    nginx.ingress.kubernetes.io/proxy-next-upstream: \"off\""),
        ),
        (
            "one.yaml".into(),
            flaky_service(&pods, "one-try", "    nginx.ingress.kubernetes.io/proxy-next-upstream-tries: \"1\""),
        ),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let p = Portico::start_with(&refs, |f| f.ingress_nginx_compat = Some(true)).await;
    // Round robin over two endpoints: one of two requests meets the dead one, which is ejected
    // only after its second failure.
    for host in ["unretried.example.com", "one-try.example.com"] {
        let statuses = [get(&p, host, "/").await.0, get(&p, host, "/").await.0];
        assert!(statuses.contains(&502), "{host}: {statuses:?}");
        assert!(statuses.contains(&200), "{host}: {statuses:?}");
    }
    for _ in 0..4 {
        assert_eq!(get(&p, "retried.example.com", "/").await.0, 200);
    }
}
}

/// A pod that answers every request with `status` after `delay`, keeping the connection, and
/// counts the requests it saw.
async fn status_pod(
    status: u16,
    delay: Duration,
) -> (Pods, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let pods = Pods::scripted("failing", move |mut s, _| {
        let seen = seen.clone();
        async move {
            let mut buf = Vec::new();
            loop {
                // One request: its head, then a Content-Length body.
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < end + length {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..end + length);
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                let body = format!("failing pod says {status}\n");
                let answer = format!(
                    "HTTP/1.1 {status} Nope\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (pods, hits)
}

fn annotations(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("    nginx.ingress.kubernetes.io/{k}: \"{v}\"\n"))
        .collect::<String>()
        .trim_end()
        .to_string()
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_retries_follow_proxy_next_upstream() {
    let pods = Pods::start("status-echo", 1).await;
    let mut files = vec![("00-class.yaml".to_string(), fixtures()[0].1.clone())];
    // Each Ingress has its own failing pod (passive health is per endpoint) beside the echo pod.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Duration);
    let cases: [Case; 6] = [
        ("retry-503", &[("proxy-next-upstream", "error timeout http_503")], Duration::ZERO),
        ("pass-503", &[("x", "y")], Duration::ZERO),
        ("post-503", &[("proxy-next-upstream", "http_503")], Duration::ZERO),
        ("post-any", &[("proxy-next-upstream", "http_503 non_idempotent")], Duration::ZERO),
        (
            "late-503",
            &[("proxy-next-upstream", "http_503"), ("proxy-next-upstream-timeout", "1")],
            Duration::from_millis(1500),
        ),
        ("no-502", &[("proxy-next-upstream", "http_502")], Duration::ZERO),
    ];
    let mut failing = Vec::new();
    for (name, pairs, delay) in cases {
        let (pod, hits) = status_pod(503, delay).await;
        let ip = pod.ips[0].to_string();
        files.push((
            format!("{name}.yaml"),
            two_endpoints(&pods, &ip, pod.port, name, &annotations(pairs)),
        ));
        failing.push((name, pod, hits));
    }
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let p = Portico::start_with(&refs, |f| f.ingress_nginx_compat = Some(true)).await;
    let hits = |name: &str| {
        failing.iter().find(|f| f.0 == name).unwrap().2.load(std::sync::atomic::Ordering::SeqCst)
    };
    // Round robin over the two endpoints: every other first attempt meets the failing pod.
    for _ in 0..4 {
        assert_eq!(get(&p, "retry-503.example.com", "/").await.0, 200);
    }
    assert!(hits("retry-503") >= 1);
    // Without http_503, and for a 503 where only http_502 is retried, the backend's answer is
    // the client's.
    for host in ["pass-503", "no-502"] {
        let host = format!("{host}.example.com");
        let answers = [get(&p, &host, "/").await, get(&p, &host, "/").await];
        let statuses = [answers[0].0, answers[1].0];
        assert!(statuses.contains(&503) && statuses.contains(&200), "{host}: {statuses:?}");
        assert!(answers.iter().any(|a| a.2 == "failing pod says 503\n"), "{host}");
    }
    // A POST reached the failing pod: not sent again without non_idempotent.
    let posts = [
        send(&p, "POST", "post-503.example.com", "/", b"form".to_vec()).await.0,
        send(&p, "POST", "post-503.example.com", "/", b"form".to_vec()).await.0,
    ];
    assert!(posts.contains(&503) && posts.contains(&200), "{posts:?}");
    for _ in 0..4 {
        let (status, _, body) = send(&p, "POST", "post-any.example.com", "/", b"form".to_vec()).await;
        assert_eq!(status, 200);
        let e: Echo = serde_json::from_str(&body).expect("echo");
        assert_eq!(e.body_bytes, 4, "the body went again");
    }
    assert!(hits("post-any") >= 1);
    // proxy-next-upstream-timeout 1 s: a 503 after 1.5 s is past it, so it is the answer.
    let late = [get(&p, "late-503.example.com", "/").await.0, get(&p, "late-503.example.com", "/").await.0];
    assert!(late.contains(&503) && late.contains(&200), "{late:?}");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_on_failure_moves_the_cookie_only_when_asked() {
    use portico::routing::affinity::{score, token};
    let pods = Pods::start("cof-echo", 1).await;
    let echo_addr = std::net::SocketAddr::new(pods.ips[0], pods.port);
    let mut files = vec![("00-class.yaml".to_string(), fixtures()[0].1.clone())];
    let mut failing = Vec::new();
    for (name, mode, change) in [
        ("keep", "persistent", "false"),
        ("change", "persistent", "true"),
        ("rekey", "balanced", "true"),
    ] {
        let (pod, hits) = status_pod(503, Duration::ZERO).await;
        let ip = pod.ips[0].to_string();
        let pairs = [
            ("proxy-next-upstream", "error timeout http_503"),
            ("affinity", "cookie"),
            ("affinity-mode", mode),
            ("session-cookie-name", "route"),
            ("session-cookie-change-on-failure", change),
        ];
        files.push((
            format!("{name}.yaml"),
            two_endpoints(&pods, &ip, pod.port, name, &annotations(&pairs)),
        ));
        failing.push((std::net::SocketAddr::new(pod.ips[0], pod.port), pod, hits));
    }
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let p = Portico::start_with(&refs, |f| f.ingress_nginx_compat = Some(true)).await;
    let hits = |i: usize| failing[i].2.load(std::sync::atomic::Ordering::SeqCst);
    // A cookie naming the failing pod. Without change-on-failure the retry goes to it again
    // (until passive health ejects it after its second failure); with it, straight elsewhere.
    for (i, host, expected_hits) in [(0, "keep.example.com", 2), (1, "change.example.com", 1)] {
        let cookie = format!("route={:016x}", token(failing[i].0));
        let (pod, set) = sticky_get(&p, host, Some(&cookie)).await;
        assert_eq!(pod, "cof-echo-0", "{host}");
        assert_eq!(hits(i), expected_hits, "{host}");
        let set = set.expect("the client moves to the pod that answered");
        assert!(set.starts_with(&format!("route={:016x};", token(echo_addr))), "{set}");
    }
    // Balanced: a key whose pod is the failing one is replaced by a key whose pod answered.
    let key = (1u64..)
        .find(|k| score(*k, failing[2].0) > score(*k, echo_addr))
        .unwrap();
    let (pod, set) = sticky_get(&p, "rekey.example.com", Some(&format!("route={key:016x}"))).await;
    assert_eq!(pod, "cof-echo-0");
    assert_eq!(hits(2), 1);
    let set = set.expect("a new key");
    let new = u64::from_str_radix(set.get(6..22).unwrap_or_default(), 16);
    let new = new.unwrap_or_else(|_| panic!("{set}"));
    assert!(score(new, echo_addr) > score(new, failing[2].0), "{set}");
}
}

/// A request with an `Origin`; the status, the `Access-Control-*` fields and the body.
async fn cors(
    p: &Portico,
    method: &str,
    host: &str,
    origin: Option<&str>,
) -> (u16, Vec<(String, String)>, String) {
    let mut r = common::client()
        .request(method.parse().expect("method"), p.url("/"))
        .header("host", host);
    if let Some(o) = origin {
        r = r.header("origin", o);
    }
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    let fields = r
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("access-control-") || *n == "content-length")
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    (status, fields, r.text().await.unwrap_or_default())
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_preflights_and_announces_allowed_origins() {
    let s = start(|_| {}).await;
    let p = &s.p;
    // Defaults: any origin, `*`, on every response (ingress-nginx sends them even without an
    // Origin); the preflight is answered here with 204 and never reaches the backend.
    let defaults = [
        ("access-control-allow-origin", "*"),
        ("access-control-allow-credentials", "true"),
        ("access-control-allow-methods", "GET, PUT, POST, DELETE, PATCH, OPTIONS"),
        (
            "access-control-allow-headers",
            "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,\
             Content-Type,Range,Authorization",
        ),
        ("access-control-max-age", "1728000"),
    ];
    for origin in [Some("https://anywhere.test"), None] {
        let (status, got, body) = cors(p, "GET", "cors.example.com", origin).await;
        assert_eq!(status, 200);
        assert!(body.contains("\"service\":\"api\""), "{body}");
        let mut want = fields(&defaults);
        want.push(("content-length".into(), body.len().to_string()));
        let mut got = got;
        got.sort();
        want.sort();
        assert_eq!(got, want, "{origin:?}");
    }
    let (status, got, body) = cors(p, "OPTIONS", "cors.example.com", Some("https://a.test")).await;
    assert_eq!((status, body.as_str()), (204, ""));
    assert_eq!(got, fields(&defaults), "no Content-Length in a 204");

    // A list: the allowed origin is echoed; others get nothing, and their preflight goes to
    // the backend.
    let listed = |origin: &str| {
        fields(&[
            ("access-control-allow-origin", origin),
            ("access-control-allow-methods", "GET, POST"),
            ("access-control-allow-headers", "X-Custom-Header, Content-Type"),
            ("access-control-expose-headers", "X-Total-Count"),
            ("access-control-max-age", "600"),
        ])
    };
    for origin in ["https://app.example.com", "https://APP.example.com", "https://eu.example.org"] {
        let (status, got, _) = cors(p, "OPTIONS", "cors-list.example.com", Some(origin)).await;
        assert_eq!(status, 204, "{origin}");
        assert_eq!(got, listed(origin), "{origin}");
        let (status, got, _) = cors(p, "POST", "cors-list.example.com", Some(origin)).await;
        assert_eq!(status, 200);
        let got: Vec<_> = got.into_iter().filter(|(n, _)| n != "content-length").collect();
        assert_eq!(got, listed(origin), "{origin}");
    }
    for origin in [
        Some("https://evilapp.example.com"),
        Some("https://app.example.com.evil.test"),
        Some("http://app.example.com"),
        Some("https://app.example.com:8443"),
        Some("https://a.b.example.org"),
        Some("https://example.org"),
        Some("null"),
        None,
    ] {
        let (status, got, body) = cors(p, "OPTIONS", "cors-list.example.com", origin).await;
        assert_eq!(status, 200, "{origin:?}: the backend answers");
        assert!(body.contains("\"method\":\"OPTIONS\""), "{body}");
        assert!(
            got.iter().all(|(n, _)| n == "content-length"),
            "{origin:?}: {got:?}"
        );
    }

    // The preflight comes before the allowlist (ingress-nginx's rewrite phase, then its access
    // phase); the request itself is refused.
    let origin = Some("https://app.example.com");
    assert_eq!(cors(p, "OPTIONS", "cors-private.example.com", origin).await.0, 204);
    assert_eq!(cors(p, "GET", "cors-private.example.com", origin).await.0, 403);
}
}

/// GET with an `Authorization` value; the status, the `WWW-Authenticate` and the body.
async fn authorized(
    p: &Portico,
    host: &str,
    authorization: Option<&str>,
) -> (u16, Option<String>, String) {
    let mut r = common::client().get(p.url("/")).header("host", host);
    if let Some(a) = authorization {
        r = r.header("authorization", a);
    }
    let r = r.send().await.expect("request");
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    (
        r.status().as_u16(),
        challenge,
        r.text().await.unwrap_or_default(),
    )
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_checks_real_htpasswd_hashes_and_fails_closed() {
    let s = start(|_| {}).await;
    let p = &s.p;
    let challenge = Some("Basic realm=\"Authentication Required - foo\"".to_string());
    let (status, got, _) = authorized(p, "basic.example.com", None).await;
    assert_eq!((status, got), (401, challenge.clone()));
    for (user, password) in [("alice", "alice-pass"), ("bob", "bob-pass"), ("carol", "carol-pass")] {
        let (status, _, body) = authorized(p, "basic.example.com", Some(&basic(user, password))).await;
        assert_eq!(status, 200, "{user}: {body}");
        let e: Echo = serde_json::from_str(&body).expect("echo");
        assert_eq!(e.service, "admin");
        // Checked here, so not sent on.
        assert!(!e.headers.contains_key("authorization"), "{:?}", e.headers);
    }
    for authorization in [
        basic("alice", "bob-pass"),
        basic("bob", "Bob-pass"),
        basic("carol", "carol-pass "),
        basic("dave", "dave-pass"),
        basic("eve", "alice-pass"),
        "Basic not-base64!".into(),
        "Bearer alice-pass".into(),
        basic("alice", "alice-pass").replace("Basic ", "Basic  x"),
    ] {
        let (status, got, _) = authorized(p, "basic.example.com", Some(&authorization)).await;
        assert_eq!((status, got), (401, challenge.clone()), "{authorization}");
    }
    // auth-map, and the default realm.
    for (user, password, want) in [
        ("alice", "alice-pass", 200),
        ("bob", "bob-pass", 200),
        ("carol", "carol-pass", 401),
    ] {
        let (status, got, _) =
            authorized(p, "basic-map.example.com", Some(&basic(user, password))).await;
        assert_eq!(status, want, "{user}");
        if want == 401 {
            assert_eq!(got.as_deref(), Some("Basic realm=\"\""));
        }
    }
    // Never opened: not served at all.
    for host in ["basic-missing.example.com", "digest.example.com", "no-auth-type.example.com"] {
        let (status, _, _) = authorized(p, host, Some(&basic("alice", "alice-pass"))).await;
        assert_eq!(status, 404, "{host}");
    }
}
}

/// The Service that answered a GET with these extra fields.
async fn served_by(p: &Portico, host: &str, fields: &[(&str, &str)]) -> String {
    let mut r = common::client().get(p.url("/")).header("host", host);
    for (n, v) in fields {
        r = r.header(*n, *v);
    }
    let body = r
        .send()
        .await
        .expect("request")
        .text()
        .await
        .unwrap_or_default();
    serde_json::from_str::<Echo>(&body)
        .map(|e| e.service)
        .unwrap_or_else(|_| format!("not an echo: {body}"))
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_by_header_cookie_and_exact_weight() {
    let s = start(|_| {}).await;
    let p = &s.p;
    let host = "canary.example.com";
    // Weight 20 of 100: exactly 20 of any 100 consecutive requests (a counter, not chance).
    let mut canary = 0;
    for _ in 0..200 {
        if served_by(p, host, &[]).await == "api" {
            canary += 1;
        }
    }
    assert_eq!(canary, 40);
    // The header first: always and never decide; another value falls through to the cookie.
    for (fields, want) in [
        (&[("x-canary", "always")][..], "api"),
        (&[("x-canary", "never")], "web"),
        (&[("x-canary", "never"), ("cookie", "canary=always")], "web"),
        (&[("x-canary", "maybe"), ("cookie", "canary=always")], "api"),
        (&[("cookie", "a=1; canary=always")], "api"),
        (&[("cookie", "a=1"), ("cookie", "canary=never")], "web"),
    ] {
        for _ in 0..5 {
            assert_eq!(served_by(p, host, fields).await, want, "{fields:?}");
        }
    }
    // An exact value: only it selects; `always` is not special then; no weight: the main.
    for (value, want) in [("eu-west", "api"), ("always", "web"), ("eu-west-2", "web")] {
        let got = served_by(p, "canary-value.example.com", &[("x-region", value)]).await;
        assert_eq!(got, want, "{value}");
    }
    for (user, want) in [("alice", "api"), ("bob", "api"), ("bobby", "web"), ("carol", "web")] {
        let got = served_by(p, "canary-pattern.example.com", &[("x-user", user)]).await;
        assert_eq!(got, want, "{user}");
    }
    // A canary never serves a path of its own.
    assert_eq!(get(p, "no-main.example.com", "/").await.0, 404);
    let metrics = p.metrics().await;
    for reason in ["CanaryWithoutMain", "Conflict"] {
        assert!(
            metrics.contains(&format!(
                "portico_rejected_objects{{kind=\"Ingress\",reason=\"{reason}\"}} 1"
            )),
            "{reason}: {metrics}"
        );
    }
}
}

/// What an auth service saw of one sub-request.
#[derive(Clone, Debug)]
struct AuthSeen {
    method: String,
    path: String,
    headers: std::collections::BTreeMap<String, String>,
    body_len: usize,
}

/// An external auth service on loopback: its answer depends on the path it is asked at
/// (`/ok`, `/ok-no-user`, `/deny401`, `/deny403`, `/fail`, `/hang`); it records what it saw.
async fn auth_service() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<AuthSeen>>>) {
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<AuthSeen>>> = Arc::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                continue;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            record.lock().unwrap().push(AuthSeen {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(n, v)| {
                                        (n.to_string(), v.to_str().unwrap_or("").to_string())
                                    })
                                    .collect(),
                                body_len: body.len(),
                            });
                            let mut r = hyper::Response::builder();
                            let status = match parts.uri.path() {
                                "/ok" => {
                                    r = r
                                        .header("x-auth-request-user", "alice")
                                        .header("set-cookie", "session=abc; Path=/")
                                        .header("x-not-listed", "1");
                                    200
                                }
                                "/ok-no-user" => 204,
                                "/deny401" => {
                                    r = r.header("www-authenticate", "Bearer realm=\"auth\"");
                                    401
                                }
                                "/deny403" => 403,
                                "/hang" => {
                                    tokio::time::sleep(Duration::from_secs(10)).await;
                                    200
                                }
                                "/redirect" => {
                                    r = r.header("location", "http://127.0.0.1:1/");
                                    302
                                }
                                _ => 500,
                            };
                            Ok::<_, std::convert::Infallible>(
                                r.status(status)
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (port, seen)
}

/// An ingress-nginx Ingress for `host` to the echo Service `web`, with annotations.
fn auth_ingress(name: &str, host: &str, annotations: &[(&str, &str)]) -> String {
    https_ingress(name, host, annotations)
        .replace(
            "    nginx.ingress.kubernetes.io/backend-protocol: HTTPS\n",
            "",
        )
        .replace(
            "{name: tlsweb, port: {number: 443}}",
            "{name: web, port: {number: 80}}",
        )
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_auth_admits_denies_redirects_and_fails_closed() {
    let (port, seen) = auth_service().await;
    let web = Pods::start("web", 1).await;
    let auth = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let down = format!("http://127.0.0.1:{}/ok", common::free_port());
    let ok = auth("/ok");
    let mut files = vec![
        ("00-class.yaml".to_string(), fixtures()[0].1.clone()),
        ("svc.yaml".into(), web.manifests("default", "", 80)),
        // ingress-nginx's ConfigMap with global auth: every Ingress without its own auth-url
        // or enable-global-auth "false".
        (
            "cm.yaml".into(),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ingress-nginx-controller, \
                 namespace: ingress-nginx}}\ndata: {{global-auth-url: \"{}\"}}\n",
                auth("/deny403")
            ),
        ),
    ];
    let hosts: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("ok", vec![("auth-url", ok.clone()), ("auth-response-headers", "X-Auth-Request-User".into())]),
        ("nouser", vec![("auth-url", auth("/ok-no-user")), ("auth-response-headers", "X-Auth-Request-User".into())]),
        ("denied", vec![("auth-url", auth("/deny401"))]),
        (
            "signin",
            vec![("auth-url", auth("/deny401")), ("auth-signin", "https://login.test/start".into())],
        ),
        ("forbidden", vec![("auth-url", auth("/deny403"))]),
        ("fail", vec![("auth-url", auth("/fail"))]),
        ("redirect", vec![("auth-url", auth("/redirect"))]),
        ("hang", vec![("auth-url", auth("/hang")), ("proxy-read-timeout", "1".into())]),
        ("down", vec![("auth-url", down)]),
        ("method", vec![("auth-url", ok.clone()), ("auth-method", "GET".into())]),
        ("global", vec![]),
        ("optout", vec![("enable-global-auth", "false".into())]),
    ];
    for (name, annotations) in &hosts {
        let a: Vec<(&str, &str)> = annotations.iter().map(|(k, v)| (*k, v.as_str())).collect();
        files.push((format!("{name}.yaml"), auth_ingress(name, &format!("{name}.auth.test"), &a)));
    }
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let p = Portico::start_with(&refs, |f| f.ingress_nginx_compat = Some(true)).await;
    let request = |host: &'static str, method: &'static str, fields: Vec<(&'static str, &'static str)>| {
        let p = &p;
        async move {
            let mut r = common::client()
                .request(method.parse().unwrap(), p.url("/app?x=1"))
                .header("host", host)
                .body("payload");
            for (n, v) in fields {
                r = r.header(n, v);
            }
            let r = r.send().await.expect("request");
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            (status, headers, r.text().await.unwrap_or_default())
        }
    };

    // Admitted: the listed field reaches the backend (the client's forgery replaced), the
    // auth service's cookie reaches the client, unlisted fields go nowhere.
    let (status, headers, body) = request(
        "ok.auth.test",
        "POST",
        vec![("x-auth-request-user", "mallory"), ("authorization", "Bearer t")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let e: Echo = serde_json::from_str(&body).expect("echo");
    assert_eq!(header(&e, "x-auth-request-user"), Some("alice"));
    assert_eq!(header(&e, "x-not-listed"), None);
    assert_eq!(e.method, "POST");
    assert_eq!(headers.get("set-cookie").map(|v| v.to_str().unwrap()), Some("session=abc; Path=/"));
    // The sub-request: the client's fields, no body, and nginx's X-Original-* fields.
    let sub = seen.lock().unwrap().last().cloned().expect("a sub-request");
    assert_eq!((sub.method.as_str(), sub.path.as_str(), sub.body_len), ("POST", "/ok", 0));
    let h = |n: &str| sub.headers.get(n).map(String::as_str);
    assert_eq!(h("x-original-url"), Some("http://ok.auth.test/app?x=1"));
    assert_eq!(h("x-original-method"), Some("POST"));
    assert_eq!(h("x-auth-request-redirect"), Some("/app?x=1"));
    assert_eq!(h("authorization"), Some("Bearer t"));
    assert_eq!(h("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(h("host"), Some(format!("127.0.0.1:{port}").as_str()));
    assert_eq!(h("content-length"), None);

    // The auth service did not send the field: the client's forgery is removed, not passed.
    let (status, _, body) =
        request("nouser.auth.test", "GET", vec![("x-auth-request-user", "mallory")]).await;
    assert_eq!(status, 200);
    let e: Echo = serde_json::from_str(&body).expect("echo");
    assert_eq!(header(&e, "x-auth-request-user"), None);

    let (status, headers, _) = request("denied.auth.test", "GET", vec![]).await;
    assert_eq!(status, 401);
    assert_eq!(
        headers.get("www-authenticate").map(|v| v.to_str().unwrap()),
        Some("Bearer realm=\"auth\"")
    );
    let (status, headers, _) = request("signin.auth.test", "GET", vec![]).await;
    assert_eq!(status, 302);
    assert_eq!(
        headers.get("location").map(|v| v.to_str().unwrap()),
        Some("https://login.test/start?rd=http://signin.auth.test%2Fapp%3Fx%3D1")
    );
    assert_eq!(request("forbidden.auth.test", "GET", vec![]).await.0, 403);
    // Any other answer, a redirect, a hang past the read timeout, or no service: 500.
    for host in ["fail.auth.test", "redirect.auth.test", "down.auth.test"] {
        assert_eq!(request(host, "GET", vec![]).await.0, 500, "{host}");
    }
    let started = std::time::Instant::now();
    assert_eq!(request("hang.auth.test", "GET", vec![]).await.0, 500);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // auth-method replaces the client's method in the sub-request only.
    let (status, _, body) = request("method.auth.test", "PUT", vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Echo>(&body).expect("echo").method, "PUT");
    assert_eq!(seen.lock().unwrap().last().map(|s| s.method.clone()), Some("GET".into()));
    // The ConfigMap's global auth, and the opt-out.
    assert_eq!(request("global.auth.test", "GET", vec![]).await.0, 403);
    assert_eq!(request("optout.auth.test", "GET", vec![]).await.0, 200);
    let metrics = p.metrics().await;
    for result in ["allowed", "denied", "error"] {
        assert!(
            metrics.contains(&format!("portico_auth_requests_total{{result=\"{result}\"}}")),
            "{result}: {metrics}"
        );
    }
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_connection_limits_per_client() {
    let s = start(|_| {}).await;
    let p = &s.p;
    // 2 r/s with a burst of 2 × 2: five at once pass, the sixth gets the ConfigMap's 429.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get_from(p, "127.0.0.1", "rps.limit.test", &[]).await);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    // Another client has its own budget; an allowlisted one is never limited.
    assert_eq!(get_from(p, "127.0.0.2", "rps.limit.test", &[]).await, 200);
    for _ in 0..10 {
        assert_eq!(get_from(p, "127.0.0.3", "rps.limit.test", &[]).await, 200);
    }
    // The bucket drains at the rate: after 600 ms, one more passes.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get_from(p, "127.0.0.1", "rps.limit.test", &[]).await, 200);
    // 2 r/m, burst 2: three, then refused (a request drains in 30 s).
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get_from(p, "127.0.0.4", "rpm.limit.test", &[]).await);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    // One request at a time per client: a second while the first is in flight gets 503.
    let slow = {
        let url = p.url("/delay/600");
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .local_address("127.0.0.5".parse::<std::net::IpAddr>().ok())
                .build()
                .expect("client");
            client.get(url).header("host", "conn.limit.test").send().await.map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get_from(p, "127.0.0.5", "conn.limit.test", &[]).await, 503);
    assert_eq!(get_from(p, "127.0.0.6", "conn.limit.test", &[]).await, 200);
    assert_eq!(slow.await.expect("task").expect("slow request"), 200);
    // Released when it ended.
    assert_eq!(get_from(p, "127.0.0.5", "conn.limit.test", &[]).await, 200);
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_backend_serves_when_the_service_has_no_endpoint() {
    let s = start(|_| {}).await;
    let p = &s.p;
    assert_eq!(echo(p, "fallback.example.com", "/").await.service, "assets");
    // A path whose Service has endpoints is served by it.
    assert_eq!(echo(p, "fallback.example.com", "/live").await.service, "web");
    assert_eq!(get(p, "nofallback.example.com", "/").await.0, 503);
}
}

/// The pod that answered, and the affinity cookie set, for a GET with `cookie`.
async fn sticky_get(p: &Portico, host: &str, cookie: Option<&str>) -> (String, Option<String>) {
    let mut r = common::client().get(p.url("/")).header("host", host);
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    let r = r.send().await.expect("request");
    let set = r
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let e: Echo = serde_json::from_str(&r.text().await.unwrap_or_default()).expect("echo");
    (e.pod, set)
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_keeps_clients_on_their_pod() {
    let pods = Pods::start("sticky", 3).await;
    let mut files = vec![
        ("00-class.yaml".to_string(), fixtures()[0].1.clone()),
        ("svc.yaml".to_string(), pods.manifests("default", "", 80)),
    ];
    for (name, mode) in [("persistent", "persistent"), ("balanced", "balanced")] {
        let ingress = auth_ingress(
            name,
            &format!("{name}.sticky.test"),
            &[
                ("affinity", "cookie"),
                ("affinity-mode", mode),
                ("session-cookie-name", "route"),
                ("session-cookie-max-age", "3600"),
                ("session-cookie-samesite", "Lax"),
            ],
        )
        .replace("name: web,", "name: sticky,");
        files.push((format!("{name}.yaml"), ingress));
    }
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let p = Portico::start_with(&refs, |f| f.ingress_nginx_compat = Some(true)).await;
    for host in ["persistent.sticky.test", "balanced.sticky.test"] {
        // The first answer sets the cookie; with it, every request reaches the same pod, and no
        // new cookie is set.
        let (first, set) = sticky_get(&p, host, None).await;
        let set = set.expect("a cookie is set");
        assert!(
            set.starts_with("route=") && set.contains("; Path=/") && set.contains("; Max-Age=3600")
                && set.contains("; SameSite=Lax") && set.ends_with("; HttpOnly"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap().to_string();
        for _ in 0..10 {
            let (pod, again) = sticky_get(&p, host, Some(&format!("a=1; {cookie}"))).await;
            assert_eq!(pod, first, "{host}");
            assert_eq!(again, None, "{host}");
        }
        // Without a cookie, clients spread over the pods.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..12 {
            seen.insert(sticky_get(&p, host, None).await.0);
        }
        assert!(seen.len() > 1, "{host}: {seen:?}");
    }
    // A persistent cookie naming no pod (a gone one, or a forged value) is re-balanced safely,
    // with a new cookie that then sticks.
    for bad in ["route=ffffffffffffffff", "route=not-a-key", "route="] {
        let (pod, set) = sticky_get(&p, "persistent.sticky.test", Some(bad)).await;
        let set = set.expect("re-balanced with a new cookie");
        let cookie = set.split(';').next().unwrap().to_string();
        assert_eq!(sticky_get(&p, "persistent.sticky.test", Some(&cookie)).await.0, pod);
    }
    // session-cookie-conditional-samesite-none: SameSite=None only for browsers that take it.
    let conditional = auth_ingress(
        "conditional",
        "conditional.sticky.test",
        &[
            ("affinity", "cookie"),
            ("session-cookie-samesite", "None"),
            ("session-cookie-conditional-samesite-none", "true"),
        ],
    )
    .replace("name: web,", "name: sticky,");
    p.write_and_wait("conditional.yaml", &conditional).await;
    for (agent, samesite) in [
        ("Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0.0.0 Safari/537.36", true),
        ("Mozilla/5.0 (Windows NT 6.1) Chrome/51.0.2704.103 Safari/537.36", false),
    ] {
        let r = common::client()
            .get(p.url("/"))
            .header("host", "conditional.sticky.test")
            .header("user-agent", agent)
            .send()
            .await
            .expect("request");
        let set = r.headers().get("set-cookie").expect("cookie").to_str().unwrap_or_default().to_string();
        assert_eq!(set.contains("; SameSite=None"), samesite, "{agent}: {set}");
    }
    // Any well-formed balanced key maps to some pod, always the same one.
    let (pod, _) = sticky_get(&p, "balanced.sticky.test", Some("route=0123456789abcdef")).await;
    for _ in 0..5 {
        let again = sticky_get(&p, "balanced.sticky.test", Some("route=0123456789abcdef")).await;
        assert_eq!(again, (pod.clone(), None));
    }
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_backend_service_is_the_catch_all() {
    let s = start(|f| f.default_backend_service = Some("default/assets".into())).await;
    let p = &s.p;
    // No rule takes the host: the catch-all Service answers instead of a 404.
    assert_eq!(echo(p, "unknown.example.com", "/anything").await.service, "assets");
    // Rules still win.
    assert_eq!(echo(p, "rewrite.bar.com", "/something").await.service, "http-svc");
    // An Ingress's spec.defaultBackend wins over the flag.
    let file = p.dir.path().join("18-catch-all.yaml");
    std::fs::write(
        &file,
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: catch-all, namespace: default}\n\
         spec:\n  ingressClassName: nginx\n  defaultBackend: {service: {name: web, port: {number: 80}}}\n",
    )
    .expect("write");
    p.eventually("unknown.example.com", "/", Duration::from_secs(10), |s, body| {
        s == 200 && body.contains("\"service\":\"web\"")
    })
    .await;
}
}

/// A Service `name` whose one endpoint is a port where nothing listens.
fn dead_service(name: &str) -> String {
    let port = common::free_port();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{ name: {name}, namespace: default }}
spec:
  ports:
    - port: 80
      targetPort: {port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-slice
  namespace: default
  labels: {{ kubernetes.io/service-name: {name} }}
addressType: IPv4
ports:
  - port: {port}
endpoints:
  - addresses: [\"127.0.0.1\"]
    conditions: {{ ready: true }}
"
    )
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_http_errors_ask_the_default_backend() {
    let app = Pods::start("app", 1).await;
    let pages = Pods::start("pages", 1).await;
    let catch_all = Pods::start("catchall", 1).await;
    let (failing, _) = status_pod(503, Duration::ZERO).await;
    let configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ingress-nginx-controller, \
                     namespace: ingress-nginx}\ndata:\n  custom-http-errors: \"502\"\n";
    let files = vec![
        ("00-class.yaml".to_string(), fixtures()[0].1.clone()),
        ("configmap.yaml".into(), configmap.to_string()),
        ("app.yaml".into(), app.manifests("default", "", 80)),
        ("pages.yaml".into(), pages.manifests("default", "", 80)),
        ("catchall.yaml".into(), catch_all.manifests("default", "", 80)),
        ("failing.yaml".into(), failing.manifests("default", "", 80)),
        ("dead.yaml".into(), dead_service("dead")),
        (
            "annotated.yaml".into(),
            auth_ingress(
                "annotated",
                "annotated.test",
                &[("custom-http-errors", "404,503"), ("default-backend", "pages")],
            )
            .replace("name: web,", "name: app,"),
        ),
        (
            "global.yaml".into(),
            auth_ingress("global", "global.test", &[]).replace("name: web,", "name: dead,"),
        ),
        (
            "override.yaml".into(),
            auth_ingress("override", "override.test", &[("custom-http-errors", "418")])
                .replace("name: web,", "name: dead,"),
        ),
        (
            "real-status.yaml".into(),
            auth_ingress(
                "real-status",
                "real-status.test",
                &[("custom-http-errors", "404"), ("default-backend", "failing")],
            )
            .replace("name: web,", "name: app,"),
        ),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let p = Portico::start_with(&refs, |f| {
        f.ingress_nginx_compat = Some(true);
        f.default_backend_service = Some("default/catchall".into());
    })
    .await;
    // The backend's 503 goes no further: the Ingress's default-backend answers a request that
    // says what happened (its status is the client's; this echo page says 200).
    let r = common::client()
        .get(p.url("/status/503?x=1"))
        .header("host", "annotated.test")
        .header("accept", "application/json")
        .header("x-request-id", "req-42")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let e: Echo = serde_json::from_str(&r.text().await.expect("body")).expect("echo");
    assert_eq!((e.service.as_str(), e.method.as_str(), e.path.as_str()), ("pages", "GET", "/"));
    for (name, value) in [
        ("x-code", "503"),
        ("x-format", "application/json"),
        ("x-original-uri", "/status/503?x=1"),
        ("x-namespace", "default"),
        ("x-ingress-name", "annotated"),
        ("x-service-name", "app"),
        ("x-service-port", "80"),
        ("x-request-id", "req-42"),
        ("host", "annotated.test"),
    ] {
        assert_eq!(header(&e, name), Some(value), "{name}: {:?}", e.headers);
    }
    assert_eq!(header(&e, "x-forwarded-for"), Some("127.0.0.1"));
    // Without a request ID, one is made up.
    let e: Echo = serde_json::from_str(&get(&p, "annotated.test", "/status/404").await.2).expect("echo");
    assert_eq!(header(&e, "x-code"), Some("404"));
    assert_eq!(header(&e, "x-request-id").map(str::len), Some(32));
    // Codes not listed, and the rest of the traffic, are the backend's.
    assert_eq!(get(&p, "annotated.test", "/status/500").await, (500, None, "status 500\n".into()));
    assert_eq!(echo(&p, "annotated.test", "/fine").await.service, "app");
    // The ConfigMap's list, for Portico's own 502 (nothing listens): --default-backend-service.
    let e: Echo = serde_json::from_str(&get(&p, "global.test", "/x").await.2).expect("echo");
    assert_eq!((e.service.as_str(), header(&e, "x-code")), ("catchall", Some("502")));
    assert_eq!(header(&e, "x-service-name"), Some("dead"));
    // The annotation's list replaces the ConfigMap's.
    assert_eq!(get(&p, "override.test", "/").await.0, 502);
    // A page's own status, fields and body reach the client unchanged.
    assert_eq!(
        get(&p, "real-status.test", "/status/404").await,
        (503, None, "failing pod says 503\n".into())
    );
    // HEAD gets the page's head only.
    let r = common::client()
        .head(p.url("/status/404"))
        .header("host", "annotated.test")
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("content-length"), "the page's head");
    assert_eq!(r.bytes().await.expect("body").len(), 0, "no body for HEAD");
    // Without any default backend, ingress-nginx's built-in one answers: 404.
    drop(p);
    let p = Portico::start_with(&refs, |f| f.ingress_nginx_compat = Some(true)).await;
    assert_eq!(get(&p, "global.test", "/").await, (404, None, "default backend - 404\n".into()));
}
}

/// One request on a new connection, after `prefix` (a PROXY header) in the same write; the raw
/// answer ("" when the connection closed without one).
async fn raw_request(p: &Portico, prefix: &str, host: &str, fields: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(p.http)
        .await
        .expect("connect");
    let req =
        format!("{prefix}GET / HTTP/1.1\r\nHost: {host}\r\n{fields}Connection: close\r\n\r\n");
    c.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_proxy_protocol_gives_the_allowlist_the_real_client() {
    let pods = Pods::start("web", 1).await;
    let configmap = |on: bool| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ingress-nginx-controller, \
             namespace: ingress-nginx}}\ndata:\n  use-proxy-protocol: \"{on}\"\n"
        )
    };
    let files = [
        ("00-class.yaml".to_string(), fixtures()[0].1.clone()),
        ("configmap.yaml".into(), configmap(true)),
        ("web.yaml".into(), pods.manifests("default", "", 80)),
        (
            "allow.yaml".into(),
            auth_ingress("allow", "allow.test", &[("whitelist-source-range", "203.0.113.0/24")]),
        ),
        ("open.yaml".into(), auth_ingress("open", "open.test", &[])),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let p = Portico::start_with(&refs, |f| f.ingress_nginx_compat = Some(true)).await;
    let from = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 40000 80\r\n");
    let answer = raw_request(&p, &from("203.0.113.7"), "allow.test", "").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"x-forwarded-for\":\"203.0.113.7\""), "{answer}");
    // The load balancer's client is someone else: a forged X-Forwarded-For changes nothing.
    let answer = raw_request(
        &p,
        &from("198.51.100.1"),
        "allow.test",
        "X-Forwarded-For: 203.0.113.7\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // A v2 header works as well.
    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "203.0.113.200:1".parse::<std::net::SocketAddr>().unwrap(),
            p.http,
        ),
    )
    .build()
    .expect("v2");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(p.http).await.expect("connect");
        let mut req = v2.clone();
        req.extend_from_slice(b"GET / HTTP/1.1\r\nHost: allow.test\r\nConnection: close\r\n\r\n");
        c.write_all(&req).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    // Without a header: closed unanswered.
    assert_eq!(raw_request(&p, "", "open.test", "").await, "");
    // The ConfigMap turns it off live: headers are no longer read (nor expected).
    p.write("configmap.yaml", &configmap(false));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !raw_request(&p, "", "open.test", "").await.starts_with("HTTP/1.1 200") {
        assert!(std::time::Instant::now() < deadline, "use-proxy-protocol still on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = raw_request(&p, "", "allow.test", "").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
}
}
