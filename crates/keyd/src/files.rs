//! Files only the service's own user may read: the database and its WAL and shared-memory
//! files, the pepper, the tokens, the master key and the address file.
//!
//! - New files are created with mode 0600 given explicitly, whatever the umask.
//! - An existing file that group or others may read or write is tightened (group and other bits
//!   removed) with a warning: files from earlier versions or loosened by hand get fixed on start.
//!   A file that cannot be tightened (another user owns it, a read-only mount) stops the start
//!   with an error naming it: the service will not keep secrets others can read.
//! - A data directory open to group or others is left as it is, with a warning: it may be a
//!   mount point or a directory the operator shares on purpose, and the files in it are private
//!   anyway. Directories the service creates itself are 0700.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Creates `path` (it must not exist) with mode 0600, writes `bytes` and syncs it.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let context = format!("creating {}", path.display());
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| Error::internal(&context, e))?;
    file.write_all(bytes).map_err(|e| Error::internal(&context, e))?;
    file.sync_all().map_err(|e| Error::internal(&context, e))
}

/// Reads a whole file after making it private. `Ok(None)` when there is no such file.
pub fn read_private(path: &Path) -> Result<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::internal(&format!("reading {}", path.display()), e)),
    };
    make_private(&file, path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| Error::internal(&format!("reading {}", path.display()), e))?;
    Ok(Some(bytes))
}

/// Makes sure `path` exists and is private: creates it empty with mode 0600 when absent (SQLite
/// takes an empty file for an empty database), tightens it when it exists.
pub fn create_private(path: &Path) -> Result<()> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path).map_err(|e| Error::internal(&format!("opening {}", path.display()), e))?;
    make_private(&file, path)
}

/// Tightens `path` when it exists; nothing when it does not.
pub fn tighten_if_present(path: &Path) -> Result<()> {
    match File::open(path) {
        Ok(file) => make_private(&file, path),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::internal(&format!("opening {}", path.display()), e)),
    }
}

/// Removes group and other permissions from an open file (through its descriptor, so the file
/// checked is the file changed), with a warning.
#[cfg(unix)]
fn make_private(file: &File, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = file.metadata().map_err(|e| Error::internal(&format!("reading {}", path.display()), e))?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let private = mode & 0o700;
    file.set_permissions(std::fs::Permissions::from_mode(private)).map_err(|e| {
        Error::Internal(format!(
            "{} is open to other users (mode {mode:o}) and cannot be made private: {e}; \
             chmod 600 it, or let the service's user own it",
            path.display()
        ))
    })?;
    tracing::warn!(
        path = %path.display(),
        was = %format!("{mode:o}"),
        now = %format!("{private:o}"),
        "tightened a file other users could read or write"
    );
    Ok(())
}

#[cfg(not(unix))]
fn make_private(_file: &File, _path: &Path) -> Result<()> {
    Ok(())
}

/// Warns when group or others may enter, list or write a data directory.
#[cfg(unix)]
pub fn warn_if_open_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = std::fs::metadata(dir) else {
        return;
    };
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return;
    }
    let mode_text = format!("{mode:o}");
    if mode & 0o022 != 0 {
        tracing::warn!(
            path = %dir.display(),
            mode = %mode_text,
            "data directory is open to other users: they can replace or delete the service's files; \
             chmod 700 it"
        );
    } else {
        tracing::warn!(
            path = %dir.display(),
            mode = %mode_text,
            "data directory is open to other users: they can list the service's files (the files \
             themselves are 0600); chmod 700 it"
        );
    }
}

#[cfg(not(unix))]
pub fn warn_if_open_dir(_dir: &Path) {}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn new_files_are_0600_whatever_the_umask_allows() {
        let dir = tempfile::tempdir().unwrap();
        let written = dir.path().join("written");
        write_private(&written, b"x").unwrap();
        assert_eq!(mode(&written), 0o600);
        assert!(write_private(&written, b"y").is_err(), "an existing file is never overwritten");
        let created = dir.path().join("created");
        create_private(&created).unwrap();
        assert_eq!(mode(&created), 0o600);
        assert_eq!(std::fs::read(&created).unwrap(), b"");
    }

    #[test]
    fn existing_open_files_are_tightened_and_keep_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"content").unwrap();
        set_mode(&path, 0o664);
        assert_eq!(read_private(&path).unwrap().unwrap(), b"content");
        assert_eq!(mode(&path), 0o600);

        set_mode(&path, 0o644);
        create_private(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"content");

        set_mode(&path, 0o444);
        tighten_if_present(&path).unwrap();
        assert_eq!(mode(&path), 0o400, "owner bits are kept");

        set_mode(&path, 0o600);
        tighten_if_present(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn absent_files_are_reported_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing");
        assert!(read_private(&path).unwrap().is_none());
        tighten_if_present(&path).unwrap();
        assert!(!path.exists());
    }
}
