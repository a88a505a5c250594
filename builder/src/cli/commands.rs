//! Each command: arguments into a library call, its result onto the terminal.

use std::path::{Path, PathBuf};

use keel_contract::profile::{ClusterName, Endpoint, ProfileError};
use serde_json::json;

use super::args::{
    BuildArgs, ContextCommand, FlashArgs, InspectArgs, RunArgs, ServeArgs, SignArgs, VerifyArgs,
};
use super::error::CommandError;
use crate::context::{self, Config, Context};
use crate::progress::{Reporter, human_bytes};

/// Prints a JSON value on stdout, one document per line.
fn print_json(value: &serde_json::Value) -> Result<(), CommandError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CommandError::Failed(format!("writing JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// SOURCE_DATE_EPOCH, or 0 so that builds are reproducible by default.
fn source_date_epoch() -> Result<u64, CommandError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().map_err(|_| {
            CommandError::BadInput(format!(
                "SOURCE_DATE_EPOCH={v:?}: expected a number of seconds"
            ))
        }),
        Err(_) => Ok(0),
    }
}

pub fn build(args: BuildArgs, rep: &Reporter) -> Result<(), CommandError> {
    let cache_dir = args
        .cache
        .unwrap_or_else(crate::userland::default_cache_dir);
    let block_cache = match (args.no_block_cache, args.block_cache) {
        (true, _) => None,
        (false, Some(dir)) => Some(dir),
        (false, None) => Some(crate::build::default_block_cache(&cache_dir)),
    };
    let request = crate::build::BuildRequest {
        profile: args.profile,
        output: args.output,
        key: args.key,
        version: args.version,
        init: args.init,
        cache_dir,
        block_cache,
        source_date_epoch: source_date_epoch()?,
    };
    let report = crate::build::build(&request, rep)?;
    let m = &report.manifest;
    for item in &m.sources {
        rep.detail(&format!("  {} {} {}", item.kind, item.name, item.version));
    }
    rep.note(&format!(
        "built {} {} in {}: root hash {}",
        m.name,
        m.version,
        report.output.display(),
        m.root.verity.root_hash
    ));
    for (name, size) in &report.files {
        rep.note(&format!("  {name:<24} {}", human_bytes(*size)));
    }
    if args.json {
        let files: Vec<_> = report
            .files
            .iter()
            .map(|(name, size)| json!({"name": name, "size": size}))
            .collect();
        print_json(&json!({
            "output": report.output,
            "name": m.name,
            "version": m.version,
            "arch": m.arch,
            "root_hash": m.root.verity.root_hash.to_string(),
            "kernel": m.kernel.release,
            "sources": m.sources.len(),
            "files": files,
        }))?;
    }
    Ok(())
}

pub fn profile_check(file: &Path, json: bool, rep: &Reporter) -> Result<(), CommandError> {
    match crate::check::check_profile(file) {
        Ok(report) => {
            rep.note(&format!(
                "{}: ok ({} {}, role {}, {} file(s) in the extends chain)",
                file.display(),
                report.name,
                report.version,
                report.role,
                report.layers.len()
            ));
            if json {
                let mut value = serde_json::to_value(&report)
                    .map_err(|e| CommandError::Failed(e.to_string()))?;
                value["ok"] = true.into();
                print_json(&value)?;
            }
            Ok(())
        }
        Err(err) => {
            if json {
                print_json(&diagnostics_json(&err))?;
            }
            Err(err.into())
        }
    }
}

/// `{"ok": false, "diagnostics": [{file, line, column, field, message}]}`.
fn diagnostics_json(err: &ProfileError) -> serde_json::Value {
    let diagnostics: Vec<_> = match err {
        ProfileError::Invalid(diags) => diags
            .iter()
            .map(|d| {
                json!({
                    "file": d.file,
                    "line": d.position.map(|p| p.0),
                    "column": d.position.map(|p| p.1),
                    "field": d.field,
                    "message": d.message,
                })
            })
            .collect(),
        ProfileError::Read { path, .. } => vec![json!({
            "file": path,
            "line": null,
            "column": null,
            "field": null,
            "message": err.to_string(),
        })],
    };
    json!({"ok": false, "diagnostics": diagnostics})
}

pub fn key_gen(output: &Path, unencrypted: bool, rep: &Reporter) -> Result<(), CommandError> {
    let (secret, public, key) = crate::keys::generate(output, unencrypted)?;
    rep.note(&format!(
        "key ID {}: secret {} (mode 0600), public {}",
        key.key_id(),
        secret.display(),
        public.display()
    ));
    Ok(())
}

pub fn secrets_gen(
    output: &Path,
    cluster_name: &ClusterName,
    endpoint: &Endpoint,
    rep: &Reporter,
) -> Result<(), CommandError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|e| CommandError::Failed(format!("the clock is before 1970: {e}")))?;
    let generated = crate::secrets::generate(output, cluster_name, endpoint, now)?;
    rep.note(&format!(
        "cluster {cluster_name}: secrets {} (mode 0600), admin kubeconfig {} for {endpoint} (mode 0600); bootstrap token id {}",
        generated.secrets_path.display(),
        generated.kubeconfig_path.display(),
        generated.secrets.bootstrap_token.id
    ));
    rep.note("whoever reads the secrets file owns the cluster: keep it out of version control");
    Ok(())
}

