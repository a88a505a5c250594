//! The command line: clap definitions only. [`super::dispatch`] turns them into library
//! calls.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};
use keel_contract::profile::{ClusterName, Endpoint};

use crate::progress::Verbosity;

#[derive(Debug, Parser)]
#[command(name = "keel", version, about = "Build, sign, verify and boot Keel node OS images", long_about = None)]
pub struct Cli {
    /// Print nothing but errors.
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more: -v lists what went into an image, -vv also what apt says while resolving.
    #[arg(long, short, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// The saved context `keel node` uses (see `keel context`; default: the current one).
    #[arg(long, global = true, env = "KEEL_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// The file contexts are saved in [default: $XDG_CONFIG_HOME/keel/config.toml].
    #[arg(long, global = true, env = "KEEL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    pub fn verbosity(&self) -> Verbosity {
        match (self.quiet, self.verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, 1) => Verbosity::Verbose,
            (false, _) => Verbosity::Debug,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a signed, bootable disk image from a profile.
    Build(BuildArgs),
    /// Work with profiles.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Work with signing keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Work with cluster secrets (CAs, service-account key, bootstrap token).
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Sign a file: writes FILE.minisig (minisign format).
    Sign(SignArgs),
    /// Verify a signed file, a build output directory or an update bundle against its manifest.
    Verify(VerifyArgs),
    /// Print the partition layout and signed manifest of a disk image, or an update bundle.
    Inspect(InspectArgs),
    /// Write a built image onto a disk (or into a file): only its data, then read it back
    /// and check it against the image and the signed manifest.
    Flash(FlashArgs),
    /// Boot a built image in QEMU with the serial console attached (Ctrl-C powers it off).
    Run(RunArgs),
    /// Serve images for network boot (their pxe/ directories) and per-node profiles over
    /// HTTP, until interrupted. Not a DHCP server: point DHCP (e.g. dnsmasq) at it.
    Serve(ServeArgs),
    /// Disposable multi-node clusters of QEMU VMs on this machine: no root, no KVM.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage a running node through its API (HTTPS, mutual TLS, port 50000).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Saved contexts: which nodes `keel node` talks to and with which secrets.
    #[command(subcommand)]
    Context(ContextCommand),
    /// Print shell completions.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (keel.1, keel-build.1, ...) into a directory.
    Man {
        /// The directory to write them to (created if missing).
        #[arg(long, short)]
        output: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The profile (TOML).
    pub profile: PathBuf,
    /// Output directory; replaced as a whole when the build succeeds.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Secret key to sign with (overrides image.signing_key).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// OS version (overrides image.version).
    #[arg(long)]
    pub version: Option<semver::Version>,
    /// The static keel-init binary (default: next to keel, or the cargo target directory).
    #[arg(long, env = "KEEL_INIT")]
    pub init: Option<PathBuf>,
    /// Cache for downloaded packages [default: $XDG_CACHE_HOME/keel or ~/.cache/keel].
    #[arg(long, env = "KEEL_CACHE_DIR")]
    pub cache: Option<PathBuf>,
    /// Cache of compressed squashfs blocks, so rebuilds compress only what changed; bounded
    /// to 2 GiB, least recently used evicted [default: CACHE/squashfs-blocks].
    #[arg(long, env = "KEEL_BLOCK_CACHE_DIR")]
    pub block_cache: Option<PathBuf>,
    /// Compress every block, neither reading nor writing the block cache.
    #[arg(long, env = "KEEL_NO_BLOCK_CACHE", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_block_cache: bool,
    /// Print what was built as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Validate a profile (and the files it names) without building.
    Check {
        file: PathBuf,
        /// Print the result as JSON on stdout: what the profile builds, or every problem with
        /// its file, line, column and field.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a key pair: DIR/keel.key (secret, mode 0600) and DIR/keel.pub.
    Gen {
        /// Directory to write the keys to.
        #[arg(long, short)]
        output: PathBuf,
        /// Store the secret key without a passphrase.
        #[arg(long)]
        unencrypted: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Generate a cluster's secrets: FILE (mode 0600, never overwritten) and the admin's
    /// kubeconfig `admin.kubeconfig` beside it (mode 0600). Name FILE in a profile's
    /// `image.secrets`; keep it as safe as the cluster.
    Gen {
        /// The secrets file to create, e.g. cluster.secrets.toml.
        #[arg(long, short)]
        output: PathBuf,
        /// Cluster name (kubeconfigs carry it): lower-case letters, digits and '-'.
        #[arg(long, default_value = "keel")]
        cluster_name: ClusterName,
        /// The Kubernetes API endpoint admin.kubeconfig points at.
        #[arg(long, default_value = "https://127.0.0.1:6443")]
        endpoint: Endpoint,
    },
    /// Issue node NAME its own API certificate (keel CA; names NAME, `keel-node` and each
    /// --ip) in a node secrets file OUT (mode 0600, never overwritten) for a node of --role,
    /// to give the node at boot (fw_cfg or a config drive) as its secrets.toml. Then
    /// `keel node --node NAME` checks that the node it reaches is NAME.
    Node {
        /// The node's name (a DNS name).
        name: String,
        /// An address the node's API is reached at (repeat for more).
        #[arg(long = "ip", value_name = "ADDR")]
        ips: Vec<std::net::IpAddr>,
        /// The cluster secrets file.
        #[arg(long, value_name = "FILE")]
        secrets: PathBuf,
        /// The node's role: controlplane or worker (what else the file holds).
        #[arg(long, value_parser = ["controlplane", "worker"], default_value = "worker")]
        role: String,
        /// The node secrets file to create.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Issue every operator and shared node certificate in FILE again (a new year of
    /// validity) and a new bootstrap token (its time to live counts from now), keeping the
    /// CAs and the service-account key. Adds a read-only operator (`keel_read_only`) to files
    /// from before it existed. Nodes get the renewed node certificate and token with their
    /// next build or secrets at boot.
    Renew {
        /// The cluster secrets file, replaced in place.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct SignArgs {
    pub file: PathBuf,
    /// Secret key.
    #[arg(long)]
    pub key: PathBuf,
    /// Trusted (signed) comment; default: timestamp and file name, as minisign writes.
    #[arg(long)]
    pub trusted_comment: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A file with FILE.minisig beside it, a `keel build` output directory, an update
    /// bundle (an OCI layout such as OUTDIR/update), or a network-boot directory (OUTDIR/pxe).
    pub path: PathBuf,
    /// Trusted public key file(s); each may hold several keys.
    #[arg(long = "pub", required = true)]
    pub public: Vec<PathBuf>,
    /// Print what was checked as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FlashArgs {
    /// A `keel build` output directory (disk.raw and manifest.json).
    pub outdir: PathBuf,
    /// The disk to write (/dev/sdX, /dev/nvme0n1) or a file (created or replaced).
    pub target: PathBuf,
    /// Write even to a mounted disk or the one holding `/`.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A disk image, a build output directory, or an update bundle (an OCI layout).
    pub path: PathBuf,
    /// Print the partition table and manifests as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// `keel build` output directories with a pxe/ directory (image.formats = ["pxe"]), or
    /// pxe/ directories. Each is served at /NAME/VERSION/; the first also at /.
    #[arg(required = true, value_name = "OUTDIR")]
    pub outdirs: Vec<PathBuf>,
    /// The address and port to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
    /// Per-node profiles: DIR/MAC.toml and DIR/MAC.toml.minisig (MAC as 52-54-00-12-34-56),
    /// served at /configs/. Sign them with `keel sign`: a node applies only signed ones.
    #[arg(long, value_name = "DIR")]
    pub configs: Option<PathBuf>,
    /// Print where each image is served as one line of JSON on stdout once listening.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A build output directory or a disk image.
    pub path: PathBuf,
    /// Keep the VM's disk (and firmware variables) in OUTDIR/run/ across runs instead of
    /// booting a throwaway copy.
    #[arg(long)]
    pub keep_disk: bool,
    /// Virtual disk size: the image is grown to this, and the node fills the rest with DATA.
    #[arg(long, default_value = "8GiB")]
    pub disk_size: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    /// Virtual CPUs.
    #[arg(long, default_value_t = crate::qemu::DEFAULT_CPUS, value_parser = clap::value_parser!(u8).range(1..))]
    pub cpus: u8,
    /// Forward a host port to the guest: HOST:GUEST (TCP, on 127.0.0.1).
    #[arg(long = "forward", value_name = "HOST:GUEST")]
    pub forwards: Vec<String>,
    /// Give the node this profile at boot (over QEMU fw_cfg): its node section (role,
    /// hostname, network, cluster) makes the generic image that node. Validated first; it may
    /// `extends` others. Its `image.secrets`, if set, supplies the node's secrets.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// The cluster secrets file (`keel secrets gen`): the node gets what its role needs.
    /// Needs --profile (the role decides what a node may hold).
    #[arg(long, value_name = "FILE", requires = "profile")]
    pub secrets: Option<PathBuf>,
}

/// How to reach a node and prove who we are: given here, or from the saved context.
#[derive(Debug, Args)]
pub struct NodeConnection {
    /// The node's API: HOST or HOST:PORT (port 50000 by default) [default: the context's
    /// first endpoint].
    #[arg(long, short, value_name = "HOST:PORT", env = "KEEL_ENDPOINT")]
    pub endpoint: Option<String>,
    /// The cluster secrets file (TOML): the keel CA and the admin certificate and key
    /// [default: the context's].
    #[arg(long, value_name = "FILE", env = "KEEL_SECRETS")]
    pub secrets: Option<PathBuf>,
    /// Present the read-only operator's certificate (`keel_read_only` in the secrets file):
    /// status, version and logs work, anything that changes the node gets 403.
    #[arg(long, env = "KEEL_READ_ONLY")]
    pub read_only: bool,
    /// The node's name: its certificate must be the one `keel secrets node NAME` issued (and
    /// list the address dialled, if it lists addresses). The shared `keel-node` certificate
    /// is still accepted unless --own-certificate-only.
    #[arg(long, value_name = "NAME", env = "KEEL_NODE")]
    pub node: Option<String>,
    /// With --node: refuse the shared `keel-node` certificate every node holds.
    #[arg(long, requires = "node", env = "KEEL_OWN_CERTIFICATE_ONLY")]
    pub own_certificate_only: bool,
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// List the saved contexts (`*` marks the current one).
    List {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make NAME the current context.
    Use { name: String },
    /// Show a context (default: the current one).
    Show {
        name: Option<String>,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Save a context: the nodes' API endpoints and the cluster secrets file. The first
    /// context saved becomes the current one.
    Set {
        name: String,
        /// A node's API, HOST or HOST:PORT (repeat for several; `keel node` uses the first).
        #[arg(long = "endpoint", short, value_name = "HOST:PORT", required = true)]
        endpoints: Vec<String>,
        /// The cluster secrets file (stored as an absolute path).
        #[arg(long, value_name = "FILE")]
        secrets: PathBuf,
        /// Make it the current context too.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Forget a context.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// The node's version, slots, services and boot history.
    Status {
        #[command(flatten)]
        conn: NodeConnection,
        /// Print the node's JSON answer as it is.
        #[arg(long)]
        json: bool,
    },
    /// The node's OS version and booted slot.
    Version {
        #[command(flatten)]
        conn: NodeConnection,
        /// Print the node's JSON answer as it is.
        #[arg(long)]
        json: bool,
    },
    /// The last lines of a service's log.
    Logs {
        /// The service (as `keel node status` lists them).
        service: String,
        /// How many lines.
        #[arg(long, short = 'n', default_value_t = keel_contract::api::DEFAULT_LOG_LINES)]
        lines: usize,
        #[command(flatten)]
        conn: NodeConnection,
    },
    /// Reboot the node (services are stopped first).
    Reboot {
        #[command(flatten)]
        conn: NodeConnection,
    },
    /// Power the node off (services are stopped first).
    Shutdown {
        #[command(flatten)]
        conn: NodeConnection,
    },
    /// Boot the other slot next (the previous version), and reboot into it.
    Rollback {
        #[command(flatten)]
        conn: NodeConnection,
        /// Print the node's JSON answer as it is.
        #[arg(long)]
        json: bool,
    },
    /// Send an update to the node, which verifies it and writes it to its other slot.
    Upgrade {
        /// The update bundle.
        bundle: PathBuf,
        /// Install even a version that is not newer than the running one.
        #[arg(long)]
        force: bool,
        /// Do not reboot into the new version now (it boots on the next reboot).
        #[arg(long)]
        no_reboot: bool,
        #[command(flatten)]
        conn: NodeConnection,
        /// Print the node's JSON answer as it is.
        #[arg(long)]
        json: bool,
    },
    /// Give the node a renewed API serving certificate: it checks it against the keel CA it
    /// trusts and its own name, keeps it on STATE and serves it on new connections at once.
    RenewCertificate {
        /// Where the certificate is: a cluster secrets file (its shared `node_api`, as
        /// `keel secrets renew` re-issues it) or a node secrets file (`keel secrets node`:
        /// the node's own). Default: the --secrets file.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        #[command(flatten)]
        conn: NodeConnection,
        /// Print the node's JSON answer as it is.
        #[arg(long)]
        json: bool,
    },
    /// A control plane's etcd: its members, and snapshots of its database for backups.
    #[command(subcommand)]
    Etcd(EtcdCommand),
}

#[derive(Debug, Subcommand)]
pub enum EtcdCommand {
    /// The etcd members as the node's etcd sees them: the cluster and member IDs, the
    /// leader, the raft term, this member's health, and each member's name, URLs and role
    /// (voting or learner). A read-only certificate may ask.
    Members {
        #[command(flatten)]
        conn: NodeConnection,
        /// Print the node's JSON answer as it is.
        #[arg(long)]
        json: bool,
    },
    /// Save a consistent snapshot of the node's etcd to FILE, for `etcdctl snapshot
    /// restore`. It holds every Kubernetes secret: it is written private (0600), and only an
    /// admin certificate may take one. FILE appears only once the snapshot is complete and
    /// matches the SHA-256 etcd appends to it (a failed transfer leaves nothing there, and an
    /// existing FILE as it was); the size and the file's SHA-256 are printed at the end.
    Snapshot {
        /// Where to save it (replaced once the snapshot is complete).
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
        #[command(flatten)]
        conn: NodeConnection,
        /// Print what was saved (file, bytes, sha256) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take the member NAME (a control plane's node name) out of the etcd cluster, through
    /// this node's member, which must be another one (etcd's `member remove`). Then stop or
    /// wipe that node: started again with its data it would try to rejoin a cluster that
    /// no longer has it. Prints the members left. Admin only.
    Remove {
        /// The member's name.
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        conn: NodeConnection,
        /// Print the node's JSON answer (the members left) as it is.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster from a built image: the VMs run detached, state lives in
    /// $XDG_STATE_HOME/keel/clusters/NAME, a `keel` context NAME is saved and made current,
    /// then it waits until every node is ready and etcd is healthy with every control plane.
    Create {
        /// The cluster's name (a DNS label); also the context's.
        name: ClusterName,
        /// A build output directory (`keel build -o OUTDIR`).
        #[arg(long, value_name = "OUTDIR")]
        image: PathBuf,
        /// Control-plane nodes (etcd members); odd counts tolerate failures best.
        #[arg(long, default_value_t = 1)]
        controlplanes: u8,
        #[arg(long, default_value_t = 0)]
        workers: u8,
        /// Guest memory per node, MiB.
        #[arg(long, default_value_t = 1024)]
        memory: u32,
        /// Virtual CPUs per node.
        #[arg(long, default_value_t = crate::qemu::DEFAULT_CPUS)]
        cpus: u8,
        /// Each node's disk: the image is grown to this and the node fills it with DATA.
        #[arg(long, default_value = "6GiB")]
        disk_size: String,
        /// Use these cluster secrets (`keel secrets gen`) instead of new ones.
        #[arg(long, value_name = "FILE")]
        secrets: Option<PathBuf>,
        /// Restore etcd from this snapshot (`keel node etcd snapshot`): the first control
        /// plane bootstraps a new cluster (a new cluster ID) from it, and the others join.
        /// Give the old cluster's `--secrets` too, so that what etcd holds stays valid.
        #[arg(long, value_name = "FILE")]
        etcd_snapshot: Option<PathBuf>,
        /// The cluster L2's QEMU transport: mcast (any number of nodes), or stream or dgram
        /// (exactly two nodes; for vm-tests/bench/cluster-l2).
        #[arg(long, default_value = "mcast", hide = true)]
        segment: crate::cluster::Segment,
        /// Seconds to wait for the cluster to be healthy before failing with the check
        /// that fails (the VMs stay up to look at).
        #[arg(long, default_value_t = 900)]
        wait_timeout: u64,
        /// Print the nodes as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List the clusters.
    List {
        #[arg(long)]
        json: bool,
    },
    /// The nodes of a cluster: their QEMU, their API, etcd.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Start the cluster's nodes that are not running (or one node), with their disks as
    /// they were.
    Start {
        name: String,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Seconds to wait for the cluster to be healthy again.
        #[arg(long, default_value_t = 900)]
        wait_timeout: u64,
    },
    /// Pull one node's plug (its QEMU is killed; its disk stays).
    Stop {
        name: String,
        #[arg(long)]
        node: String,
    },
    /// A rolling upgrade: one node at a time, control planes first; each must come back
    /// ready on the bundle's version with the cluster healthy before the next. Stops at the
    /// first node that fails or rolls back.
    Upgrade {
        name: String,
        /// An update bundle (`OUTDIR/update`).
        bundle: PathBuf,
        /// Seconds each node, and the cluster after it, may take.
        #[arg(long, default_value_t = 900)]
        wait_timeout: u64,
        /// Print what each node went through as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Add nodes to a running cluster, one at a time. A control plane joins etcd as a
    /// learner and is promoted once it has caught up; each node must leave the cluster
    /// healthy (every node ready, every control plane a voting member) before the next.
    Add {
        name: String,
        /// Control planes to add.
        #[arg(long, default_value_t = 0)]
        controlplanes: u8,
        /// Workers to add.
        #[arg(long, default_value_t = 0)]
        workers: u8,
        /// Seconds each node may take until the cluster is healthy with it.
        #[arg(long, default_value_t = 900)]
        wait_timeout: u64,
    },
    /// Remove a node: a control plane is first taken out of etcd's member list through
    /// another control plane; then its VM is stopped and its disk and files removed.
    Remove {
        name: String,
        #[arg(long)]
        node: String,
        /// Print the etcd members left as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Stop every VM and remove the cluster's disks, secrets and context.
    Destroy {
        name: String,
        /// Keep the consoles and QEMU logs (moved to NAME.destroyed-TIME).
        #[arg(long)]
        keep_logs: bool,
    },
}
