//! The `keel` command line, on top of the library: clap definitions ([`args`]), one match
//! that turns each command into library calls ([`dispatch`]), and how results are printed
//! (for people on stderr, `--json` for scripts on stdout) and errors become exit codes
//! ([`error`]: 0 ok, 1 failure, 2 bad input). Nothing below this layer knows about clap or
//! exit codes.

pub mod args;
mod cluster;
mod commands;
pub mod error;
mod man;
pub mod node;
mod node_etcd;

use clap::{CommandFactory, Parser};

pub use args::{
    BuildArgs, Cli, ClusterCommand, Command, ContextCommand, EtcdCommand, FlashArgs, InspectArgs,
    KeyCommand, NodeCommand, NodeConnection, ProfileCommand, RunArgs, SecretsCommand, ServeArgs,
    SignArgs, VerifyArgs,
};
pub use error::CommandError;

use crate::progress::Reporter;

/// Runs `keel` with the process's arguments; returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let rep = Reporter::with_verbosity(cli.verbosity());
    match dispatch(cli, &rep) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("keel: {err}");
            err.exit_code()
        }
    }
}

/// One match over the commands.
pub fn dispatch(cli: Cli, rep: &Reporter) -> Result<(), CommandError> {
    let contexts = commands::ContextFile::new(cli.config.clone(), cli.context.clone());
    match cli.command {
        Command::Build(args) => commands::build(args, rep),
        Command::Profile(ProfileCommand::Check { file, json }) => {
            commands::profile_check(&file, json, rep)
        }
        Command::Key(KeyCommand::Gen {
            output,
            unencrypted,
        }) => commands::key_gen(&output, unencrypted, rep),
        Command::Secrets(SecretsCommand::Gen {
            output,
            cluster_name,
            endpoint,
        }) => commands::secrets_gen(&output, &cluster_name, &endpoint, rep),
        Command::Secrets(SecretsCommand::Node {
            name,
            ips,
            secrets,
            role,
            output,
        }) => commands::secrets_node(&name, &ips, &secrets, &role, &output, rep),
        Command::Secrets(SecretsCommand::Renew { file }) => commands::secrets_renew(&file, rep),
        Command::Sign(args) => commands::sign(&args, rep),
        Command::Verify(args) => commands::verify(&args, rep),
        Command::Inspect(args) => commands::inspect(&args),
        Command::Flash(args) => commands::flash(&args, rep),
        Command::Run(args) => commands::run(args),
        Command::Serve(args) => commands::serve(&args, rep),
        Command::Cluster(command) => cluster::run(command, &contexts, rep),
        Command::Node(command) => {
            let command = node::with_context(command, &contexts.load()?, contexts.name())?;
            node::run(command, rep)
        }
        Command::Context(command) => commands::context(command, &contexts),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "keel", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { output } => {
            let pages = man::write_pages(&output, Cli::command())?;
            rep.note(&format!(
                "{} man pages in {}",
                pages.len(),
                output.display()
            ));
            Ok(())
        }
    }
}
