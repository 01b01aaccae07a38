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

    /// Takes one enrolment for `token` from `addr`, or says how long to
    /// wait and which limit was hit. Nothing is taken when refused.
    pub fn take(&self, token: &str, addr: &str) -> Result<(), (Duration, String)> {
        let now = Instant::now();
        let mut map = self.buckets.lock().expect("limits lock");
        let keys = [
            (format!("token:{token}"), self.per_token, "enrolment token"),
            (format!("addr:{addr}"), self.per_address, "source address"),
        ];
        let mut waits = Vec::new();
        for (key, rate, _) in &keys {
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
            map.clear();
        }
        for (key, level, _) in waits {
            map.insert(key, (level - 1.0, now));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_token_and_per_address() {
        let l = Limits::new(3, 2);
        assert!(l.take("e-1", "10.0.0.1").is_ok());
        assert!(l.take("e-1", "10.0.0.1").is_ok());
        let (wait, why) = l.take("e-1", "10.0.0.1").unwrap_err();
        assert!(why.contains("source address"), "{why}");
        assert!(wait >= Duration::from_secs(1));
        assert!(l.take("e-1", "10.0.0.2").is_ok(), "another address");
        let (_, why) = l.take("e-1", "10.0.0.3").unwrap_err();
        assert!(why.contains("enrolment token"), "{why}");
        assert!(l.take("e-2", "10.0.0.3").is_ok(), "another token");
        let off = Limits::new(0, 0);
        assert!((0..1000).all(|_| off.take("e", "a").is_ok()));
    }
}
