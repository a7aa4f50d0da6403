//! ingress-nginx's annotations (`nginx.ingress.kubernetes.io/*`), parsed into typed values.
//!
//! Each value has a strict grammar and becomes data ([`NginxAnnotations`]); no string is ever
//! turned into configuration, which is how ingress-nginx's injection CVEs happened. What Portico
//! does not implement, or cannot parse, becomes an [`AnnotationProblem`]; one that could widen
//! access if ignored (snippets, allowlists, authentication, canaries) keeps the whole Ingress out.

use std::collections::BTreeMap;

use crate::model::{
    AnnotationProblem, BackendProtocol, Cidr, Cors, CorsOrigin, Hsts, NginxAnnotations,
    NginxGlobals, ObjectKey, ProxySsl, RetryOn, RouteLimits, Template, UrlPiece, UrlTemplate,
};

/// The prefix of ingress-nginx's annotations.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Annotations whose values ingress-nginx pasted into nginx.conf: never interpreted.
const SNIPPETS: &[&str] = &[
    "configuration-snippet",
    "server-snippet",
    "auth-snippet",
    "stream-snippet",
    "modsecurity-snippet",
];

/// Annotations of ingress-nginx's access control and traffic splitting that Portico does not
/// implement yet: ignoring them would open what they close (or send a canary's rules to all
/// clients), so the Ingress is not served.
const CLOSED_PREFIXES: &[&str] = &["auth-"];
const CLOSED: &[&str] = &[
    "enable-modsecurity",
    "enable-owasp-core-rules",
    "satisfy",
    "ssl-passthrough",
];

/// Known annotations that Portico accepts and does not need: what they configure is how Portico
/// works anyway, or is stated as a difference in the README.
const ACCEPTED: &[&str] = &[
    "proxy-request-buffering",
    "proxy-buffering",
    "proxy-buffer-size",
    "proxy-buffers-number",
    "client-body-buffer-size",
    "proxy-max-temp-file-size",
    "preserve-trailing-slash",
];

