//! QCOW2 operations on a node's file storage, over any [`Executor`].

pub mod cmd;
mod path;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use cmd::RebaseMode;
pub use path::{is_inside, normalize};

use crate::exec::{ExecOutput, Executor};
use crate::{ClonerError, shell_join};

/// The disk image formats this crate accepts as a backing file (what PVE's file storages hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// QEMU copy-on-write v2 (`qcow2`).
    Qcow2,
    /// Raw image (`raw`).
    Raw,
    /// VMware disk (`vmdk`).
    Vmdk,
}

impl ImageFormat {
    /// The name qemu-img uses: `qcow2`, `raw`, `vmdk`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
            ImageFormat::Vmdk => "vmdk",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImageFormat {
    type Err = ClonerError;

    /// Exactly `qcow2`, `raw` or `vmdk`; anything else is [`ClonerError::UnsupportedFormat`].
    fn from_str(s: &str) -> Result<Self, ClonerError> {
        match s {
            "qcow2" => Ok(ImageFormat::Qcow2),
            "raw" => Ok(ImageFormat::Raw),
            "vmdk" => Ok(ImageFormat::Vmdk),
            other => Err(ClonerError::UnsupportedFormat(other.to_string())),
        }
    }
}

/// One image as `qemu-img info --output=json` describes it. Deserialised from qemu-img's kebab-case keys
/// (`virtual-size`, `backing-filename-format`, …); serialised with the snake_case field names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The file name as qemu-img opened it.
    pub filename: String,
    /// The format qemu-img detected (`qcow2`, `raw`, …) — the only source of truth for the format, not the
    /// file extension; see [`ImageInfo::image_format`].
    pub format: String,
    /// Size the guest sees, in bytes.
    #[serde(rename(deserialize = "virtual-size"))]
    pub virtual_size: u64,
    /// Space used on the storage, in bytes (absent on some storages).
    #[serde(rename(deserialize = "actual-size"), default)]
    pub actual_size: Option<u64>,
    /// The backing file as recorded in the image (may be relative in images made elsewhere).
    #[serde(rename(deserialize = "backing-filename"), default)]
    pub backing_filename: Option<String>,
    /// The backing file resolved by qemu-img (absolute).
    #[serde(rename(deserialize = "full-backing-filename"), default)]
    pub full_backing_filename: Option<String>,
    /// The backing file's format as recorded in the image (`-F`); absent in images made without `-F`.
    #[serde(rename(deserialize = "backing-filename-format"), default)]
    pub backing_format: Option<String>,
    /// qemu-img's `format-specific` object (for qcow2: `data.data-file`, an external data file). Read
    /// only to refuse external data files; not serialised.
    #[serde(rename(deserialize = "format-specific"), default, skip_serializing)]
    pub format_specific: Option<serde_json::Value>,
}

/// Longest backing chain [`Qcow2::info_chain`] follows (the image itself counts as one).
pub const MAX_CHAIN_DEPTH: usize = 16;

/// True when qemu-img would read `name` as something other than a plain file name: a `json:` pseudo
/// protocol or any `scheme:` prefix (`nbd:`, `http:`, `file:`, …). qemu-img's own rule: a `:` before the
/// first `/`.
pub fn names_a_protocol(name: &str) -> bool {
    if name.starts_with("json:") {
        return true;
    }
    match name.find(':') {
        Some(i) => !name[..i].contains('/'),
        None => false,
    }
}

impl ImageInfo {
    /// Parse the JSON object of `qemu-img info --output=json`.
    /// Errors: [`ClonerError::BadOutput`] when it is not such an object.
    pub fn parse(json: &str) -> Result<ImageInfo, ClonerError> {
        serde_json::from_str(json).map_err(|e| ClonerError::BadOutput {
            command: "qemu-img info --output=json".into(),
            message: format!("{e}"),
        })
    }

