//! Basic authentication as ingress-nginx configures it (`auth-type: basic`): an htpasswd file
//! (`auth-file`, the Secret's `auth` key) or one hash per Secret key (`auth-map`).
//!
//! The hash formats in real use: bcrypt (`$2y$`, `$2b$`, `$2a$`; the `bcrypt` crate), Apache's
//! MD5 `$apr1$` (the `htpasswd` tool's default) and `{SHA}` (base64 SHA-1). Digests come from
//! RustCrypto's `md-5` and `sha1`; every comparison is constant-time (`subtle`). No crate
//! implements apr1 itself: it is MD5-crypt (FreeBSD's `$1$`, in `pwhash`) with Apache's magic
//! string mixed into the digest, so it is composed here from the MD5 digest, and checked against
//! `openssl passwd -apr1` in the tests.

use std::collections::HashMap;

use base64::Engine;
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// One user's password hash.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Hash {
    Bcrypt(String),
    Apr1 { salt: String, hash: String },
    Sha1(Vec<u8>),
}

/// The users of one route.
#[derive(Debug, Default)]
pub struct Users {
    users: HashMap<String, Hash>,
    /// Recent successful bcrypt checks: a logged-in browser sends its credentials with every
    /// request, and bcrypt costs milliseconds of CPU each time. Keyed by a salted SHA-1 of the
    /// credentials (never stored in clear), bounded, each entry good for [`REMEMBER`].
    recent: std::sync::Mutex<HashMap<[u8; 20], std::time::Instant>>,
}

/// How long a successful bcrypt check is remembered.
const REMEMBER: std::time::Duration = std::time::Duration::from_secs(60);
/// At most this many remembered checks per route.
const REMEMBERED: usize = 1024;

impl Clone for Users {
    fn clone(&self) -> Self {
        Self {
            users: self.users.clone(),
            recent: Default::default(),
        }
    }
}

impl PartialEq for Users {
    fn eq(&self, other: &Self) -> bool {
        self.users == other.users
    }
}

impl Eq for Users {}

/// A per-process salt for the remembered checks' keys.
fn salt() -> &'static [u8; 16] {
    static SALT: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    SALT.get_or_init(|| {
        let a = crate::routing::affinity::new_key().to_le_bytes();
        let b = crate::routing::affinity::new_key().to_le_bytes();
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&a);
        s[8..].copy_from_slice(&b);
        s
    })
}

impl Users {
    /// Reads an htpasswd file. Lines that are empty or comments are skipped; an entry in a
    /// format Portico does not check is reported in the returned list and its user can never
    /// log in.
    pub fn from_htpasswd(text: &str) -> (Users, Vec<String>) {
        let mut users = Users::default();
        let mut problems = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                Some((user, hash)) if !user.is_empty() => {
                    if let Err(e) = users.add(user, hash) {
                        problems.push(format!("line {}: user {user:?}: {e}", i + 1));
                    }
                }
                _ => problems.push(format!("line {}: not user:hash", i + 1)),
            }
        }
        (users, problems)
    }

    /// Adds a user with its hash (`auth-map`: a Secret key and its value).
    pub fn add(&mut self, user: &str, hash: &str) -> Result<(), String> {
        let hash = hash.trim();
        let parsed = if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
            // Checked now, so that a request never meets a hash bcrypt cannot read.
            bcrypt::verify("", hash).map_err(|e| format!("bcrypt hash: {e}"))?;
            Hash::Bcrypt(hash.to_string())
        } else if let Some(rest) = hash.strip_prefix("$apr1$") {
            let (salt, digest) = rest
                .split_once('$')
                .filter(|(s, d)| s.len() <= 8 && d.len() == 22)
                .ok_or("apr1 hash is not $apr1$salt$digest")?;
            Hash::Apr1 {
                salt: salt.to_string(),
                hash: digest.to_string(),
            }
        } else if let Some(b64) = hash.strip_prefix("{SHA}") {
            let digest = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .filter(|d| d.len() == 20)
                .ok_or("{SHA} hash is not base64 of 20 bytes")?;
            Hash::Sha1(digest)
        } else {
            return Err(
                "not a bcrypt, $apr1$ or {SHA} hash (crypt, plain text and others are \
                        not accepted)"
                    .into(),
            );
        };
        self.users.insert(user.to_string(), parsed);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether an `Authorization` value carries the credentials of one of the users.
    pub fn check(&self, authorization: Option<&[u8]>) -> bool {
        let Some(credentials) = authorization.and_then(basic_credentials) else {
            return false;
        };
        let Some((user, password)) = credentials.split_once(':') else {
            return false;
        };
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        match hash {
            Hash::Bcrypt(h) => {
                let mut key = [0u8; 20];
                key.copy_from_slice(
                    &sha1::Sha1::new()
                        .chain_update(salt())
                        .chain_update(user.as_bytes())
                        .chain_update([0u8])
                        .chain_update(password.as_bytes())
                        .finalize(),
                );
                let now = std::time::Instant::now();
                let remembered = self
                    .recent
                    .lock()
                    .ok()
                    .and_then(|r| r.get(&key).copied())
                    .is_some_and(|at| now.duration_since(at) < REMEMBER);
                if remembered {
                    return true;
                }
                let ok = bcrypt::verify(password, h).unwrap_or(false);
                if ok {
                    if let Ok(mut r) = self.recent.lock() {
                        if r.len() >= REMEMBERED {
                            r.retain(|_, at| now.duration_since(*at) < REMEMBER);
                            if r.len() >= REMEMBERED {
                                r.clear();
                            }
                        }
                        r.insert(key, now);
                    }
                }
                ok
            }
            Hash::Apr1 { salt, hash } => apr1(password.as_bytes(), salt.as_bytes())
                .as_bytes()
                .ct_eq(hash.as_bytes())
                .into(),
            Hash::Sha1(digest) => {
                let got = sha1::Sha1::digest(password.as_bytes());
                got.as_slice().ct_eq(digest).into()
            }
        }
    }
}

