//! The command line (clap definitions only; the work is in `commands`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "keel", version, about = "Build, sign, verify and boot Keel node OS images", long_about = None)]
pub struct Cli {
    /// Print nothing but errors.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
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
    /// Verify a signed file, or a build output directory and everything its manifest lists.
    Verify(VerifyArgs),
    /// Print the partition layout and the signed manifest read back from a disk image.
    Inspect(InspectArgs),
    /// Boot a built image in QEMU with the serial console attached (Ctrl-C powers it off).
    Run(RunArgs),
    /// Print shell completions.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
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
    /// The static keel-init binary (default: $KEEL_INIT, or next to keel, or the cargo
    /// target directory).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Cache for downloaded packages (default: $KEEL_CACHE_DIR or ~/.cache/keel).
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Validate a profile (and the files it names) without building.
    Check { file: PathBuf },
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
        cluster_name: String,
        /// The Kubernetes API endpoint admin.kubeconfig points at.
        #[arg(long, default_value = "https://127.0.0.1:6443")]
        endpoint: keel_signing::profile::Endpoint,
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
    /// A file with FILE.minisig beside it, or a `keel build` output directory.
    pub path: PathBuf,
    /// Trusted public key file(s); each may hold several keys.
    #[arg(long = "pub", required = true)]
    pub public: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A disk image, or a build output directory.
    pub path: PathBuf,
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
    /// Forward a host port to the guest: HOST:GUEST (TCP, on 127.0.0.1).
    #[arg(long = "forward", value_name = "HOST:GUEST")]
    pub forwards: Vec<String>,
}
