//! A hostile template disk against the fake lab cluster, a real loopback sshd and real qemu-img: a
//! template whose disk names a host file as its backing file must not get that file copied into the
//! class base, whatever the disk's header claims.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use deploy::{ClassSpec, VmRole};
use serde_json::json;
use store::{JobState, Role};

const WAIT: Duration = Duration::from_secs(180);

/// A file outside the storage with recognisable content, standing for a host file.
fn host_secret(dir: &Path) -> (PathBuf, Vec<u8>) {
    let marker = dir.join("host-secret");
    let content = b"HOST-SECRET-must-never-reach-a-class-base\n".repeat(1000);
    std::fs::write(&marker, &content).unwrap();
    (marker, content)
}

/// A qcow2 at `disk` whose backing file is `backing` (raw), made with qemu-img directly.
fn qcow2_backed_by(disk: &Path, backing: &Path) {
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(backing)
        .arg(disk)
        .arg("1M")
        .status()
        .unwrap();
    assert!(st.success());
}

/// The guest-visible bytes of our own (trusted) qcow2 image.
fn guest_bytes(path: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("guest.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
        .arg(path)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

fn contains(hay: &[u8], secret: &[u8]) -> bool {
    hay.windows(64).any(|w| w == &secret[..64])
}

/// Files under the `images/<vmid>` folders of `range` whose bytes hold the secret.
fn storage_files_with(range: (u32, u32), secret: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    for vmid in range.0..=range.1 {
        let Ok(dir) = std::fs::read_dir(lab().labnfs.join(format!("images/{vmid}"))) else {
            continue;
        };
        for e in dir {
            let p = e.unwrap().path();
            if p.is_file() && contains(&std::fs::read(&p).unwrap(), secret) {
                hits.push(p);
            }
        }
    }
    hits
}

fn add_template(vmid: u32, volume: &str) {
    lab()
        .fake
        .control(
            "POST",
            "/guests",
            json!({"guests": [
                {"vmid": vmid, "name": format!("tpl-{vmid}"), "node": "pve1", "template": true,
                 "config": {"memory": 512, "scsi0": format!("{volume},size=1M"), "template": 1}}
            ]}),
        )
        .unwrap();
}

fn spec(name: &str, template: u32) -> ClassSpec {
    ClassSpec {
        name: name.into(),
        cluster: CLUSTER.into(),
        template_vmid: template,
        pool_size: 1,
        node: Some("pve1".into()),
        ..ClassSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_disk_backed_by_a_host_file_fails_the_deploy_naming_the_file_and_copies_nothing() {
    let lab = lab();
    let range = (3600, 3619);
    let e = env(range);
    add_user(&e.store, "teach", Role::Teacher);
    let outside = testkit::temp_dir("deploy-outside-");
    let (marker, secret) = host_secret(outside.path());
    let disk = lab.labnfs.join("images/9105/base-9105-disk-0.qcow2");
    qcow2_backed_by(&disk, &marker);
    add_template(9105, "labnfs:9105/base-9105-disk-0.qcow2");
    open_template(&e, 9105).await;

    let (class, job) = e
        .deployer
        .create_class("teach", spec("Hostile backing", 9105))
        .await
        .unwrap();
    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    let why = job.error.clone().unwrap_or_default();
    assert!(
        why.contains(marker.to_str().unwrap()) && why.contains("outside the storage"),
        "the error names the backing file: {why}"
    );
    assert_eq!(
        storage_files_with(range, &secret),
        Vec::<PathBuf>::new(),
        "the host file's content is in no file the deploy made"
    );
    let students = e
        .deployer
        .class_vm_views(&class.id)
        .unwrap()
        .into_iter()
        .filter(|v| v.role == VmRole::Student)
        .count();
    assert_eq!(students, 0, "no student VM on a refused base");
    std::fs::remove_dir_all(disk.parent().unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_template_disk_holding_a_qcow2_header_is_copied_as_raw_and_its_backing_file_is_not_read() {
    let lab = lab();
    let range = (3620, 3639);
    let e = env(range);
    add_user(&e.store, "teach", Role::Teacher);
    let outside = testkit::temp_dir("deploy-outside-");
    let (marker, secret) = host_secret(outside.path());
    // PVE's config says raw (by the extension); the bytes are a qcow2 header naming the host file.
    let disk = lab.labnfs.join("images/9106/base-9106-disk-0.raw");
    qcow2_backed_by(&disk, &marker);
    add_template(9106, "labnfs:9106/base-9106-disk-0.raw");
    open_template(&e, 9106).await;

    let (class, job) = e
        .deployer
        .create_class("teach", spec("Raw with a header", 9106))
        .await
        .unwrap();
    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(
        (job.state, job.error.as_deref()),
        (JobState::Done, None),
        "{job:#?}"
    );
    let class = e.deployer.class(&class.id).unwrap();
    let base_path = class.bases[0].detail["disks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let seen = guest_bytes(Path::new(&base_path), outside.path());
    let own = std::fs::read(&disk).unwrap();
    assert!(
        seen.starts_with(&own),
        "the class base holds the disk's own bytes (the qcow2 header as data)"
    );
    assert!(!contains(&seen, &secret), "the backing file was not followed");
    assert_eq!(
        storage_files_with(range, &secret),
        Vec::<PathBuf>::new(),
        "the host file's content is in no file the deploy made"
    );
    std::fs::remove_dir_all(disk.parent().unwrap()).unwrap();
}