/// Parses the ingress-nginx annotations of one Ingress; `None` when it has none.
pub fn parse(annotations: &BTreeMap<String, String>) -> Option<NginxAnnotations> {
    let mut n = NginxAnnotations::default();
    let mut any = false;
    let mut permanent: Option<Template> = None;
    let mut permanent_code = 301;
    let mut temporal: Option<Template> = None;
    let mut temporal_code = 302;
    let mut ext = ExtAuthParts::default();
    let mut auth_type: Option<String> = None;
    let mut auth_secret: Option<ObjectKey> = None;
    let mut auth_map = false;
    let mut auth_realm = String::new();
    let mut auth_given: Vec<String> = Vec::new();
    let mut limits = crate::model::RateLimitSpec {
        rps: None,
        rpm: None,
        connections: None,
        burst_multiplier: 5,
        allowlist: Vec::new(),
    };
    let mut affinity = crate::model::AffinitySpec {
        persistent: false,
        name: "INGRESSCOOKIE".into(),
        path: None,
        domain: None,
        samesite: None,
        secure: None,
        max_age: None,
        expires: None,
        change_on_failure: false,
        conditional_samesite_none: false,
    };
    let mut affinity_on = false;
    let mut affinity_given: Vec<String> = Vec::new();
    let mut canary: Option<bool> = None;
    let mut canary_spec = crate::model::CanarySpec {
        weight_total: 100,
        ..Default::default()
    };
    let mut canary_given: Vec<String> = Vec::new();
    let mut enable_cors = false;
    let mut cors = Cors::default();
    let mut ssl_secret: Option<ObjectKey> = None;
    let mut ssl_verify: Option<bool> = None;
    let mut ssl_name: Option<String> = None;
    let mut ssl_server_name = false;
    for (full, value) in annotations {
        let Some(name) = full.strip_prefix(PREFIX) else {
            continue;
        };
        any = true;
        let mut refuse = |message: String, closes: bool| {
            n.problems.push(AnnotationProblem {
                annotation: full.clone(),
                message,
                closes,
            })
        };
        let v = value.trim();
        match name {
            _ if SNIPPETS.contains(&name) => refuse(
                "snippets are never interpreted (raw nginx configuration); the Ingress is not \
                 served until it is removed"
                    .into(),
                true,
            ),
            "ssl-redirect" => match parse_bool(v) {
                Ok(b) => n.ssl_redirect = Some(b),
                Err(e) => refuse(ignored(&e), false),
            },
            "force-ssl-redirect" => match parse_bool(v) {
                Ok(b) => n.force_ssl_redirect = Some(b),
                Err(e) => refuse(ignored(&e), false),
            },
            "use-regex" => match parse_bool(v) {
                Ok(b) => n.use_regex = b,
                Err(e) => refuse(ignored(&e), false),
            },
            "rewrite-target" => match rewrite_target(v) {
                Ok(t) => n.rewrite_target = Some(t),
                Err(e) => refuse(ignored(&e), false),
            },
            "app-root" => match path_value(v) {
                Ok(p) => n.app_root = Some(p),
                Err(e) => refuse(ignored(&e), false),
            },
            "permanent-redirect" => match redirect_url(v) {
                Ok(t) => permanent = Some(t),
                Err(e) => refuse(ignored(&e), false),
            },
            "permanent-redirect-code" => match redirect_code(v, 300..=308) {
                Ok(c) => permanent_code = c,
                Err(e) => refuse(format!("{e}; 301 is used"), false),
            },
            "temporal-redirect" => match redirect_url(v) {
                Ok(t) => temporal = Some(t),
                Err(e) => refuse(ignored(&e), false),
            },
            "temporal-redirect-code" => match redirect_code(v, 300..=307) {
                Ok(c) => temporal_code = c,
                Err(e) => refuse(format!("{e}; 302 is used"), false),
            },
            "from-to-www-redirect" => match parse_bool(v) {
                Ok(b) => n.from_to_www_redirect = b,
                Err(e) => refuse(ignored(&e), false),
            },
            "proxy-body-size" => match size(v) {
                Ok(b) => n.limits.max_body = Some(b),
                Err(e) => refuse(ignored(&e), false),
            },
            "proxy-connect-timeout" | "proxy-read-timeout" | "proxy-send-timeout" => {
                match seconds(v) {
                    Ok(t) => *timeout_slot(&mut n.limits, name) = Some(t),
                    Err(e) => refuse(ignored(&e), false),
                }
            }
            "backend-protocol" => match v.to_ascii_uppercase().as_str() {
                "HTTP" => n.backend_protocol = Some(BackendProtocol::Http),
                "HTTPS" => n.backend_protocol = Some(BackendProtocol::Https),
                "GRPC" => n.backend_protocol = Some(BackendProtocol::Grpc),
                "GRPCS" => n.backend_protocol = Some(BackendProtocol::Grpcs),
                "FCGI" | "AUTO_HTTP" => refuse(
                    format!(
                        "{v:?} is not supported (Portico speaks HTTP, HTTPS, GRPC and GRPCS to \
                         backends); the Ingress is not served, since its backends do not speak \
                         HTTP"
                    ),
                    true,
                ),
                _ => refuse(
                    ignored(&format!(
                        "{v:?} is not one of HTTP, HTTPS, GRPC, GRPCS, AUTO_HTTP, FCGI"
                    )),
                    false,
                ),
            },
            "upstream-vhost" => match host_value(v) {
                Ok(h) => n.upstream_vhost = Some(h),
                Err(e) => refuse(ignored(&e), false),
            },
            "x-forwarded-prefix" => match path_value(v) {
                Ok(p) => n.x_forwarded_prefix = Some(p),
                Err(e) => refuse(ignored(&e), false),
            },
            "server-alias" => {
                let mut hosts = Vec::new();
                for h in v.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                    match crate::routing::host::parse_host(h) {
                        Ok(_) => hosts.push(h.to_ascii_lowercase()),
                        Err(e) => refuse(format!("{h:?}: {e}; this alias is ignored"), false),
                    }
                }
                n.server_alias = hosts;
            }
            "whitelist-source-range" | "allowlist-source-range" | "denylist-source-range" => {
                match cidrs(v) {
                    Ok(list) => {
                        let slot = if name == "denylist-source-range" {
                            &mut n.deny
                        } else {
                            &mut n.allow
                        };
                        slot.get_or_insert_with(Vec::new).extend(list);
                    }
                    // An allowlist that cannot be read must not open the route.
                    Err(e) => refuse(
                        format!("{e}; the Ingress is not served until it is corrected"),
                        true,
                    ),
                }
            }
            "enable-global-auth" => match parse_bool(v) {
                Ok(b) => n.enable_global_auth = Some(b),
                Err(e) => refuse(ignored(&e), false),
            },
            "enable-access-log" => match parse_bool(v) {
                Ok(b) => n.enable_access_log = Some(b),
                Err(e) => refuse(ignored(&e), false),
            },
            "proxy-ssl-secret" => match object_ref(v) {
                Ok(k) => ssl_secret = Some(k),
                // Without it nothing is verified: refused rather than served unverified.
                Err(e) => refuse(
                    format!("{e}; the Ingress is not served until it is corrected"),
                    true,
                ),
            },
            "proxy-ssl-verify" => match v {
                "on" => ssl_verify = Some(true),
                "off" => ssl_verify = Some(false),
                _ => refuse(
                    format!(
                        "{v:?} is not \"on\" or \"off\"; the Ingress is not served until it \
                         is corrected"
                    ),
                    true,
                ),
            },
            "proxy-ssl-name" => match host_value(v) {
                Ok(h) if !h.contains(':') => ssl_name = Some(h.to_ascii_lowercase()),
                _ => refuse(
                    format!(
                        "{v:?} is not a host name; the Ingress is not served until it is \
                         corrected"
                    ),
                    true,
                ),
            },
            "proxy-ssl-server-name" => match v {
                "on" => ssl_server_name = true,
                "off" => ssl_server_name = false,
                _ => refuse(ignored(&format!("{v:?} is not \"on\" or \"off\"")), false),
            },
            "proxy-ssl-verify-depth" | "proxy-ssl-ciphers" | "proxy-ssl-protocols" => refuse(
                "not applied: Portico speaks TLS 1.2 and 1.3 to backends with rustls's \
                     cipher suites and verifies chains of any depth to the proxy-ssl-secret's \
                     ca.crt; the annotation is ignored"
                    .into(),
                false,
            ),
            "proxy-next-upstream" => match next_upstream(v) {
                Ok(retry) => n.next_upstream = Some(retry),
                Err(e) => refuse(ignored(&e), false),
            },
            "proxy-next-upstream-tries" => match tries(v) {
                Ok(t) => n.next_upstream_tries = Some(t),
                Err(e) => refuse(ignored(&e), false),
            },
            "proxy-next-upstream-timeout" => match seconds(v) {
                Ok(t) => n.next_upstream_timeout = Some(t),
                Err(e) => refuse(ignored(&e), false),
            },
            "custom-http-errors" => match status_codes(v) {
                Ok(codes) => n.custom_http_errors = Some(codes),
                Err(e) => refuse(ignored(&e), false),
            },
            "auth-url"
            | "auth-method"
            | "auth-response-headers"
            | "auth-signin"
            | "auth-signin-redirect-param" => {
                if let Err(e) = ext.set(name, v) {
                    refuse(
                        format!("{e}; the Ingress is not served until it is corrected"),
                        true,
                    )
                }
            }
            "auth-type" | "auth-secret" | "auth-secret-type" | "auth-realm" => {
                auth_given.push(full.clone());
                let closed =
                    |e: String| format!("{e}; the Ingress is not served until it is corrected");
                match name {
                    "auth-type" => auth_type = Some(v.to_string()),
                    "auth-secret" => match v.split_once('/') {
                        Some(_) => match object_ref(v) {
                            Ok(k) => auth_secret = Some(k),
                            Err(e) => refuse(closed(e), true),
                        },
                        None => match object_ref(&format!("ns/{v}")) {
                            Ok(k) => auth_secret = Some(ObjectKey::new("", k.name)),
                            Err(_) => refuse(closed(format!("{v:?} is not a Secret name")), true),
                        },
                    },
                    "auth-secret-type" => match v {
                        "auth-file" => auth_map = false,
                        "auth-map" => auth_map = true,
                        _ => refuse(closed(format!("{v:?} is not auth-file or auth-map")), true),
                    },
                    _ => {
                        if v.bytes()
                            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
                        {
                            auth_realm = v.to_string();
                        } else {
                            refuse(
                                ignored(&format!("{v:?} has characters a realm cannot carry")),
                                false,
                            );
                        }
                    }
                }
            }
            "limit-rps" | "limit-rpm" | "limit-connections" | "limit-burst-multiplier" => {
                match v.parse::<u64>() {
                    Ok(0) => {}
                    Ok(n) => match name {
                        "limit-rps" => limits.rps = Some(n),
                        "limit-rpm" => limits.rpm = Some(n),
                        "limit-connections" => {
                            limits.connections = Some(n.min(u64::from(u32::MAX)) as u32)
                        }
                        _ => limits.burst_multiplier = n,
                    },
                    // A limit that cannot be read is not left off: the Ingress waits.
                    Err(_) => refuse(
                        format!(
                            "{v:?} is not a whole number; the Ingress is not served until it is \
                             corrected"
                        ),
                        true,
                    ),
                }
            }
            "limit-allowlist" | "limit-whitelist" => match cidrs(v) {
                Ok(list) => limits.allowlist = list,
                // Not access control: an unreadable list exempts nobody.
                Err(e) => refuse(format!("{e}; nobody is exempt from the limits"), false),
            },
            "affinity" => match v {
                "cookie" => affinity_on = true,
                _ => refuse(ignored(&format!("{v:?} is not \"cookie\"")), false),
            },
            "affinity-mode"
            | "affinity-canary-behavior"
            | "session-cookie-name"
            | "session-cookie-path"
            | "session-cookie-domain"
            | "session-cookie-samesite"
            | "session-cookie-secure"
            | "session-cookie-max-age"
            | "session-cookie-expires"
            | "session-cookie-change-on-failure"
            | "session-cookie-conditional-samesite-none" => {
                affinity_given.push(full.clone());
                let token = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                };
                let ok = match name {
                    "affinity-mode" => match v {
                        "balanced" | "persistent" => {
                            affinity.persistent = v == "persistent";
                            true
                        }
                        _ => false,
                    },
                    "affinity-canary-behavior" => v == "sticky" || v == "legacy",
                    "session-cookie-name" => {
                        token(v) && {
                            affinity.name = v.to_string();
                            true
                        }
                    }
                    "session-cookie-path" => match path_value(v) {
                        Ok(p) => {
                            affinity.path = Some(p);
                            true
                        }
                        Err(_) => false,
                    },
                    "session-cookie-domain" => match host_value(v.trim_start_matches('.')) {
                        Ok(h) if !h.contains(':') => {
                            affinity.domain = Some(v.to_string());
                            true
                        }
                        _ => false,
                    },
                    "session-cookie-samesite" => match v {
                        "None" | "Lax" | "Strict" => {
                            affinity.samesite = Some(v.to_string());
                            true
                        }
                        _ => false,
                    },
                    "session-cookie-secure" => {
                        parse_bool(v).map(|b| affinity.secure = Some(b)).is_ok()
                    }
                    "session-cookie-max-age" | "session-cookie-expires" => match v.parse::<u64>() {
                        Ok(n) if name == "session-cookie-max-age" => {
                            affinity.max_age = Some(n);
                            true
                        }
                        Ok(n) => {
                            affinity.expires = Some(n);
                            true
                        }
                        Err(_) => false,
                    },
                    "session-cookie-change-on-failure" => parse_bool(v)
                        .map(|b| affinity.change_on_failure = b)
                        .is_ok(),
                    "session-cookie-conditional-samesite-none" => parse_bool(v)
                        .map(|b| affinity.conditional_samesite_none = b)
                        .is_ok(),
                    _ => parse_bool(v).is_ok(),
                };
                if !ok {
                    refuse(ignored(&format!("{v:?} is not a valid value")), false);
                }
            }
            "default-backend" => match object_ref(&format!("ns/{v}")) {
                Ok(k) if !k.name.contains('.') => n.default_backend = Some(k.name),
                _ => refuse(ignored(&format!("{v:?} is not a Service name")), false),
            },
            "canary" => match parse_bool(v) {
                Ok(b) => canary = Some(b),
                // Unclear whether this Ingress is a canary: its rules could take all traffic.
                Err(e) => refuse(
                    format!("{e}; the Ingress is not served until it is corrected"),
                    true,
                ),
            },
            "canary-by-header"
            | "canary-by-header-value"
            | "canary-by-header-pattern"
            | "canary-by-cookie"
            | "canary-weight"
            | "canary-weight-total" => {
                canary_given.push(full.clone());
                let token = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                };
                let closed =
                    |e: String| format!("{e}; the Ingress is not served until it is corrected");
                match name {
                    "canary-by-header" if token(v) => {
                        canary_spec.header = Some(v.to_ascii_lowercase())
                    }
                    "canary-by-cookie" if token(v) => canary_spec.cookie = Some(v.to_string()),
                    "canary-by-header-value" if v.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
                        canary_spec.header_value = Some(v.to_string())
                    }
                    "canary-by-header-pattern" => match regex::Regex::new(v) {
                        Ok(_) => canary_spec.header_pattern = Some(v.to_string()),
                        Err(e) => refuse(closed(format!("{v:?} is not a regex (RE2): {e}")), true),
                    },
                    "canary-weight" | "canary-weight-total" => match v.parse::<u64>() {
                        Ok(n) if name == "canary-weight" => canary_spec.weight = n,
                        Ok(n) => canary_spec.weight_total = n,
                        Err(_) => refuse(closed(format!("{v:?} is not a whole number")), true),
                    },
                    _ => refuse(
                        closed(format!("{v:?} is not a header or cookie name")),
                        true,
                    ),
                }
            }
            "enable-cors" => match parse_bool(v) {
                Ok(b) => enable_cors = b,
                Err(e) => refuse(ignored(&e), false),
            },
            "cors-allow-origin" => match cors_origins(v) {
                Ok(o) => cors.origins = o,
                Err(e) => refuse(format!("{e}; \"*\" is used"), false),
            },
            "cors-allow-methods" => match cors_list(v, false, |b| b.is_ascii_alphabetic()) {
                Ok(l) => cors.methods = l,
                Err(e) => refuse(format!("{e}; the default is used"), false),
            },
            "cors-allow-headers" | "cors-expose-headers" => {
                let expose = name == "cors-expose-headers";
                match cors_list(v, expose, |b| {
                    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
                }) {
                    Ok(l) if expose => cors.expose = l,
                    Ok(l) => cors.headers = l,
                    Err(e) => refuse(format!("{e}; the default is used"), false),
                }
            }
            "cors-allow-credentials" => match parse_bool(v) {
                Ok(b) => cors.credentials = b,
                Err(e) => refuse(format!("{e}; true is used"), false),
            },
            "cors-max-age" => match v.parse::<u64>() {
                Ok(n) => cors.max_age = n,
                Err(_) => refuse(
                    format!("{v:?} is not a number of seconds; 1728000 is used"),
                    false,
                ),
            },
            "custom-headers" => match object_ref(v) {
                Ok(k) => n.custom_headers = Some(k),
                Err(e) => refuse(ignored(&e), false),
            },
            "proxy-http-version" => match v {
                "1.1" => {}
                "1.0" => refuse(
                    "\"1.0\": Portico speaks HTTP/1.1 to backends (it still closes the \
                     connection when the backend asks); the annotation is ignored"
                        .into(),
                    false,
                ),
                _ => refuse(ignored(&format!("{v:?} is not \"1.0\" or \"1.1\"")), false),
            },
            _ if ACCEPTED.contains(&name) => {
                if let Err(e) = accepted_value(name, v) {
                    refuse(ignored(&e), false)
                }
            }
            _ if CLOSED.contains(&name) || CLOSED_PREFIXES.iter().any(|p| name.starts_with(p)) => {
                refuse(
                    "not supported yet, and ignoring it could open access it restricts; the \
                     Ingress is not served until it is removed"
                        .into(),
                    true,
                )
            }
            _ => refuse(
                "not supported; the Ingress is served without it".into(),
                false,
            ),
        }
    }
    if !any {
        return None;
    }
    n.cors = enable_cors.then_some(cors);
    if affinity_on {
        n.affinity = Some(affinity);
    } else {
        for annotation in affinity_given {
            n.problems.push(AnnotationProblem {
                annotation,
                message: "applies only with affinity: cookie; ignored".into(),
                closes: false,
            });
        }
    }
    if limits.rps.is_some() || limits.rpm.is_some() || limits.connections.is_some() {
        n.rate_limit = Some(limits);
    }
    match ext.finish() {
        Ok(spec) => n.external_auth = spec,
        Err(e) => n.problems.push(AnnotationProblem {
            annotation: format!("{PREFIX}auth-url"),
            message: format!("{e}; the Ingress is not served until it is corrected"),
            closes: true,
        }),
    }
    match canary {
        Some(true) => n.canary = Some(canary_spec),
        _ => {
            for annotation in canary_given {
                n.problems.push(AnnotationProblem {
                    annotation,
                    message: "applies only with canary: \"true\"; ignored".into(),
                    closes: false,
                });
            }
        }
    }
    if !auth_given.is_empty() {
        let problem = |annotation: &str, message: String| AnnotationProblem {
            annotation: format!("{PREFIX}{annotation}"),
            message,
            closes: true,
        };
        match (auth_type.as_deref(), auth_secret) {
            (Some("basic"), Some(secret)) => {
                n.basic_auth = Some(crate::model::BasicAuthSpec {
                    secret,
                    map: auth_map,
                    realm: auth_realm,
                })
            }
            (Some("basic"), None) => n.problems.push(problem(
                "auth-type",
                "basic needs auth-secret; the Ingress is not served until it has one".into(),
            )),
            (Some("digest"), _) => n.problems.push(problem(
                "auth-type",
                "digest authentication is not supported; the Ingress is not served rather than \
                 opened"
                    .into(),
            )),
            (Some(other), _) => n.problems.push(problem(
                "auth-type",
                format!("{other:?} is not basic or digest; the Ingress is not served"),
            )),
            // ingress-nginx serves such an Ingress without authentication; Portico does not
            // open what was meant to be closed.
            (None, _) => n.problems.push(problem(
                "auth-type",
                "is missing while other auth-* annotations are set; the Ingress is not served \
                 until auth-type is set"
                    .into(),
            )),
        }
    }
    match ssl_secret {
        Some(secret) => {
            n.proxy_ssl = Some(ProxySsl {
                secret,
                verify: ssl_verify.unwrap_or(false),
                name: ssl_name,
                server_name: ssl_server_name,
            })
        }
        // ingress-nginx ignores every proxy-ssl-* setting without a Secret; a request to verify
        // that cannot be honoured is refused instead of served unverified.
        None if ssl_verify == Some(true) => n.problems.push(AnnotationProblem {
            annotation: format!("{PREFIX}proxy-ssl-verify"),
            message: "\"on\" needs proxy-ssl-secret (a Secret with the ca.crt to verify with); \
                      the Ingress is not served until it has one"
                .into(),
            closes: true,
        }),
        None => {
            for (name, set) in [
                ("proxy-ssl-name", ssl_name.is_some()),
                ("proxy-ssl-server-name", ssl_server_name),
            ] {
                if set {
                    n.problems.push(AnnotationProblem {
                        annotation: format!("{PREFIX}{name}"),
                        message: "has no effect without proxy-ssl-secret; ignored".into(),
                        closes: false,
                    });
                }
            }
        }
    }
    // Both set: temporal wins, as in ingress-nginx.
    n.redirect = match (temporal, permanent) {
        (Some(t), _) => Some((t, temporal_code)),
        (None, Some(p)) => Some((p, permanent_code)),
        (None, None) => None,
    };
    Some(n)
}