fn unix_now() -> Result<u64, CommandError> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|e| CommandError::Failed(format!("the clock is before 1970: {e}")))
}

pub fn secrets_node(
    name: &str,
    ips: &[std::net::IpAddr],
    secrets: &Path,
    role: &str,
    output: &Path,
    rep: &Reporter,
) -> Result<(), CommandError> {
    let role = match role {
        "controlplane" => keel_contract::profile::Role::ControlPlane,
        _ => keel_contract::profile::Role::Worker,
    };
    let node = crate::secrets::node_file(secrets, name, ips, role, output, unix_now()?)?;
    let until = keel_pki::not_after_pem(&node.node_api.cert)
        .map_err(crate::secrets::SecretsGenError::from)?;
    rep.note(&format!(
        "{}: {} secrets for node {name} (mode 0600), its API certificate valid until {} (unix seconds); give it to the node at boot, then `keel node --node {name}`",
        output.display(),
        role.as_str(),
        until
    ));
    Ok(())
}

pub fn secrets_renew(file: &Path, rep: &Reporter) -> Result<(), CommandError> {
    let renewed = crate::secrets::renew(file, unix_now()?)?;
    let until = keel_pki::not_after_pem(&renewed.keel_admin.cert)
        .map_err(crate::secrets::SecretsGenError::from)?;
    rep.note(&format!(
        "{}: operator and shared node certificates issued again, valid until {until} (unix seconds); the CAs are unchanged. Rebuild or re-deliver node secrets for the nodes to serve the new node certificate",
        file.display()
    ));
    Ok(())
}

pub fn sign(args: &SignArgs, rep: &Reporter) -> Result<(), CommandError> {
    let (signature, key_id) =
        crate::keys::sign_file(&args.file, &args.key, args.trusted_comment.as_deref())?;
    rep.note(&format!(
        "signed {} with key ID {key_id}: {}",
        args.file.display(),
        signature.display()
    ));
    Ok(())
}

pub fn flash(args: &FlashArgs, rep: &Reporter) -> Result<(), CommandError> {
    let opts = crate::flash::FlashOptions { force: args.force };
    let report = crate::flash::flash(&args.outdir, &args.target, &opts, rep, &mut |_| {})?;
    rep.note(&format!(
        "flashed {} onto {}: {} of {} written, read back and verified ({})",
        args.outdir.display(),
        report.target.display(),
        crate::progress::human_bytes(report.written),
        crate::progress::human_bytes(report.disk_size),
        report.checked.join("; ")
    ));
    Ok(())
}

pub fn verify(args: &VerifyArgs, rep: &Reporter) -> Result<(), CommandError> {
    let trusted = crate::verify::load_trusted(&args.public)?;
    let path = &args.path;
    if !path.is_dir() {
        if !path.exists() {
            return Err(crate::verify::VerifyError::Missing(path.clone()).into());
        }
        let verified = crate::verify::verify_file(path, &trusted)?;
        rep.note(&format!(
            "verified {}: signed by key ID {} ({})",
            path.display(),
            verified.key_id,
            verified.trusted_comment
        ));
        if args.json {
            print_json(&json!({
                "ok": true,
                "kind": "file",
                "path": path,
                "key_id": verified.key_id.to_string(),
                "trusted_comment": verified.trusted_comment,
            }))?;
        }
        return Ok(());
    }
    let (kind, report) = if crate::bundle::is_bundle(path) {
        ("bundle", crate::verify::verify_bundle(path, &trusted)?)
    } else if crate::pxe::is_pxe_dir(path) {
        ("pxe", crate::verify::verify_pxe_dir(path, &trusted)?)
    } else {
        ("output", crate::verify::verify_output_dir(path, &trusted)?)
    };
    for item in &report.checked {
        rep.note(&format!("ok  {item}"));
    }
    rep.note(&format!(
        "verified {} {}: signed by key ID {} ({})",
        report.manifest.name,
        report.manifest.version,
        report.verified.key_id,
        report.verified.trusted_comment
    ));
    if args.json {
        print_json(&json!({
            "ok": true,
            "kind": kind,
            "path": path,
            "name": report.manifest.name,
            "version": report.manifest.version,
            "key_id": report.verified.key_id.to_string(),
            "trusted_comment": report.verified.trusted_comment,
            "checked": report.checked,
        }))?;
    }
    Ok(())
}

pub fn inspect(args: &InspectArgs) -> Result<(), CommandError> {
    let report = crate::inspect::inspect(&args.path)?;
    if args.json {
        let value =
            serde_json::to_value(&report).map_err(|e| CommandError::Failed(e.to_string()))?;
        print_json(&value)
    } else {
        print!("{}", report.render());
        Ok(())
    }
}

