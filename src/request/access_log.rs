//! The access log: one line per finished request on stdout, plain (`key=value`) or JSON.
//!
//! The line is formatted into a per-thread buffer and written with one `write` to stdout, the
//! way nginx writes its unbuffered access log. It used to be a `tracing` event: a dispatch
//! through both subscriber layers and their filters, every field through the `Visit` machinery,
//! then stdout's line buffer; measured with `perf record` at 16 connections, that was 16 % of the
//! worker's CPU time, and with both proxies' default logs on Portico did 0.95× nginx's requests
//! per CPU-second (0.99× since). The format is byte for byte the one `tracing-subscriber` wrote
//! (checked against it in the tests below), so log pipelines parsing it see no change.

use std::cell::RefCell;
use std::fmt::{self, Display, Write as _};
use std::io::Write as _;
use std::time::SystemTime;

use super::policy::{AccessLog, LogEntry};

thread_local! {
    /// The line being written; kept per thread so a line costs no allocation.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

/// Writes the access log line of a finished request, unless the access log is off.
pub fn emit(format: AccessLog, e: &LogEntry<'_>) {
    if format == AccessLog::Off {
        return;
    }
    LINE.with(|line| {
        // Never re-entered (nothing here logs), but a log line is not worth a panic.
        let Ok(mut line) = line.try_borrow_mut() else {
            return;
        };
        line.clear();
        format_line(&mut line, format, SystemTime::now(), e);
        // One write for the whole line (stdout's line buffer passes a line ending in a newline
        // straight through); a full pipe or a closed stdout loses the line, never the request.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
        if line.capacity() > 16 * 1024 {
            // A huge path once must not stay with the thread.
            *line = String::with_capacity(512);
        }
    });
}

/// Formats one line, newline included, as of `now`.
fn format_line(out: &mut String, format: AccessLog, now: SystemTime, e: &LogEntry<'_>) {
    let ts = humantime::format_rfc3339_micros(now);
    let ms = e.took.as_secs_f64() * 1000.0;
    let client = OrEmpty(e.client);
    let upstream = OrEmpty(e.upstream);
    let route = OrEmpty(e.route);
    // Writing to a String cannot fail.
    let _ = match format {
        AccessLog::Off => Ok(()),
        // tracing-subscriber's full format without target: the level right-aligned in five
        // columns, Display fields as they are, `&str` and floats by Debug.
        AccessLog::Plain => writeln!(
            out,
            "{ts}  INFO client={client} method={} host={} path={} status={} bytes={} \
             duration_ms={ms:?} upstream={upstream} route={route} error={:?}",
            e.method, e.host, e.path, e.status, e.bytes, e.error,
        ),
        // tracing-subscriber's JSON with the event's fields flattened: strings escaped as
        // serde_json escapes them, numbers as serde_json writes them.
        AccessLog::Json => {
            out.push_str("{\"timestamp\":");
            json_str(out, ts);
            out.push_str(",\"level\":\"INFO\",\"client\":");
            json_str(out, client);
            out.push_str(",\"method\":");
            json_str(out, e.method);
            out.push_str(",\"host\":");
            json_str(out, e.host);
            out.push_str(",\"path\":");
            json_str(out, e.path);
            let _ = write!(
                out,
                ",\"status\":{},\"bytes\":{},\"duration_ms\":",
                e.status, e.bytes
            );
            json_number(out, ms);
            out.push_str(",\"upstream\":");
            json_str(out, upstream);
            out.push_str(",\"route\":");
            json_str(out, route);
            out.push_str(",\"error\":");
            json_str(out, e.error);
            out.push_str("}\n");
            Ok(())
        }
    };
}

/// Appends `v` as a JSON string.
fn json_str(out: &mut String, v: impl Display) {
    // Display straight into the line, then escaped by serde_json when it needs it (rarely:
    // quotes, backslashes and control characters, the only characters JSON escapes).
    let quote = out.len();
    out.push('"');
    let _ = write!(out, "{v}");
    let raw = &out[quote + 1..];
    if raw.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        let escaped = serde_json::to_string(raw).unwrap_or_default();
        out.truncate(quote);
        out.push_str(&escaped);
    } else {
        out.push('"');
    }
}

/// Appends a float as serde_json writes it: ryu's shortest form that reads back the same, `null`
/// for what JSON cannot hold.
fn json_number(out: &mut String, v: f64) {
    if v.is_finite() {
        out.push_str(ryu::Buffer::new().format_finite(v));
    } else {
        out.push_str("null");
    }
}

/// Displays the value, or nothing for `None`.
struct OrEmpty<T>(Option<T>);