/// A ConfigMap key Portico does not use, or a value it cannot parse: `(key, reason, message)`.
pub type KeyProblem = (String, &'static str, String);

/// Reads ingress-nginx's ConfigMap: the keys migrations depend on, with ingress-nginx's defaults.
/// Every key that is not used is reported, and every other key still applies.
pub fn globals(data: &BTreeMap<String, String>) -> (NginxGlobals, Vec<KeyProblem>) {
    let mut g = NginxGlobals::default();
    let mut problems = Vec::new();
    let mut hsts_on = true;
    let mut global_ext = ExtAuthParts::default();
    let mut global_ext_error: Option<String> = None;
    let mut use_forwarded = false;
    let mut proxy_protocol = false;
    let mut proxy_protocol_timeout = std::time::Duration::from_secs(5);
    let mut other_header = false;
    // ingress-nginx's default: every peer (IPv4) may tell the client's address.
    let mut real_ip_cidr: Vec<Cidr> = "0.0.0.0/0".parse().into_iter().collect();
    let mut hsts = g.hsts.clone().unwrap_or(Hsts {
        max_age: 31_536_000,
        include_subdomains: true,
        preload: false,
    });
    for (key, value) in data {
        let v = value.trim();
        let mut invalid = |e: String| {
            problems.push((
                key.clone(),
                "InvalidValue",
                format!("{e}; ingress-nginx's default applies"),
            ))
        };
        match key.as_str() {
            "proxy-body-size" => match size(v) {
                Ok(n) => g.limits.max_body = Some(n),
                Err(e) => invalid(e),
            },
            "proxy-connect-timeout" | "proxy-read-timeout" | "proxy-send-timeout" => {
                match seconds(v) {
                    Ok(t) => *timeout_slot(&mut g.limits, key) = Some(t),
                    Err(e) => invalid(e),
                }
            }
            "ssl-redirect" => parse_bool(v).map_or_else(invalid, |b| g.ssl_redirect = b),
            "force-ssl-redirect" => {
                parse_bool(v).map_or_else(invalid, |b| g.force_ssl_redirect = b)
            }
            "http-redirect-code" => match v.parse::<u16>() {
                Ok(c @ (301 | 302 | 307 | 308)) => g.http_redirect_code = c,
                _ => invalid(format!("{v:?} is not 301, 302, 307 or 308")),
            },
            "hsts" => parse_bool(v).map_or_else(invalid, |b| hsts_on = b),
            "hsts-max-age" => match v.parse::<u64>() {
                Ok(n) => hsts.max_age = n,
                Err(_) => invalid(format!("{v:?} is not a number of seconds")),
            },
            "hsts-include-subdomains" => {
                parse_bool(v).map_or_else(invalid, |b| hsts.include_subdomains = b)
            }
            "hsts-preload" => parse_bool(v).map_or_else(invalid, |b| hsts.preload = b),
            "allow-snippet-annotations" => {
                if parse_bool(v) == Ok(true) {
                    problems.push((
                        key.clone(),
                        "NotApplied",
                        "Portico never interprets snippets; Ingresses with snippet annotations \
                         are not served whatever this says"
                            .into(),
                    ));
                }
            }
            "whitelist-source-range" | "denylist-source-range" => match cidrs(v) {
                Ok(list) if key == "whitelist-source-range" => g.allow = Some(list),
                Ok(list) => g.deny = Some(list),
                Err(e) => {
                    // Closed, not open: an allowlist of nobody, a denylist of everybody.
                    let everybody = ["0.0.0.0/0", "::/0"].map(|c| c.parse().ok());
                    if key == "whitelist-source-range" {
                        g.allow = Some(Vec::new());
                    } else {
                        g.deny = Some(everybody.into_iter().flatten().collect());
                    }
                    problems.push((
                        key.clone(),
                        "InvalidValue",
                        format!(
                            "{e}; until it is corrected, Ingresses without their own list \
                                 answer 403"
                        ),
                    ));
                }
            },
            "use-proxy-protocol" => match parse_bool(v) {
                Ok(b) => proxy_protocol = b,
                Err(e) => invalid(e),
            },
            "proxy-protocol-header-timeout" => match go_duration(v) {
                Ok(t) if !t.is_zero() => proxy_protocol_timeout = t,
                Ok(_) => invalid(format!("{v:?} is not a positive time")),
                Err(e) => invalid(e),
            },
            "use-forwarded-headers" => match parse_bool(v) {
                Ok(b) => use_forwarded = b,
                Err(e) => invalid(e),
            },
            "proxy-real-ip-cidr" => match cidrs(v) {
                Ok(list) => real_ip_cidr = list,
                Err(e) => {
                    // Trust nobody rather than everybody.
                    real_ip_cidr = Vec::new();
                    problems.push((
                        key.clone(),
                        "InvalidValue",
                        format!("{e}; no peer's X-Forwarded-For is believed"),
                    ));
                }
            },
            "forwarded-for-header" if v.eq_ignore_ascii_case("x-forwarded-for") => {}
            "forwarded-for-header" => {
                other_header = true;
                problems.push((
                    key.clone(),
                    "NotApplied",
                    format!(
                        "{v:?}: only X-Forwarded-For is read; with use-forwarded-headers, \
                         Ingresses with allow or deny lists are not served"
                    ),
                ));
            }
            "global-auth-url"
            | "global-auth-method"
            | "global-auth-response-headers"
            | "global-auth-signin"
            | "global-auth-signin-redirect-param" => {
                if let Err(e) = global_ext.set(&key["global-".len()..], v) {
                    global_ext_error = Some(format!("{key}: {e}"));
                }
            }
            "global-auth-snippet"
            | "global-auth-cache-key"
            | "global-auth-cache-duration"
            | "global-auth-always-set-cookie"
            | "global-auth-request-redirect"
                if !v.is_empty() =>
            {
                global_ext_error = Some(format!("{key} is not supported"));
            }
            "global-allowed-response-headers" => {
                let mut names = Vec::new();
                for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    if custom_header_name(name) {
                        names.push(name.to_string());
                    } else {
                        problems.push((
                            key.clone(),
                            "InvalidValue",
                            format!("{name:?} is not a header name; it is not allowed"),
                        ));
                    }
                }
                g.allowed_response_headers = names;
            }
            "compute-full-forwarded-for" | "enable-real-ip" => problems.push((
                key.clone(),
                "NotApplied",
                "recognised but not applied: the X-Forwarded-* fields sent upstream follow \
                 --trusted-proxies"
                    .into(),
            )),
            "proxy-next-upstream" => match next_upstream(v) {
                Ok(retry) => g.next_upstream = Some(retry),
                Err(e) => invalid(e),
            },
            "proxy-next-upstream-tries" => match tries(v) {
                Ok(t) => g.next_upstream_tries = Some(t),
                Err(e) => invalid(e),
            },
            "proxy-next-upstream-timeout" => match seconds(v) {
                Ok(t) => g.next_upstream_timeout = Some(t),
                Err(e) => invalid(e),
            },
            "custom-http-errors" => match status_codes(v) {
                Ok(codes) => g.custom_http_errors = codes,
                Err(e) => invalid(e),
            },
            "limit-req-status-code" | "limit-conn-status-code" => match v.parse::<u16>() {
                Ok(c @ 400..=599) if key == "limit-req-status-code" => g.limit_req_status = c,
                Ok(c @ 400..=599) => g.limit_conn_status = c,
                _ => invalid(format!("{v:?} is not a 4xx or 5xx status code")),
            },
            _ => problems.push((
                key.clone(),
                "UnknownKey",
                "not a setting Portico reads; ignored".into(),
            )),
        }
    }
    g.hsts = hsts_on.then_some(hsts);
    g.proxy_protocol = proxy_protocol.then_some(proxy_protocol_timeout);
    // Global auth that cannot be applied as written closes every Ingress that would get it.
    match (global_ext_error, global_ext.finish()) {
        (None, Ok(spec)) => g.global_auth = spec,
        (error, result) => {
            let why = error.or(result.err()).unwrap_or_default();
            g.closed = Some(format!(
                "the ConfigMap's global auth cannot be applied ({why}), and ignoring it would \
                 open every Ingress; set enable-global-auth: \"false\" on the Ingresses that do \
                 not need it"
            ));
            problems.push((
                "global-auth-url".into(),
                "InvalidValue",
                format!("{why}: Ingresses without enable-global-auth \"false\" are not served"),
            ));
        }
    }
    if use_forwarded {
        if other_header {
            g.client_ip_unknown.get_or_insert_with(|| {
                "the ConfigMap's forwarded-for-header is not X-Forwarded-For".into()
            });
        }
        g.forwarded_trust = Some(real_ip_cidr);
    }
    (g, problems)
}

