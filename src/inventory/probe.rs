//! The live probe of this host: sysinfo for CPUs, memory and disk; NVML for
//! GPUs; `/proc/net/tcp` and `/proc/net/tcp6` for ports in LISTEN state.
//!
//! Nothing here fails: a source that cannot be read contributes zero (no NVIDIA
//! library or driver means zero GPUs).

use std::path::{Path, PathBuf};

use super::{Gpu, Host, Inventory, Source};

/// Probes this host. `data_dir` is where services keep their data: the free
/// disk space of the file system holding it is the storage capacity.
pub fn probe(data_dir: &Path) -> Inventory {
    let (cpu_cores, memory_mb) = match sysinfo::System::new() {
        Ok(mut sys) => {
            sys.refresh_memory();
            sys.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
            let cpus = sys.cpus().len();
            let cpus = if cpus == 0 {
                std::thread::available_parallelism().map_or(0, |n| n.get())
            } else {
                cpus
            };
            (cpus as f64, sys.total_memory() / (1024 * 1024))
        }
        Err(e) => {
            tracing::warn!("cannot read CPU and memory figures: {e}");
            (
                std::thread::available_parallelism().map_or(0, |n| n.get()) as f64,
                0,
            )
        }
    };
    let name = sysinfo::System::host_name().unwrap_or_else(|_| "localhost".into());
    Inventory {
        source: Source::Probe,
        hosts: vec![Host {
            name,
            cpu_cores,
            memory_mb,
            storage_gb: disk_free_gb(data_dir),
            gpus: nvidia_gpus(),
            ports_in_use: listening_ports(),
        }],
        swarm_publish: Default::default(),
    }
}

/// The nearest existing ancestor of `p`, made absolute.
fn existing_ancestor(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            return c;
        }
        match cur.parent() {
            Some(parent) => cur = parent,
            None => return PathBuf::from("/"),
        }
    }
}

fn disk_free_gb(data_dir: &Path) -> u64 {
    let dir = existing_ancestor(data_dir);
    let Ok(disks) = sysinfo::Disks::new_with_refreshed_list() else {
        return 0;
    };
    disks
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map_or(0, |d| d.available_space() / 1_000_000_000)
}

fn nvidia_gpus() -> Vec<Gpu> {
    match nvml_probe() {
        Ok(gpus) => gpus,
        Err(NvmlAbsent::NoLibrary(_)) => Vec::new(),
        Err(NvmlAbsent::Unusable(e)) => {
            tracing::warn!("NVML is present but cannot be used ({e}): counting zero GPUs");
            Vec::new()
        }
    }
}

/// Why NVML reported no GPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NvmlAbsent {
    /// No NVIDIA library or driver on this host: zero GPUs, the normal case on
    /// hosts without NVIDIA hardware.
    NoLibrary(String),
    /// The library loaded but failed.
    Unusable(String),
}

/// The GPUs NVML sees, or why it cannot say (`deploy-code doctor` shows which).
pub fn nvml_probe() -> Result<Vec<Gpu>, NvmlAbsent> {
    use nvml_wrapper::error::NvmlError;
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(
            e @ (NvmlError::LibloadingError(_)
            | NvmlError::DriverNotLoaded
            | NvmlError::LibraryNotFound),
        ) => return Err(NvmlAbsent::NoLibrary(e.to_string())),
        Err(e) => return Err(NvmlAbsent::Unusable(e.to_string())),
    };
    let count = nvml.device_count().unwrap_or(0);
    let mut out = Vec::new();
    for i in 0..count {
        let Ok(dev) = nvml.device_by_index(i) else {
            continue;
        };
        let mem = dev.memory_info().ok();
        out.push(Gpu {
            index: dev.index().unwrap_or(i),
            uuid: dev.uuid().ok(),
            model: dev.name().unwrap_or_else(|_| "unknown".into()),
            memory_mb: mem.as_ref().map_or(0, |m| m.total / (1024 * 1024)),
            free_memory_mb: mem.map(|m| m.free / (1024 * 1024)),
        });
    }
    Ok(out)
}

/// TCP ports in LISTEN state on this host (IPv4 and IPv6), sorted.
pub fn listening_ports() -> Vec<u16> {
    crate::procfs::listening_ports().into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_seen() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening_ports().contains(&port));
    }

    #[test]
    fn the_probe_reports_this_host() {
        let inv = probe(Path::new("."));
        let h = &inv.hosts[0];
        assert!(h.cpu_cores >= 1.0);
        assert!(h.memory_mb > 0);
        // The storage is the free space of the file system holding the data
        // directory, as statvfs tells it (it may move by a GB meanwhile).
        let vfs = nix::sys::statvfs::statvfs(".").unwrap();
        let free_gb = vfs.blocks_available() * vfs.fragment_size() / 1_000_000_000;
        assert!(
            h.storage_gb.abs_diff(free_gb) <= 1,
            "{} GB, statvfs {free_gb} GB",
            h.storage_gb
        );
    }
}
