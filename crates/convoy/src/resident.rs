//! The agent's resident memory is mostly the binary's own code: `convoy`
//! is one binary (server, agent, operator commands), and the kernel maps a
//! program's code in as it first runs, in blocks around each page touched.
//! Start-up (argument parsing, configuration, enrolment, TLS set-up) runs
//! once and leaves its blocks mapped for the life of the process. An idle
//! agent then counts against its memory code it will never run again.
//!
//! [`unmap_idle_code`] drops this process's mappings of the binary's code
//! pages (`MADV_DONTNEED` on its executable, read-only segments). The pages
//! stay in the system's page cache; the ones the agent runs again are
//! mapped back in at their next use. Only a writable or written
//! (copy-on-write) page could lose something when its mapping is dropped:
//! a mapping holding one (a debugger's breakpoint, a probe) is left alone,
//! and so is every mapping while a tracer is attached.

/// (start, end, permissions, (device, inode) as printed, anonymous kB).
type Mapping<'a> = (usize, usize, &'a str, (&'a str, &'a str), Option<u64>);

/// The binary's code mappings that hold only what the file holds: (start,
/// length), from `/proc/self/smaps`. The binary is known by the mapping
/// that holds `here` (an address of its own code), so its device and inode
/// are compared as the kernel prints them in both lines. A mapping with
/// private copies of pages (`Anonymous` above 0: a debugger's breakpoint,
/// a probe) is left alone, as is anything not `r-xp`.
fn code_mappings(smaps: &str, here: usize) -> Vec<(usize, usize)> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Anonymous:") {
            if let Some(m) = maps.last_mut() {
                m.4 = kb.trim().trim_end_matches("kB").trim().parse().ok();
            }
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(_offset), Some(dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
            continue;
        };
        maps.push((start, end, perms, (dev, inode), None));
    }
    let Some(&(_, _, _, file, _)) = maps.iter().find(|m| m.0 <= here && here < m.1) else {
        return Vec::new();
    };
    if file.1 == "0" {
        return Vec::new();
    }
    maps.iter()
        .filter(|m| m.2 == "r-xp" && m.3 == file && m.4 == Some(0) && m.1 > m.0)
        .map(|m| (m.0, m.1 - m.0))
        .collect()
}

/// Whether a debugger or tracer is attached (`TracerPid` in
/// `/proc/self/status`): it may write into code at any time.
fn traced(status: &str) -> bool {
    status.lines().find_map(|l| l.strip_prefix("TracerPid:")).is_some_and(|pid| pid.trim() != "0")
}

/// Drops this process's mappings of the binary's code pages; returns the
/// bytes of code whose mappings were dropped (0 when /proc cannot be read
/// or a tracer is attached).
pub fn unmap_idle_code() -> usize {
    let (Ok(smaps), Ok(status)) =
        (std::fs::read_to_string("/proc/self/smaps"), std::fs::read_to_string("/proc/self/status"))
    else {
        return 0;
    };
    if traced(&status) {
        return 0;
    }
    let here = unmap_idle_code as fn() -> usize as usize;
    let mut dropped = 0;
    for (start, len) in code_mappings(&smaps, here) {
        #[allow(unsafe_code)]
        // SAFETY: the range is one whole mapping of this binary's code,
        // private, never writable (r-xp) and with no private copy of any
        // page (Anonymous: 0 kB), so every page of it is the file's;
        // MADV_DONTNEED only drops this process's page table entries, and
        // the next use of a page maps it again from the file (the page
        // cache).
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if rc == 0 {
            dropped += len;
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_binarys_untouched_code_is_chosen() {
        let smaps = "\
55d0c1000000-55d0c1a00000 r--p 00000000 00:2f 1234 /usr/bin/convoy
Anonymous:             0 kB
55d0c1a00000-55d0c2400000 r-xp 00a00000 00:2f 1234 /usr/bin/convoy
Rss:                8740 kB
Anonymous:             0 kB
55d0c2400000-55d0c2500000 r--p 01400000 00:2f 1234 /usr/bin/convoy
Anonymous:           120 kB
55d0c2500000-55d0c2510000 rw-p 01500000 00:2f 1234 /usr/bin/convoy
Anonymous:            64 kB
55d0c2600000-55d0c2700000 r-xp 01600000 00:2f 1234 /usr/bin/convoy
Anonymous:             4 kB
7f0000000000-7f0000100000 r-xp 00000000 00:2f 999 /usr/lib/libc.so.6
Anonymous:             0 kB
7f0000200000-7f0000300000 r-xp 00000000 08:02 1234 /mnt/other/convoy
Anonymous:             0 kB
7f0000400000-7f0000500000 rwxp 00000000 00:2f 1234 /usr/bin/convoy
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Anonymous:           132 kB
";
        // the binary's code without private copies; not the one with a
        // breakpoint's copy, not libc, not a same-inode file elsewhere
        assert_eq!(code_mappings(smaps, 0x55d0c1a00100), vec![(0x55d0c1a00000, 0xa00000)]);
        // an address outside every file mapping: nothing
        assert_eq!(code_mappings(smaps, 0x7ffd00000100), vec![]);
        assert_eq!(code_mappings(smaps, 0x10), vec![]);
    }

    #[test]
    fn a_traced_process_is_left_alone() {
        assert!(traced("Name:\tconvoy\nTracerPid:\t4242\n"));
        assert!(!traced("Name:\tconvoy\nTracerPid:\t0\n"));
    }

    #[test]
    fn dropped_code_runs_again() {
        // this test binary's own code: dropped, then the test goes on running
        let dropped = unmap_idle_code();
        assert!(dropped > 0, "no code mapping of the test binary was found");
        assert_eq!(std::hint::black_box(2 + 2), 4);
        assert!(unmap_idle_code() > 0);
    }
}