/// nginx's `proxy_next_upstream` list: the conditions that send a request to the next endpoint
/// (`off`: none, whatever else the list says).
fn next_upstream(v: &str) -> Result<RetryOn, String> {
    const KNOWN: &[&str] = &[
        "error",
        "timeout",
        "invalid_header",
        "http_500",
        "http_502",
        "http_503",
        "http_504",
        "http_403",
        "http_404",
        "http_429",
        "non_idempotent",
        "off",
    ];
    let tokens: Vec<&str> = v.split_ascii_whitespace().collect();
    if tokens.is_empty() {
        return Err("is empty".into());
    }
    if let Some(bad) = tokens.iter().find(|t| !KNOWN.contains(t)) {
        return Err(format!("{bad:?} is not one of {}", KNOWN.join(", ")));
    }
    if tokens.contains(&"off") {
        return Ok(RetryOn::NONE);
    }
    Ok(tokens.into_iter().fold(RetryOn::NONE, |set, t| {
        set.with(match t {
            "error" => RetryOn::ERROR,
            "timeout" => RetryOn::TIMEOUT,
            "invalid_header" => RetryOn::INVALID_HEADER,
            "non_idempotent" => RetryOn::NON_IDEMPOTENT,
            status => status[5..]
                .parse()
                .ok()
                .and_then(RetryOn::status)
                .unwrap_or(RetryOn::NONE),
        })
    }))
}

