//! `GET /static/vendor/{*path}`: the pinned npm files (xterm.js, its fit addon, noVNC) that
//! `dev/build-assets` copies from `node_modules` (installed with `npm ci` from `package-lock.json`) into
//! [`super::ConnectConfig::vendor_dir`].
//!
//! Served from disk, not embedded: the binary builds without npm, and a site updates the files by
//! re-running the script. Layout: `xterm/xterm.js`, `xterm/xterm.css`, `xterm-addon-fit/addon-fit.js`,
//! `novnc/core/**`, `novnc/vendor/pako/**`, and `VERSIONS` (one `package version` per line).

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::AppError;
use crate::state::AppState;

/// Largest vendored file served, bytes.
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// The file under `root` that URL path `rel` names, or `None` for anything that could leave `root`
/// (`..`, absolute paths, backslashes, NUL, hidden files).
pub fn resolve(root: &Path, rel: &str) -> Option<PathBuf> {
    if rel.is_empty() || rel.contains(['\\', '\0']) || rel.len() > 512 {
        return None;
    }
    let mut out = root.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(s) if !s.to_string_lossy().starts_with('.') => out.push(s),
            _ => return None,
        }
    }
    Some(out)
}

/// Content type by extension (JavaScript modules must be `text/javascript` for browsers to run them).
pub fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "map" | "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "woff2" => "font/woff2",
        "txt" | "" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The handler. 404 when the file is missing (run `dev/build-assets`).
pub async fn vendor_file(State(st): State<AppState>, UrlPath(rel): UrlPath<String>) -> Response {
    let root = st.connect.config.vendor_dir.clone();
    let Some(path) = resolve(&root, &rel) else {
        return AppError::NotFound("no such file".into()).into_response();
    };
    let meta = match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_file() && m.len() <= MAX_FILE => m,
        _ => {
            return AppError::NotFound(format!(
                "no vendored file `{rel}` (run dev/build-assets to install the pinned npm packages)"
            ))
            .into_response();
        }
    };
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) => return AppError::Internal(format!("reading {}: {e}", path.display())).into_response(),
    };
    let mut resp = (StatusCode::OK, Body::from(bytes)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&path)),
    );
    // The packages are pinned by the lockfile; a new version comes with a new deployment.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    if let Ok(v) = HeaderValue::from_str(&meta.len().to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_vendor_folder() {
        let root = Path::new("/srv/vendor");
        assert_eq!(
            resolve(root, "xterm/xterm.js"),
            Some(PathBuf::from("/srv/vendor/xterm/xterm.js"))
        );
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "xterm/../../x",
            "a\\b",
            ".git/config",
            "",
        ] {
            assert_eq!(resolve(root, bad), None, "{bad}");
        }
        assert_eq!(
            content_type(Path::new("a/rfb.js")),
            "text/javascript; charset=utf-8"
        );
    }
}
