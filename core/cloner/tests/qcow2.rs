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
async fn overlay_records_absolute_backing_path_and_real_format() {
    for (name, exec) in executors() {
        let (_tmp, root) = storage();
        let base = root.join("images/9000/base-9000-disk-0.qcow2");
        make_base(&base, "qcow2", b"class base ");
        let overlay = root.join("images/210/vm-210-disk-0.qcow2");
        let q = Qcow2::new(exec, &root).unwrap();
        q.create_overlay(&base, ImageFormat::Qcow2, &overlay)
            .await
            .unwrap();

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
        let info = q.info(&overlay, ImageFormat::Qcow2).await.unwrap();
        assert_eq!(info.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(info.virtual_size, 1024 * 1024);
        let ours = q.info_chain(&overlay, ImageFormat::Qcow2).await.unwrap();
        assert_eq!(ours.len(), 2);
        assert_eq!(ours[1].format, "qcow2");
    }
}

#[tokio::test]
async fn raw_base_named_like_qcow2_gets_f_raw() {
    for (name, exec) in executors() {
        let (_tmp, root) = storage();
        // The extension lies: this is a raw image.
        let base = root.join("images/9001/base-9001-disk-0.qcow2");
        make_base(&base, "raw", b"raw base ");
        let overlay = root.join("images/211/vm-211-disk-0.qcow2");
        let q = Qcow2::new(exec, &root).unwrap();
        assert_eq!(
            q.info(&base, ImageFormat::Raw)
                .await
                .unwrap()
                .image_format()
                .unwrap(),
            ImageFormat::Raw
        );
        // Stated as qcow2 (the name suggests it), qemu-img refuses to read it so: nothing is written.
        let e = q
            .create_overlay(&base, ImageFormat::Qcow2, &overlay)
            .await
            .unwrap_err();
        assert!(matches!(e, ClonerError::UnsupportedFormat(_)), "{name}: {e}");
        assert!(!overlay.exists(), "{name}");
        q.create_overlay(&base, ImageFormat::Raw, &overlay).await.unwrap();
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
async fn base_in_an_unsupported_format_is_refused() {
    let (_tmp, root) = storage();
    let base = root.join("images/9002/base.vhd");
    make_base(&base, "vpc", b"x");
    let q = Qcow2::new(Arc::new(LocalExecutor::default()), &root).unwrap();
    let overlay = root.join("images/212/vm-212-disk-0.qcow2");
    let e = q
        .create_overlay(&base, ImageFormat::Qcow2, &overlay)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClonerError::UnsupportedFormat(f) if f.contains("is not a qcow2 image")),
        "{e}"
    );
    // Only qcow2 and raw images are read at all.
    let e = q
        .create_overlay(&base, ImageFormat::Vmdk, &overlay)
        .await
        .unwrap_err();
    assert!(matches!(&e, ClonerError::UnsafeImage { .. }), "{e}");
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
        q.create_overlay(&base, ImageFormat::Qcow2, &overlay)
            .await
            .unwrap();
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
        let e = q
            .create_overlay(&base, ImageFormat::Qcow2, &overlay)
            .await
            .unwrap_err();
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
        q.create_overlay(&base, ImageFormat::Raw, &overlay).await.unwrap();
        let info = q.flatten(&overlay, ImageFormat::Qcow2, &flat).await.unwrap();
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
        let e = q.flatten(&overlay, ImageFormat::Qcow2, &flat).await.unwrap_err();
        assert!(matches!(e, ClonerError::AlreadyExists(_)), "{name}: {e}");
        assert_eq!(chain(&flat).len(), 1);
    }
}

