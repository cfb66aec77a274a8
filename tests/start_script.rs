//! `scripts/start.sh` refuses to start a second demo while one runs. The script runs
//! from a copy in a temporary directory, so it finds neither the helper scripts nor the
//! sources: a run that passes its lock check fails on the next step instead. The
//! script checks for root first, so these tests run as root (scripts/test.sh does).

use std::path::Path;
use std::process::Command;

/// Copies `scripts/start.sh` into `dir/scripts/` and returns the copy's path.
fn copy_start_script(dir: &Path) -> std::path::PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/start.sh");
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    let copy = dir.join("scripts/start.sh");
    std::fs::copy(&source, &copy).unwrap();
    copy
}

#[test]
fn second_start_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let script = copy_start_script(dir.path());
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    // The first demo's script holds this lock while it and its broker run.
    let lock = std::fs::File::create(dir.path().join("data/start.lock")).unwrap();
    lock.try_lock().unwrap();

    let output = Command::new("bash").arg(&script).output().unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a Strongroom demo is already running"),
        "{stderr}"
    );
    assert!(stderr.contains("Ctrl-C"), "{stderr}");
    assert!(!stderr.contains("install-deps"), "{stderr}");
}

#[test]
fn start_after_first_demo_stopped_passes_lock() {
    let dir = tempfile::tempdir().unwrap();
    let script = copy_start_script(dir.path());
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    // A lock file left by a finished demo holds no lock.
    std::fs::File::create(dir.path().join("data/start.lock")).unwrap();

    let output = Command::new("bash").arg(&script).output().unwrap();

    // The copy has no scripts/install-deps.sh, so the run stops right after the lock.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("already running"), "{stderr}");
    assert!(stderr.contains("install-deps.sh"), "{stderr}");
}
