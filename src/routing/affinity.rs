//! Cookie session affinity as ingress-nginx configures it (`affinity: cookie`).
//!
//! - `persistent`: the cookie names the endpoint itself, by a token derived from its address
//!   alone (the same on every Portico instance and across recompiles): a client stays on its pod
//!   while the pod is ready; when it is gone or ejected, the client is re-balanced and gets a new
//!   cookie.
//! - `balanced` (ingress-nginx's default): the cookie holds a random key, and the endpoint is the
//!   key's highest-scoring one among the usable endpoints (rendezvous hashing): when endpoints
//!   are added or removed, only the clients of the changed ones move.

use std::net::SocketAddr;

use sha1::{Digest, Sha1};

/// A route's affinity settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Affinity {
    pub persistent: bool,
    /// `session-cookie-name` [INGRESSCOOKIE].
    pub name: String,
    /// The rest of the `Set-Cookie` value after `NAME=VALUE` (`; Path=/; HttpOnly`...), built
    /// once; `Secure` is added per request over TLS unless `secure` says otherwise.
    pub attributes: String,
    /// `session-cookie-secure`: `None` follows the request's scheme.
    pub secure: Option<bool>,
    /// `session-cookie-expires`: seconds from the response.
    pub expires: Option<u64>,
    /// `session-cookie-change-on-failure`.
    pub change_on_failure: bool,
    /// `session-cookie-samesite: None` with `session-cookie-conditional-samesite-none`: the
    /// attribute is sent only to browsers that understand it ([`same_site_none_compatible`]).
    pub samesite_none_if_compatible: bool,
}

/// Whether a browser takes `SameSite=None` (rather than rejecting the cookie, or treating it as
/// Strict): not Chrome 40-69 (51-66 reject it), iOS 12 or Safari on macOS 10.14 — the list
/// ingress-nginx checks (from Chromium's "SameSite=None: known incompatible clients"). No
/// User-Agent counts as compatible.
pub fn same_site_none_compatible(user_agent: Option<&[u8]>) -> bool {
    let Some(ua) = user_agent else {
        return true;
    };
    let has = |needle: &str| ua.windows(needle.len()).any(|w| w == needle.as_bytes());
    let old_chrome = ["Chrome/4", "Chrome/5", "Chrome/6"].iter().any(|n| has(n));
    let ios_12 = has("CPU iPhone OS 12") || has("iPad; CPU OS 12");
    let mojave_safari =
        has("Macintosh") && has("Intel Mac OS X 10_14") && has("Safari") && !has("Chrome");
    !(old_chrome || ios_12 || mojave_safari)
}

impl Affinity {
    /// The key in a cookie value (16 hex digits), if it is one.
    pub fn parse(value: &[u8]) -> Option<u64> {
        if value.len() != 16 {
            return None;
        }
        u64::from_str_radix(std::str::from_utf8(value).ok()?, 16).ok()
    }

    /// The `Set-Cookie` value that names `key`, for a client with this `User-Agent`.
    pub fn set_cookie(&self, key: u64, tls: bool, user_agent: Option<&[u8]>) -> String {
        let secure = self.secure.unwrap_or(tls);
        let mut v = format!("{}={key:016x}{}", self.name, self.attributes);
        if self.samesite_none_if_compatible && same_site_none_compatible(user_agent) {
            v.push_str("; SameSite=None");
        }
        // A date past what can be written (an absurd session-cookie-expires) is left out
        // rather than overflowing.
        let at = self.expires.and_then(|e| {
            let e = i64::try_from(e).ok()?;
            time::OffsetDateTime::now_utc().checked_add(time::Duration::seconds(e))
        });
        if let Some(at) = at {
            let format = time::macros::format_description!(
                "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
            );
            if let Ok(date) = at.format(&format) {
                v.push_str("; Expires=");
                v.push_str(&date);
            }
        }
        if secure {
            v.push_str("; Secure");
        }
        v
    }
}

