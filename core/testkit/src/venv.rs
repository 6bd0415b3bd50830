//! The Python virtualenv holding fakepve, created on first use under a cross-process file lock.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use crate::proc::run;
use crate::workspace_root;

/// The pip requirement the harness installs: fakepve with its `crypto` extra (certificates), pinned.
pub const FAKEPVE_REQUIREMENT: &str = "fakepve[crypto]==0.5.0";

/// Marker file written into the venv once the requirement imports cleanly; its presence is the fast path.
const MARKER: &str = ".proxlab-fakepve-0.5.0";

/// Runs under `fcntl.flock` on `<venv>.lock` (the kernel drops the lock if the process dies), so test
/// binaries started in parallel create and fill the venv once. Arguments: venv dir, marker name, requirement.
const SETUP_PY: &str = r#"
import fcntl, os, subprocess, sys
venv, marker, req = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(os.path.dirname(os.path.abspath(venv)), exist_ok=True)
with open(os.path.abspath(venv).rstrip('/') + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    py = os.path.join(venv, 'bin', 'python')
    marker = os.path.join(venv, marker)
    if os.path.exists(marker) and os.path.exists(py):
        sys.exit(0)
    if not os.path.exists(py):
        print('testkit: creating virtualenv ' + venv, file=sys.stderr, flush=True)
        subprocess.check_call([sys.executable, '-m', 'venv', venv], stdout=sys.stderr)
    check = ('import sys, aiohttp, cryptography, fakepve; '
             'sys.exit(0 if fakepve.__version__ == "0.5.0" else 1)')
    if subprocess.call([py, '-c', check], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) != 0:
        print('testkit: pip install ' + req + ' into ' + venv, file=sys.stderr, flush=True)
        subprocess.check_call([py, '-m', 'pip', 'install', '-q', '--disable-pip-version-check', req],
                              stdout=sys.stderr)
        if subprocess.call([py, '-c', check]) != 0:
            sys.exit('fakepve 0.5.0 does not import after pip install')
    with open(marker, 'w') as fh:
        fh.write(req + '\n')
"#;

static VENV_PYTHON: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Ensure a virtualenv with [`FAKEPVE_REQUIREMENT`] exists and return its interpreter (`<venv>/bin/python`).
///
/// The venv is env `PROXLAB_VENV`, or `<workspace>/.venv/pve-sim` (git-ignored). On first use it is made with
/// `python3 -m venv` (env `PROXLAB_PYTHON` names another interpreter) and filled by `pip install` from the
/// package index; a `flock` on `<venv>.lock` keeps parallel test binaries from racing. Later calls take the
/// fast path (a marker file in the venv). Errors: [`crate::TestkitError::Command`] with pip's output tail.
pub fn ensure_venv() -> anyhow::Result<PathBuf> {
    let mut cached = VENV_PYTHON
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(python) = cached.as_ref() {
        return Ok(python.clone());
    }
    let venv = match std::env::var_os("PROXLAB_VENV") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join(".venv").join("pve-sim"),
    };
    let venv = if venv.is_absolute() {
        venv
    } else {
        std::env::current_dir()?.join(venv)
    };
    let python = venv.join("bin").join("python");
    if !(python.exists() && venv.join(MARKER).exists()) {
        let system = std::env::var("PROXLAB_PYTHON").unwrap_or_else(|_| "python3".to_string());
        run(
            Command::new(&system)
                .arg("-c")
                .arg(SETUP_PY)
                .arg(&venv)
                .arg(MARKER)
                .arg(FAKEPVE_REQUIREMENT),
            &format!(
                "setting up {} with {FAKEPVE_REQUIREMENT} (using {system})",
                venv.display()
            ),
        )?;
    }
    *cached = Some(python.clone());
    Ok(python)
}