pub fn run(args: RunArgs) -> Result<(), CommandError> {
    Ok(crate::run::run(
        &args.path,
        &crate::run::RunOptions {
            keep_disk: args.keep_disk,
            disk_size: args.disk_size,
            memory: args.memory,
            cpus: args.cpus,
            forwards: args.forwards,
            profile: args.profile,
            secrets: args.secrets,
        },
    )?)
}

/// Serves until the process is interrupted; access lines go to stderr (even with `-q`:
/// they are the command's output).
pub fn serve(args: &ServeArgs, rep: &Reporter) -> Result<(), CommandError> {
    use crate::pxe::serve::{Server, Site};
    let site = Site::load(&args.outdirs, args.configs.as_deref())?;
    let server = Server::bind(site.clone(), args.listen)?;
    let addr = server
        .local_addr()
        .map_err(|e| CommandError::Failed(format!("--listen {}: {e}", args.listen)))?;
    let script = keel_contract::output::pxe::SCRIPT;
    for (i, image) in site.images.iter().enumerate() {
        rep.note(&format!(
            "serving {} {} from {} at http://{addr}{}{script}{}",
            image.name,
            image.version,
            image.dir.display(),
            image.prefix,
            if i == 0 {
                format!(" and /{script}")
            } else {
                String::new()
            }
        ));
    }
    if let Some(dir) = &site.configs {
        rep.note(&format!(
            "serving per-node profiles from {} at http://{addr}/{}/MAC.toml",
            dir.display(),
            keel_contract::output::pxe::CONFIGS_DIR
        ));
    }
    rep.note(&format!("listening on http://{addr}/"));
    if args.json {
        let images: Vec<_> = site
            .images
            .iter()
            .map(|i| {
                json!({
                    "name": i.name,
                    "version": i.version,
                    "dir": i.dir,
                    "prefix": i.prefix,
                    "script": format!("http://{addr}{}{script}", i.prefix),
                })
            })
            .collect();
        let line = json!({"listen": addr.to_string(), "images": images, "configs": site.configs});
        println!("{line}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    server.run(std::sync::Arc::new(|line: &str| eprintln!("{line}")));
    Ok(())
}

/// Where contexts are saved and which one was asked for (`--config`, `--context`).
pub struct ContextFile {
    path: Option<PathBuf>,
    name: Option<String>,
}

impl ContextFile {
    pub fn new(path: Option<PathBuf>, name: Option<String>) -> Self {
        ContextFile { path, name }
    }

    pub fn path(&self) -> Result<PathBuf, CommandError> {
        match &self.path {
            Some(p) => Ok(p.clone()),
            None => Ok(context::default_path()?),
        }
    }

    pub fn load(&self) -> Result<Config, CommandError> {
        Ok(Config::load(&self.path()?)?)
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

fn context_json(name: &str, ctx: &Context, current: bool) -> serde_json::Value {
    json!({"name": name, "current": current, "endpoints": ctx.endpoints, "secrets": ctx.secrets})
}

pub fn context(command: ContextCommand, file: &ContextFile) -> Result<(), CommandError> {
    let path = file.path()?;
    let mut config = Config::load(&path)?;
    let current = config.current.clone();
    let is_current = |name: &str| current.as_deref() == Some(name);
    match command {
        ContextCommand::List { json } => {
            if json {
                let all: Vec<_> = config
                    .contexts
                    .iter()
                    .map(|(n, c)| context_json(n, c, is_current(n)))
                    .collect();
                return print_json(&serde_json::Value::Array(all));
            }
            for (name, ctx) in &config.contexts {
                let mark = if is_current(name) { "*" } else { " " };
                println!("{mark} {name:<16} {}", ctx.endpoints.join(","));
            }
            Ok(())
        }
        ContextCommand::Show { name, json } => {
            let (name, ctx) = config.get(name.as_deref().or(file.name()))?;
            if json {
                return print_json(&context_json(name, ctx, is_current(name)));
            }
            println!(
                "name       {name}{}",
                if is_current(name) { " (current)" } else { "" }
            );
            println!("endpoints  {}", ctx.endpoints.join(" "));
            println!("secrets    {}", ctx.secrets.display());
            Ok(())
        }
        ContextCommand::Use { name } => {
            config.use_context(&name)?;
            config.save(&path)?;
            eprintln!("current context: {name} ({})", path.display());
            Ok(())
        }
        ContextCommand::Set {
            name,
            endpoints,
            secrets,
            make_current,
        } => {
            for e in &endpoints {
                crate::node::parse_endpoint(e)?;
            }
            let secrets = std::path::absolute(&secrets)
                .map_err(|e| CommandError::BadInput(format!("{}: {e}", secrets.display())))?;
            config.set(&name, Context { endpoints, secrets })?;
            if make_current {
                config.use_context(&name)?;
            }
            config.save(&path)?;
            eprintln!("saved context {name} in {}", path.display());
            Ok(())
        }
        ContextCommand::Delete { name } => {
            config.remove(&name)?;
            config.save(&path)?;
            eprintln!("deleted context {name} from {}", path.display());
            Ok(())
        }
    }
}
