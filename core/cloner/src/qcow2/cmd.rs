//! Pure `qemu-img` command builders: argv out, no I/O. Golden-string tests below pin `create -b`
//! with `-F`, `rebase` with `-F`, and a base format taken from `qemu-img info`, not `qcow2` hard-coded.
//! Every builder refuses relative paths, so an overlay never records a relative backing file
//! that breaks when the overlay moves, and `-b` never appears without `-F` (qemu-img ≥ 6.1 refuses that).

use std::path::Path;

use super::ImageFormat;
use super::path::to_str;
use crate::ClonerError;

/// An absolute path as an argv element, or [`ClonerError::InvalidPath`].
fn abs(path: &Path, what: &str) -> Result<String, ClonerError> {
    let s = to_str(path)?;
    if !path.is_absolute() {
        return Err(ClonerError::InvalidPath {
            path: path.to_path_buf(),
            reason: format!("the {what} must be an absolute path"),
        });
    }
    Ok(s.to_string())
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// `qemu-img info --output=json -U -f <format> [--backing-chain] <path>`. `-U` (force-share) reads an
/// image that a running VM holds open. The format is always stated (`-f`), never probed: a raw disk whose
/// bytes look like a qcow2 header must stay raw. Without `--backing-chain` qemu-img does not open the
/// backing file, which is how [`super::Qcow2::info_chain`] checks each reference before anything opens it.
pub fn info(path: &Path, format: ImageFormat, backing_chain: bool) -> Result<Vec<String>, ClonerError> {
    let mut a = argv(&["qemu-img", "info", "--output=json", "-U", "-f", format.as_str()]);
    if backing_chain {
        a.push("--backing-chain".into());
    }
    a.push(abs(path, "image")?);
    Ok(a)
}

/// `qemu-img create -f qcow2 -F <base format> -b <absolute base> <overlay>`, never `-b` without `-F`.
/// `base_format` must be what `qemu-img info` reported for the base (a raw base gets `-F raw`), never guessed
/// from the file name.
pub fn create_overlay(
    base: &Path,
    base_format: ImageFormat,
    overlay: &Path,
) -> Result<Vec<String>, ClonerError> {
    let base = abs(base, "backing file")?;
    let overlay = abs(overlay, "overlay")?;
    Ok(argv(&[
        "qemu-img",
        "create",
        "-f",
        "qcow2",
        "-F",
        base_format.as_str(),
        "-b",
        &base,
        &overlay,
    ]))
}

/// How `qemu-img rebase` treats the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebaseMode {
    /// Safe rebase: qemu-img copies into the overlay every cluster where old and new base differ, so the
    /// guest sees the same disk afterwards.
    Safe,
    /// `-u`: only rewrite the backing-file name. Correct only when the new base is byte-identical to the
    /// old one; [`super::Qcow2::rebase_unsafe_identical`] checks that before building this.
    UnsafeIdentical,
}

/// `qemu-img rebase [-u] -f qcow2 -F <new base format> -b <absolute new base> <overlay>`: `-f` is
/// the overlay's format, `-F` the new base's, both always given.
pub fn rebase(
    overlay: &Path,
    new_base: &Path,
    new_base_format: ImageFormat,
    mode: RebaseMode,
) -> Result<Vec<String>, ClonerError> {
    let new_base = abs(new_base, "new backing file")?;
    let overlay = abs(overlay, "overlay")?;
    let mut a = argv(&["qemu-img", "rebase"]);
    if mode == RebaseMode::UnsafeIdentical {
        a.push("-u".into());
    }
    a.extend(argv(&[
        "-f",
        "qcow2",
        "-F",
        new_base_format.as_str(),
        "-b",
        &new_base,
        &overlay,
    ]));
    Ok(a)
}

/// `qemu-img convert -f <src format> -O qcow2 <src> <dst>`: a standalone qcow2 copy of `src` with its
/// whole backing chain merged in (flatten). The source format is stated, not probed.
pub fn convert(src: &Path, src_format: ImageFormat, dst: &Path) -> Result<Vec<String>, ClonerError> {
    let src = abs(src, "source image")?;
    let dst = abs(dst, "target image")?;
    Ok(argv(&[
        "qemu-img",
        "convert",
        "-f",
        src_format.as_str(),
        "-O",
        "qcow2",
        &src,
        &dst,
    ]))
}

/// What [`guard_new_file`]'s script writes to stderr (with exit status [`GUARD_EXISTS_STATUS`]) when the
/// target already exists.
pub const GUARD_EXISTS_MARKER: &str = "proxlab-guard: target exists";

/// Exit status of [`guard_new_file`]'s script when the target already exists.
pub const GUARD_EXISTS_STATUS: u32 = 200;

/// The script of [`guard_new_file`]: `$1` target, `$2` directory, then the command.
const GUARD_SCRIPT: &str = r#"if [ -e "$1" ] || [ -L "$1" ]; then echo "proxlab-guard: target exists" >&2; exit 200; fi; mkdir -p -- "$2" || exit; shift 2; exec "$@""#;

