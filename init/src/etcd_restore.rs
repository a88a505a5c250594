//! A control plane started with an etcd snapshot and no etcd data yet bootstraps a new
//! single-member cluster from it, following etcd's disaster-recovery procedure:
//! `etcdctl snapshot restore` (which checks the snapshot's SHA-256 trailer) with this member
//! alone in `--initial-cluster` and a new cluster token, so that the restored cluster has a
//! new cluster ID and no member of the old one can talk to it. The other control planes then
//! join it as learners ([`crate::etcd_join`]).
//!
//! The snapshot comes over QEMU fw_cfg (`keel cluster create --etcd-snapshot`), which the
//! node trusts as it trusts a profile from there: whoever sets fw_cfg runs the machine.

use std::path::{Path, PathBuf};

/// etcd's own tool for the restore (Debian's etcd-client, in the stock images).
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// Where a node copies the snapshot before the restore (tmpfs; removed after it).
pub const SCRATCH_DIR: &str = "/run/keel";

/// The restored cluster's token: the profile's with the restore time, so every restore
/// makes a cluster ID of its own.
pub fn restored_token(cluster_token: &str, now_unix: u64) -> String {
    format!("{cluster_token}-restored-{now_unix}")
}

/// `etcdctl snapshot restore` into `data_dir`, which must not exist (etcdctl refuses one
/// that does).
pub fn restore_argv(
    snapshot: &Path,
    name: &str,
    peer_url: &str,
    token: &str,
    data_dir: &Path,
) -> Vec<String> {
    vec![
        ETCDCTL.to_owned(),
        "snapshot".into(),
        "restore".into(),
        snapshot.display().to_string(),
        format!("--name={name}"),
        format!("--initial-cluster={name}={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster-token={token}"),
        format!("--data-dir={}", data_dir.display()),
    ]
}

/// The directory etcdctl restores into: beside the data directory, on the same file
/// system, so that its `member` directory is renamed into place whole.
pub fn staging_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(".restore");
    PathBuf::from(name)
}

/// Restores `snapshot` (the fw_cfg entry's file, copied into `scratch` first: etcdctl wants
/// a regular file) into `data_dir` as member `name`; `run` runs a command to completion.
pub fn restore(
    snapshot: &Path,
    scratch: &Path,
    data_dir: &Path,
    name: &str,
    peer_url: &str,
    token: &str,
    run: &dyn Fn(&[String]) -> Result<(), String>,
) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let copy = scratch.join("etcd-restore.db");
    let copy = copy.as_path();
    let staging = staging_dir(data_dir);
    let result = (|| {
        std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
        // It holds every Kubernetes secret: private from its first byte.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(copy)
            .map_err(|e| format!("{}: {e}", copy.display()))?;
        let mut input =
            std::fs::File::open(snapshot).map_err(|e| format!("{}: {e}", snapshot.display()))?;
        std::io::copy(&mut input, &mut out)
            .map_err(|e| format!("copying the snapshot from {}: {e}", snapshot.display()))?;
        drop(out);
        let _ = std::fs::remove_dir_all(&staging);
        run(&restore_argv(copy, name, peer_url, token, &staging))
            .map_err(|e| format!("restoring the etcd snapshot: {e}"))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| format!("{}: {e}", data_dir.display()))?;
        let member = data_dir.join("member");
        std::fs::rename(staging.join("member"), &member)
            .map_err(|e| format!("moving the restored data to {}: {e}", member.display()))
    })();
    let _ = std::fs::remove_file(copy);
    let _ = std::fs::remove_dir_all(&staging);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_makes_this_member_alone_with_a_new_token() {
        let argv = restore_argv(
            Path::new("/run/keel/etcd-restore.db"),
            "kr-cp-1",
            "https://10.5.0.11:2380",
            &restored_token("kr", 1_700_000_000),
            Path::new("/var/lib/etcd.restore"),
        );
        assert_eq!(
            argv[1..],
            [
                "snapshot",
                "restore",
                "/run/keel/etcd-restore.db",
                "--name=kr-cp-1",
                "--initial-cluster=kr-cp-1=https://10.5.0.11:2380",
                "--initial-advertise-peer-urls=https://10.5.0.11:2380",
                "--initial-cluster-token=kr-restored-1700000000",
                "--data-dir=/var/lib/etcd.restore",
            ]
        );
        assert_eq!(
            staging_dir(Path::new("/var/lib/etcd")),
            Path::new("/var/lib/etcd.restore")
        );
    }
}
