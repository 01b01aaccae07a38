//! The scheduler loop (P-scheduler): while this server holds the lease in
//! the database, it runs the application's step (`app::schedule::tick`)
//! every 250 ms or when woken. Stateless between ticks, so a restarted
//! server resumes from what the database says. Servers sharing a database
//! take turns through the lease: only the holder acts.

use std::time::Duration;

use crate::app::schedule::tick;
use crate::state::{now_ms, AppState};

/// How often the scheduler looks even without a wake-up.
const TICK: Duration = Duration::from_millis(250);
/// Shortest time between two passes, however often it is woken (every
/// batch of reports wakes it).
const MIN_GAP: Duration = Duration::from_millis(200);

/// The scheduler lease: held this long, renewed when a third is left.
pub const LEASE_MS: i64 = 10_000;
const LEASE_NAME: &str = "scheduler";
/// Held by servers that do not run the scheduler, so that the one that
/// does knows it is not alone (its poll cache is then not exact).
const FOLLOWERS: &str = "followers";
/// How far apart servers' clocks may be for the presence lease to work
/// (the leader learns it is alone again this long after the last follower
/// went away).
const CLOCK_SLACK_MS: i64 = 60_000;
/// How often a server says, or looks whether, it is not alone.
const PRESENCE: Duration = Duration::from_secs(2);

/// Runs until the process ends; acts only while this process holds the
/// scheduler lease.
pub async fn run(st: AppState) {
    let mut held_until = 0i64;
    let mut presence_at = tokio::time::Instant::now();
    let mut last_pass = tokio::time::Instant::now().checked_sub(MIN_GAP).unwrap_or_else(tokio::time::Instant::now);
    loop {
        let now = now_ms();
        if now >= held_until - LEASE_MS / 3 {
            match st.store.hold_lease(LEASE_NAME, &st.epoch, now, LEASE_MS).await {
                Ok(true) => {
                    if held_until <= now {
                        tracing::info!(holder = %st.epoch, "this server now runs the scheduler");
                    }
                    held_until = now + LEASE_MS;
                }
                Ok(false) => {
                    if held_until > now {
                        tracing::warn!("another server took the scheduler lease");
                    }
                    held_until = 0;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the scheduler lease failed");
                }
            }
        }
        let leader = now_ms() < held_until;
        st.counters.scheduler_leader.store(u64::from(leader), std::sync::atomic::Ordering::Relaxed);
        if tokio::time::Instant::now() >= presence_at {
            presence_at = tokio::time::Instant::now() + PRESENCE;
            presence(&st, leader).await;
        }
        if leader {
            // woken many times meanwhile: one pass stands for them all
            tokio::time::sleep_until(last_pass + MIN_GAP).await;
            last_pass = tokio::time::Instant::now();
            if let Err(e) = tick(&st).await {
                tracing::warn!(error = %e, "scheduler pass failed; retrying");
            }
        }
        let wait = if leader { TICK } else { Duration::from_millis(LEASE_MS as u64 / 4) };
        let _ = tokio::time::timeout(wait, st.wake.notified()).await;
    }
}

/// Whether this server is the only one on its database: a follower holds
/// the `followers` lease (for three beats); the leader tries to take it
/// for no time at all as of a minute ago, which fails while any follower
/// holds it. Alone,
/// the poll cache is exact; otherwise its entries live a couple of seconds
/// (other servers write what this one does not see).
async fn presence(st: &AppState, leader: bool) {
    let now = now_ms();
    let alone = if leader {
        // as of a minute ago: clocks up to a minute apart still see a
        // follower's lease (and followers see this one as long run out)
        st.store.hold_lease(FOLLOWERS, &st.epoch, now - CLOCK_SLACK_MS, 0).await.unwrap_or(false)
    } else {
        let _ = st.store.hold_lease(FOLLOWERS, &st.epoch, now, 3 * PRESENCE.as_millis() as i64).await;
        false
    };
    st.set_alone(alone);
}
