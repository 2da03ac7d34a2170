//! The one reader of Linux's `/proc` for the crate: process status lines,
//! process trees, marks in environments and listening sockets.
//!
//! Everything here is a plain read that returns `None` (or an empty list) when
//! the process is gone or the file cannot be read; nothing signals or writes.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// An environment variable for the log writers, monitors and traffic
/// switches that deploy-code starts: it keeps their allocator (mimalloc,
/// which reserves its arenas before `main` runs) from asking for
/// transparent huge pages, so a long-lived monitor holds about 1 MB of
/// anonymous memory instead of three 2 MiB pages. mimalloc applies it with
/// `prctl(PR_SET_THP_DISABLE)`, which a child inherits: a monitor clears it
/// again for the service it starts.
pub const SMALL_HEAP_ENV: (&str, &str) = ("MIMALLOC_ALLOW_THP", "0");

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
    if let Some(found) = diag::listening_inodes(port) {
        return found;
    }
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
    let holds = |p: u32| !socket_inodes(p).is_disjoint(&inodes);
    // The process and its descendants first (their `children` lists), which
    // is where a listener of the instance usually is; the whole tree (a scan
    // of every process) only when they do not hold it.
    if descendants(pid).into_iter().any(holds) {
        return Some(true);
    }
    Some(tree(pid).into_iter().any(holds))
}

/// `pid` and its descendants, from the kernel's `children` lists of their
/// threads (no scan of every process).
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() && out.len() < 4096 {
        let p = out[i];
        i += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("children");
            for c in std::fs::read_to_string(path)
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    out
}

/// The kernel's socket-diagnostics interface (netlink `NETLINK_SOCK_DIAG`),
/// asked for listening TCP sockets only: it walks the listening sockets
/// alone, where a read of `/proc/net/tcp` walks every connection
/// (`TIME_WAIT` ones included: tens of thousands on a host that probes a
/// lot, hundreds of milliseconds of kernel time per read).
mod diag {
    use std::collections::BTreeSet;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const TCP_LISTEN: u8 = 10;
    const HEADER: usize = 16;
    /// `struct inet_diag_req_v2`.
    const REQUEST: usize = 56;
    /// `struct inet_diag_msg` up to and including `idiag_inode`.
    const MESSAGE: usize = 72;

    /// The inodes of the IPv4 and IPv6 TCP sockets listening on `port`;
    /// `None` when the interface cannot be used (the caller reads
    /// `/proc/net/tcp` instead).
    pub(super) fn listening_inodes(port: u16) -> Option<BTreeSet<u64>> {
        // SAFETY: a plain socket call; the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut out = BTreeSet::new();
        for (seq, family) in [(1u32, libc::AF_INET), (2, libc::AF_INET6)] {
            dump(&fd, seq, family as u8, port, &mut out)?;
        }
        Some(out)
    }

    fn dump(fd: &OwnedFd, seq: u32, family: u8, port: u16, out: &mut BTreeSet<u64>) -> Option<()> {
        let mut req = [0u8; HEADER + REQUEST];
        req[0..4].copy_from_slice(&((HEADER + REQUEST) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        req[6..8].copy_from_slice(&flags.to_ne_bytes());
        req[8..12].copy_from_slice(&seq.to_ne_bytes());
        req[HEADER] = family;
        req[HEADER + 1] = libc::IPPROTO_TCP as u8;
        req[HEADER + 4..HEADER + 8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        // SAFETY: sends `req`, a buffer of its stated length, on our socket
        // (to the kernel: a zeroed sockaddr_nl is pid 0).
        let sent = unsafe {
            let mut to: libc::sockaddr_nl = std::mem::zeroed();
            to.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent != req.len() as isize {
            return None;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: receives into `buf`, within its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let n = usize::try_from(n).ok().filter(|n| *n > 0)?;
            let mut off = 0;
            while off + HEADER <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().ok()?) as usize;
                let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().ok()?);
                let msg_seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().ok()?);
                if len < HEADER || off + len > n {
                    return None;
                }
                if msg_seq == seq {
                    match kind as i32 {
                        libc::NLMSG_DONE => return Some(()),
                        libc::NLMSG_ERROR => return None,
                        _ if len >= HEADER + MESSAGE => {
                            let m = &buf[off + HEADER..off + len];
                            let sport = u16::from_be_bytes([m[4], m[5]]);
                            let inode = u32::from_ne_bytes(m[68..72].try_into().ok()?);
                            if m[1] == TCP_LISTEN && sport == port {
                                out.insert(u64::from(inode));
                            }
                        }
                        _ => {}
                    }
                }
                off += (len + 3) & !3;
            }
        }
    }
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
    fn sock_diag_finds_a_listener_as_proc_net_tcp_does() {
        use std::os::unix::fs::MetadataExt;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let inode = std::fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&l)
        ))
        .unwrap()
        .ino();
        let found = diag::listening_inodes(port).expect("sock_diag answers");
        assert_eq!(found, BTreeSet::from([inode]));
        let in_table: BTreeSet<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .flat_map(|t| listeners(&t))
            .filter(|(p, _)| *p == port)
            .map(|(_, i)| i)
            .collect();
        assert_eq!(found, in_table);
        drop(l);
        assert!(diag::listening_inodes(port).unwrap().is_empty());
        let me = std::process::id();
        let l6 = std::net::TcpListener::bind("[::1]:0");
        if let Ok(l6) = l6 {
            let port6 = l6.local_addr().unwrap().port();
            assert_eq!(diag::listening_inodes(port6).unwrap().len(), 1);
            assert_eq!(tree_listens(me, port6), Some(true));
        }
    }

    #[test]
    fn this_process_is_in_its_own_tree() {
        let me = std::process::id();
        assert!(tree(me).contains(&me));
        assert!(stat(me).is_some_and(|s| !s.is_dead()));
    }
}
