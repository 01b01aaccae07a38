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
//! mapped back in at their next use. Code is never written, so dropping
//! its mappings loses nothing: only writable or written (copy-on-write)
//! pages could, and those are never touched here.

use std::os::unix::fs::MetadataExt;

/// A mapping of the running binary's code: (start, length), from
/// `/proc/self/maps` lines such as
/// `55d0c1a00000-55d0c2400000 r-xp 00a00000 fd:01 1234 /usr/bin/convoy`.
fn code_mappings(maps: &str, dev_inode: (u64, u64)) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(_offset), Some(dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        // executable, never writable, private: code only
        if perms != "r-xp" || inode.parse::<u64>().ok() != Some(dev_inode.1) {
            continue;
        }
        let Some((major, minor)) = dev.split_once(':') else { continue };
        let (Ok(major), Ok(minor)) = (u64::from_str_radix(major, 16), u64::from_str_radix(minor, 16)) else { continue };
        if libc::makedev(major as u32, minor as u32) != dev_inode.0 {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else { continue };
        if end > start {
            out.push((start, end - start));
        }
    }
    out
}

/// Drops this process's mappings of the binary's code pages; returns the
/// bytes of code whose mappings were dropped (0 when /proc cannot be read).
pub fn unmap_idle_code() -> usize {
    let (Ok(maps), Ok(exe)) = (std::fs::read_to_string("/proc/self/maps"), std::fs::metadata("/proc/self/exe")) else {
        return 0;
    };
    let mut dropped = 0;
    for (start, len) in code_mappings(&maps, (exe.dev(), exe.ino())) {
        #[allow(unsafe_code)]
        // SAFETY: the range is one whole mapping of this binary's code,
        // private and never writable (r-xp), so no page of it holds data the
        // program wrote; MADV_DONTNEED on it only drops this process's page
        // table entries, and the next use of a page maps it again from the
        // file (the page cache).
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
    fn only_the_binarys_code_is_chosen() {
        let dev = libc::makedev(0xfd, 0x01);
        let maps = "\
55d0c1000000-55d0c1a00000 r--p 00000000 fd:01 1234 /usr/bin/convoy
55d0c1a00000-55d0c2400000 r-xp 00a00000 fd:01 1234 /usr/bin/convoy
55d0c2400000-55d0c2500000 r--p 01400000 fd:01 1234 /usr/bin/convoy
55d0c2500000-55d0c2510000 rw-p 01500000 fd:01 1234 /usr/bin/convoy
7f0000000000-7f0000100000 r-xp 00000000 fd:01 999 /usr/lib/libc.so.6
7f0000200000-7f0000300000 r-xp 00000000 08:02 1234 /mnt/other/convoy
7f0000400000-7f0000500000 rwxp 00000000 fd:01 1234 /usr/bin/convoy
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(code_mappings(maps, (dev, 1234)), vec![(0x55d0c1a00000, 0xa00000)]);
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