/// The `user:password` of a `Basic` credential (RFC 7617), if it is one.
fn basic_credentials(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Apache's apr1: MD5-crypt (1000 rounds) with the magic `$apr1$`; returns the 22-character
/// digest in crypt's base64 alphabet.
fn apr1(password: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt[..salt.len().min(8)];
    let alternate = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(password)
        .chain_update(MAGIC)
        .chain_update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alternate[..n]);
        left -= n;
    }
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut digest = ctx.finalize();
    for i in 0..1000 {
        let mut round = Md5::new();
        if i & 1 == 1 {
            round.update(password);
        } else {
            round.update(digest);
        }
        if i % 3 != 0 {
            round.update(salt);
        }
        if i % 7 != 0 {
            round.update(password);
        }
        if i & 1 == 1 {
            round.update(digest);
        } else {
            round.update(password);
        }
        digest = round.finalize();
    }
    const ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    let mut push = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ALPHABET[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let d = |i: usize| u32::from(digest[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        push((d(a) << 16) | (d(b) << 8) | d(c), 4);
    }
    push(d(11), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> Vec<u8> {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {token}").into_bytes()
    }

    #[test]
    fn remembered_bcrypt_checks_admit_only_the_same_credentials() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let (users, _) = Users::from_htpasswd(&format!("bob:{hash}\nann:{hash}\n"));
        assert!(users.check(Some(&basic("bob", "s3cret"))));
        // Remembered now; the same credentials pass, nothing else does.
        assert!(users.check(Some(&basic("bob", "s3cret"))));
        assert!(!users.check(Some(&basic("bob", "s3cret!"))));
        assert!(!users.check(Some(&basic("bob", "s3cre"))));
        assert!(users.recent.lock().unwrap().len() == 1);
        assert!(users.check(Some(&basic("ann", "s3cret"))));
        assert!(users.recent.lock().unwrap().len() == 2);
    }

    #[test]
    fn apr1_matches_openssl() {
        // `openssl passwd -apr1 -salt abcdefgh password`, and with a short salt.
        assert_eq!(apr1(b"password", b"abcdefgh"), "FBwExRW4dCc8aL.OvjpIE1");
        assert_eq!(apr1(b"p@ss:w0rd", b"Zx9"), "IOqK8NURbJid5gjnYEIKa0");
    }

    #[test]
    fn htpasswd_formats_and_failures() {
        let bcrypt = bcrypt::hash("s3cret", 4).unwrap();
        let file = format!(
            "# users\nalice:$apr1$abcdefgh$FBwExRW4dCc8aL.OvjpIE1\nbob:{bcrypt}\n\
             carol:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\nmallory:plaintext\ndes:abJnggxhB/yWI\n"
        );
        let (users, problems) = Users::from_htpasswd(&file);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(users.check(Some(&basic("alice", "password"))));
        assert!(users.check(Some(&basic("bob", "s3cret"))));
        assert!(users.check(Some(&basic("carol", "password"))));
        for (user, password) in [
            ("alice", "Password"),
            ("bob", "s3cret "),
            ("carol", ""),
            ("mallory", "plaintext"),
            ("nobody", "password"),
        ] {
            assert!(!users.check(Some(&basic(user, password))), "{user}");
        }
        for bad in [
            &b"Bearer abc"[..],
            b"Basic !!!",
            b"Basic",
            b"Basic YWxpY2U=", // no colon
            b"\xff\xfe",
        ] {
            assert!(!users.check(Some(bad)));
        }
        assert!(!users.check(None));
        // The scheme is case-insensitive (RFC 9110 11.1).
        let lower = String::from_utf8(basic("alice", "password"))
            .unwrap()
            .replace("Basic", "basic");
        assert!(users.check(Some(lower.as_bytes())));
    }
}
