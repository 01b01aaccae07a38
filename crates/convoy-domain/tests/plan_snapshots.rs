//! Snapshot tests of the planner: a few fleets and policies, rendered as
//! text and compared with `tests/snapshots/NAME.txt`. To accept a change
//! after reading it: `CONVOY_UPDATE_SNAPSHOTS=1 cargo test -p convoy-domain`.

use convoy_domain::{parse_waves, plan, Amount, OutsideWindow, PlanTarget, Policy, Window};

fn fleet(sites: &[(&str, usize)]) -> Vec<PlanTarget> {
    let mut out = Vec::new();
    for (site, n) in sites {
        for i in 0..*n {
            out.push(PlanTarget { id: format!("t-{site}{i:02}"), site: (*site).to_owned() });
        }
    }
    out
}

fn ms(s: &str) -> i64 {
    s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

fn check(name: &str, got: String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(format!("{name}.txt"));
    if std::env::var_os("CONVOY_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(got, want, "plan {name} differs from {}", path.display());
}

fn policy(waves: &str, budget: &str) -> Policy {
    Policy { waves: parse_waves(waves).unwrap(), max_failures: Amount::parse(budget).unwrap(), ..Policy::default() }
}

#[test]
fn one_wave_no_time() {
    let p = plan(&fleet(&[("", 3)]), &Policy::default(), &[], None).unwrap();
    check("one_wave_no_time", p.render());
}

#[test]
fn canary_then_percentages_across_sites() {
    let mut p = policy("1,10%,50%,100%", "5%");
    p.wave_gap_secs = 1800;
    let out =
        plan(&fleet(&[("sh", 12), ("bj", 20), ("gz", 8)]), &p, &[], Some(ms("2026-12-05T01:30:00+08:00"))).unwrap();
    check("canary_then_percentages_across_sites", out.render());
}

#[test]
fn small_fleet_drops_empty_waves() {
    let out = plan(&fleet(&[("a", 3)]), &policy("1,10%,50%,100%", "5%"), &[], None).unwrap();
    check("small_fleet_drops_empty_waves", out.render());
}

#[test]
fn waves_move_into_the_window() {
    let mut p = policy("2,100%", "1");
    p.wave_gap_secs = 3 * 3600;
    p.outside_window = OutsideWindow::Next;
    let w = vec![Window::parse("Sat 01:00-05:00 Asia/Shanghai").unwrap()];
    // wave 1 at 04:00 local; wave 2 three hours later falls after 05:00 and
    // moves to the next Saturday
    let out = plan(&fleet(&[("sh", 6)]), &p, &w, Some(ms("2026-12-05T04:00:00+08:00"))).unwrap();
    check("waves_move_into_the_window", out.render());
    // a go-live outside the window is moved too, and says so
    let out = plan(&fleet(&[("sh", 6)]), &p, &w, Some(ms("2026-12-05T12:00:00+08:00"))).unwrap();
    check("go_live_moved_to_next_window", out.render());
}

#[test]
fn refused_outside_the_window() {
    let p = policy("100%", "0");
    let w = vec![Window::parse("Sat 01:00-05:00 Asia/Shanghai").unwrap()];
    let e = plan(&fleet(&[("sh", 2)]), &p, &w, Some(ms("2026-12-05T12:00:00+08:00"))).unwrap_err().to_string();
    assert!(e.contains("outside the allowed windows") && e.contains("2026-12-11T17:00:00Z"), "{e}");
}
