//! Opening files of the host's filesystem without leaving it.
//!
//! Container runtimes keep their state in directories a container's owner
//! partly shapes (a bind-mounted volume, an image's layers, a compromised
//! runtime's files), so a symlink there may point anywhere. Every file is
//! opened with openat2(2) from a directory descriptor of `--host-root`:
//! RESOLVE_IN_ROOT resolves `..` and absolute symlinks as if that directory
//! were `/`, so no path leads outside it, and RESOLVE_NO_MAGICLINKS refuses
//! /proc's magic links (`/proc/PID/root`, `/proc/PID/fd/N`), which would.

use std::{
    ffi::{CStr, CString, OsString},
    fs::File,
    io::{self, Read as _},
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, IntoRawFd as _, OwnedFd},
        unix::ffi::{OsStrExt as _, OsStringExt as _},
    },
    path::Path,
};

/// The most bytes read from one state file. Docker's config.v2.json and an
/// OCI config.json are a few KiB to a few tens of KiB; Podman's
/// containers.json grows by about 1 KiB per container. A larger file is
/// not one of these, and reading it whole on the pipeline's thread would
/// delay every record behind it and hold its size in memory.
pub const MAX_STATE_FILE_BYTES: u64 = 4 << 20;

/// Why a state file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostFsError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("larger than {MAX_STATE_FILE_BYTES} bytes")]
    TooLarge,
    /// A FIFO, a device or a socket where a file should be: reading it
    /// could block the pipeline or act on a device.
    #[error("not a regular file")]
    NotRegular,
}

impl HostFsError {
    /// The file (or a directory on its way) is not there: the usual answer
    /// for a runtime that does not run on this host, or an id it does not
    /// have.
    pub fn is_absent(&self) -> bool {
        matches!(self, Self::Io(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)))
    }
}

/// A directory opened once (`--host-root`), inside which paths are resolved.
#[derive(Debug)]
pub struct HostRoot {
    dir: OwnedFd,
}

impl HostRoot {
    pub fn open(path: &Path) -> io::Result<Self> {
        let path = c_path(path)?;
        // SAFETY: `path` is NUL-terminated; the flags ask for a descriptor
        // only (O_PATH), closed on exec.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(Self {
            dir: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Opens `path` (relative to the root; an absolute one is read as
    /// relative too) with openat2(2), never leaving the root.
    fn open_in(&self, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
        open_beneath(self.dir.as_fd(), path, flags)
    }

    /// The whole file at `path`, if it is a regular file of at most
    /// [`MAX_STATE_FILE_BYTES`].
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, HostFsError> {
        // O_NONBLOCK: opening a FIFO planted where a file should be must not
        // wait for a writer (the type check below then refuses it).
        let fd = self.open_in(path, libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK)?;
        let file = File::from(fd);
        if !file.metadata()?.file_type().is_file() {
            return Err(HostFsError::NotRegular);
        }
        let mut bytes = Vec::new();
        file.take(MAX_STATE_FILE_BYTES + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_STATE_FILE_BYTES {
            return Err(HostFsError::TooLarge);
        }
        Ok(bytes)
    }

    /// The names in the directory at `path` (without `.` and `..`).
    pub fn list(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let fd = self.open_in(path, libc::O_RDONLY | libc::O_DIRECTORY)?;
        let raw = fd.into_raw_fd();
        // SAFETY: `raw` is an open directory descriptor we own; on success
        // the DIR stream owns it and closedir() closes it.
        let dir = unsafe { libc::fdopendir(raw) };
        if dir.is_null() {
            let error = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `raw` is still ours to close.
            unsafe { libc::close(raw) };
            return Err(error);
        }
        let mut names = Vec::new();
        loop {
            // SAFETY: `dir` is a valid stream until closedir() below; the
            // entry readdir returns stays valid until the next call, and its
            // name is NUL-terminated.
            let entry = unsafe { libc::readdir(dir) };
            if entry.is_null() {
                // The end, or an error: either way, what was read so far.
                break;
            }
            // SAFETY: as above.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
            let name = name.to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name.to_vec()));
            }
        }
        // SAFETY: `dir` came from fdopendir and is closed once.
        unsafe { libc::closedir(dir) };
        Ok(names)
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a path"))
}

/// openat2(2) of `path` from `dir` with RESOLVE_IN_ROOT and
/// RESOLVE_NO_MAGICLINKS (Linux 5.6 and later; older kernels answer ENOSYS
/// and nothing is read).
fn open_beneath(dir: BorrowedFd<'_>, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    // SAFETY: open_how is plain integers; all-zero is its documented
    // "no options" value, and the struct is non_exhaustive.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `path` is NUL-terminated, `how` is a valid open_how and its
    // size is passed with it; the returned descriptor is checked below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &raw const how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd)
        .map_err(|_| io::Error::other("openat2 returned an impossible descriptor"))?;
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("oomtrace-hostfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn a_symlink_cannot_lead_outside_the_root() {
        let base = scratch("escape");
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("state")).expect("dir");
        std::fs::create_dir_all(&outside).expect("dir");
        std::fs::write(outside.join("secret"), "outside").expect("write");
        std::fs::write(root.join("inside"), "inside").expect("write");
        // Relative, absolute, and /proc magic-link escapes.
        symlink("../../outside/secret", root.join("state/relative")).expect("link");
        symlink(outside.join("secret"), root.join("state/absolute")).expect("link");
        symlink("/proc/self/root/etc/hostname", root.join("state/magic")).expect("link");
        symlink("../inside", root.join("state/within")).expect("link");
        let host = HostRoot::open(&root).expect("open root");
        for escape in ["state/relative", "state/absolute"] {
            let error = host.read(Path::new(escape)).expect_err(escape);
            assert!(error.is_absent(), "{escape}: {error}");
        }
        assert!(host.read(Path::new("state/magic")).is_err());
        assert!(host.read(Path::new("../outside/secret")).is_err());
        assert_eq!(
            host.read(Path::new("state/within")).expect("inside"),
            b"inside"
        );
        // An absolute path is the root's own.
        assert_eq!(host.read(Path::new("/inside")).expect("inside"), b"inside");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn only_small_regular_files_are_read() {
        let root = scratch("kinds");
        std::fs::create_dir_all(root.join("d/e")).expect("dir");
        let fifo = c_path(&root.join("fifo")).expect("path");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let big = File::create(root.join("big")).expect("create");
        big.set_len(MAX_STATE_FILE_BYTES + 1).expect("grow");
        let host = HostRoot::open(&root).expect("open root");
        assert!(matches!(
            host.read(Path::new("fifo")),
            Err(HostFsError::NotRegular)
        ));
        assert!(matches!(
            host.read(Path::new("big")),
            Err(HostFsError::TooLarge)
        ));
        assert!(
            host.read(Path::new("missing"))
                .expect_err("absent")
                .is_absent()
        );
        let mut names = host.list(Path::new("d")).expect("list");
        names.sort();
        assert_eq!(names, [OsString::from("e")]);
        let _ = std::fs::remove_dir_all(&root);
    }
}
