//! Writing admin API changes back to the config file, keeping the user's comments and
//! layout (toml_edit), atomically (temp file + rename in the same directory), so a
//! restart never loses a change and a reader never sees half a file.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Value};

use crate::cohort::BasisPoints;

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("the config file is not valid TOML: {0}")]
    NotToml(String),
    #[error("the config file has no [[routes]] entry named {0:?}")]
    NoSuchRoute(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A ConfigMap mount, a read-only file, or a directory cohort may not write to.
    #[error(
        "{path} is read-only ({reason}); change the file where it comes from (e.g. the ConfigMap)"
    )]
    ReadOnly { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Sets `canary_percent` of the `[[routes]]` entry named `route`, writing an integer when
/// the value is whole (`10`, not `10.0`) and keeping the comment beside the old value.
pub fn set_canary_percent(text: &str, route: &str, bp: BasisPoints) -> Result<String, EditError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::NotToml(e.message().to_owned()))?;
    let table = doc
        .get_mut("routes")
        .and_then(Item::as_array_of_tables_mut)
        .and_then(|routes| {
            routes
                .iter_mut()
                .find(|t| t.get("name").and_then(Item::as_str) == Some(route))
        })
        .ok_or_else(|| EditError::NoSuchRoute(route.to_owned()))?;
    let mut value: Value = if bp.get() % 100 == 0 {
        Value::from(i64::from(bp.get() / 100))
    } else {
        Value::from(bp.percent())
    };
    match table.get_mut("canary_percent").and_then(Item::as_value_mut) {
        Some(old) => {
            *value.decor_mut() = old.decor().clone();
            *old = value;
        }
        None => {
            // Place it after `salt` would need reordering; appending keeps everything else.
            table.insert("canary_percent", Item::Value(value));
        }
    }
    Ok(doc.to_string())
}

/// Replaces the file at `path` (following symlinks to the real file) with `text`.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), WriteError> {
    let io_error = |source: io::Error| WriteError::Io {
        path: path.to_path_buf(),
        source,
    };
    let target = fs::canonicalize(path).map_err(io_error)?;
    let metadata = fs::metadata(&target).map_err(io_error)?;
    if metadata.permissions().readonly() {
        return Err(WriteError::ReadOnly {
            path: path.to_path_buf(),
            reason: "the file has no write permission".to_owned(),
        });
    }
    let dir = target.parent().unwrap_or_else(|| Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".to_owned());
    let temp = dir.join(format!(".{name}.cohort-{}.tmp", std::process::id()));
    let result = write_then_rename(&temp, &target, text, metadata.permissions());
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(|source| match source.kind() {
        io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied => {
            WriteError::ReadOnly {
                path: path.to_path_buf(),
                reason: source.to_string(),
            }
        }
        _ => io_error(source),
    })
}

/// Writes `text` to `path` atomically whether or not it exists yet (state files):
/// a temp file beside it, then a rename. Creates the directory if needed.
pub fn write_new_atomically(path: &Path, text: &str) -> Result<(), WriteError> {
    let io_error = |source: io::Error| WriteError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).map_err(io_error)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_owned());
    let temp = dir.join(format!(".{name}.cohort-{}.tmp", std::process::id()));
    let permissions = <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644);
    let result = write_then_rename(&temp, path, text, permissions);
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(io_error)
}

fn write_then_rename(
    temp: &Path,
    target: &Path,
    text: &str,
    permissions: fs::Permissions,
) -> io::Result<()> {
    let mut file = fs::File::create(temp)?;
    file.write_all(text.as_bytes())?;
    file.set_permissions(permissions)?;
    file.sync_all()?;
    drop(file);
    fs::rename(temp, target)?;
    // Make the rename itself durable.
    if let Some(dir) = target.parent() {
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# top comment
[listen]
address = "127.0.0.1:0"   # where

[[routes]]
name = "a"
salt = "s"
canary_percent = 10       # widen slowly
stable = { endpoints = ["http://127.0.0.1:1"] }

# second route
[[routes]]
name = "b"
salt = "t"
stable = { endpoints = ["http://127.0.0.1:1"] }
"#;

    fn bp(percent: f64) -> BasisPoints {
        BasisPoints::from_percent(percent).expect("valid percent")
    }

    #[test]
    fn changes_only_the_value_and_keeps_comments() {
        let out = set_canary_percent(TEXT, "a", bp(25.0)).expect("edit");
        assert_eq!(
            out,
            TEXT.replace(
                "canary_percent = 10       # widen slowly",
                "canary_percent = 25       # widen slowly"
            )
        );
    }

    #[test]
    fn fractional_values_are_written_as_floats_and_whole_ones_as_integers() {
        let out = set_canary_percent(TEXT, "a", bp(2.5)).expect("edit");
        assert!(
            out.contains("canary_percent = 2.5       # widen slowly"),
            "{out}"
        );
        let out = set_canary_percent(&out, "a", bp(0.25)).expect("edit");
        assert!(out.contains("canary_percent = 0.25"), "{out}");
        let out = set_canary_percent(&out, "a", bp(100.0)).expect("edit");
        assert!(out.contains("canary_percent = 100 "), "{out}");
    }

    #[test]
    fn a_route_without_the_key_gets_it() {
        let out = set_canary_percent(TEXT, "b", bp(5.0)).expect("edit");
        assert!(out.contains("# second route"));
        assert!(out.contains("canary_percent = 5"), "{out}");
        let doc: DocumentMut = out.parse().expect("toml");
        assert_eq!(doc["routes"][1]["canary_percent"].as_integer(), Some(5));
    }

    #[test]
    fn unknown_routes_and_broken_files_are_errors() {
        assert!(matches!(
            set_canary_percent(TEXT, "zzz", bp(1.0)),
            Err(EditError::NoSuchRoute(_))
        ));
        assert!(matches!(
            set_canary_percent("[[routes]\n", "a", bp(1.0)),
            Err(EditError::NotToml(_))
        ));
    }

    #[test]
    fn atomic_write_replaces_content_and_keeps_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cohort.toml");
        fs::write(&path, "old").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        write_atomically(&path, "new").expect("atomic write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "new");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    #[test]
    fn symlinked_files_are_written_through_the_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real.toml");
        let link = dir.path().join("cohort.toml");
        fs::write(&real, "old").expect("write");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        write_atomically(&link, "new").expect("write");
        assert!(fs::symlink_metadata(&link)
            .expect("meta")
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&real).expect("read"), "new");
    }

    #[test]
    fn read_only_files_are_refused_untouched() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cohort.toml");
        fs::write(&path, "old").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).expect("chmod");
        assert!(matches!(
            write_atomically(&path, "new"),
            Err(WriteError::ReadOnly { .. })
        ));
        assert_eq!(fs::read_to_string(&path).expect("read"), "old");
    }
}