/// The persistent token of an endpoint: the first 8 bytes of SHA-1 of its address.
pub fn token(addr: SocketAddr) -> u64 {
    let digest = Sha1::digest(addr.to_string().as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// The rendezvous score of `addr` for `key` (higher wins).
pub fn score(key: u64, addr: SocketAddr) -> u64 {
    // splitmix64 of the key mixed with the endpoint's token: cheap, stable, well spread.
    let mut z = key ^ token(addr);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A new random key for a balanced cookie.
pub fn new_key() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_clients_of_a_removed_endpoint() {
        let addrs: Vec<SocketAddr> = (1..=5)
            .map(|i| format!("10.0.0.{i}:80").parse().unwrap())
            .collect();
        let best =
            |key: u64, set: &[SocketAddr]| *set.iter().max_by_key(|a| score(key, **a)).unwrap();
        let keys: Vec<u64> = (0..2000).map(|i| i * 7919 + 17).collect();
        let before: Vec<SocketAddr> = keys.iter().map(|k| best(*k, &addrs)).collect();
        let fewer: Vec<SocketAddr> = addrs[..4].to_vec();
        let mut moved = 0;
        for (k, b) in keys.iter().zip(&before) {
            let after = best(*k, &fewer);
            if *b != addrs[4] {
                assert_eq!(after, *b, "a client of a kept endpoint moved");
            } else {
                moved += 1;
            }
        }
        // About a fifth of the clients were on the removed endpoint.
        assert!((300..=500).contains(&moved), "{moved}");
    }

    #[test]
    fn samesite_none_only_for_browsers_that_take_it() {
        for old in [
            "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/51.0.2704.103 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 12_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.0 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (iPad; CPU OS 12_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.2 Safari/605.1.15",
        ] {
            assert!(!same_site_none_compatible(Some(old.as_bytes())), "{old}");
        }
        for new in [
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_5) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/74.0.3729.169 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 13_3_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.0.5 Mobile/15E148 Safari/604.1",
            "curl/8.0",
        ] {
            assert!(same_site_none_compatible(Some(new.as_bytes())), "{new}");
        }
        assert!(same_site_none_compatible(None));
        let a = Affinity {
            persistent: false,
            name: "c".into(),
            attributes: "; Path=/; HttpOnly".into(),
            secure: Some(true),
            expires: None,
            change_on_failure: false,
            samesite_none_if_compatible: true,
        };
        assert_eq!(
            a.set_cookie(1, true, Some(b"curl/8.0")),
            "c=0000000000000001; Path=/; HttpOnly; SameSite=None; Secure"
        );
        assert_eq!(
            a.set_cookie(1, true, Some(b"Chrome/60.0")),
            "c=0000000000000001; Path=/; HttpOnly; Secure"
        );
    }

    #[test]
    fn cookies_round_trip() {
        let a = Affinity {
            persistent: true,
            name: "INGRESSCOOKIE".into(),
            attributes: "; Path=/; HttpOnly".into(),
            secure: None,
            expires: None,
            change_on_failure: false,
            samesite_none_if_compatible: false,
        };
        let v = a.set_cookie(0xdead_beef, true, None);
        assert_eq!(
            v,
            "INGRESSCOOKIE=00000000deadbeef; Path=/; HttpOnly; Secure"
        );
        assert_eq!(Affinity::parse(b"00000000deadbeef"), Some(0xdead_beef));
        assert_eq!(Affinity::parse(b"xyz"), None);
        assert_eq!(Affinity::parse(b"00000000deadbeeg"), None);
        assert_ne!(new_key(), new_key());
        // session-cookie-expires comes from the cluster: no value may panic.
        for expires in [0, 3600, u64::from(u32::MAX), i64::MAX as u64, u64::MAX] {
            let a = Affinity {
                expires: Some(expires),
                ..a.clone()
            };
            let v = a.set_cookie(1, false, None);
            assert!(
                v.starts_with("INGRESSCOOKIE=0000000000000001; Path=/; HttpOnly"),
                "{v}"
            );
        }
    }
}
