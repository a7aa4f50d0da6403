//! The real `portico` binary as a process: its access log, graceful shutdown on SIGTERM,
//! graceful upgrade (listener hand-over) on SIGQUIT, and what an operator reads in its output:
//! plain text in files, colour only on a terminal, a start-up error said once.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, ingress, Pods, INGRESS_CLASS};

/// The process tests each start processes and tight request loops; run them one at a time so
/// that they measure Portico, not each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(args: &[String]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn portico");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let lines = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mut l) = lines.lock() {
                    l.push(line);
                }
            }
        });
        Proc { child, stdout }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns its exit status and how long that took.
    fn wait_exit(&mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < within,
                "process did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    _pods: Pods,
    http: SocketAddr,
    admin: SocketAddr,
    args: Vec<String>,
}

async fn setup(extra: &[&str]) -> Setup {
    let pods = Pods::start("proc", 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("class.yaml"), INGRESS_CLASS).expect("write");
    std::fs::write(
        dir.path().join("ing.yaml"),
        ingress(
            "default",
            "proc",
            "2026-01-01T00:00:00Z",
            &[("proc.example", "/", "Prefix", "proc", 80)],
        ),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("svc.yaml"),
        pods.manifests("default", "", 80),
    )
    .expect("write");
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut args: Vec<String> = vec![
        "--manifests".into(),
        dir.path().display().to_string(),
        "--http-listen".into(),
        http.to_string(),
        "--https-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--admin-listen".into(),
        admin.to_string(),
        "--threads".into(),
        "2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Setup {
        _dir: dir,
        _pods: pods,
        http,
        admin,
        args,
    }
}

/// One request on a fresh connection (so a refused connection is the only way to fail before
/// the server accepted the request).
async fn get(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let r = c
        .get(format!("http://{addr}{path}"))
        .header("host", "proc.example")
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let s = r.status().as_u16();
    r.bytes().await.map_err(|e| e.to_string())?;
    Ok(s)
}