    /// Parse the JSON array of `qemu-img info --output=json --backing-chain` (the image first, then its
    /// backing file, and so on). Errors: [`ClonerError::BadOutput`].
    pub fn parse_chain(json: &str) -> Result<Vec<ImageInfo>, ClonerError> {
        serde_json::from_str(json).map_err(|e| ClonerError::BadOutput {
            command: "qemu-img info --output=json --backing-chain".into(),
            message: format!("{e}"),
        })
    }

    /// [`ImageInfo::format`] as an [`ImageFormat`]; [`ClonerError::UnsupportedFormat`] for any other.
    pub fn image_format(&self) -> Result<ImageFormat, ClonerError> {
        self.format.parse()
    }

    /// The external data file a qcow2 header names (`data-file`), if any.
    pub fn data_file(&self) -> Option<&str> {
        self.format_specific.as_ref()?["data"]["data-file"].as_str()
    }
}

/// QCOW2 work (info, overlays, flatten, rebase) on one node's storage directory, over an [`Executor`].
///
/// Every path is normalised ([`normalize`]) and must lie inside the storage root (or an extra root
/// allowed with [`Qcow2::allow_root`]), first lexically and then after the node resolves symlinks
/// (`realpath -m`); otherwise [`ClonerError::PathOutsideStorage`]. Commands keep the lexical (configured)
/// path, so overlays record the backing path the admin configured. Existing images are never
/// overwritten. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Qcow2 {
    exec: Arc<dyn Executor>,
    roots: Vec<PathBuf>,
    long_timeout: Duration,
}

impl Qcow2 {
    /// Operations under `storage_root` (e.g. `/var/lib/vz` or `/mnt/pve/nfs-lab`) through `exec`.
    /// Errors: [`ClonerError::InvalidPath`] when the root is not absolute, and [`ClonerError::Config`]
    /// when it is `/`.
    pub fn new(exec: Arc<dyn Executor>, storage_root: impl Into<PathBuf>) -> Result<Qcow2, ClonerError> {
        let root = Self::check_root(&storage_root.into())?;
        Ok(Qcow2 {
            exec,
            roots: vec![root],
            long_timeout: Duration::from_secs(3600),
        })
    }

    /// Also accept paths under `root` — e.g. a template storage that holds class bases while overlays live
    /// on the lab storage, so an overlay can be rebased onto a base there. Errors as [`Qcow2::new`].
    pub fn allow_root(mut self, root: impl Into<PathBuf>) -> Result<Qcow2, ClonerError> {
        let root = Self::check_root(&root.into())?;
        if !self.roots.contains(&root) {
            self.roots.push(root);
        }
        Ok(self)
    }

    /// Limit for the long commands (`convert`, safe `rebase`, `sha256sum`); default 1 h. Short commands
    /// use the executor's command timeout.
    pub fn with_long_timeout(mut self, limit: Duration) -> Qcow2 {
        self.long_timeout = limit;
        self
    }

    /// The (first) storage root.
    pub fn storage_root(&self) -> &Path {
        &self.roots[0]
    }

