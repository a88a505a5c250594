//! A VM whose state directory is deep in the file system still starts, and its serial
//! console and QMP sockets answer. A Unix socket's path must fit `sun_path` (108 bytes): CI
//! clones into a deeper directory than a developer's machine, and a cluster node's state
//! directory under it was 113 bytes long, so QEMU refused to start (`UNIX socket path ... is
//! too long`). Both the foreground VM (`keel run`, the VM tests) and the detached cluster
//! nodes are started here, as they are in use.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_builder::qemu::{Vm, VmConfig};

/// A state directory well past `sun_path`'s 108 bytes.
fn deep_state_dir(root: &Path) -> PathBuf {
    let mut dir = root.to_path_buf();
    while dir.as_os_str().len() < 160 {
        dir.push("a-directory-with-a-long-name");
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An empty disk: the firmware finds nothing to boot, which is enough to talk to QEMU.
fn empty_disk(dir: &Path) -> PathBuf {
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    disk
}

#[test]
fn a_vm_with_a_deep_state_directory_starts_and_its_sockets_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let state = deep_state_dir(tmp.path());
    let config = VmConfig::new(empty_disk(tmp.path()), state.join("vm"));
    let mut vm = Vm::start(config).unwrap_or_else(|e| panic!("starting QEMU: {e}"));
    assert!(vm.is_running(), "QEMU exited: {}", vm.stderr());
    let reply = vm.qmp("query-status").unwrap();
    assert!(reply.contains("\"return\""), "QMP said {reply}");
    let mut serial = vm.serial().unwrap();
    serial
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Connected is the point; the firmware may or may not have printed yet.
    let _ = serial.read(&mut [0; 64]);
    // The sockets are where the configuration says, and short enough to bind.
    for socket in [vm.config.serial_socket(), vm.config.qmp_socket()] {
        assert!(socket.exists(), "{} missing", socket.display());
        assert!(socket.as_os_str().len() < 108, "{}", socket.display());
    }
    let sockets = vm.config.socket_dir();
    vm.kill();
    drop(vm);
    assert!(
        sockets.starts_with(&state) || !sockets.exists(),
        "the VM's socket directory {} outlived it",
        sockets.display()
    );
}

#[test]
fn a_detached_cluster_node_with_a_deep_state_directory_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let state = deep_state_dir(tmp.path());
    let config = VmConfig::new(empty_disk(tmp.path()), state.join("vm"));
    let pid = keel_builder::cluster::vm::start(&config, "deep-node")
        .unwrap_or_else(|e| panic!("starting a detached QEMU: {e}"));
    assert_eq!(keel_builder::cluster::vm::running_pid(&config), Some(pid));
    assert!(keel_builder::cluster::vm::kill(&config).unwrap());
    assert_eq!(keel_builder::cluster::vm::running_pid(&config), None);
    let sockets = config.socket_dir();
    assert!(
        sockets.starts_with(&state) || !sockets.exists(),
        "the node's socket directory {} outlived it",
        sockets.display()
    );
}