#[tokio::test]
async fn safe_rebase_moves_the_overlay_and_keeps_what_the_guest_sees() {
    for (name, exec) in executors() {
        let (_tmp, root) = storage();
        let old_base = root.join("images/9000/base-v1.qcow2");
        make_base(&old_base, "qcow2", b"version one ");
        let new_base = root.join("images/9000/base-v2.raw");
        make_base(&new_base, "raw", b"version two!");
        let overlay = root.join("images/215/vm-215-disk-0.qcow2");
        let q = Qcow2::new(exec, &root).unwrap();
        q.create_overlay(&old_base, ImageFormat::Qcow2, &overlay)
            .await
            .unwrap();
        let seen = guest_bytes(&overlay);
        q.rebase_safe(&overlay, &new_base, ImageFormat::Raw)
            .await
            .unwrap();
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
async fn unsafe_rebase_only_onto_byte_identical_base() {
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
        q.create_overlay(&base, ImageFormat::Qcow2, &overlay)
            .await
            .unwrap();

        let e = q
            .rebase_unsafe_identical(&overlay, &other, ImageFormat::Qcow2)
            .await
            .unwrap_err();
        assert!(matches!(e, ClonerError::NotIdentical { .. }), "{name}: {e}");
        assert_eq!(
            chain(&overlay)[0]["backing-filename"],
            base.to_str().unwrap(),
            "{name}: untouched"
        );

        q.rebase_unsafe_identical(&overlay, &copy, ImageFormat::Qcow2)
            .await
            .unwrap();
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
    let e = q
        .create_overlay(&base, ImageFormat::Qcow2, &overlay)
        .await
        .unwrap_err();
    assert!(matches!(e, ClonerError::PathOutsideStorage { .. }), "{e}");
    let q = q.allow_root(&tpl_root).unwrap();
    q.create_overlay(&base, ImageFormat::Qcow2, &overlay)
        .await
        .unwrap();
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
        let e = q
            .create_overlay(&base, ImageFormat::Qcow2, &dotdot)
            .await
            .unwrap_err();
        assert!(matches!(e, ClonerError::PathOutsideStorage { .. }), "{name}: {e}");

        let e = q
            .create_overlay(&base, ImageFormat::Qcow2, &outside.join("o.qcow2"))
            .await
            .unwrap_err();
        assert!(matches!(e, ClonerError::PathOutsideStorage { .. }), "{name}: {e}");

        let via_link = root.join("images/escape/o.qcow2");
        let e = q
            .create_overlay(&base, ImageFormat::Qcow2, &via_link)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ClonerError::PathOutsideStorage { path, .. } if path.starts_with(&outside)),
            "{name}: {e}"
        );
        let e = q.remove(&root.join("images/escape/x")).await.unwrap_err();
        assert!(matches!(e, ClonerError::PathOutsideStorage { .. }), "{name}: {e}");
        let e = q
            .info(Path::new("/etc/passwd"), ImageFormat::Raw)
            .await
            .unwrap_err();
        assert!(matches!(e, ClonerError::PathOutsideStorage { .. }), "{name}: {e}");

        let e = q
            .create_overlay(
                Path::new("images/9000/base.qcow2"),
                ImageFormat::Qcow2,
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
        let e = q.info(&file, ImageFormat::Qcow2).await.unwrap_err();
        assert!(matches!(e, ClonerError::CommandFailed { .. }), "{name}: {e}");
        let e = q.remove(&dir).await.unwrap_err();
        assert!(
            matches!(e, ClonerError::CommandFailed { .. }),
            "{name}: directories are not removed: {e}"
        );
    }
}

/// A file outside the storage with recognisable content, standing for a host file (`/etc/shadow`, a key).
fn host_secret(dir: &Path) -> (PathBuf, Vec<u8>) {
    let marker = dir.join("outside the storage/host-secret");
    std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
    let content = b"HOST-SECRET-must-never-reach-a-class-base\n".repeat(1000);
    std::fs::write(&marker, &content).unwrap();
    (marker, content)
}

/// `qemu-img create -f qcow2 <extra…> <path> 1M`, run directly (the attacker's tool).
fn craft(path: &Path, extra: &[&str]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[path.to_str().unwrap(), "1M"]);
    qemu_img(&args);
}

/// Every regular file under `dir` whose bytes contain `needle`'s first 64 bytes.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let needle = &needle[..64.min(needle.len())];
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_symlink() {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                hits.push(p);
            }
        }
    }
    hits
}

#[tokio::test]
async fn a_template_disk_backed_by_a_host_file_outside_the_storage_is_refused_and_nothing_is_copied() {
    for (name, exec) in executors() {
        let (tmp, root) = storage();
        let (marker, secret) = host_secret(tmp.path());
        let disk = root.join("images/9000/base-9000-disk-0.qcow2");
        craft(&disk, &["-b", marker.to_str().unwrap(), "-F", "raw"]);
        let q = Qcow2::new(exec, &root).unwrap();

        let flat = root.join("images/3000/base-3000-disk-0.qcow2");
        let e = q.flatten(&disk, ImageFormat::Qcow2, &flat).await.unwrap_err();
        assert!(
            matches!(&e, ClonerError::UnsafeImage { image, reason }
                if image == &disk && reason.contains(marker.to_str().unwrap()) && reason.contains("outside the storage")),
            "{name}: {e}"
        );
        assert!(e.to_string().contains(marker.to_str().unwrap()), "{name}: {e}");
        assert!(!flat.exists(), "{name}: no class base made");

        let overlay = root.join("images/3001/vm-3001-disk-0.qcow2");
        let e = q
            .create_overlay(&disk, ImageFormat::Qcow2, &overlay)
            .await
            .unwrap_err();
        assert!(matches!(&e, ClonerError::UnsafeImage { .. }), "{name}: {e}");
        assert!(!overlay.exists(), "{name}: no overlay onto it either");

        let e = q.info_chain(&disk, ImageFormat::Qcow2).await.unwrap_err();
        assert!(matches!(&e, ClonerError::UnsafeImage { .. }), "{name}: {e}");
        assert_eq!(
            files_containing(&root, &secret),
            Vec::<PathBuf>::new(),
            "{name}: the host file's content is in no file of the storage"
        );
    }
}