/// `cors-allow-origin`: `*`, or a comma-separated list of `scheme://host[:port]` where the host
/// may start with `*.` (ingress-nginx's grammar; a scheme is required here, see
/// [`CorsOrigin::matches`]). `None` for `*`.
fn cors_origins(v: &str) -> Result<Option<Vec<CorsOrigin>>, String> {
    let entries: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() || entries == ["*"] {
        return Ok(None);
    }
    let mut out = Vec::new();
    for e in entries {
        let bad = || format!("{e:?} is not an origin (scheme://host[:port], host maybe *.domain)");
        let lower = e.to_ascii_lowercase();
        let (scheme, rest) = lower.split_once("://").ok_or_else(bad)?;
        if scheme != "http" && scheme != "https" {
            return Err(bad());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
            None => (rest, None),
        };
        let (host, wildcard) = match host.strip_prefix('*') {
            Some(h) if h.starts_with('.') => (h, true),
            Some(_) => return Err(bad()),
            None => (host, false),
        };
        let label_chars = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
        if host.trim_matches('.').is_empty() || !host.bytes().all(label_chars) {
            return Err(bad());
        }
        out.push(CorsOrigin {
            scheme: scheme.to_string(),
            host: host.to_string(),
            wildcard,
            port,
        });
    }
    Ok(Some(out))
}

/// A `cors-allow-methods`/`-headers`/`-expose-headers` list: comma-separated tokens of `ok`
/// bytes (`*` too for exposed headers), as ingress-nginx validates them; sent as written.
fn cors_list(v: &str, star: bool, ok: impl Fn(u8) -> bool) -> Result<String, String> {
    let items: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    let valid = |i: &&str| (star && *i == "*") || i.bytes().all(&ok);
    if items.is_empty() || !items.iter().all(valid) {
        return Err(format!("{v:?} is not a comma-separated list of names"));
    }
    Ok(items.join(", "))
}

/// The `auth-*` settings of external auth as they are read, one key at a time.
#[derive(Default)]
struct ExtAuthParts {
    url: Option<UrlTemplate>,
    method: Option<String>,
    response_headers: Vec<String>,
    signin: Option<UrlTemplate>,
    signin_param: Option<String>,
    /// A setting given without `auth-url`.
    orphan: Option<&'static str>,
}

impl ExtAuthParts {
    /// One setting, by its name without the `global-` prefix.
    fn set(&mut self, name: &str, v: &str) -> Result<(), String> {
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        match name {
            "auth-url" if v.is_empty() => {}
            "auth-url" => self.url = Some(url_template(v)?),
            "auth-method" => {
                const METHODS: &[&str] = &[
                    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                ];
                if !METHODS.contains(&v) {
                    return Err(format!("{v:?} is not an HTTP method"));
                }
                self.method = Some(v.to_string());
                self.orphan.get_or_insert("auth-method");
            }
            "auth-response-headers" => {
                let names: Vec<&str> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .collect();
                if names.iter().any(|n| !token(n)) {
                    return Err(format!(
                        "{v:?} is not a comma-separated list of header names"
                    ));
                }
                self.response_headers = names.iter().map(|n| n.to_ascii_lowercase()).collect();
            }
            "auth-signin" if v.is_empty() => {}
            "auth-signin" => self.signin = Some(url_template(v)?),
            "auth-signin-redirect-param" => {
                if !token(v) {
                    return Err(format!("{v:?} is not a parameter name"));
                }
                self.signin_param = Some(v.to_string());
            }
            _ => return Err(format!("{name} is not an external auth setting")),
        }
        Ok(())
    }

    /// The spec, `None` without `auth-url`; settings that need it are an error without it (they
    /// say authentication was meant).
    fn finish(self) -> Result<Option<crate::model::ExternalAuthSpec>, String> {
        let Some(url) = self.url else {
            if self.signin.is_some() || !self.response_headers.is_empty() || self.orphan.is_some() {
                return Err(
                    "auth-url is missing while other external auth settings are set".into(),
                );
            }
            return Ok(None);
        };
        Ok(Some(crate::model::ExternalAuthSpec {
            url,
            method: self.method,
            response_headers: self.response_headers,
            signin: self.signin,
            signin_param: self.signin_param.unwrap_or_else(|| "rd".into()),
        }))
    }
}

