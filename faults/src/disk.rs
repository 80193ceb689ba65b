//! A small disk for one server's data directory: a tmpfs of a few MB mounted under the test's temp
//! dir, which the harness fills with a file until writes fail with ENOSPC, and frees again.
//!
//! Mount points are named `rfdisk-<pid>-<k>-…` after the creating process, so that a run killed
//! before it could unmount (SIGKILL) is recognised by its dead owner and its mounts lazily unmounted
//! by the next run ([`clean_stale`]). Everything is unmounted on drop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

const PREFIX: &str = "rfdisk-";
const FILLER: &str = "filler";

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The owner PID in one of our mount point names (`rfdisk-<pid>-…`).
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with('-') {
        return None;
    }
    digits.parse().ok()
}

/// Our tmpfs mount points (from /proc/self/mounts).
fn our_mounts() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
            let point = PathBuf::from(point);
            let name = point.file_name()?.to_str()?;
            (fstype == "tmpfs" && owner(name).is_some()).then_some(point)
        })
        .collect()
}

/// Lazily unmounts the tmpfs mounts left by runs whose process is gone.
pub fn clean_stale() {
    for point in our_mounts() {
        let pid = point.file_name().and_then(|n| n.to_str()).and_then(owner);
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            eprintln!("roster-faults: unmounting {} left by a dead run", point.display());
            let _ = run("umount", &["-l", &point.to_string_lossy()]);
        }
    }
}

/// Why a tmpfs cannot be mounted here (not root, no `mount`), or Ok.
pub fn available() -> Result<(), String> {
    let dir = tempfile::Builder::new().prefix("roster-faults-probe").tempdir().map_err(|e| e.to_string())?;
    let disk = Tmpfs::mount(dir.path(), "probe", 1)?;
    drop(disk);
    Ok(())
}

/// A mounted tmpfs; unmounted on drop.
pub struct Tmpfs {
    point: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mb` MB at a new directory under `parent` (named after `label`).
    pub fn mount(parent: &Path, label: &str, mb: u64) -> Result<Tmpfs, String> {
        clean_stale();
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        let point = parent.join(format!("{PREFIX}{}-{k}-{label}", std::process::id()));
        std::fs::create_dir_all(&point).map_err(|e| format!("{}: {e}", point.display()))?;
        let mut disk = Tmpfs { point, mounted: false };
        let opts = format!("size={mb}m,mode=0755");
        run("mount", &["-t", "tmpfs", "-o", &opts, "tmpfs", &disk.point.to_string_lossy()])?;
        disk.mounted = true;
        Ok(disk)
    }

    pub fn path(&self) -> &Path {
        &self.point
    }

    /// Fills the file system: writes a file until ENOSPC, in smaller and smaller pieces down to one
    /// byte. Returns the bytes written.
    pub fn fill(&self) -> Result<u64, String> {
        let path = self.point.join(FILLER);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut written = 0u64;
        let mut chunk = 1usize << 20;
        let block = vec![0xa5u8; chunk];
        while chunk > 0 {
            match f.write(&block[..chunk]) {
                Ok(0) => chunk /= 2,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => chunk /= 2, // ENOSPC
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        Ok(written)
    }

    /// Whether the filler is there.
    pub fn full(&self) -> bool {
        self.point.join(FILLER).exists()
    }

    /// Deletes the filler.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.point.join(FILLER));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let p = self.point.to_string_lossy().into_owned();
            if run("umount", &[&p]).is_err() {
                let _ = run("umount", &["-l", &p]);
            }
            self.mounted = false;
        }
        let _ = std::fs::remove_dir(&self.point);
    }
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn owner_pid_is_read_from_our_mount_points_only() {
        assert_eq!(owner("rfdisk-1234-0-s1"), Some(1234));
        assert_eq!(owner("rfdisk-1234"), None);
        assert_eq!(owner("rfdisk--1"), None);
        assert_eq!(owner("s1"), None);
    }
}
