//! Lexical path checks (pure): absolute, printable, `.`/`..` resolved, inside a storage root.

use std::path::{Component, Path, PathBuf};

use crate::ClonerError;

/// `path` as a UTF-8 string, or [`ClonerError::InvalidPath`].
pub(crate) fn to_str(path: &Path) -> Result<&str, ClonerError> {
    path.to_str().ok_or_else(|| ClonerError::InvalidPath {
        path: path.to_path_buf(),
        reason: "not valid UTF-8".into(),
    })
}

/// Normalise an absolute path lexically: `.` dropped, `a/..` folded, repeated `/` merged. Refused
/// ([`ClonerError::InvalidPath`]): relative or empty paths, non-UTF-8, control characters (newlines,
/// NUL, …), and `..` above `/`.
pub fn normalize(path: &Path) -> Result<PathBuf, ClonerError> {
    let invalid = |reason: &str| ClonerError::InvalidPath {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let text = to_str(path)?;
    if text.chars().any(char::is_control) {
        return Err(invalid("contains a control character"));
    }
    if !path.is_absolute() {
        return Err(invalid("not an absolute path"));
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(invalid("`..` above /"));
                }
            }
            Component::Normal(p) => out.push(p),
            Component::Prefix(_) => return Err(invalid("not a POSIX path")),
        }
    }
    Ok(out)
}

/// True when normalised `path` is `root` or below it (component-wise: `/s/ab` is not inside `/s/a`).
pub fn is_inside(path: &Path, root: &Path) -> bool {
    path.starts_with(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_folds_dots_and_slashes() {
        assert_eq!(
            normalize(Path::new("/var//lib/./vz/images/../images/100/")).unwrap(),
            PathBuf::from("/var/lib/vz/images/100")
        );
        assert_eq!(
            normalize(Path::new("/a/b c/it's")).unwrap(),
            PathBuf::from("/a/b c/it's")
        );
    }

    #[test]
    fn normalize_refuses_relative_control_and_escaping_paths() {
        for bad in ["", "images/1.qcow2", "./x", "/a/../../etc", "/a/b\nc", "/a/\0"] {
            assert!(
                matches!(normalize(Path::new(bad)), Err(ClonerError::InvalidPath { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn inside_is_component_wise() {
        let root = Path::new("/var/lib/vz");
        assert!(is_inside(Path::new("/var/lib/vz/images/1/a.qcow2"), root));
        assert!(is_inside(Path::new("/var/lib/vz"), root));
        assert!(!is_inside(Path::new("/var/lib/vzz/a"), root));
        assert!(!is_inside(
            &normalize(Path::new("/var/lib/vz/../../etc/passwd")).unwrap(),
            root
        ));
    }
}
