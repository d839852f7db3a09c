//! Where a run happens: the machine (CPUs, CPU model, kernel), the file system of the folder
//! being measured, and the run's temporary folders on it.

use std::io;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::io_error;
use crate::exit::CliResult;

/// Creates the run's temporary folder (`annals-bench-…`) in `base`, on the disk to measure.
pub(super) fn temp_folder(base: &Path) -> CliResult<TempDir> {
    tempfile::Builder::new()
        .prefix("annals-bench-")
        .tempdir_in(base)
        .map_err(|e| {
            io_error(
                format!("cannot create a temporary folder in {}", base.display()),
                e,
            )
        })
}

/// Removes the run's temporary folder and everything left in it.
pub(super) fn remove_temp_folder(tmp: TempDir) -> CliResult<()> {
    tmp.close()
        .map_err(|e| io_error("cannot remove the temporary folder".into(), e))
}

/// A folder `name` inside `dir`, created.
pub(super) fn subdir(dir: &Path, name: &str) -> CliResult<PathBuf> {
    let path = dir.join(name);
    std::fs::create_dir(&path)
        .map_err(|e| io_error(format!("cannot create {}", path.display()), e))?;
    Ok(path)
}

/// Removes a folder of the run.
pub(super) fn remove(dir: &Path) -> CliResult<()> {
    std::fs::remove_dir_all(dir)
        .map_err(|e| io_error(format!("cannot remove {}", dir.display()), e))
}

/// CPUs available to this process.
pub(super) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU's model name, from `/proc/cpuinfo` (Linux).
pub(super) fn cpu_model() -> Option<String> {
    use std::io::BufRead;
    let file = std::fs::File::open("/proc/cpuinfo").ok()?;
    io::BufReader::new(file)
        .lines()
        .take(64)
        .map_while(Result::ok)
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_string())
        })
}

/// The kernel release (Linux).
pub(super) fn kernel() -> Option<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    Some(release.trim().chars().take(100).collect())
}

/// The kind of file system `path` is on, for the common ones (Linux).
#[cfg(target_os = "linux")]
pub(super) fn filesystem(path: &Path) -> Option<&'static str> {
    let stat = rustix::fs::statfs(path).ok()?;
    Some(match i128::from(stat.f_type) {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        0x0102_1994 => "tmpfs",
        0x8584_58F6 => "ramfs",
        0x794C_7630 => "overlayfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        _ => return None,
    })
}

/// The kind of file system `path` is on (unknown off Linux).
#[cfg(not(target_os = "linux"))]
pub(super) fn filesystem(_path: &Path) -> Option<&'static str> {
    None
}
