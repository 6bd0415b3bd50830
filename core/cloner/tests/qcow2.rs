//! QCOW2 operations with the real `qemu-img` on a temp storage dir, through both executors: SSH (a real
//! loopback sshd whose shell runs on this machine) and local. Results are checked with `qemu-img` run
//! directly, not through the code under test.

// Helpers here are test code outside `#[test]` functions, where clippy's allow-unwrap-in-tests does
// not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use cloner::{ClonerError, Executor, ImageFormat, LocalExecutor, Qcow2, SshExecutor};
use serde_json::Value;
use testkit::NodeSshd;

/// One sshd for this test binary (stopped by testkit's watchdog when the binary exits).
fn sshd() -> &'static NodeSshd {
    static SSHD: OnceLock<NodeSshd> = OnceLock::new();
    SSHD.get_or_init(|| NodeSshd::start().expect("loopback sshd"))
}

/// Both executors, named for assertion messages.
fn executors() -> Vec<(&'static str, Arc<dyn Executor>)> {
    vec![
        ("ssh", Arc::new(SshExecutor::new(common::pinned(sshd())).unwrap())),
        ("local", Arc::new(LocalExecutor::default())),
    ]
}

/// A fresh storage dir (its name has a space and a quote, so quoting is always exercised).
fn storage() -> (tempfile::TempDir, PathBuf) {
    let dir = testkit::temp_dir("cloner-qcow2-");
    let root = dir.path().join("lab 'nfs' storage");
    std::fs::create_dir_all(root.join("images")).unwrap();
    (dir, root)
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A 1 MiB base image of `format` at `path` whose guest content starts with `pattern`.
fn make_base(path: &Path, format: &str, pattern: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let raw = path.with_extension("seed.raw");
    let mut data = vec![0u8; 1024 * 1024];
    for (i, b) in data.iter_mut().enumerate() {
        *b = pattern[i % pattern.len()];
    }
    std::fs::write(&raw, &data).unwrap();
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        format,
        raw.to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    std::fs::remove_file(&raw).unwrap();
}

/// `qemu-img info --backing-chain --output=json`, run directly.
fn chain(path: &Path) -> Vec<Value> {
    let out = qemu_img(&[
        "info",
        "-U",
        "--backing-chain",
        "--output=json",
        path.to_str().unwrap(),
    ]);
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The guest-visible bytes of an image (converted to raw), for content comparisons.
fn guest_bytes(path: &Path) -> Vec<u8> {
    let out = path.with_extension("guest.raw");
    qemu_img(&[
        "convert",
        "-U",
        "-O",
        "raw",
        path.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

#[tokio::test]
async fn b29_overlay_records_absolute_backing_path_and_real_format() {
    for (name, exec) in executors() {
        let (_tmp, root) = storage();
        let base = root.join("images/9000/base-9000-disk-0.qcow2");
        make_base(&base, "qcow2", b"class base ");
        let overlay = root.join("images/210/vm-210-disk-0.qcow2");
        let q = Qcow2::new(exec, &root).unwrap();
        q.create_overlay(&base, &overlay).await.unwrap();

        let c = chain(&overlay);
        assert_eq!(c.len(), 2, "{name}: {c:?}");
        assert_eq!(c[0]["format"], "qcow2", "{name}");
        assert_eq!(
            c[0]["backing-filename"],
            base.to_str().unwrap(),
            "{name}: absolute backing path"
        );
        assert_eq!(c[0]["backing-filename-format"], "qcow2", "{name}");
        assert_eq!(c[1]["filename"], base.to_str().unwrap(), "{name}");
        assert_eq!(
            guest_bytes(&overlay),
            guest_bytes(&base),
            "{name}: the guest sees the base"
        );

        // Our own reading agrees.
        let info = q.info(&overlay).await.unwrap();
        assert_eq!(info.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(info.virtual_size, 1024 * 1024);
        let ours = q.info_chain(&overlay).await.unwrap();
        assert_eq!(ours.len(), 2);
        assert_eq!(ours[1].format, "qcow2");
    }
}

#[tokio::test]
async fn b32_raw_base_named_like_qcow2_gets_f_raw() {
    for (name, exec) in executors() {
        let (_tmp, root) = storage();
        // The extension lies: this is a raw image.
        let base = root.join("images/9001/base-9001-disk-0.qcow2");
        make_base(&base, "raw", b"raw base ");
        let overlay = root.join("images/211/vm-211-disk-0.qcow2");
        let q = Qcow2::new(exec, &root).unwrap();
        assert_eq!(
            q.info(&base).await.unwrap().image_format().unwrap(),
            ImageFormat::Raw
        );
        q.create_overlay(&base, &overlay).await.unwrap();
        let c = chain(&overlay);
        assert_eq!(c[0]["backing-filename-format"], "raw", "{name}");
        assert_eq!(c[1]["format"], "raw", "{name}");
        assert_eq!(
            guest_bytes(&overlay),
            guest_bytes(&base),
            "{name}: the guest sees the raw base, not garbage"
        );
    }
}

#[tokio::test]
async fn b32_base_in_an_unsupported_format_is_refused() {
    let (_tmp, root) = storage();
    let base = root.join("images/9002/base.vhd");
    make_base(&base, "vpc", b"x");
    let q = Qcow2::new(Arc::new(LocalExecutor::default()), &root).unwrap();
    let overlay = root.join("images/212/vm-212-disk-0.qcow2");
    let e = q.create_overlay(&base, &overlay).await.unwrap_err();
    assert!(
        matches!(&e, ClonerError::UnsupportedFormat(f) if f == "vpc"),
        "{e}"
    );
    assert!(!overlay.exists());
}

#[tokio::test]
async fn odd_file_names_survive_quoting() {
    for (name, exec) in executors() {
        let (_tmp, root) = storage();
        let base = root.join("images/9000/base 'gold' $(id) `x`.qcow2");
        make_base(&base, "qcow2", b"odd");
        let overlay = root.join("images/213/vm 213 it's.qcow2");
        let q = Qcow2::new(exec, &root).unwrap();
        q.create_overlay(&base, &overlay).await.unwrap();
        assert!(q.exists(&overlay).await.unwrap(), "{name}");
        assert_eq!(
            chain(&overlay)[0]["backing-filename"],
            base.to_str().unwrap(),
            "{name}"
        );
        q.remove(&overlay).await.unwrap();
        assert!(!overlay.exists(), "{name}");
        assert!(!q.exists(&overlay).await.unwrap(), "{name}");
    }
}

#[tokio::test]
async fn an_existing_overlay_is_never_overwritten() {
    for (name, exec) in executors() {
        let (_tmp, root) = storage();
        let base = root.join("images/9000/base.qcow2");
        make_base(&base, "qcow2", b"b");
        let overlay = root.join("images/214/vm-214-disk-0.qcow2");
        let q = Qcow2::new(exec, &root).unwrap();
        q.create_overlay_with_format(&base, ImageFormat::Qcow2, &overlay)
            .await
            .unwrap();
        let before = std::fs::read(&overlay).unwrap();
        let e = q.create_overlay(&base, &overlay).await.unwrap_err();
        assert!(
            matches!(&e, ClonerError::AlreadyExists(p) if p == &overlay),
            "{name}: {e}"
        );
        assert_eq!(std::fs::read(&overlay).unwrap(), before, "{name}");
    }
}

#[tokio::test]
async fn flatten_makes_a_standalone_copy_and_leaves_no_temp_file() {
    for (name, exec) in executors() {
        let (_tmp, root) = storage();
        let base = root.join("images/9000/base.raw");
        make_base(&base, "raw", b"teacher ");
        let overlay = root.join("images/200/vm-200-disk-0.qcow2");
        let flat = root.join("images/9100/base-9100-disk-0.qcow2");
        let q = Qcow2::new(exec, &root).unwrap();
        q.create_overlay(&base, &overlay).await.unwrap();
        let info = q.flatten(&overlay, &flat).await.unwrap();
        assert_eq!(info.format, "qcow2", "{name}");
        assert_eq!(info.backing_filename, None, "{name}");
        let c = chain(&flat);
        assert_eq!(c.len(), 1, "{name}: no backing file: {c:?}");
        assert_eq!(guest_bytes(&flat), guest_bytes(&overlay), "{name}");
        let leftovers: Vec<_> = std::fs::read_dir(flat.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(leftovers, vec!["base-9100-disk-0.qcow2".to_string()], "{name}");
        // A second flatten onto the same name is refused, and the first result is untouched.
        let e = q.flatten(&overlay, &flat).await.unwrap_err();
        assert!(matches!(e, ClonerError::AlreadyExists(_)), "{name}: {e}");
        assert_eq!(chain(&flat).len(), 1);
    }
}

#[tokio::test]
async fn b30_safe_rebase_moves_the_overlay_and_keeps_what_the_guest_sees() {
    for (name, exec) in executors() {
        let (_tmp, root) = storage();
        let old_base = root.join("images/9000/base-v1.qcow2");
        make_base(&old_base, "qcow2", b"version one ");
        let new_base = root.join("images/9000/base-v2.raw");
        make_base(&new_base, "raw", b"version two!");
        let overlay = root.join("images/215/vm-215-disk-0.qcow2");
        let q = Qcow2::new(exec, &root).unwrap();
        q.create_overlay(&old_base, &overlay).await.unwrap();
        let seen = guest_bytes(&overlay);
        q.rebase_safe(&overlay, &new_base).await.unwrap();
        let c = chain(&overlay);
        assert_eq!(c[0]["backing-filename"], new_base.to_str().unwrap(), "{name}");
        assert_eq!(c[0]["backing-filename-format"], "raw", "{name}");
        assert_eq!(
            guest_bytes(&overlay),
            seen,
            "{name}: safe rebase keeps the content"
        );
    }
}

#[tokio::test]
async fn b30_unsafe_rebase_only_onto_byte_identical_base() {
    for (name, exec) in executors() {
        let (_tmp, root) = storage();
        let base = root.join("images/9000/base.qcow2");
        make_base(&base, "qcow2", b"same bytes ");
        let copy = root.join("moved/base.qcow2");
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        std::fs::copy(&base, &copy).unwrap();
        let other = root.join("images/9000/other.qcow2");
        make_base(&other, "qcow2", b"other bytes");
        let overlay = root.join("images/216/vm-216-disk-0.qcow2");
        let q = Qcow2::new(exec, &root).unwrap();
        q.create_overlay(&base, &overlay).await.unwrap();

        let e = q.rebase_unsafe_identical(&overlay, &other).await.unwrap_err();
        assert!(matches!(e, ClonerError::NotIdentical { .. }), "{name}: {e}");
        assert_eq!(
            chain(&overlay)[0]["backing-filename"],
            base.to_str().unwrap(),
            "{name}: untouched"
        );

        q.rebase_unsafe_identical(&overlay, &copy).await.unwrap();
        let c = chain(&overlay);
        assert_eq!(c[0]["backing-filename"], copy.to_str().unwrap(), "{name}");
        assert_eq!(c[0]["backing-filename-format"], "qcow2", "{name}: -F kept");
    }
}

#[tokio::test]
async fn template_storage_can_be_allowed_as_a_second_root() {
    let (_tmp, root) = storage();
    let (_tmp2, tpl_root) = storage();
    let base = tpl_root.join("images/9000/base-9000-disk-0.qcow2");
    make_base(&base, "qcow2", b"tpl");
    let overlay = root.join("images/217/vm-217-disk-0.qcow2");
    let q = Qcow2::new(Arc::new(LocalExecutor::default()), &root).unwrap();
    let e = q.create_overlay(&base, &overlay).await.unwrap_err();
    assert!(matches!(e, ClonerError::PathOutsideStorage { .. }), "{e}");
    let q = q.allow_root(&tpl_root).unwrap();
    q.create_overlay(&base, &overlay).await.unwrap();
    assert_eq!(chain(&overlay)[0]["backing-filename"], base.to_str().unwrap());
}

#[tokio::test]
async fn paths_leaving_the_storage_are_refused() {
    for (name, exec) in executors() {
        let (tmp, root) = storage();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let base = root.join("images/9000/base.qcow2");
        make_base(&base, "qcow2", b"b");
        // A symlink inside the storage that points out of it.
        std::os::unix::fs::symlink(&outside, root.join("images/escape")).unwrap();
        let q = Qcow2::new(exec, &root).unwrap();

        let dotdot = root.join("images/../../outside/o.qcow2");
        let e = q.create_overlay(&base, &dotdot).await.unwrap_err();
        assert!(matches!(e, ClonerError::PathOutsideStorage { .. }), "{name}: {e}");

        let e = q
            .create_overlay(&base, &outside.join("o.qcow2"))
            .await
            .unwrap_err();
        assert!(matches!(e, ClonerError::PathOutsideStorage { .. }), "{name}: {e}");

        let via_link = root.join("images/escape/o.qcow2");
        let e = q.create_overlay(&base, &via_link).await.unwrap_err();
        assert!(
            matches!(&e, ClonerError::PathOutsideStorage { path, .. } if path.starts_with(&outside)),
            "{name}: {e}"
        );
        let e = q.remove(&root.join("images/escape/x")).await.unwrap_err();
        assert!(matches!(e, ClonerError::PathOutsideStorage { .. }), "{name}: {e}");
        let e = q.info(Path::new("/etc/passwd")).await.unwrap_err();
        assert!(matches!(e, ClonerError::PathOutsideStorage { .. }), "{name}: {e}");

        let e = q
            .create_overlay(
                Path::new("images/9000/base.qcow2"),
                &root.join("images/1/o.qcow2"),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, ClonerError::InvalidPath { .. }), "{name}: {e}");
        let e = q.remove(&root).await.unwrap_err();
        assert!(matches!(e, ClonerError::InvalidPath { .. }), "{name}: {e}");

        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "{name}: nothing written outside"
        );
    }
}

#[tokio::test]
async fn mkdir_exists_and_remove_work_inside_the_storage() {
    for (name, exec) in executors() {
        let (_tmp, root) = storage();
        let q = Qcow2::new(exec, &root).unwrap();
        let dir = root.join("images/300/sub dir");
        q.mkdir_p(&dir).await.unwrap();
        q.mkdir_p(&root).await.unwrap();
        assert!(dir.is_dir(), "{name}");
        assert!(q.exists(&dir).await.unwrap(), "{name}");
        let file = dir.join("f.qcow2");
        assert!(!q.exists(&file).await.unwrap(), "{name}");
        q.remove(&file).await.unwrap(); // already gone: fine
        let e = q.info(&file).await.unwrap_err();
        assert!(matches!(e, ClonerError::CommandFailed { .. }), "{name}: {e}");
        let e = q.remove(&dir).await.unwrap_err();
        assert!(
            matches!(e, ClonerError::CommandFailed { .. }),
            "{name}: directories are not removed: {e}"
        );
    }
}
