//! After N real requests, a scrape of /metrics shows the counters moved by exactly N.

mod common;

use common::{ingress, metric_value as sample, Pods, Portico, INGRESS_CLASS};

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_n() {
    let pods = Pods::start("metered", 2).await;
    let rules = ingress(
        "shop",
        "store",
        "2026-01-01T00:00:00Z",
        &[("m.example", "/", "Prefix", "metered", 80)],
    );
    let p = Portico::start(&[
        ("class.yaml", INGRESS_CLASS),
        ("rules.yaml", &rules),
        ("svc.yaml", &pods.manifests("shop", "", 80)),
    ])
    .await;
    let labels = "ingress=\"store\",namespace=\"shop\",service=\"metered\"";
    let before = p.metrics().await;
    let (gets, posts, misses, not_found) = (37, 5, 4, 3);
    let c = common::client();
    for _ in 0..gets {
        assert_eq!(p.get("m.example", "/").await.0, 200);
    }
    for _ in 0..posts {
        let r = c
            .post(p.url("/upload"))
            .header("host", "m.example")
            .body(vec![b'a'; 1000])
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
    }
    for _ in 0..misses {
        assert_eq!(p.get("m.example", "/status/503").await.0, 503);
    }
    for _ in 0..not_found {
        assert_eq!(p.get("nobody.example", "/").await.0, 404);
    }
    // A request is counted once its response is written, so the last one may be counted just
    // after the client read it; requests on one connection are counted in order.
    let last = "portico_requests_total{ingress=\"\",method=\"GET\",namespace=\"\",service=\"\",status_class=\"4xx\"}";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let after = loop {
        let after = p.metrics().await;
        if sample(&after, last) - sample(&before, last) >= not_found as f64
            || std::time::Instant::now() > deadline
        {
            break after;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    let req = |method: &str, class: &str| {
        format!("portico_requests_total{{ingress=\"store\",method=\"{method}\",namespace=\"shop\",service=\"metered\",status_class=\"{class}\"}}")
    };
    assert_eq!(delta(&req("GET", "2xx")), gets as f64, "{after}");
    assert_eq!(delta(&req("POST", "2xx")), posts as f64);
    assert_eq!(delta(&req("GET", "5xx")), misses as f64);
    assert_eq!(
        delta("portico_requests_total{ingress=\"\",method=\"GET\",namespace=\"\",service=\"\",status_class=\"4xx\"}"),
        not_found as f64
    );
    let routed = (gets + posts + misses) as f64;
    assert_eq!(
        delta(&format!(
            "portico_request_duration_seconds_count{{{labels}}}"
        )),
        routed
    );
    assert_eq!(
        delta(&format!(
            "portico_upstream_response_duration_seconds_count{{{labels}}}"
        )),
        routed
    );
    assert_eq!(
        delta(&format!(
            "portico_upstream_connect_duration_seconds_count{{{labels}}}"
        )),
        routed
    );
    assert_eq!(
        delta(&format!("portico_request_bytes_total{{{labels}}}")),
        (posts * 1000) as f64
    );
    assert!(delta(&format!("portico_response_bytes_total{{{labels}}}")) > 0.0);
    let conns = delta("portico_upstream_connections_total{reused=\"false\"}")
        + delta("portico_upstream_connections_total{reused=\"true\"}");
    assert_eq!(conns, routed);
    assert_eq!(sample(&after, "portico_inflight_requests"), 0.0);
    assert_eq!(
        sample(
            &after,
            "portico_pool_endpoints{namespace=\"shop\",port=\"80\",service=\"metered\"}"
        ),
        2.0
    );
    assert!(sample(&after, "portico_config_generation") >= 1.0);
    assert!(sample(&after, "portico_config_last_success_timestamp_seconds") > 1.7e9);
    // No path, no pod IP and no client value ever becomes a label.
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("/upload") && !line.contains("127."),
            "{line}"
        );
    }
}
}
