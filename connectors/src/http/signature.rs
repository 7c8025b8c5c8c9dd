//! Signatures of outgoing webhooks and HTTP service-task calls.
//!
//! Header `X-Lifecycle-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` where
//! the MAC is over `"<t>.<raw body>"` with the subscription's secret (the
//! scheme Stripe uses): a receiver recomputes it, compares in constant time
//! and refuses old timestamps to stop replays.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-lifecycle-signature";

/// The signature header value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex::encode(mac(secret, timestamp, body)))
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

/// Checks a header value against `body`: the MAC must match and the timestamp
/// be at most `tolerance_secs` from `now`.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: i64, tolerance_secs: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(sig)) = (t, v1) else { return false };
    if (now - t).abs() > tolerance_secs {
        return false;
    }
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_or_age_fails() {
        // The vector is from `printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test`.
        let h = sign(b"whsec_test", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(h, "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789");
        assert!(verify(b"whsec_test", &h, br#"{"a":1}"#, 1_700_000_100, 300));
        assert!(!verify(b"whsec_test", &h, br#"{"a":2}"#, 1_700_000_100, 300), "body changed");
        assert!(!verify(b"other", &h, br#"{"a":1}"#, 1_700_000_100, 300), "wrong secret");
        assert!(!verify(b"whsec_test", &h, br#"{"a":1}"#, 1_700_001_000, 300), "too old");
        assert!(!verify(b"whsec_test", "t=x,v1=zz", br#"{"a":1}"#, 1_700_000_000, 300));
    }
}
