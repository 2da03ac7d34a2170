//! The one reader of Linux's `/proc` for the crate: process status lines,
//! process trees, marks in environments and listening sockets.
//!
//! Everything here is a plain read that returns `None` (or an empty list) when
//! the process is gone or the file cannot be read; nothing signals or writes.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The deploy-code binary (`/proc/self/exe`), which runs the log writers,
/// monitors and traffic switches: this one when it is deploy-code, else a
/// `deploy-code` beside it or one directory up (a test binary in `deps/`).
pub fn deploy_code_program() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let is_ours = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == "deploy-code")
            && p.is_file()
    };
    if is_ours(&exe) {
        return Some(exe);
    }
    let dir = exe.parent()?;
    [dir.join("deploy-code"), dir.parent()?.join("deploy-code")]
        .into_iter()
        .find(|p| is_ours(p))
}

/// The fields of `/proc/<pid>/stat` that deploy-code reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z`, `X`, ...
    pub state: char,
    /// Field 4.
    pub ppid: u32,
    /// Field 5: the process group.
    pub pgrp: u32,
    /// Field 6: the session.
    pub session: u32,
    /// Field 22: when the process started, in clock ticks since boot.
    pub start_time: u64,
}

impl Stat {
    /// A zombie or a dead process: it runs no more, whatever its pid says.
    pub(crate) fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parses the text of a `stat` file (the command name may hold spaces and
/// parentheses, so fields are counted from the last `)`).
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3.
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

/// `/proc/<pid>/stat` of a process under `root` (normally `/proc`).
pub(crate) fn stat_at(root: &Path, pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(root.join(pid.to_string()).join("stat")).ok()?)
}

/// `/proc/<pid>/stat`.
pub fn stat(pid: u32) -> Option<Stat> {
    stat_at(Path::new("/proc"), pid)
}

/// The start time of a process (`/proc/<pid>/stat` field 22).
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// Every pid in `/proc`.
pub fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// The variables of `/proc/<pid>/environ` whose names start with `prefix`.
pub fn environ(pid: u32, prefix: &str) -> Option<HashMap<String, String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mut out = HashMap::new();
    for entry in bytes.split(|b| *b == 0) {
        let Ok(s) = std::str::from_utf8(entry) else {
            continue;
        };
        if let Some((k, v)) = s.split_once('=')
            && k.starts_with(prefix)
        {
            out.insert(k.to_owned(), v.to_owned());
        }
    }
    Some(out)
}

/// Where file descriptor `fd` of a process points (`/proc/<pid>/fd/<fd>`).
pub(crate) fn fd_target(pid: u32, fd: u32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()
}

/// `pid` and every live process descending from it (by parent links) or
/// sharing the session it leads.
pub(crate) fn tree(pid: u32) -> BTreeSet<u32> {
    let all: Vec<(u32, Stat)> = pids()
        .into_iter()
        .filter_map(|p| stat(p).map(|s| (p, s)))
        .collect();
    let mut members = BTreeSet::from([pid]);
    for (p, s) in &all {
        if s.session == pid && !s.is_dead() {
            members.insert(*p);
        }
    }
    // Descendants that left the session (a double fork with setsid).
    loop {
        let before = members.len();
        for (p, s) in &all {
            if members.contains(&s.ppid) && !s.is_dead() {
                members.insert(*p);
            }
        }
        if members.len() == before {
            return members;
        }
    }
}

/// The socket inodes of the TCP sockets in LISTEN state on `port` (any
/// address), from `/proc/net/tcp` and `/proc/net/tcp6`.
pub(crate) fn listening_inodes(port: u16) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(f) {
            out.extend(
                listeners(&text)
                    .into_iter()
                    .filter(|(p, _)| *p == port)
                    .map(|(_, i)| i),
            );
        }
    }
    out
}

/// Every local port in LISTEN state, from `/proc/net/tcp` and `/proc/net/tcp6`.
pub fn listening_ports() -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(f) {
            out.extend(listeners(&text).into_iter().map(|(p, _)| p));
        }
    }
    out
}

/// `(local port, inode)` of the LISTEN (`0A`) rows of a `/proc/net/tcp` table.
pub fn listeners(table: &str) -> Vec<(u16, u64)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) != Some(&"0A") {
                return None;
            }
            let port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            let inode = f.get(9)?.parse().ok()?;
            Some((port, inode))
        })
        .collect()
}

/// The socket inodes a process holds open (`socket:[N]` links in `fd/`).
pub(crate) fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            let s = link.to_str()?;
            s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Whether the process tree of `pid` holds a listening socket on `port`:
/// `None` when no listening socket on it is visible at all.
pub(crate) fn tree_listens(pid: u32, port: u16) -> Option<bool> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return None;
    }
    Some(
        tree(pid)
            .into_iter()
            .any(|p| !socket_inodes(p).is_disjoint(&inodes)),
    )
}

/// Seconds since the epoch at which a process that started `start_time`
/// clock ticks after boot began.
pub(crate) fn started_at_epoch(start_time: u64) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf is a plain query.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(btime + start_time / ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line =
            "4242 (a b) c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            Stat {
                state: 'S',
                ppid: 1,
                pgrp: 4242,
                session: 4242,
                start_time: 987654
            }
        );
    }

    #[test]
    fn listen_rows_give_port_and_inode() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F91 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listeners(table), vec![(8080, 12345)]);
    }

    #[test]
    fn this_process_is_in_its_own_tree() {
        let me = std::process::id();
        assert!(tree(me).contains(&me));
        assert!(stat(me).is_some_and(|s| !s.is_dead()));
    }
}
