//! Rate limits on enrolment: a token bucket per enrolment token and per
//! source address, in memory (each server counts its own).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Enrolments allowed per minute by default, per token and per address.
pub const DEFAULT_PER_TOKEN: u32 = 120;
pub const DEFAULT_PER_ADDRESS: u32 = 30;

/// Most buckets remembered; full buckets are forgotten first.
const MAX_BUCKETS: usize = 100_000;

pub struct Limits {
    /// Per minute; 0 is unlimited.
    pub per_token: u32,
    pub per_address: u32,
    buckets: std::sync::Mutex<HashMap<String, (f64, Instant)>>,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(DEFAULT_PER_TOKEN, DEFAULT_PER_ADDRESS)
    }
}

impl Limits {
    pub fn new(per_token: u32, per_address: u32) -> Self {
        Self { per_token, per_address, buckets: Default::default() }
    }

    /// Takes one enrolment attempt from `addr` (before its token is even
    /// looked at, so guessing is limited too).
    pub fn take_address(&self, addr: std::net::IpAddr) -> Result<(), (Duration, String)> {
        self.take_keys(&[(format!("addr:{}", group(addr)), self.per_address, "source address")])
    }

    /// Takes one enrolment for an enrolment token.
    pub fn take_token(&self, token: &str) -> Result<(), (Duration, String)> {
        self.take_keys(&[(format!("token:{token}"), self.per_token, "enrolment token")])
    }

    /// Takes one from each bucket, or says how long to wait and which
    /// limit was hit. Nothing is taken when refused.
    fn take_keys(&self, keys: &[(String, u32, &str)]) -> Result<(), (Duration, String)> {
        let now = Instant::now();
        let mut map = self.buckets.lock().expect("limits lock");
        let mut waits = Vec::new();
        for (key, rate, _) in keys {
            if *rate == 0 {
                continue;
            }
            let per_sec = f64::from(*rate) / 60.0;
            let (level, at) = map.get(key).copied().unwrap_or((f64::from(*rate), now));
            let level = (level + now.duration_since(at).as_secs_f64() * per_sec).min(f64::from(*rate));
            waits.push((key.clone(), level, if level >= 1.0 { 0.0 } else { (1.0 - level) / per_sec }));
        }
        if let Some((key, _, wait)) = waits.iter().find(|(_, _, w)| *w > 0.0) {
            let what =
                keys.iter().find(|(k, _, _)| k == key).map(|(_, r, w)| format!("{r} enrolments a minute per {w}"));
            return Err((Duration::from_secs_f64(wait.ceil().max(1.0)), what.unwrap_or_default()));
        }
        if map.len() > MAX_BUCKETS {
            // forget the buckets that have refilled (they hold nothing)
            map.retain(|k, (level, at)| {
                let rate = if k.starts_with("token:") { self.per_token } else { self.per_address };
                *level + now.duration_since(*at).as_secs_f64() * f64::from(rate) / 60.0 < f64::from(rate)
            });
        }
        for (key, level, _) in waits {
            map.insert(key, (level - 1.0, now));
        }
        Ok(())
    }
}

/// IPv6 addresses count per /64 (one machine may hold a whole /64).
fn group(addr: std::net::IpAddr) -> String {
    match addr {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = a.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_token_and_per_address() {
        let l = Limits::new(3, 2);
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(l.take_address(ip("10.0.0.1")).is_ok());
        assert!(l.take_address(ip("10.0.0.1")).is_ok());
        let (wait, why) = l.take_address(ip("10.0.0.1")).unwrap_err();
        assert!(why.contains("source address"), "{why}");
        assert!(wait >= Duration::from_secs(1));
        assert!(l.take_address(ip("10.0.0.2")).is_ok(), "another address");
        for _ in 0..3 {
            assert!(l.take_token("e-1").is_ok());
        }
        let (_, why) = l.take_token("e-1").unwrap_err();
        assert!(why.contains("enrolment token"), "{why}");
        assert!(l.take_token("e-2").is_ok(), "another token");
        let v6 = Limits::new(0, 1);
        assert!(v6.take_address("2001:db8::1".parse().unwrap()).is_ok());
        assert!(v6.take_address("2001:db8::2".parse().unwrap()).is_err(), "one /64 is one address");
        assert!(v6.take_address("2001:db8:0:1::1".parse().unwrap()).is_ok());
        let off = Limits::new(0, 0);
        assert!((0..1000).all(|_| off.take_token("e").is_ok() && off.take_address(ip("10.0.0.9")).is_ok()));
    }
}
