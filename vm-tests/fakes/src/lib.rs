//! Test doubles and test tools of the vm-tests, in a package of their own so that the static
//! release builds the tests bake into images compile only what these need (not keel-builder):
//! the binaries `fake-kubelet` (a test double for the kubelet) and `cri-relay` (TCP to a Unix
//! socket), and the CRI client the fake kubelet shares with the QEMU tests.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod cri;