/// An `http(s)://` URL with the request variables nginx users put in auth URLs. Anything else
/// with a `$` is refused: nothing is templated but these values.
fn url_template(v: &str) -> Result<UrlTemplate, String> {
    let bad = |why: &str| format!("{v:?}: {why}");
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~:/?#[]@!&'()*+,;=%".contains(&b);
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = v;
    while let Some(c) = rest.chars().next() {
        if c == '$' {
            let name_len = rest[1..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            let piece = match &rest[1..1 + name_len] {
                "host" | "http_host" | "best_http_host" => UrlPiece::Host,
                "scheme" | "pass_access_scheme" => UrlPiece::Scheme,
                "request_uri" => UrlPiece::RequestUri,
                "escaped_request_uri" => UrlPiece::EscapedRequestUri,
                other => return Err(bad(&format!("${other} is not a variable Portico fills in"))),
            };
            if !text.is_empty() {
                pieces.push(UrlPiece::Text(std::mem::take(&mut text)));
            }
            pieces.push(piece);
            rest = &rest[1 + name_len..];
        } else if c.is_ascii() && allowed(c as u8) {
            text.push(c);
            rest = &rest[1..];
        } else {
            return Err(bad("has a character a URL cannot carry"));
        }
    }
    if !text.is_empty() {
        pieces.push(UrlPiece::Text(text));
    }
    let t = UrlTemplate(pieces);
    // With sample values it must be an absolute http(s) URL without credentials.
    let sample = t.expand("example.com", "https", "/p?q=1");
    let (scheme, after) = sample
        .split_once("://")
        .ok_or_else(|| bad("is not an absolute URL"))?;
    let authority = after.split(['/', '?', '#']).next().unwrap_or("");
    if !(scheme == "http" || scheme == "https") || authority.is_empty() || authority.contains('@') {
        return Err(bad(
            "is not an http(s) URL with a host (and no credentials)",
        ));
    }
    Ok(t)
}

/// A comma-separated list of HTTP status codes (ingress-nginx's `custom-http-errors`).
fn status_codes(v: &str) -> Result<Vec<u16>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| match c.parse::<u16>() {
            Ok(n @ 100..=599) => Ok(n),
            _ => Err(format!("{c:?} is not an HTTP status code")),
        })
        .collect()
}

/// `proxy-next-upstream-tries`: a count; 0 is nginx's "unlimited", capped here.
fn tries(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(0) => Ok(crate::model::MAX_UPSTREAM_ATTEMPTS),
        Ok(n) => Ok(n.min(crate::model::MAX_UPSTREAM_ATTEMPTS)),
        Err(_) => Err(format!("{v:?} is not a number")),
    }
}

fn ignored(e: &str) -> String {
    format!("{e}; the annotation is ignored")
}

fn timeout_slot<'a>(
    limits: &'a mut RouteLimits,
    name: &str,
) -> &'a mut Option<std::time::Duration> {
    match name {
        "proxy-connect-timeout" => &mut limits.connect_timeout,
        "proxy-read-timeout" => &mut limits.read_timeout,
        _ => &mut limits.send_timeout,
    }
}

/// A comma-separated list of networks and addresses (`10.0.0.0/8, 192.168.1.7`).
pub fn cidrs(v: &str) -> Result<Vec<Cidr>, String> {
    let list = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<Cidr>())
        .collect::<Result<Vec<_>, _>>()?;
    if list.is_empty() {
        return Err(format!("{v:?} lists no network"));
    }
    Ok(list)
}

/// Go's `strconv.ParseBool`, which ingress-nginx uses.
/// `namespace/name` of an object (a Secret or ConfigMap), as ingress-nginx's `ParseNameNS` reads it,
/// with the names checked against Kubernetes' grammar (RFC 1123 labels and subdomains).
fn object_ref(v: &str) -> Result<ObjectKey, String> {
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    match v.split_once('/') {
        Some((ns, name)) if label(ns) && name.len() <= 253 && name.split('.').all(label) => {
            Ok(ObjectKey::new(ns, name))
        }
        _ => Err(format!("{v:?} is not namespace/name")),
    }
}

/// A header name a `custom-headers` ConfigMap may set: ingress-nginx's `^[a-zA-Z\d\-_]+$`.
pub fn custom_header_name(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A header value a `custom-headers` ConfigMap may set: ingress-nginx's value grammar (printable
/// ASCII and spaces; no control characters, so no header can be smuggled in).
pub fn custom_header_value(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{v:?} is not a boolean (\"true\" or \"false\")")),
    }
}

/// nginx's size syntax as ingress-nginx validates it: `^\d+[bkmg]?$`, case-insensitive.
pub fn size(v: &str) -> Result<u64, String> {
    let lower = v.to_ascii_lowercase();
    let (digits, factor) = match lower.as_bytes().last() {
        Some(b'k') => (&lower[..lower.len() - 1], 1u64 << 10),
        Some(b'm') => (&lower[..lower.len() - 1], 1 << 20),
        Some(b'g') => (&lower[..lower.len() - 1], 1 << 30),
        Some(b'b') => (&lower[..lower.len() - 1], 1),
        _ => (lower.as_str(), 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not a size like 8k, 1m or 0"));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("{v:?} is too large"))
}

/// Whole seconds, as ingress-nginx's timeouts are written.
/// A Go duration of one unit, as ingress-nginx's duration settings are written: `5s`, `500ms`,
/// `1m` (a bare number is seconds).
fn go_duration(v: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{v:?} is not a duration such as 5s or 500ms");
    let (digits, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000)
    } else {
        (v, 1000)
    };
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    Ok(std::time::Duration::from_millis(n * scale))
}

pub fn seconds(v: &str) -> Result<std::time::Duration, String> {
    if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not a whole number of seconds"));
    }
    let n: u64 = v.parse().map_err(|_| format!("{v:?} is not a number"))?;
    Ok(std::time::Duration::from_secs(n))
}

fn redirect_code(v: &str, range: std::ops::RangeInclusive<u16>) -> Result<u16, String> {
    match v.parse::<u16>() {
        Ok(c) if range.contains(&c) => Ok(c),
        _ => Err(format!(
            "{v:?} is not a redirect code from {} to {}",
            range.start(),
            range.end()
        )),
    }
}

/// The characters ingress-nginx admits in a rewrite target since v1.12.
fn rewrite_target(v: &str) -> Result<Template, String> {
    if v.is_empty()
        || !v.starts_with('/')
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/:$".contains(&b))
    {
        return Err(format!(
            "{v:?} must be a path of letters, digits and -._~/:$ (ingress-nginx's rule)"
        ));
    }
    Template::parse(v)
}

/// An absolute path of unreserved characters and `/`.
fn path_value(v: &str) -> Result<String, String> {
    if !v.starts_with('/')
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
    {
        return Err(format!(
            "{v:?} must be an absolute path of letters, digits and -._~/"
        ));
    }
    Ok(v.to_string())
}