    /// The executor in use.
    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.exec
    }

    fn check_root(root: &Path) -> Result<PathBuf, ClonerError> {
        let root = normalize(root)?;
        if root == Path::new("/") {
            return Err(ClonerError::Config("the storage root cannot be /".into()));
        }
        Ok(root)
    }

    /// Normalise `path`, check that it is inside a storage root lexically and after the node resolves
    /// symlinks, and return the normalised path. `allow_root`: whether the root itself is acceptable
    /// (only for [`Qcow2::mkdir_p`]).
    async fn checked(&self, paths: &[&Path], allow_root: bool) -> Result<Vec<PathBuf>, ClonerError> {
        let mut normalized = Vec::with_capacity(paths.len());
        for p in paths {
            let n = normalize(p)?;
            let Some(root) = self.roots.iter().find(|r| is_inside(&n, r)) else {
                return Err(ClonerError::PathOutsideStorage {
                    path: p.to_path_buf(),
                    root: self.roots[0].clone(),
                });
            };
            if !allow_root && &n == root {
                return Err(ClonerError::InvalidPath {
                    path: p.to_path_buf(),
                    reason: "is the storage root itself, not a file in it".into(),
                });
            }
            normalized.push(n);
        }
        // One round trip: realpath of every root, then of every path (-m: missing parts are fine).
        let mut argv: Vec<String> = vec!["realpath".into(), "-m".into(), "-z".into(), "--".into()];
        for r in self.roots.iter().chain(normalized.iter()) {
            argv.push(path::to_str(r)?.to_string());
        }
        let out = self.run_ok(&argv, None).await?;
        let resolved: Vec<PathBuf> = out
            .stdout
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| PathBuf::from(String::from_utf8_lossy(s).into_owned()))
            .collect();
        if resolved.len() != self.roots.len() + normalized.len() {
            return Err(ClonerError::BadOutput {
                command: shell_join(&argv),
                message: format!(
                    "expected {} paths, got {}",
                    self.roots.len() + normalized.len(),
                    resolved.len()
                ),
            });
        }
        let (real_roots, real_paths) = resolved.split_at(self.roots.len());
        for (given, real) in paths.iter().zip(real_paths) {
            if !real_roots.iter().any(|r| is_inside(real, r)) {
                tracing::warn!(path = %given.display(), resolved = %real.display(), "path leaves the storage through a symlink");
                return Err(ClonerError::PathOutsideStorage {
                    path: real.clone(),
                    root: self.roots[0].clone(),
                });
            }
        }
        Ok(normalized)
    }

    /// Run argv with `timeout` (or the executor's default) and fail on a non-zero status.
    async fn run_ok(&self, argv: &[String], timeout: Option<Duration>) -> Result<ExecOutput, ClonerError> {
        let out = match timeout {
            Some(t) => self.exec.run_with_timeout(argv, t).await?,
            None => self.exec.run(argv).await?,
        };
        out.check(argv)
    }

    /// `qemu-img info -f <format>` of an already checked path. A file that is not a `format` image is
    /// [`ClonerError::UnsupportedFormat`] naming both.
    async fn info_checked(&self, path: &Path, format: ImageFormat) -> Result<ImageInfo, ClonerError> {
        let argv = cmd::info(path, format, false)?;
        let out = match self.run_ok(&argv, None).await {
            Err(ClonerError::CommandFailed { stderr, .. }) if stderr.contains("Image is not in") => {
                return Err(ClonerError::UnsupportedFormat(format!(
                    "{} is not a {format} image ({stderr})",
                    path.display()
                )));
            }
            r => r?,
        };
        ImageInfo::parse(&out.stdout_text()).map_err(|e| match e {
            ClonerError::BadOutput { message, .. } => ClonerError::BadOutput {
                command: shell_join(&argv),
                message,
            },
            e => e,
        })
    }

    async fn exists_checked(&self, path: &Path) -> Result<bool, ClonerError> {
        let argv = vec!["test".to_string(), "-e".into(), path::to_str(path)?.to_string()];
        let out = self.exec.run(&argv).await?;
        match out.status {
            0 => Ok(true),
            1 => Ok(false),
            _ => Err(out.check(&argv).err().unwrap_or(ClonerError::BadOutput {
                command: shell_join(&argv),
                message: "unexpected status".into(),
            })),
        }
    }

    async fn mkdir_checked(&self, dir: &Path) -> Result<(), ClonerError> {
        let argv = vec!["mkdir".to_string(), "-p".into(), path::to_str(dir)?.to_string()];
        self.run_ok(&argv, None).await.map(|_| ())
    }

    /// `qemu-img info --output=json -U -f <format> <path>` of the image alone (its backing file is not
    /// opened): virtual size, backing file. `format` is the one PVE's volume config states; it is never
    /// probed. Errors: path checks; [`ClonerError::UnsupportedFormat`] when the file is not a `format`
    /// image; [`ClonerError::CommandFailed`] (e.g. missing file); [`ClonerError::BadOutput`].
    pub async fn info(&self, path: &Path, format: ImageFormat) -> Result<ImageInfo, ClonerError> {
        let p = self.checked(&[path], false).await?;
        self.info_checked(&p[0], format).await
    }

    /// The image `path`, read as `format`, then each backing file — checked one element at a time BEFORE
    /// qemu-img opens the next one (`qemu-img info -U --output=json -f <format>` per element, which does
    /// not open backing files; `--backing-chain` would open a hostile reference before it could be
    /// refused). Each element must be a qcow2 or raw file whose format is the stated one (for the image:
    /// `format`; for a backing file: the format recorded in its overlay's header, which must be there);
    /// its backing file must be a plain file name (no `json:`, no `nbd:`/`http:`/`file:`/any scheme)
    /// inside the storage directories, lexically and after symlinks; no qcow2 may name an external data
    /// file; at most [`MAX_CHAIN_DEPTH`] elements.
    ///
    /// Once every element passed, `qemu-img info --backing-chain -U --output=json -f <format>` (which
    /// now opens only checked files) must report the same chain — formats and backing names element by
    /// element — or the image is refused too.
    ///
    /// Every operation that makes qemu-img read an image's data (flatten, overlays, rebase) goes through
    /// this first, so a template disk cannot make Proxlab copy a host file into a class base.
    /// Errors: [`ClonerError::UnsafeImage`] naming the image and the offending backing or data file; path
    /// checks of `path`; as [`Qcow2::info`].
    pub async fn info_chain(&self, path: &Path, format: ImageFormat) -> Result<Vec<ImageInfo>, ClonerError> {
        let top = self.checked(&[path], false).await?.remove(0);
        let top_format = format;
        let mut current = top.clone();
        let mut format = format;
        let mut chain: Vec<ImageInfo> = Vec::new();
        loop {
            let refuse = |image: &Path, reason: String| ClonerError::UnsafeImage {
                image: image.to_path_buf(),
                reason,
            };
            if !matches!(format, ImageFormat::Qcow2 | ImageFormat::Raw) {
                return Err(refuse(
                    &current,
                    format!("it is stated to be {format}; only qcow2 and raw images are read"),
                ));
            }
            if chain.len() >= MAX_CHAIN_DEPTH {
                return Err(refuse(
                    path,
                    format!("its backing chain is longer than {MAX_CHAIN_DEPTH} images"),
                ));
            }
            let info = self.info_checked(&current, format).await?;
            if info.format != format.as_str() {
                return Err(refuse(
                    &current,
                    format!("qemu-img read it as {}, not the stated {format}", info.format),
                ));
            }
            if let Some(data) = info.data_file() {
                return Err(refuse(
                    &current,
                    format!("its qcow2 header names an external data file {data}"),
                ));
            }
            let backing = info.backing_filename.clone();
            let full = info.full_backing_filename.clone();
            let backing_format = info.backing_format.clone();
            chain.push(info);
            let Some(backing) = backing else {
                self.same_chain_as_qemu_img(&top, top_format, &chain).await?;
                return Ok(chain);
            };
            if let Some(name) = [Some(&backing), full.as_ref()]
                .into_iter()
                .flatten()
                .find(|n| names_a_protocol(n))
            {
                return Err(refuse(
                    &current,
                    format!("its backing file {name} is a json: or protocol name, not a file in the storage"),
                ));
            }
            let Some(full) = full.filter(|f| Path::new(f).is_absolute()) else {
                return Err(refuse(
                    &current,
                    format!("its backing file {backing} does not resolve to an absolute path"),
                ));
            };
            let next = match self.checked(&[Path::new(&full)], false).await {
                Ok(mut v) => v.remove(0),
                Err(ClonerError::PathOutsideStorage { path: resolved, .. }) => {
                    let via = if resolved == Path::new(&full) {
                        String::new()
                    } else {
                        format!(" (it resolves to {})", resolved.display())
                    };
                    return Err(refuse(
                        &current,
                        format!(
                            "its backing file {full}{via} is outside the storage directories {}",
                            self.roots_text()
                        ),
                    ));
                }
                Err(ClonerError::InvalidPath { reason, .. }) => {
                    return Err(refuse(&current, format!("its backing file {full} {reason}")));
                }
                Err(e) => return Err(e),
            };
            let Some(backing_format) = backing_format else {
                return Err(refuse(
                    &current,
                    format!("its backing file {full} has no recorded format (qemu-img would guess it)"),
                ));
            };
            format = backing_format.parse().map_err(|_| {
                refuse(
                    &current,
                    format!(
                        "its backing file {full} is recorded as {backing_format}; only qcow2 and raw are read"
                    ),
                )
            })?;
            current = next;
        }
    }

    /// `qemu-img info --backing-chain` of an image whose chain [`Qcow2::info_chain`] has checked
    /// element by element: it must agree (length, each format and backing name), else
    /// [`ClonerError::UnsafeImage`].
    async fn same_chain_as_qemu_img(
        &self,
        top: &Path,
        format: ImageFormat,
        checked: &[ImageInfo],
    ) -> Result<(), ClonerError> {
        let argv = cmd::info(top, format, true)?;
        let out = self.run_ok(&argv, None).await?;
        let seen = ImageInfo::parse_chain(&out.stdout_text())?;
        let view = |c: &[ImageInfo]| -> Vec<String> {
            c.iter()
                .map(|i| {
                    format!(
                        "{} -> {}",
                        i.format,
                        i.full_backing_filename.as_deref().unwrap_or("(none)")
                    )
                })
                .collect()
        };
        let agree = seen.len() == checked.len()
            && seen.iter().zip(checked).all(|(a, b)| {
                a.format == b.format
                    && a.backing_filename == b.backing_filename
                    && a.full_backing_filename == b.full_backing_filename
                    && a.backing_format == b.backing_format
                    && a.data_file().is_none()
            });
        if !agree {
            return Err(ClonerError::UnsafeImage {
                image: top.to_path_buf(),
                reason: format!(
                    "qemu-img's backing chain [{}] differs from the checked one [{}]",
                    view(&seen).join(", "),
                    view(checked).join(", ")
                ),
            });
        }
        Ok(())
    }

    fn roots_text(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Create `overlay` as a qcow2 backed by `base`, a `base_format` image (as its volume config states):
    /// checks the base's whole chain with [`Qcow2::info_chain`], then — in one round trip, through
    /// [`cmd::guard_new_file`] — refuses an existing overlay, creates its directory if needed and runs
    /// `qemu-img create -f qcow2 -F <format> -b <absolute base> <overlay>`.
    /// Errors: path checks; [`ClonerError::UnsafeImage`] and [`ClonerError::UnsupportedFormat`] from the
    /// chain check; [`ClonerError::AlreadyExists`] when `overlay` exists; [`ClonerError::CommandFailed`].
    pub async fn create_overlay(
        &self,
        base: &Path,
        base_format: ImageFormat,
        overlay: &Path,
    ) -> Result<(), ClonerError> {
        let p = self.checked(&[base, overlay], false).await?;
        self.info_chain(&p[0], base_format).await?;
        self.create_overlay_unchecked_format(&p[0], base_format, &p[1])
            .await
    }

    /// Like [`Qcow2::create_overlay`] for a base whose chain the caller has already checked with
    /// [`Qcow2::info_chain`] as `base_format`, e.g. when creating many overlays of one class base. Saves
    /// the chain check: two commands per overlay. Errors as [`Qcow2::create_overlay`].
    pub async fn create_overlay_with_format(
        &self,
        base: &Path,
        base_format: ImageFormat,
        overlay: &Path,
    ) -> Result<(), ClonerError> {
        let p = self.checked(&[base, overlay], false).await?;
        self.create_overlay_unchecked_format(&p[0], base_format, &p[1])
            .await
    }

    async fn create_overlay_unchecked_format(
        &self,
        base: &Path,
        format: ImageFormat,
        overlay: &Path,
    ) -> Result<(), ClonerError> {
        let create = cmd::create_overlay(base, format, overlay)?;
        let dir = overlay.parent().unwrap_or(overlay);
        tracing::debug!(base = %base.display(), format = %format, overlay = %overlay.display(), "creating overlay");
        self.run_guarded(overlay, dir, create, None).await.map(|_| ())
    }

    /// Run `command` through [`cmd::guard_new_file`]: refuse an existing `target`, `mkdir -p dir`, run.
    async fn run_guarded(
        &self,
        target: &Path,
        dir: &Path,
        command: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, ClonerError> {
        let argv = cmd::guard_new_file(target, dir, command)?;
        let out = match timeout {
            Some(t) => self.exec.run_with_timeout(&argv, t).await?,
            None => self.exec.run(&argv).await?,
        };
        if out.status == cmd::GUARD_EXISTS_STATUS
            && String::from_utf8_lossy(&out.stderr).contains(cmd::GUARD_EXISTS_MARKER)
        {
            return Err(ClonerError::AlreadyExists(target.to_path_buf()));
        }
        out.check(&argv)
    }

    /// Flatten `src`, a `src_format` image as its volume config states (and its whole backing chain,
    /// checked first with [`Qcow2::info_chain`]), into a new standalone qcow2 `dst`: `qemu-img convert -f
    /// <src format> -O qcow2` into `<dir>/.<name>.flatten-tmp`, then `mv` onto `dst`, so a crash never
    /// leaves a partial image under the final name (a stale temp file is replaced by the next attempt).
    /// Returns `dst`'s info. Errors: path checks; [`ClonerError::UnsafeImage`] (a backing file outside
    /// the storage, a protocol name, …: nothing is written); [`ClonerError::AlreadyExists`] when `dst`
    /// exists; [`ClonerError::UnsupportedFormat`]; [`ClonerError::CommandFailed`];
    /// [`ClonerError::Timeout`] after the long timeout.
    pub async fn flatten(
        &self,
        src: &Path,
        src_format: ImageFormat,
        dst: &Path,
    ) -> Result<ImageInfo, ClonerError> {
        let p = self.checked(&[src, dst], false).await?;
        let (src, dst) = (&p[0], &p[1]);
        self.info_chain(src, src_format).await?;
        let format = src_format;
        if self.exists_checked(dst).await? {
            return Err(ClonerError::AlreadyExists(dst.clone()));
        }
        let (Some(dir), Some(name)) = (dst.parent(), dst.file_name()) else {
            return Err(ClonerError::InvalidPath {
                path: dst.clone(),
                reason: "has no file name".into(),
            });
        };
        let tmp = dir.join(format!(".{}.flatten-tmp", name.to_string_lossy()));
        self.mkdir_checked(dir).await?;
        let tmp_s = path::to_str(&tmp)?.to_string();
        self.run_ok(&["rm".into(), "-f".into(), tmp_s.clone()], None)
            .await?;
        tracing::debug!(src = %src.display(), dst = %dst.display(), "flattening");
        let convert = cmd::convert(src, format, &tmp)?;
        if let Err(e) = self.run_ok(&convert, Some(self.long_timeout)).await {
            let _ = self.exec.run(&["rm".into(), "-f".into(), tmp_s]).await;
            return Err(e);
        }
        let mv = vec![
            "mv".to_string(),
            "-T".into(),
            tmp_s.clone(),
            path::to_str(dst)?.to_string(),
        ];
        if let Err(e) = self.run_guarded(dst, dir, mv, None).await {
            let _ = self.exec.run(&["rm".into(), "-f".into(), tmp_s]).await;
            return Err(e);
        }
        self.info_checked(dst, ImageFormat::Qcow2).await
    }

    /// Safe rebase of the qcow2 `overlay` onto `new_base`, a `new_base_format` image: `qemu-img
    /// rebase -f qcow2 -F <new base format> -b <new base> <overlay>`; qemu-img keeps the guest-visible
    /// content. Both chains are checked with [`Qcow2::info_chain`] first (a rebase reads the old and the
    /// new base). Errors: path checks; [`ClonerError::UnsafeImage`]; [`ClonerError::UnsupportedFormat`]
    /// when the overlay is not qcow2 or the new base is not `new_base_format`;
    /// [`ClonerError::CommandFailed`]; [`ClonerError::Timeout`].
    pub async fn rebase_safe(
        &self,
        overlay: &Path,
        new_base: &Path,
        new_base_format: ImageFormat,
    ) -> Result<(), ClonerError> {
        let p = self.checked(&[overlay, new_base], false).await?;
        let (overlay, new_base) = (&p[0], &p[1]);
        self.require_qcow2(overlay).await?;
        self.info_chain(new_base, new_base_format).await?;
        let format = new_base_format;
        let argv = cmd::rebase(overlay, new_base, format, RebaseMode::Safe)?;
        tracing::debug!(overlay = %overlay.display(), new_base = %new_base.display(), "safe rebase");
        self.run_ok(&argv, Some(self.long_timeout)).await.map(|_| ())
    }

    /// Unsafe rebase (`-u`, only the backing-file name changes) of `overlay` onto `new_base` — only after
    /// checking that `new_base` is byte-identical to the overlay's current backing file (same size, then
    /// same `sha256sum`, both computed on the node). `-F` is still given. For moving a base to
    /// another path or storage without copying data; never onto different content.
    /// Errors: [`ClonerError::NotIdentical`]; [`ClonerError::NotFound`] when the overlay has no backing
    /// file; otherwise as [`Qcow2::rebase_safe`].
    pub async fn rebase_unsafe_identical(
        &self,
        overlay: &Path,
        new_base: &Path,
        new_base_format: ImageFormat,
    ) -> Result<(), ClonerError> {
        let p = self.checked(&[overlay, new_base], false).await?;
        let (overlay, new_base) = (&p[0], &p[1]);
        let info = self.require_qcow2(overlay).await?;
        let Some(current) = info.full_backing_filename.or(info.backing_filename) else {
            return Err(ClonerError::NotFound(PathBuf::from(format!(
                "backing file of {}",
                overlay.display()
            ))));
        };
        let current = self.checked(&[Path::new(&current)], false).await?.remove(0);
        self.info_chain(new_base, new_base_format).await?;
        let format = new_base_format;
        let differs = |detail: String| ClonerError::NotIdentical {
            current: current.clone(),
            new_base: new_base.clone(),
            detail,
        };
        let (a, b) = tokio::try_join!(self.size_of(&current), self.size_of(new_base))?;
        if a != b {
            return Err(differs(format!("sizes {a} and {b} bytes")));
        }
        let (a, b) = tokio::try_join!(self.sha256(&current), self.sha256(new_base))?;
        if a != b {
            return Err(differs(format!("SHA-256 {a} and {b}")));
        }
        let argv = cmd::rebase(overlay, new_base, format, RebaseMode::UnsafeIdentical)?;
        tracing::debug!(overlay = %overlay.display(), new_base = %new_base.display(), "unsafe rebase onto an identical base");
        self.run_ok(&argv, None).await.map(|_| ())
    }

    /// The overlay's info, after checking its whole chain as a qcow2 image.
    async fn require_qcow2(&self, overlay: &Path) -> Result<ImageInfo, ClonerError> {
        let mut chain = self.info_chain(overlay, ImageFormat::Qcow2).await?;
        Ok(chain.remove(0))
    }

    async fn size_of(&self, path: &Path) -> Result<u64, ClonerError> {
        let argv = vec![
            "stat".to_string(),
            "-L".into(),
            "-c".into(),
            "%s".into(),
            path::to_str(path)?.to_string(),
        ];
        let out = self.run_ok(&argv, None).await?;
        out.stdout_text()
            .trim()
            .parse()
            .map_err(|_| ClonerError::BadOutput {
                command: shell_join(&argv),
                message: format!("not a size: {:?}", out.stdout_text()),
            })
    }

    async fn sha256(&self, path: &Path) -> Result<String, ClonerError> {
        let argv = vec![
            "sha256sum".to_string(),
            "-b".into(),
            path::to_str(path)?.to_string(),
        ];
        let out = self.run_ok(&argv, Some(self.long_timeout)).await?;
        let text = out.stdout_text();
        let hash = text
            .trim_start_matches('\\')
            .split_whitespace()
            .next()
            .unwrap_or_default();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ClonerError::BadOutput {
                command: shell_join(&argv),
                message: format!("not a SHA-256: {text:?}"),
            });
        }
        Ok(hash.to_ascii_lowercase())
    }

    /// Delete the file `path` (`rm -f`): no error when it is already gone; directories are refused by
    /// `rm` ([`ClonerError::CommandFailed`]). Errors: path checks.
    pub async fn remove(&self, path: &Path) -> Result<(), ClonerError> {
        let p = self.checked(&[path], false).await?;
        tracing::debug!(path = %p[0].display(), "removing image");
        self.run_ok(
            &["rm".into(), "-f".into(), path::to_str(&p[0])?.to_string()],
            None,
        )
        .await
        .map(|_| ())
    }

    /// `mkdir -p dir` (the storage root itself is allowed). Errors: path checks, command failure.
    pub async fn mkdir_p(&self, dir: &Path) -> Result<(), ClonerError> {
        let p = self.checked(&[dir], true).await?;
        self.mkdir_checked(&p[0]).await
    }

    /// Whether `path` exists (`test -e`). Errors: path checks.
    pub async fn exists(&self, path: &Path) -> Result<bool, ClonerError> {
        let p = self.checked(&[path], false).await?;
        self.exists_checked(&p[0]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_json_from_qemu_img_10_parses() {
        let json = r#"{
            "children": [],
            "backing-filename-format": "raw",
            "virtual-size": 1048576,
            "filename": "o.qcow2",
            "cluster-size": 65536,
            "format": "qcow2",
            "actual-size": 200704,
            "full-backing-filename": "/tmp/qi/b a.raw",
            "backing-filename": "/tmp/qi/b a.raw",
            "dirty-flag": false
        }"#;
        let i = ImageInfo::parse(json).unwrap();
        assert_eq!(i.format, "qcow2");
        assert_eq!(i.virtual_size, 1_048_576);
        assert_eq!(i.actual_size, Some(200_704));
        assert_eq!(i.backing_filename.as_deref(), Some("/tmp/qi/b a.raw"));
        assert_eq!(i.backing_format.as_deref(), Some("raw"));
        let out = serde_json::to_value(&i).unwrap();
        assert_eq!(out["virtual_size"], 1_048_576);
    }

    #[test]
    fn garbage_info_is_bad_output() {
        assert!(matches!(
            ImageInfo::parse("qemu-img: error"),
            Err(ClonerError::BadOutput { .. })
        ));
    }

    #[test]
    fn image_formats_round_trip() {
        for f in [ImageFormat::Qcow2, ImageFormat::Raw, ImageFormat::Vmdk] {
            assert_eq!(f.as_str().parse::<ImageFormat>().unwrap(), f);
        }
        assert!(matches!(
            "QCOW2".parse::<ImageFormat>(),
            Err(ClonerError::UnsupportedFormat(_))
        ));
    }

    #[test]
    fn root_slash_and_relative_roots_are_refused() {
        let exec: Arc<dyn Executor> = Arc::new(crate::LocalExecutor::default());
        assert!(matches!(
            Qcow2::new(exec.clone(), "/"),
            Err(ClonerError::Config(_))
        ));
        assert!(matches!(
            Qcow2::new(exec.clone(), "var/lib/vz"),
            Err(ClonerError::InvalidPath { .. })
        ));
        let q = Qcow2::new(exec, "/var/lib/vz/").unwrap();
        assert_eq!(q.storage_root(), Path::new("/var/lib/vz"));
    }
}