async fn wait_ready(admin: SocketAddr) {
    let start = Instant::now();
    while get(admin, "/readyz").await != Ok(200) {
        assert!(start.elapsed() < Duration::from_secs(20), "not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The same line from both HTTP engines: Pingora's (`--http1-engine pingora`) fills it from its
/// own session, Portico's from its parsed head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_the_fields() {
    let _serial = SERIAL.lock().await;
    for engine in ["portico", "pingora"] {
        access_log_has_the_fields_on(engine).await;
    }
}

async fn access_log_has_the_fields_on(engine: &str) {
    let s = setup(&["--access-log", "json", "--http1-engine", engine]).await;
    let p = Proc::spawn(&s.args);
    wait_ready(s.admin).await;
    for path in ["/a?q=1", "/b"] {
        assert_eq!(get(s.http, path).await, Ok(200));
    }
    let start = Instant::now();
    let lines = loop {
        let lines = p.stdout.lock().map(|l| l.clone()).unwrap_or_default();
        if lines.len() >= 2 || start.elapsed() > Duration::from_secs(5) {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 2, "{engine}: {lines:?}");
    // A request is logged once its response is written, so the two lines may come in either
    // order (each request had its own connection).
    let mut logged: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON access log line"))
        .collect();
    logged.sort_by_key(|v| v["path"].as_str().unwrap_or("").to_string());
    for (v, path) in logged.iter().zip(["/a", "/b"]) {
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.starts_with("20")),
            "{v}"
        );
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["host"], "proc.example");
        assert_eq!(v["path"], path, "the query is not logged");
        assert_eq!(v["status"], 200);
        assert!(v["bytes"].as_u64().is_some_and(|b| b > 0), "{v}");
        assert!(v["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{v}");
        assert!(
            v["upstream"]
                .as_str()
                .is_some_and(|u| u.starts_with("127.")),
            "{v}"
        );
        assert_eq!(v["route"], "default/proc");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_loses_no_accepted_request() {
    let _serial = SERIAL.lock().await;
    let s = setup(&[
        "--access-log",
        "json",
        "--shutdown-grace-period",
        "1s",
        "--shutdown-drain-timeout",
        "10s",
    ])
    .await;
    let mut p = Proc::spawn(&s.args);
    wait_ready(s.admin).await;

    // A slow request in flight across the whole shutdown.
    let http = s.http;
    let slow = tokio::spawn(async move { get(http, "/delay/2500").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.signal("TERM");
    let signalled = Instant::now();

    // Readiness drops at once, while the proxy still serves.
    let mut not_ready_after = None;
    while signalled.elapsed() < Duration::from_millis(800) {
        if get(s.admin, "/readyz").await == Ok(200) {
            continue;
        }
        not_ready_after = Some(signalled.elapsed());
        break;
    }
    let not_ready_after = not_ready_after.expect("/readyz still 200 after SIGTERM");
    assert!(
        not_ready_after < Duration::from_millis(500),
        "{not_ready_after:?}"
    );

    // Sequential load until the listener closes. The first failure marks the close: a
    // connection still in the kernel's accept queue then is reset, never seen by Portico.
    let mut ok = 0;
    let mut last_error = None;
    while signalled.elapsed() < Duration::from_secs(4) {
        match get(s.http, "/").await {
            Ok(200) => ok += 1,
            Ok(other) => panic!("status {other} during the grace period"),
            Err(e) => {
                last_error = Some(e);
                break;
            }
        }
    }
    let closed_after = signalled.elapsed();
    assert!(last_error.is_some(), "the listener never closed");
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed before the grace period ended: {closed_after:?}"
    );
    assert!(
        get(s.http, "/").await.is_err(),
        "still accepting after the close"
    );
    assert_eq!(
        slow.await.expect("join"),
        Ok(200),
        "the in-flight request was dropped"
    );
    let (status, _) = p.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    // Exits once drained, well before the 10 s drain timeout.
    assert!(
        signalled.elapsed() < Duration::from_secs(6),
        "{:?}",
        signalled.elapsed()
    );

    // Every request Portico accepted was answered 200, and the client got every answer.
    let lines = p.stdout.lock().map(|l| l.clone()).unwrap_or_default();
    let accepted: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["path"] == "/")
        .collect();
    let not_ok: Vec<_> = accepted.iter().filter(|v| v["status"] != 200).collect();
    eprintln!(
        "across SIGTERM: {} accepted, {ok} answered 200 to the client, not ready after {not_ready_after:?}, closed after {closed_after:?} ({:?})",
        accepted.len(),
        last_error
    );
    assert!(not_ok.is_empty(), "{not_ok:?}");
    assert_eq!(accepted.len(), ok, "an accepted request was lost");
    assert!(ok > 10, "too few requests during the grace period: {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_hands_listeners_to_the_new_process() {
    let _serial = SERIAL.lock().await;
    let s = setup(&["--access-log", "off"]).await;
    let mut old = Proc::spawn(&s.args);
    wait_ready(s.admin).await;

    let http = s.http;
    let load = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, Vec::new());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            match get(http, "/").await {
                Ok(200) => ok += 1,
                other => failed.push(format!("{other:?}")),
            }
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut args = s.args.clone();
    args.push("-u".into());
    let new = Proc::spawn(&args);
    // The new process is ready for the hand-over once it listens on the upgrade socket.
    let sock = format!("/tmp/portico_upgrade_{}.sock", s.admin.port());
    let waiting = Instant::now();
    while !std::path::Path::new(&sock).exists() {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "no upgrade socket {sock}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    old.signal("QUIT");
    let (status, _) = old.wait_exit(Duration::from_secs(15));
    assert!(status.success() || status.code().is_some(), "{status:?}");
    let (ok, failed) = load.await.expect("join");
    eprintln!(
        "across the upgrade: {ok} ok, {} failed: {failed:?}",
        failed.len()
    );
    // No request fails with a status, and none is refused: the listening socket never closes.
    // The one loss Pingora allows: when the old process stops, it drops connections it has
    // accepted but whose request has not arrived yet (pingora-proxy's `handle_new_request`
    // selects on shutdown while waiting in `read_request`). A client sees that connection
    // closed before any response byte, so an idempotent request can be retried safely; under
    // a tight loop of new connections at most one or two fall in that window.
    let unexpected: Vec<_> = failed
        .iter()
        .filter(|f| !f.contains("IncompleteMessage") && !f.contains("ConnectionReset"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    assert!(failed.len() <= 2, "{failed:?}");
    assert!(ok > 20, "{ok}");
    // The new process serves on the same ports.
    wait_ready(s.admin).await;
    assert_eq!(get(s.http, "/").await, Ok(200));
    drop(new);
}

/// The diagnostics of a process whose output is not a terminal, as under a container runtime or
/// `portico > file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_redirected_to_files_have_no_escape_codes() {
    let _serial = SERIAL.lock().await;
    let s = setup(&[]).await;
    // A rejected Ingress, so that a warning is logged too.
    std::fs::write(
        s._dir.path().join("broken.yaml"),
        ingress(
            "default",
            "broken",
            "2026-01-02T00:00:00Z",
            &[("broken.example", "/", "Prefix", "missing", 80)],
        ),
    )
    .expect("write");
    let out = tempfile::tempdir().expect("tempdir");
    let (stdout, stderr) = (out.path().join("stdout"), out.path().join("stderr"));
    let file = |p: &std::path::Path| std::fs::File::create(p).expect("create");
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(&s.args)
        // The defaults an operator gets, on a terminal type that has colours.
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color")
        .stdout(file(&stdout))
        .stderr(file(&stderr))
        .spawn()
        .expect("spawn portico");
    wait_ready(s.admin).await;
    assert_eq!(get(s.http, "/").await, Ok(200));
    // The access log line is written after the response; give it a moment.
    let start = Instant::now();
    while std::fs::read_to_string(&stdout)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(start.elapsed() < Duration::from_secs(5), "no access log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();

    let stdout = std::fs::read_to_string(&stdout).expect("stdout");
    let stderr = std::fs::read_to_string(&stderr).expect("stderr");
    eprintln!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stdout.contains('\x1b'), "escape codes in the access log");
    assert!(!stderr.contains('\x1b'), "escape codes in the diagnostics");
    // The files hold what they should: an access log line, the start-up lines, the warning.
    assert!(stdout.contains("proc.example"), "{stdout}");
    assert!(stderr.contains(" INFO "), "{stderr}");
    assert!(
        stderr.contains("source: the Kubernetes YAML/JSON files in"),
        "{stderr}"
    );
    assert!(
        stderr.contains(" WARN ") && stderr.contains("Ingress default/broken ("),
        "{stderr}"
    );
    // Pingora's own start-up chatter stays at debug.
    for noise in ["Bootstrap starting", "Starting service", "Server starting"] {
        assert!(!stderr.contains(noise), "{noise:?} in {stderr}");
    }
}

/// Runs `portico ARGS` under a pseudo-terminal (util-linux `script`) and returns what the terminal
/// showed, or `None` when `script` is not installed.
fn on_a_terminal(args: &[String], no_color: Option<&str>) -> Option<String> {
    let mut line = shell_quote(env!("CARGO_BIN_EXE_portico"));
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null());
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Colour on a terminal, none with `NO_COLOR`. The process logs its start-up line, then stops at
/// the missing manifest directory, so it ends by itself.
#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let args: Vec<String> = [
        "--manifests",
        "/nonexistent/portico-manifests",
        "--http-listen",
        &format!("127.0.0.1:{}", free_port()),
        "--https-listen",
        "off",
        "--admin-listen",
        &format!("127.0.0.1:{}", free_port()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let Some(coloured) = on_a_terminal(&args, None) else {
        eprintln!("SKIPPED: util-linux `script` is not installed, so no pseudo-terminal");
        return;
    };
    assert!(coloured.contains("HTTP on"), "{coloured:?}");
    assert!(
        coloured.contains("\x1b["),
        "no colour on a terminal: {coloured:?}"
    );
    let plain = on_a_terminal(&args, Some("1")).expect("script ran before");
    assert!(plain.contains("HTTP on"), "{plain:?}");
    assert!(
        !plain.contains('\x1b'),
        "colour despite NO_COLOR: {plain:?}"
    );
}

/// A start-up error is one message that names its cause once, not the cause again under
/// "Caused by".
#[test]
fn a_start_up_error_says_its_cause_once() {
    let ports = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--http-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--https-listen".into(),
            "off".into(),
            "--admin-listen".into(),
            format!("127.0.0.1:{}", free_port()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    for (args, what) in [
        (
            ports(&["--manifests", "/nonexistent/portico-manifests"]),
            "manifest directory /nonexistent/portico-manifests: ",
        ),
        (
            ports(&["--config", "/nonexistent/portico.yaml"]),
            "cannot read config file /nonexistent/portico.yaml: ",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(&args)
            .env("RUST_LOG", "off")
            .output()
            .expect("run portico");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        let cause = "No such file or directory (os error 2)";
        assert_eq!(
            stderr.trim_end(),
            format!("Error: {what}{cause}"),
            "{args:?}"
        );
        assert_eq!(stderr.matches(cause).count(), 1, "{stderr}");
        assert!(!stderr.contains("Caused by"), "{stderr}");
    }
}

/// Without `--manifests` and with no Kubernetes configuration anywhere, the process waits for one
/// (right in a cluster), and says so at start-up with the way to run without a cluster.
#[test]
fn without_a_cluster_the_start_up_says_how_to_run_without_one() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let stderr = out.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args([
            "--http-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--https-listen",
            "off",
            "--admin-listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("RUST_LOG")
        .env("HOME", home.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("create"))
        .spawn()
        .expect("spawn portico");
    let start = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&stderr).unwrap_or_default();
        if text.contains("still no Kubernetes client") || start.elapsed() > Duration::from_secs(10)
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "it keeps waiting: {text}"
    );
    let _ = child.kill();
    let _ = child.wait();
    let kube_config = home.path().join(".kube/config");
    let hint = text
        .lines()
        .find(|l| l.contains("source:"))
        .unwrap_or_else(|| panic!("no source line in {text}"));
    assert!(hint.contains(" WARN "), "{hint}");
    assert!(
        hint.contains(&format!("no {}", kube_config.display())),
        "{hint}"
    );
    assert!(
        hint.contains("`portico --manifests DIR`") && hint.contains("`portico demo`"),
        "{hint}"
    );
    // The whole error once, then short reminders.
    assert_eq!(
        text.matches("no Kubernetes configuration").count(),
        1,
        "{text}"
    );
}