impl<T: Display> Display for OrEmpty<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    use super::*;
    use crate::model::ObjectKey;

    /// Collects what a tracing layer writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The line the access log was before: a `tracing` event through the layer Portico
    /// configured for it (plain: the full format without target; JSON: flattened).
    fn reference(format: AccessLog, e: &LogEntry<'_>) -> String {
        let sink = Sink::default();
        let make = {
            let sink = sink.clone();
            move || sink.clone()
        };
        let layer = match format {
            AccessLog::Json => tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(make)
                .with_ansi(false)
                .with_target(false)
                .boxed(),
            _ => tracing_subscriber::fmt::layer()
                .with_writer(make)
                .with_ansi(false)
                .with_target(false)
                .boxed(),
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "portico::access",
                client = %OrEmpty(e.client),
                method = %e.method,
                host = %e.host,
                path = %e.path,
                status = e.status,
                bytes = e.bytes,
                duration_ms = e.took.as_secs_f64() * 1000.0,
                upstream = %OrEmpty(e.upstream),
                route = %OrEmpty(e.route),
                error = e.error,
            );
        });
        let bytes = sink.0.lock().map(|v| v.clone()).unwrap_or_default();
        String::from_utf8(bytes).expect("UTF-8")
    }

    /// `(timestamp, the rest)` of a line.
    fn split_timestamp(format: AccessLog, line: &str) -> (String, String) {
        match format {
            AccessLog::Json => {
                let start = line.find("\"timestamp\":\"").expect("timestamp") + 13;
                let end = start + line[start..].find('"').expect("end of timestamp");
                (
                    line[start..end].to_string(),
                    format!("{}{}", &line[..start], &line[end..]),
                )
            }
            _ => {
                let end = line.find(' ').expect("timestamp");
                (line[..end].to_string(), line[end..].to_string())
            }
        }
    }

    /// Both formats write what tracing-subscriber wrote; off writes nothing.
    #[test]
    fn lines_are_the_ones_tracing_wrote() {
        let route = ObjectKey::new("shop", "web");
        let odd_route = ObjectKey::new("", "cluster-wide");
        let cases = [
            LogEntry {
                client: Some("127.0.0.1".parse().unwrap()),
                method: "GET",
                host: "shop.example",
                path: "/cart/items",
                status: 200,
                bytes: 15,
                took: Duration::from_micros(4_669),
                upstream: Some("10.0.0.7:8080".parse().unwrap()),
                route: Some(&route),
                error: "",
            },
            // Nothing routed: empty fields, an error, a whole number of milliseconds.
            LogEntry {
                client: Some("::1".parse().unwrap()),
                method: "DELETE",
                host: "",
                path: "/",
                status: 404,
                bytes: 0,
                took: Duration::from_millis(1),
                upstream: None,
                route: None,
                error: "no route",
            },
            // What JSON must escape, and what neither format may change.
            LogEntry {
                client: None,
                method: "PATCH",
                host: "[::1]:8443",
                path: "/a\"b\\c/é/%20?",
                status: 502,
                bytes: usize::MAX,
                took: Duration::from_nanos(123),
                upstream: Some("[fe80::1]:443".parse().unwrap()),
                route: Some(&odd_route),
                error: "upstream \"closed\"\tearly\n",
            },
            LogEntry {
                client: Some("192.0.2.9".parse().unwrap()),
                method: "POST",
                host: "a.example",
                path: "/upload",
                status: 413,
                bytes: 181,
                took: Duration::from_secs(90_061),
                upstream: None,
                route: Some(&route),
                error: "\u{1}\u{1f}\u{7f}",
            },
        ];
        for e in &cases {
            let mut off = String::new();
            format_line(&mut off, AccessLog::Off, SystemTime::now(), e);
            assert!(off.is_empty(), "{off}");
        }
        for format in [AccessLog::Plain, AccessLog::Json] {
            for e in &cases {
                let mut ours = String::new();
                format_line(&mut ours, format, SystemTime::now(), e);
                let theirs = reference(format, e);
                let (our_ts, our_rest) = split_timestamp(format, &ours);
                let (their_ts, their_rest) = split_timestamp(format, &theirs);
                assert_eq!(our_rest, their_rest, "{format:?}");
                // The same shape: 2026-12-02T08:47:36.266805Z.
                let shape = |t: &str| t.replace(|c: char| c.is_ascii_digit(), "0");
                assert_eq!(shape(&our_ts), shape(&their_ts), "{format:?}");
                assert_eq!(shape(&our_ts), "0000-00-00T00:00:00.000000Z");
                if format == AccessLog::Json {
                    let v: serde_json::Value = serde_json::from_str(&ours).expect("JSON");
                    assert_eq!(v["path"], e.path);
                    assert_eq!(v["error"], e.error);
                }
            }
        }
    }
}
