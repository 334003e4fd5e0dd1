//! A full disk, for real: the server's data directory on a small tmpfs that
//! the test mounts (skipped, saying so, where the test may not mount one).
//! Exports past the space get retryable answers, everything acknowledged is
//! served, and once space frees, exports succeed again and a restart loses
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use andon_tests::Server;

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem at `dir` but for about `leave` bytes.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 256 << 10];
    let mut written = 0u64;
    while f.write_all(&chunk).and_then(|()| f.flush()).is_ok() {
        written += chunk.len() as u64;
    }
    drop(f);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(written.saturating_sub(leave)).unwrap();
    path
}

#[test]
fn a_full_disk_gets_retryable_answers_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::tmpfs(&dir.path().join("fs"), "24m") else {
        eprintln!("skipping: cannot mount a tmpfs here (needs CAP_SYS_ADMIN)");
        return;
    };
    let mut server = Server::start(&mount.0.join("data"));
    assert_eq!(server.export_spans(1, 100).0, 200);
    let filler = fill(&mount.0, 1 << 20);

    // Past the space left: retryable answers (503 with Retry-After), never a
    // success for spans that were not written.
    let mut acked = 100;
    let mut refused = None;
    for seed in 2..400 {
        match server.export_spans(seed, 200) {
            (200, _) => acked += 200,
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    let (status, retry_after) = refused.expect("a full disk never refused an export");
    assert_eq!((status, retry_after), (503, true), "a full disk is a retryable condition");
    assert_eq!(server.count("SELECT count(*) FROM spans"), acked, "what was acknowledged is served");

    // Space frees: exports succeed again, and a restart keeps everything.
    std::fs::remove_file(&filler).unwrap();
    assert!(andon_tests::wait_for(Duration::from_secs(20), || server.export_spans(999, 50).0 == 200));
    acked += 50;
    server.restart();
    assert_eq!(server.count("SELECT count(*) FROM spans"), acked);
    assert_eq!(server.count("SELECT count(DISTINCT span_id || trace_id) FROM spans"), acked);
    drop(server);
}
