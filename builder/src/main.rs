//! `keel`: the thin binary over `keel_builder`.

use clap::{CommandFactory, Parser};
use keel_builder::cli::{Cli, Command, KeyCommand, ProfileCommand, SecretsCommand};
use keel_builder::commands::{self, CommandError};
use keel_builder::progress::Reporter;

fn main() {
    let cli = Cli::parse();
    let rep = Reporter::new(cli.quiet);
    if let Err(err) = dispatch(cli.command, &rep) {
        eprintln!("keel: {err}");
        std::process::exit(err.exit_code());
    }
}

fn dispatch(command: Command, rep: &Reporter) -> Result<(), CommandError> {
    match command {
        Command::Build(args) => {
            let request = keel_builder::build::BuildRequest {
                profile: args.profile,
                output: args.output,
                key: args.key,
                version: args.version,
                init: args.init,
                cache_dir: args.cache.unwrap_or_else(commands::default_cache_dir),
                source_date_epoch: commands::source_date_epoch()?,
            };
            let report = keel_builder::build::build(&request, rep)?;
            rep.note(&format!(
                "built {} {} in {}: root hash {}",
                report.manifest.name,
                report.manifest.version,
                report.output.display(),
                report.manifest.root.verity.root_hash
            ));
            for (name, size) in report.files {
                rep.note(&format!(
                    "  {name:<24} {}",
                    keel_builder::progress::human_bytes(size)
                ));
            }
            Ok(())
        }
        Command::Profile(ProfileCommand::Check { file }) => commands::profile_check(&file, rep),
        Command::Key(KeyCommand::Gen {
            output,
            unencrypted,
        }) => {
            let (secret, public, key) = keel_builder::keys::generate(&output, unencrypted)
                .map_err(|e| CommandError::BadInput(e.to_string()))?;
            rep.note(&format!(
                "key ID {}: secret {} (mode 0600), public {}",
                key.key_id(),
                secret.display(),
                public.display()
            ));
            Ok(())
        }
        Command::Secrets(SecretsCommand::Gen {
            output,
            cluster_name,
            endpoint,
        }) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .map_err(|e| CommandError::Failed(format!("the clock is before 1970: {e}")))?;
            let generated =
                keel_builder::secrets::generate(&output, &cluster_name, &endpoint, now)?;
            rep.note(&format!(
                "cluster {cluster_name}: secrets {} (mode 0600), admin kubeconfig {} for {endpoint} (mode 0600); bootstrap token id {}",
                generated.secrets_path.display(),
                generated.kubeconfig_path.display(),
                generated.secrets.bootstrap_token.id
            ));
            rep.note(
                "whoever reads the secrets file owns the cluster: keep it out of version control",
            );
            Ok(())
        }
        Command::Sign(args) => {
            commands::sign(&args.file, &args.key, args.trusted_comment.as_deref(), rep)
        }
        Command::Verify(args) => commands::verify(&args.path, &args.public, rep),
        Command::Inspect(args) => {
            print!("{}", keel_builder::inspect::inspect(&args.path)?);
            Ok(())
        }
        Command::Run(args) => keel_builder::run::run(
            &args.path,
            &keel_builder::run::RunOptions {
                keep_disk: args.keep_disk,
                disk_size: args.disk_size,
                memory: args.memory,
                forwards: args.forwards,
                profile: args.profile,
                secrets: args.secrets,
            },
        ),
        Command::Node(command) => keel_builder::node::command::run(command, rep),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "keel", &mut std::io::stdout());
            Ok(())
        }
    }
}
