//! The data dir holds API key hashes, the token signing secret and every stored item: it is readable by
//! its owner only (0700), and the files the service creates in it are 0600. SQLite gives its `-wal` and
//! `-shm` files the mode of their database file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// What the service keeps in its data dir (names, or name prefixes for SQLite's side files).
const OWN_ENTRIES: &[&str] = &["graph.sqlite3", "keys.sqlite3", "jwt.secret", "admin.key", "vectors"];

/// Creates `dir` (and its parents) owner-only when missing. An existing dir is made owner-only when it holds
/// nothing but the service's own files; a shared folder (say `/tmp` given as the data dir) is left as it is,
/// with a warning, since changing it would break its other users.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let mut entries = std::fs::read_dir(dir)?;
    let only_ours = entries.all(|entry| {
        entry.is_ok_and(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            OWN_ENTRIES.iter().any(|own| name.starts_with(own))
        })
    });
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if only_ours {
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    } else if mode & 0o077 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            "the data dir holds other files and is open to other users; its permissions are left as they are \
             (use a dedicated data dir: the service makes it 0700)"
        );
    }
    Ok(())
}

/// Makes an existing file owner-only (read and write).
pub fn private_file(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Writes `contents` to a new owner-only file, replacing any file (or link) at `path`: the new file is
/// created exclusively and never through a symbolic link.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
