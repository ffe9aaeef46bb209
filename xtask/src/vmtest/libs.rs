//! A dynamically linked program in the initramfs: the program and every
//! shared library `ldd` lists for it (the dynamic loader too), each at the
//! path `ldd` names, so it runs inside the busybox VM as on this machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::util::capture;

/// Copies `program` and its libraries into `root` at the same paths. Files
/// are copied, not linked: a path `ldd` names through a symlink (such as
/// /lib64/ld-linux-x86-64.so.2) becomes a plain file there.
pub fn copy_with_libraries(program: &Path, root: &Path) -> Result<()> {
    if !program.exists() {
        bail!(
            "{} does not exist: its package is installed by `cargo xtask setup` (or \
             `cargo xtask vmtest`)",
            program.display()
        );
    }
    // ldd runs the dynamic loader in its listing mode (LD_TRACE_LOADED_OBJECTS):
    // the program's own code does not run.
    let listing = capture(Command::new("ldd").arg(program))
        .with_context(|| format!("listing the libraries of {} (ldd)", program.display()))?;
    let libraries =
        ldd_paths(&listing).with_context(|| format!("reading `ldd {}`", program.display()))?;
    for path in std::iter::once(program.to_path_buf()).chain(libraries) {
        let inside = root.join(path.strip_prefix("/").unwrap_or(&path));
        if let Some(dir) = inside.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // std::fs::copy follows symlinks and keeps the mode (executable).
        std::fs::copy(&path, &inside)
            .with_context(|| format!("copying {} into the initramfs", path.display()))?;
    }
    Ok(())
}

/// The files in `ldd`'s listing: `NAME => PATH (ADDRESS)` and, for the
/// loader, `PATH (ADDRESS)`. The vDSO (`linux-vdso.so.1 (ADDRESS)`, no
/// file) is skipped; a library that is `not found` is an error.
fn ldd_paths(listing: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("a library is missing: {line}");
        }
        let file = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match file {
            Some(file) if file.starts_with('/') => paths.push(PathBuf::from(file)),
            _ => {}
        }
    }
    if paths.is_empty() {
        bail!("no library in: {listing}");
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_and_the_loader_without_the_vdso() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffd2b1e4000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c2f000000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f0c2f3c0000)\n";
        assert_eq!(
            ldd_paths(listing).expect("two files"),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn a_missing_library_is_an_error() {
        let listing = "\tlibfoo.so.1 => not found\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f0c2f3c0000)\n";
        let err = ldd_paths(listing)
            .expect_err("libfoo is missing")
            .to_string();
        assert!(err.contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn a_static_program_is_an_error() {
        assert!(ldd_paths("\tnot a dynamic executable\n").is_err());
    }
}