/// Wrap `command` so that, in ONE remote round trip, it refuses to run when `target` exists (or is a
/// symlink, even a dangling one), creates `dir` (`mkdir -p`), then `exec`s `command`:
/// `sh -c '<script>' proxlab-guard <target> <dir> <command…>`. On an existing target the script exits with
/// [`GUARD_EXISTS_STATUS`] and [`GUARD_EXISTS_MARKER`] on stderr. Used for `qemu-img create` (which would
/// silently overwrite) and for moving a flattened image into place.
pub fn guard_new_file(target: &Path, dir: &Path, command: Vec<String>) -> Result<Vec<String>, ClonerError> {
    let mut a = argv(&["sh", "-c", GUARD_SCRIPT, "proxlab-guard"]);
    a.push(abs(target, "target")?);
    a.push(abs(dir, "directory")?);
    a.extend(command);
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell_join;

    /// The argv that makes an overlay at `overlay` over the `format` image `base`.
    fn overlay(base: &str, format: ImageFormat, overlay: &str) -> Vec<String> {
        create_overlay(Path::new(base), format, Path::new(overlay)).unwrap()
    }

    /// The argv that rebases `overlay` onto the `format` image `base`.
    fn rebased(overlay: &str, base: &str, format: ImageFormat, mode: RebaseMode) -> Vec<String> {
        rebase(Path::new(overlay), Path::new(base), format, mode).unwrap()
    }

    #[test]
    fn overlay_golden_string() {
        let a = overlay(
            "/var/lib/vz/images/9000/base-9000-disk-0.qcow2",
            ImageFormat::Qcow2,
            "/var/lib/vz/images/210/vm-210-disk-0.qcow2",
        );
        assert_eq!(
            shell_join(&a),
            "qemu-img create -f qcow2 -F qcow2 -b /var/lib/vz/images/9000/base-9000-disk-0.qcow2 /var/lib/vz/images/210/vm-210-disk-0.qcow2"
        );
        let b = a.iter().position(|x| x == "-b").unwrap();
        let f = a.iter().position(|x| x == "-F").unwrap();
        assert_eq!(a[f + 1], "qcow2");
        assert_eq!(a[b + 1], "/var/lib/vz/images/9000/base-9000-disk-0.qcow2");
    }

    #[test]
    fn paths_with_spaces_and_quotes_stay_one_argument() {
        let a = overlay(
            "/mnt/pve/my nfs/base 'gold'.qcow2",
            ImageFormat::Qcow2,
            "/mnt/pve/my nfs/images/210/vm-210-disk-0.qcow2",
        );
        assert_eq!(a.len(), 9);
        assert_eq!(a[7], "/mnt/pve/my nfs/base 'gold'.qcow2");
        assert_eq!(
            shell_join(&a),
            r"qemu-img create -f qcow2 -F qcow2 -b '/mnt/pve/my nfs/base '\''gold'\''.qcow2' '/mnt/pve/my nfs/images/210/vm-210-disk-0.qcow2'"
        );
    }

    #[test]
    fn relative_backing_path_is_refused() {
        let e = create_overlay(
            Path::new("../9000/base-9000-disk-0.qcow2"),
            ImageFormat::Qcow2,
            Path::new("/var/lib/vz/images/210/vm-210-disk-0.qcow2"),
        )
        .unwrap_err();
        assert!(matches!(e, ClonerError::InvalidPath { .. }), "{e}");
        assert!(
            create_overlay(
                Path::new("/b.qcow2"),
                ImageFormat::Qcow2,
                Path::new("vm-210-disk-0.qcow2")
            )
            .is_err()
        );
    }

    #[test]
    fn safe_rebase_golden_string() {
        let a = rebased(
            "/var/lib/vz/images/210/vm-210-disk-0.qcow2",
            "/mnt/pve/nfs-tpl/images/9000/base-9000-disk-0.qcow2",
            ImageFormat::Qcow2,
            RebaseMode::Safe,
        );
        assert_eq!(
            shell_join(&a),
            "qemu-img rebase -f qcow2 -F qcow2 -b /mnt/pve/nfs-tpl/images/9000/base-9000-disk-0.qcow2 /var/lib/vz/images/210/vm-210-disk-0.qcow2"
        );
    }

    #[test]
    fn unsafe_rebase_still_carries_f_upper() {
        let a = rebased(
            "/var/lib/vz/images/210/vm-210-disk-0.qcow2",
            "/mnt/pve/nfs-tpl/images/9000/base-9000-disk-0.raw",
            ImageFormat::Raw,
            RebaseMode::UnsafeIdentical,
        );
        assert_eq!(
            shell_join(&a),
            "qemu-img rebase -u -f qcow2 -F raw -b /mnt/pve/nfs-tpl/images/9000/base-9000-disk-0.raw /var/lib/vz/images/210/vm-210-disk-0.qcow2"
        );
    }

    #[test]
    fn raw_base_from_info_json_gives_f_raw() {
        let json = r#"{"format":"raw","virtual-size":10737418240,"filename":"/var/lib/vz/images/9001/base-9001-disk-0.raw"}"#;
        let info = super::super::ImageInfo::parse(json).unwrap();
        let a = overlay(
            &info.filename,
            info.image_format().unwrap(),
            "/var/lib/vz/images/211/vm-211-disk-0.qcow2",
        );
        assert_eq!(
            shell_join(&a),
            "qemu-img create -f qcow2 -F raw -b /var/lib/vz/images/9001/base-9001-disk-0.raw /var/lib/vz/images/211/vm-211-disk-0.qcow2"
        );
    }

    #[test]
    fn format_comes_from_json_not_the_extension() {
        // A qcow2 image named `.raw`: the JSON wins.
        let json = r#"{"format":"qcow2","virtual-size":1048576,"filename":"/s/images/9/base-9-disk-0.raw"}"#;
        let info = super::super::ImageInfo::parse(json).unwrap();
        assert_eq!(info.image_format().unwrap(), ImageFormat::Qcow2);
        let a = overlay(&info.filename, info.image_format().unwrap(), "/s/o.qcow2");
        assert_eq!(a[5], "qcow2");
    }

    #[test]
    fn unknown_format_is_refused() {
        let json = r#"{"format":"vpc","virtual-size":1048576,"filename":"/s/base.vhd"}"#;
        let info = super::super::ImageInfo::parse(json).unwrap();
        assert!(matches!(info.image_format(), Err(ClonerError::UnsupportedFormat(f)) if f == "vpc"));
    }

    #[test]
    fn guard_wraps_the_command_as_positional_arguments() {
        let inner = overlay("/s/b.qcow2", ImageFormat::Qcow2, "/s/images/210/o 1.qcow2");
        let a = guard_new_file(
            Path::new("/s/images/210/o 1.qcow2"),
            Path::new("/s/images/210"),
            inner.clone(),
        )
        .unwrap();
        assert_eq!(&a[..2], ["sh", "-c"]);
        assert_eq!(a[3], "proxlab-guard");
        assert_eq!(a[4], "/s/images/210/o 1.qcow2");
        assert_eq!(a[5], "/s/images/210");
        assert_eq!(&a[6..], inner.as_slice());
        assert!(shell_join(&a).ends_with(
            "proxlab-guard '/s/images/210/o 1.qcow2' /s/images/210 qemu-img create -f qcow2 -F qcow2 -b /s/b.qcow2 '/s/images/210/o 1.qcow2'"
        ));
    }

    #[test]
    fn guard_refuses_an_existing_target_and_runs_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub dir/it's.txt");
        let cmd = vec!["touch".to_string(), target.to_str().unwrap().to_string()];
        let a = guard_new_file(&target, target.parent().unwrap(), cmd).unwrap();
        let run = || std::process::Command::new(&a[0]).args(&a[1..]).output().unwrap();
        assert!(run().status.success());
        assert!(target.exists());
        let again = run();
        assert_eq!(again.status.code(), Some(GUARD_EXISTS_STATUS as i32));
        assert!(String::from_utf8_lossy(&again.stderr).contains(GUARD_EXISTS_MARKER));
        // A dangling symlink counts as existing: qemu-img would follow it.
        let link = dir.path().join("link.qcow2");
        std::os::unix::fs::symlink("/nonexistent/elsewhere", &link).unwrap();
        let b = guard_new_file(&link, dir.path(), vec!["true".into()]).unwrap();
        let out = std::process::Command::new(&b[0]).args(&b[1..]).output().unwrap();
        assert_eq!(out.status.code(), Some(GUARD_EXISTS_STATUS as i32));
    }

    #[test]
    fn info_and_convert_argv() {
        assert_eq!(
            shell_join(&info(Path::new("/s/a b.qcow2"), ImageFormat::Qcow2, true).unwrap()),
            "qemu-img info --output=json -U -f qcow2 --backing-chain '/s/a b.qcow2'"
        );
        assert_eq!(
            shell_join(
                &convert(
                    Path::new("/s/o.qcow2"),
                    ImageFormat::Qcow2,
                    Path::new("/s/.b.qcow2.flatten-tmp")
                )
                .unwrap()
            ),
            "qemu-img convert -f qcow2 -O qcow2 /s/o.qcow2 /s/.b.qcow2.flatten-tmp"
        );
        assert_eq!(
            shell_join(&info(Path::new("/s/t.raw"), ImageFormat::Raw, false).unwrap()),
            "qemu-img info --output=json -U -f raw /s/t.raw"
        );
        assert!(info(Path::new("rel.qcow2"), ImageFormat::Qcow2, false).is_err());
    }
}