/// An `http(s)://host[:port][/path]` URL, possibly with `$1`..`$9`.
fn redirect_url(v: &str) -> Result<Template, String> {
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"))
        .ok_or_else(|| format!("{v:?} must be an http:// or https:// URL"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    host_value(authority)?;
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~/:$%?=&+,;@!*'()".contains(&b))
    {
        return Err(format!("{v:?} has characters a URL may not carry"));
    }
    Template::parse(v)
}

/// A host name or IP, with an optional port.
fn host_value(v: &str) -> Result<String, String> {
    let (host, port) = match v.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (v, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if !host_ok || !port_ok {
        return Err(format!("{v:?} is not a host name with an optional port"));
    }
    Ok(v.to_ascii_lowercase())
}

fn accepted_value(name: &str, v: &str) -> Result<(), String> {
    match name {
        "proxy-request-buffering" | "proxy-buffering" => match v {
            "on" | "off" => Ok(()),
            _ => Err(format!("{v:?} is not \"on\" or \"off\"")),
        },
        "preserve-trailing-slash" => parse_bool(v).map(|_| ()),
        "proxy-buffers-number" => v
            .parse::<u32>()
            .map(|_| ())
            .map_err(|_| format!("{v:?} is not a number")),
        _ => size(v).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectKey, ProxySsl};

    fn parse_map(pairs: &[(&str, &str)]) -> NginxAnnotations {
        let map = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect();
        parse(&map).expect("has annotations")
    }

    #[test]
    fn configmap_keys_with_ingress_nginx_defaults() {
        let (g, problems) = globals(&BTreeMap::new());
        assert_eq!(g, NginxGlobals::default());
        assert!(problems.is_empty());
        let data: BTreeMap<String, String> = [
            ("proxy-body-size", "8m"),
            ("proxy-read-timeout", "120"),
            ("ssl-redirect", "false"),
            ("http-redirect-code", "301"),
            ("hsts-max-age", "600"),
            ("hsts-include-subdomains", "false"),
            ("proxy-connect-timeout", "5s"),
            ("use-gzip", "true"),
            ("use-forwarded-headers", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (g, problems) = globals(&data);
        assert_eq!(g.forwarded_trust, Some(vec!["0.0.0.0/0".parse().unwrap()]));
        assert_eq!(g.limits.max_body, Some(8 << 20));
        assert_eq!(
            g.limits.read_timeout,
            Some(std::time::Duration::from_secs(120))
        );
        assert_eq!(g.limits.connect_timeout, None, "5s is not unitless seconds");
        assert!(!g.ssl_redirect);
        assert_eq!(g.http_redirect_code, 301);
        assert_eq!(g.hsts.unwrap().to_string(), "max-age=600");
        let reasons: Vec<(&str, &str)> =
            problems.iter().map(|(k, r, _)| (k.as_str(), *r)).collect();
        assert_eq!(
            reasons,
            [
                ("proxy-connect-timeout", "InvalidValue"),
                ("use-gzip", "UnknownKey")
            ]
        );
        // Retries: what Portico retries on applies, the rest is reported.
        let data: BTreeMap<String, String> = [
            (
                "proxy-next-upstream",
                "error timeout http_502 non_idempotent",
            ),
            ("proxy-next-upstream-tries", "0"),
            ("global-allowed-response-headers", "X-Frame-Options, X Bad"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (g, problems) = globals(&data);
        assert_eq!(
            g.next_upstream,
            Some(
                RetryOn::ERROR
                    .with(RetryOn::TIMEOUT)
                    .with(RetryOn::status(502).unwrap())
                    .with(RetryOn::NON_IDEMPOTENT)
            )
        );
        assert_eq!(
            g.next_upstream_tries,
            Some(crate::model::MAX_UPSTREAM_ATTEMPTS)
        );
        assert_eq!(g.allowed_response_headers, ["X-Frame-Options"]);
        let reasons: Vec<(&str, &str)> =
            problems.iter().map(|(k, r, _)| (k.as_str(), *r)).collect();
        assert_eq!(
            reasons,
            [("global-allowed-response-headers", "InvalidValue")]
        );
        let cases = [
            ("off", RetryOn::NONE),
            ("error off", RetryOn::NONE),
            ("http_503", RetryOn::status(503).unwrap()),
            ("timeout", RetryOn::TIMEOUT),
            (
                "invalid_header http_404",
                RetryOn::INVALID_HEADER.with(RetryOn::status(404).unwrap()),
            ),
        ];
        for (v, retry) in cases {
            let data = BTreeMap::from([("proxy-next-upstream".to_string(), v.to_string())]);
            assert_eq!(globals(&data).0.next_upstream, Some(retry), "{v}");
        }
        let data = BTreeMap::from([("proxy-next-upstream-timeout".to_string(), "7".to_string())]);
        assert_eq!(
            globals(&data).0.next_upstream_timeout,
            Some(std::time::Duration::from_secs(7))
        );
        let data = BTreeMap::from([("proxy-next-upstream".to_string(), "error; x".to_string())]);
        assert_eq!(globals(&data).1[0].1, "InvalidValue");
    }

    #[test]
    fn none_without_the_prefix() {
        let map = BTreeMap::from([("portico.dev/hsts".to_string(), "x".to_string())]);
        assert!(parse(&map).is_none());
    }

    #[test]
    fn values_are_typed() {
        let n = parse_map(&[
            ("ssl-redirect", "false"),
            ("force-ssl-redirect", "True"),
            ("use-regex", "true"),
            ("rewrite-target", "/$2"),
            ("proxy-body-size", "8m"),
            ("proxy-read-timeout", "120"),
            ("backend-protocol", "grpc"),
            ("upstream-vhost", "internal.example:8080"),
            ("server-alias", "a.example, b.example"),
        ]);
        assert_eq!(n.ssl_redirect, Some(false));
        assert_eq!(n.force_ssl_redirect, Some(true));
        assert!(n.use_regex);
        assert_eq!(n.rewrite_target.as_ref().unwrap().max_group(), 2);
        assert_eq!(n.limits.max_body, Some(8 << 20));
        assert_eq!(
            n.limits.read_timeout,
            Some(std::time::Duration::from_secs(120))
        );
        assert_eq!(n.backend_protocol, Some(BackendProtocol::Grpc));
        assert_eq!(n.upstream_vhost.as_deref(), Some("internal.example:8080"));
        assert_eq!(n.server_alias, ["a.example", "b.example"]);
        assert!(n.problems.is_empty(), "{:?}", n.problems);
    }

    #[test]
    fn temporal_wins_and_codes_are_checked() {
        let n = parse_map(&[
            ("permanent-redirect", "https://a.example/x"),
            ("temporal-redirect", "https://b.example/$1"),
            ("temporal-redirect-code", "307"),
        ]);
        let (t, code) = n.redirect.unwrap();
        assert_eq!(code, 307);
        assert_eq!(t.max_group(), 1);
        let n = parse_map(&[
            ("permanent-redirect", "https://a.example"),
            ("permanent-redirect-code", "200"),
        ]);
        assert_eq!(n.redirect.unwrap().1, 301);
        assert_eq!(n.problems.len(), 1);
    }

    #[test]
    fn injections_and_bad_values_are_refused() {
        for (name, value) in [
            ("rewrite-target", "/x; return 200 pwned"),
            ("rewrite-target", "/$host"),
            ("rewrite-target", "/a?b=c"),
            ("permanent-redirect", "https://a.example/\"; more"),
            ("permanent-redirect", "javascript:alert(1)"),
            ("upstream-vhost", "a.example\r\nX: y"),
            ("app-root", "/app\nX: y"),
            ("proxy-body-size", "1x"),
            ("proxy-read-timeout", "60s"),
            ("ssl-redirect", "yes"),
        ] {
            let n = parse_map(&[(name, value)]);
            assert_eq!(n.problems.len(), 1, "{name}: {value:?} was accepted");
            assert!(!n.closed(), "{name} closes");
        }
    }

    #[test]
    fn access_widening_annotations_close_the_ingress() {
        for name in [
            "configuration-snippet",
            "server-snippet",
            "auth-url",
            "auth-type",
            "auth-tls-verify-client",
            "ssl-passthrough",
        ] {
            assert!(parse_map(&[(name, "x")]).closed(), "{name}");
        }
        let n = parse_map(&[("backend-protocol", "FCGI")]);
        assert!(n.closed());
        // Canaries are understood; whether one is a canary must be clear.
        let n = parse_map(&[("canary", "true"), ("canary-weight", "10")]);
        assert!(!n.closed());
        assert_eq!(
            n.canary.map(|c| (c.weight, c.weight_total)),
            Some((10, 100))
        );
        for pairs in [
            &[("canary", "yes")][..],
            &[("canary", "true"), ("canary-weight", "-1")],
            &[("canary", "true"), ("canary-by-header", "X Canary")],
            &[
                ("canary", "true"),
                ("canary-by-header-pattern", "(unclosed"),
            ],
        ] {
            assert!(parse_map(pairs).closed(), "{pairs:?}");
        }
        // Rules without canary: "true" do nothing, and are reported.
        let n = parse_map(&[("canary-weight", "50")]);
        assert!(!n.closed() && n.canary.is_none() && n.problems.len() == 1);
        let n = parse_map(&[("load-balance", "ewma"), ("proxy-buffering", "on")]);
        assert!(!n.closed());
        assert_eq!(n.problems.len(), 1, "{:?}", n.problems);
    }

    #[test]
    fn basic_auth_is_typed_and_anything_unclear_closes() {
        let n = parse_map(&[
            ("auth-type", "basic"),
            ("auth-secret", "htpasswd"),
            ("auth-realm", "Staff only"),
        ]);
        assert!(n.problems.is_empty(), "{:?}", n.problems);
        let a = n.basic_auth.expect("basic auth");
        assert_eq!(a.secret, ObjectKey::new("", "htpasswd"));
        assert_eq!((a.map, a.realm.as_str()), (false, "Staff only"));
        let n = parse_map(&[
            ("auth-type", "basic"),
            ("auth-secret", "apps/users"),
            ("auth-secret-type", "auth-map"),
        ]);
        assert!(n
            .basic_auth
            .is_some_and(|a| a.map && a.secret == ObjectKey::new("apps", "users")));
        for pairs in [
            &[("auth-type", "basic")][..],
            &[("auth-secret", "htpasswd")],
            &[("auth-type", "digest"), ("auth-secret", "htpasswd")],
            &[("auth-type", "basic"), ("auth-secret", "../etc/passwd")],
            &[
                ("auth-type", "basic"),
                ("auth-secret", "s"),
                ("auth-secret-type", "ldap"),
            ],
            &[
                ("auth-type", "basic"),
                ("auth-secret", "s"),
                ("auth-cache-key", "x"),
            ],
        ] {
            let n = parse_map(pairs);
            assert!(n.closed(), "{pairs:?}");
        }
        // A realm that cannot be carried is ignored, not a reason to open or close.
        let n = parse_map(&[
            ("auth-type", "basic"),
            ("auth-secret", "s"),
            ("auth-realm", "a\"b"),
        ]);
        assert!(!n.closed() && n.basic_auth.is_some());
    }

    #[test]
    fn external_auth_urls_take_only_known_variables() {
        let n = parse_map(&[
            ("auth-url", "https://$host/oauth2/auth"),
            (
                "auth-signin",
                "https://$host/oauth2/start?rd=$escaped_request_uri",
            ),
            (
                "auth-response-headers",
                "X-Auth-Request-User, X-Auth-Request-Email",
            ),
            ("auth-method", "GET"),
        ]);
        assert!(n.problems.is_empty(), "{:?}", n.problems);
        let a = n.external_auth.expect("external auth");
        assert_eq!(
            a.url.expand("app.test", "https", "/x"),
            "https://app.test/oauth2/auth"
        );
        assert_eq!(
            a.signin.unwrap().expand("app.test", "https", "/a b?c=d"),
            "https://app.test/oauth2/start?rd=%2Fa%20b%3Fc%3Dd"
        );
        assert_eq!(
            a.response_headers,
            ["x-auth-request-user", "x-auth-request-email"]
        );
        assert_eq!(a.signin_param, "rd");
        for pairs in [
            &[("auth-url", "http://a.test/$remote_user")][..],
            &[("auth-url", "http://a.test/ x")],
            &[("auth-url", "ftp://a.test/")],
            &[("auth-url", "http://user:pw@a.test/")],
            &[("auth-url", "/relative")],
            &[("auth-url", "http://a.test/\"; return 200")],
            &[("auth-url", "http://a.test/"), ("auth-method", "get me")],
            &[("auth-signin", "https://login.test/")],
            &[
                ("auth-url", "http://a.test/"),
                ("auth-response-headers", "X-A;X-B"),
            ],
        ] {
            assert!(parse_map(pairs).closed(), "{pairs:?}");
        }
    }

    #[test]
    fn cors_settings_with_ingress_nginx_defaults() {
        assert_eq!(
            parse_map(&[("enable-cors", "true")]).cors,
            Some(Cors::default())
        );
        // Settings without enable-cors do nothing, as in ingress-nginx.
        assert_eq!(
            parse_map(&[("cors-allow-origin", "https://a.test")]).cors,
            None
        );
        let n = parse_map(&[
            ("enable-cors", "true"),
            ("cors-allow-origin", "https://a.test:8443, http://*.b.test"),
            ("cors-max-age", "60"),
        ]);
        let c = n.cors.expect("cors");
        assert_eq!(c.max_age, 60);
        let origins = c.origins.expect("a list");
        assert!(origins[0].matches(b"https://A.test:8443"));
        assert!(!origins[0].matches(b"https://a.test"));
        assert!(origins[1].matches(b"http://x-1.b.test"));
        for bad in [
            "http://b.test",
            "http://x.y.b.test",
            "http://.b.test",
            "https://x.b.test",
        ] {
            assert!(!origins[1].matches(bad.as_bytes()), "{bad}");
        }
        for bad in [
            ("cors-allow-origin", "a.test"),
            ("cors-allow-origin", "https://a.test/path"),
            ("cors-allow-origin", "https://a*.test"),
            ("cors-allow-origin", "javascript://x"),
            ("cors-allow-methods", "GET; DROP"),
            ("cors-allow-headers", "X-A\r\nX-B: 1"),
            ("cors-max-age", "-1"),
        ] {
            let n = parse_map(&[("enable-cors", "true"), bad]);
            assert_eq!(n.problems.len(), 1, "{bad:?} was accepted");
            assert!(n.cors.is_some(), "the defaults apply");
        }
    }

    #[test]
    fn proxy_ssl_and_custom_headers_are_typed_and_fail_closed() {
        let n = parse_map(&[
            ("proxy-ssl-secret", "apps/backend-ca"),
            ("proxy-ssl-verify", "on"),
            ("proxy-ssl-name", "Backend.Internal"),
            ("proxy-ssl-server-name", "on"),
            ("custom-headers", "apps/headers"),
        ]);
        assert!(n.problems.is_empty(), "{:?}", n.problems);
        assert_eq!(
            n.proxy_ssl,
            Some(ProxySsl {
                secret: ObjectKey::new("apps", "backend-ca"),
                verify: true,
                name: Some("backend.internal".into()),
                server_name: true,
            })
        );
        assert_eq!(n.custom_headers, Some(ObjectKey::new("apps", "headers")));
        // Off by default, as in ingress-nginx.
        let n = parse_map(&[("proxy-ssl-secret", "apps/ca")]);
        assert!(!n.proxy_ssl.is_some_and(|s| s.verify || s.server_name));
        // Verifying cannot be honoured without a Secret, or with one that cannot be named: the
        // Ingress is not served rather than served unverified.
        for pairs in [
            &[("proxy-ssl-verify", "on")][..],
            &[("proxy-ssl-verify", "yes"), ("proxy-ssl-secret", "apps/ca")],
            &[("proxy-ssl-verify", "on"), ("proxy-ssl-secret", "ca")],
            &[
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "apps/ca/x"),
            ],
            &[("proxy-ssl-verify", "on"), ("proxy-ssl-secret", "Apps/ca")],
            &[
                ("proxy-ssl-secret", "apps/ca"),
                ("proxy-ssl-name", "a.example\r\nX: y"),
            ],
        ] {
            assert!(parse_map(pairs).closed(), "{pairs:?}");
        }
        // Settings Portico does not apply are reported; the Ingress serves.
        let n = parse_map(&[
            ("proxy-ssl-secret", "apps/ca"),
            ("proxy-ssl-verify-depth", "2"),
            ("custom-headers", "../etc"),
        ]);
        assert!(!n.closed());
        assert_eq!(n.problems.len(), 2, "{:?}", n.problems);
        // The header grammar: no field can be smuggled in a name or a value.
        assert!(custom_header_name("X-Frame_Options"));
        assert!(!custom_header_name("X: y") && !custom_header_name(""));
        assert!(custom_header_value(
            "max-age=1; includeSubDomains \"q\" `x`"
        ));
        assert!(!custom_header_value("a\r\nSet-Cookie: x") && !custom_header_value("\u{e9}"));
    }
}
