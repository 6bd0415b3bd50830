//! Class bases are protected on PVE: `protection: 1` in their config (PVE then refuses to remove them
//! or their disks) and a note in their description that Proxlab owns them and that the class's VMs'
//! disks back onto their images. Proxlab lifts the flag only when it removes a base itself (class
//! delete, an old base after a publish, the cleanup of an interrupted plan).

use pve::{GuestConfig, GuestKind, PveClient};

use crate::Deployer;
use crate::cleanup::seg;
use crate::error::Result;

/// The first line of the note Proxlab puts into a class base's description.
pub(crate) const BASE_NOTE: &str = "PROXLAB CLASS BASE — owned by Proxlab; do not delete or change.";

/// The description of a class base: its own description with Proxlab's note added once.
fn protected_description(current: Option<&str>, class: &str) -> String {
    let note = format!(
        "{BASE_NOTE}\nThe disks of the VMs of class {class} are QCOW2 overlays or linked clones backed by \
         this VM's images: removing or changing it breaks every one of them. Deleting the class in Proxlab \
         removes it."
    );
    match current.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) if c.contains(BASE_NOTE) => c.to_string(),
        Some(c) => format!("{note}\n\n{c}"),
        None => note,
    }
}

/// True if a VM config is a class base Proxlab made (its `proxlab` and `base` tags).
pub(crate) fn is_class_base(cfg: &GuestConfig) -> bool {
    let tags = cfg.tags();
    tags.contains(crate::cleanup::TAG) && tags.contains("base")
}

/// True if `protection` is set in a VM config.
pub(crate) fn is_protected(cfg: &GuestConfig) -> bool {
    cfg.get_str("protection").is_some_and(|p| p == "1" || p == "true")
}

impl Deployer {
    /// Protects class `class`'s base VM `vmid` on `node`: `POST /nodes/{node}/qemu/{vmid}/config` with
    /// `protection=1` and the owner's note in `description` (waits for the task).
    pub(crate) async fn protect_base(&self, cluster: &str, node: &str, vmid: u32, class: &str) -> Result<()> {
        let client = self.pve(cluster)?;
        let cfg = client.guest_config(node, GuestKind::Qemu, vmid).await?;
        let description = protected_description(cfg.get_str("description").as_deref(), class);
        let path = format!("/nodes/{}/qemu/{vmid}/config", seg(node));
        let answer = client
            .post_value(&path, &[("protection", "1"), ("description", &description)])
            .await?;
        self.wait_value(&client, answer).await?;
        tracing::info!(cluster, vmid, class, "class base protected");
        Ok(())
    }

    /// Lifts `protection` of a class base Proxlab is about to remove (the caller checked it is ours).
    pub(crate) async fn unprotect_base(&self, client: &PveClient, node: &str, vmid: u32) -> Result<()> {
        let path = format!("/nodes/{}/qemu/{vmid}/config", seg(node));
        let answer = client.post_value(&path, &[("delete", "protection")]).await?;
        self.wait_value(client, answer).await?;
        tracing::info!(vmid, "protection of a class base lifted to remove it");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_is_added_once_and_keeps_the_description() {
        let once = protected_description(Some("made for x"), "c1");
        assert!(
            once.starts_with(BASE_NOTE) && once.ends_with("made for x"),
            "{once}"
        );
        assert_eq!(protected_description(Some(&once), "c1"), once);
        assert!(protected_description(None, "c1").contains("class c1"));
    }
}
