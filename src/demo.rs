//! `portico demo`: the built-in examples, served from a temporary directory, with an echo backend
//! for every pod the examples' EndpointSlices name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::model::Object;
use crate::translate::{parse_documents, Document};

/// The examples compiled into the binary (conf/examples).
pub const EXAMPLES: [(&str, &str); 5] = [
    (
        "00-ingressclass.yaml",
        include_str!("../conf/examples/00-ingressclass.yaml"),
    ),
    (
        "single-service.yaml",
        include_str!("../conf/examples/single-service.yaml"),
    ),
    ("fanout.yaml", include_str!("../conf/examples/fanout.yaml")),
    (
        "virtual-hosts.yaml",
        include_str!("../conf/examples/virtual-hosts.yaml"),
    ),
    (
        "gateway.yaml",
        include_str!("../conf/examples/gateway.yaml"),
    ),
];

/// The socket of the demo's Gateway listener port 80.
pub const GATEWAY_LISTEN: &str = "80=127.0.0.1:8081";

/// Writes the examples into `dir`.
pub fn write_examples(dir: &Path) -> std::io::Result<()> {
    for (name, text) in EXAMPLES {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

/// One echo backend to start: its address and who it is.
pub fn backends() -> Vec<(SocketAddr, crate::echo::Identity)> {
    let mut out = Vec::new();
    for (_, text) in EXAMPLES {
        for doc in parse_documents(text) {
            let Document::Object(Object::EndpointSlice(slice)) = doc else {
                continue;
            };
            for port in slice.ports.iter().filter_map(|p| p.port) {
                for ep in &slice.endpoints {
                    for ip in &ep.addresses {
                        out.push((
                            SocketAddr::new(*ip, port),
                            crate::echo::Identity {
                                service: slice.service_name.clone().unwrap_or_default(),
                                pod: ep.pod.clone().unwrap_or_default(),
                            },
                        ));
                    }
                }
            }
        }
    }
    out
}

/// A fresh directory for the demo's manifests.
pub fn demo_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("portico-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    write_examples(&dir)?;
    Ok(dir)
}

/// The text printed when the demo starts.
pub fn banner(
    http: SocketAddr,
    https: Option<SocketAddr>,
    admin: SocketAddr,
    gateway: Option<SocketAddr>,
    dir: &Path,
) -> String {
    let gateway = gateway
        .map(|g| {
            format!(
                "\n  # Gateway API: a Gateway and an HTTPRoute (80/20 by weight; x-version: v2 to \
                 service2)\n\
                 \x20 curl -s -H 'Host: gateway.example.com' http://{g}/\n\
                 \x20 curl -s -H 'Host: gateway.example.com' -H 'x-version: v2' http://{g}/\n\
                 \x20 curl -s http://{admin}/status/gateway-api\n"
            )
        })
        .unwrap_or_default();
    let tls = https
        .map(|a| {
            format!(
                "\n  # HTTPS, with the self-signed default certificate (HTTP/2 where curl offers it)\n\
                 \x20 curl -sk --resolve ww1.example.com:{port}:{ip} https://ww1.example.com:{port}/\n",
                port = a.port(),
                ip = a.ip()
            )
        })
        .unwrap_or_default();
    format!(
        "\nPortico demo: serving conf/examples from {dir} (edit those files: changes apply live)\n\
         \n  # single-service Ingress (defaultBackend): any unmatched request\n\
         \x20 curl -s http://{http}/anything\n\
         \n  # fanout: one host, three Services on three ports\n\
         \x20 curl -s -H 'Host: foo.bar.com' http://{http}/admin\n\
         \x20 curl -s -H 'Host: foo.bar.com' http://{http}/home\n\
         \x20 curl -s -H 'Host: foo.bar.com' http://{http}/sso\n\
         \n  # name-based virtual hosting\n\
         \x20 curl -s -H 'Host: ww1.example.com' http://{http}/\n\
         \x20 curl -s -H 'Host: ww2.example.com' http://{http}/\n\
         {tls}\
         {gateway}\
         \n  # operations\n\
         \x20 curl -s http://{admin}/readyz\n\
         \x20 curl -s http://{admin}/metrics | grep portico_requests_total\n\
         \nCtrl-C stops it.\n",
        dir = dir.display()
    )
}

/// Starts every echo backend on a thread of its own runtime; they live as long as the process.
pub fn start_backends() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut listeners = Vec::new();
    for (addr, id) in backends() {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        listeners.push((l, id));
    }
    std::thread::spawn(move || {
        runtime.block_on(async move {
            for (l, id) in listeners {
                if let Ok(l) = tokio::net::TcpListener::from_std(l) {
                    tokio::spawn(crate::echo::serve(l, id));
                }
            }
            std::future::pending::<()>().await
        })
    });
    Ok(())
}