#[tokio::test]
async fn a_raw_template_disk_holding_a_qcow2_header_is_copied_as_raw_bytes_without_following_its_backing_file()
 {
    for (name, exec) in executors() {
        let (tmp, root) = storage();
        let (marker, secret) = host_secret(tmp.path());
        // PVE's config says raw (`….raw`); the bytes are a qcow2 header naming the host file.
        let disk = root.join("images/9001/base-9001-disk-0.raw");
        craft(&disk, &["-b", marker.to_str().unwrap(), "-F", "raw"]);
        let q = Qcow2::new(exec, &root).unwrap();

        let chain = q.info_chain(&disk, ImageFormat::Raw).await.unwrap();
        assert_eq!(chain.len(), 1, "{name}: read as raw, no backing file: {chain:?}");
        assert_eq!(chain[0].format, "raw", "{name}");

        let flat = root.join("images/3002/base-3002-disk-0.qcow2");
        q.flatten(&disk, ImageFormat::Raw, &flat).await.unwrap();
        let seen = guest_bytes(&flat);
        let own = std::fs::read(&disk).unwrap();
        assert!(
            seen.len() >= own.len()
                && seen[..own.len()] == own[..]
                && seen[own.len()..].iter().all(|b| *b == 0),
            "{name}: the guest sees the disk's own bytes ({} bytes seen, {} on disk)",
            seen.len(),
            own.len()
        );
        assert!(seen.starts_with(b"QFI\xfb"), "{name}: the qcow2 header, as data");
        assert_eq!(
            files_containing(&root, &secret),
            Vec::<PathBuf>::new(),
            "{name}: the host file's content is in no file of the storage"
        );
    }
}

#[tokio::test]
async fn backing_files_by_protocol_json_symlink_or_external_data_file_are_refused_by_name() {
    let (tmp, root) = storage();
    let (marker, secret) = host_secret(tmp.path());
    let q = Qcow2::new(Arc::new(LocalExecutor::default()), &root).unwrap();
    let dir = root.join("images/9002");
    // A symlink inside the storage that leads to the host file.
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("looks-inside.raw");
    std::os::unix::fs::symlink(&marker, &link).unwrap();
    let json_name = format!(
        r#"json:{{"driver":"raw","file":{{"driver":"file","filename":"{}"}}}}"#,
        marker.display()
    );
    let data_file = format!("data_file={}", tmp.path().join("outside data.raw").display());
    let cases: Vec<(&str, Vec<&str>, String)> = vec![
        (
            "nbd",
            vec!["-u", "-b", "nbd://127.0.0.1:9/export", "-F", "raw"],
            "nbd://127.0.0.1:9/export".into(),
        ),
        (
            "http",
            vec!["-u", "-b", "http://192.0.2.1/disk.raw", "-F", "raw"],
            "http://192.0.2.1/disk.raw".into(),
        ),
        (
            "file",
            vec!["-u", "-b", "file:/etc/hostname", "-F", "raw"],
            "file:/etc/hostname".into(),
        ),
        ("json", vec!["-u", "-b", &json_name, "-F", "raw"], "json:".into()),
        (
            "symlink",
            vec!["-b", link.to_str().unwrap(), "-F", "raw"],
            marker.display().to_string(),
        ),
        ("data file", vec!["-o", &data_file], "outside data.raw".into()),
    ];
    for (i, (case, extra, named)) in cases.iter().enumerate() {
        let disk = dir.join(format!("disk-{i}.qcow2"));
        craft(&disk, extra);
        let flat = root.join(format!("images/3003/base-{i}.qcow2"));
        let e = q.flatten(&disk, ImageFormat::Qcow2, &flat).await.unwrap_err();
        assert!(
            matches!(&e, ClonerError::UnsafeImage { reason, .. } if reason.contains(named.as_str())),
            "{case}: {e}"
        );
        assert!(!flat.exists(), "{case}");
    }
    // A two-level chain inside the storage is fine; the stated format of the top must hold.
    let base = dir.join("base.raw");
    make_base(&base, "raw", b"good base ");
    let mid = dir.join("mid.qcow2");
    craft(&mid, &["-b", base.to_str().unwrap(), "-F", "raw"]);
    let chain = q.info_chain(&mid, ImageFormat::Qcow2).await.unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1].format, "raw");
    assert_eq!(
        files_containing(&root, &secret),
        Vec::<PathBuf>::new(),
        "the host file's content is in no file of the storage"
    );
}
