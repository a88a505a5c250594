//! `keel serve OUTDIR...`: a small HTTP/1.1 server for network boots. It serves each
//! OUTDIR's `pxe/` files at `/<name>/<version>/<file>` (several versions side by side), the
//! first OUTDIR's also at `/<file>` (so a plain bootfile URL `http://HOST:PORT/boot.ipxe`
//! works), a generated `base.ipxe` beside each script (its absolute base URL), and per-node
//! profiles from `--configs DIR` at `/configs/<mac>.toml` with their `.minisig`.
//!
//! Only names it knows are served: a request path is matched against the images' prefixes
//! and the fixed file names, and a profile's name must be a MAC address, so no path a client
//! sends is ever joined onto a directory. It is not a DHCP server (README, "Network boot").
//!
//! [`Site`] is the pure part (what exists, what a path means); [`conn`] speaks HTTP.

mod conn;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use keel_contract::manifest::Manifest;
use keel_contract::output::pxe;

pub use conn::{ByteRange, RangeRequest, parse_range};

/// Connections served at once; past it a client gets 503 at once. A farm booting hundreds
/// of nodes queues in their iPXE retries rather than in threads here.
pub const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{}: no such directory", .0.display())]
    Missing(PathBuf),
    #[error(
        "{}: no pxe/ directory in it: build it with image.formats = [\"pxe\"] (or name the pxe/ directory itself)",
        .0.display()
    )]
    NoPxe(PathBuf),
    #[error("{}: {message}", path.display())]
    BadPxe { path: PathBuf, message: String },
    #[error("{} and {}: both are {name} {version}; serve one of them", first.display(), second.display())]
    Duplicate {
        first: PathBuf,
        second: PathBuf,
        name: String,
        version: String,
    },
    #[error("--configs {}: not a directory", .0.display())]
    Configs(PathBuf),
    #[error("--listen {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl crate::error::Classify for ServeError {
    fn is_bad_input(&self) -> bool {
        match self {
            ServeError::Listen { source, .. } => {
                source.kind() == std::io::ErrorKind::AddrNotAvailable
            }
            _ => true,
        }
    }
}

/// One image's network-boot files.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub version: String,
    /// Its `pxe/` directory.
    pub dir: PathBuf,
    /// `/<name>/<version>/`.
    pub prefix: String,
}

/// What the server serves.
#[derive(Debug, Clone)]
pub struct Site {
    pub images: Vec<Image>,
    pub configs: Option<PathBuf>,
}

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A file to send as it is.
    File(PathBuf),
    /// The generated base script for the image at this prefix.
    Base {
        prefix: String,
    },
    /// The list of images (`/`).
    Index,
    NotFound,
}

impl Site {
    /// Checks every OUTDIR (or pxe directory) and `--configs` before anything listens.
    pub fn load(outdirs: &[PathBuf], configs: Option<&Path>) -> Result<Site, ServeError> {
        let mut images: Vec<Image> = Vec::new();
        for outdir in outdirs {
            let image = load_image(outdir)?;
            if let Some(other) = images.iter().find(|i| i.prefix == image.prefix) {
                return Err(ServeError::Duplicate {
                    first: other.dir.clone(),
                    second: image.dir,
                    name: image.name,
                    version: image.version,
                });
            }
            images.push(image);
        }
        let configs = match configs {
            Some(dir) if !dir.is_dir() => return Err(ServeError::Configs(dir.to_path_buf())),
            other => other.map(Path::to_path_buf),
        };
        Ok(Site { images, configs })
    }

    /// What `path` (the request target without its query) names.
    pub fn route(&self, path: &str) -> Route {
        if path == "/" {
            return Route::Index;
        }
        if let Some(name) = path.strip_prefix(&format!("/{}/", pxe::CONFIGS_DIR)) {
            return match &self.configs {
                Some(dir) if is_config_name(name) => Route::File(dir.join(name)),
                _ => Route::NotFound,
            };
        }
        let (image, file) = match self.images.iter().find(|i| path.starts_with(&i.prefix)) {
            Some(image) => (image, &path[image.prefix.len()..]),
            // The first image is also at the root.
            None => match self.images.first() {
                Some(first) => (first, &path[1..]),
                None => return Route::NotFound,
            },
        };
        let prefix = if path.starts_with(&image.prefix) {
            image.prefix.clone()
        } else {
            "/".to_owned()
        };
        if file == pxe::BASE_SCRIPT {
            return Route::Base { prefix };
        }
        match pxe::FILES.iter().find(|f| **f == file) {
            Some(f) => Route::File(image.dir.join(f)),
            None => Route::NotFound,
        }
    }

    /// `GET /`: where each image's script is.
    pub fn index(&self) -> String {
        let mut out = String::from("keel serve: network boot images\n");
        for (i, image) in self.images.iter().enumerate() {
            out.push_str(&format!(
                "{} {} {}{}{}\n",
                image.name,
                image.version,
                image.prefix,
                pxe::SCRIPT,
                if i == 0 {
                    format!(" (also /{})", pxe::SCRIPT)
                } else {
                    String::new()
                }
            ));
        }
        if self.configs.is_some() {
            out.push_str(&format!(
                "per-node profiles: /{}/<mac>.toml\n",
                pxe::CONFIGS_DIR
            ));
        }
        out
    }
}

/// A node profile's file name: a MAC address as iPXE's `${mac:hexhyp}` writes it
/// (`52-54-00-12-34-56`), `.toml` or `.toml.minisig`.
fn is_config_name(name: &str) -> bool {
    let mac = name
        .strip_suffix(".toml.minisig")
        .or_else(|| name.strip_suffix(".toml"));
    mac.is_some_and(|mac| {
        mac.len() == 17
            && mac.split('-').count() == 6
            && mac.split('-').all(|octet| {
                octet.len() == 2
                    && octet
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
    })
}

fn load_image(outdir: &Path) -> Result<Image, ServeError> {
    if !outdir.is_dir() {
        return Err(ServeError::Missing(outdir.to_path_buf()));
    }
    let dir = if crate::pxe::is_pxe_dir(outdir) {
        outdir.to_path_buf()
    } else {
        let dir = outdir.join(pxe::DIR);
        if !dir.is_dir() {
            return Err(ServeError::NoPxe(outdir.to_path_buf()));
        }
        dir
    };
    let bad = |path: &Path, message: String| ServeError::BadPxe {
        path: path.to_path_buf(),
        message,
    };
    for file in pxe::FILES {
        if !dir.join(file).is_file() {
            return Err(bad(&dir, format!("{file} is missing")));
        }
    }
    let manifest_path = dir.join(pxe::MANIFEST);
    let bytes = std::fs::read(&manifest_path).map_err(|e| bad(&manifest_path, e.to_string()))?;
    let manifest = Manifest::from_json(&bytes).map_err(|e| bad(&manifest_path, e.to_string()))?;
    Ok(Image {
        prefix: format!("/{}/{}/", manifest.name, manifest.version),
        name: manifest.name,
        version: manifest.version,
        dir,
    })
}

/// A bound server: [`Server::run`] serves until the process ends.
pub struct Server {
    site: Arc<Site>,
    listener: TcpListener,
}

impl Server {
    pub fn bind(site: Site, addr: SocketAddr) -> Result<Server, ServeError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| ServeError::Listen { addr, source })?;
        Ok(Server {
            site: Arc::new(site),
            listener,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections for ever, one thread each, at most [`MAX_CONNECTIONS`] at once;
    /// `log` gets one access line per request.
    pub fn run(self, log: Arc<dyn Fn(&str) + Send + Sync>) {
        let busy = Arc::new(AtomicUsize::new(0));
        for stream in self.listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    log(&format!("accept: {e}"));
                    // EMFILE and the like: give the threads a moment to close theirs.
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                busy.fetch_sub(1, Ordering::SeqCst);
                conn::refuse_busy(stream, &*log);
                continue;
            }
            let (site, thread_log, held) = (self.site.clone(), log.clone(), busy.clone());
            let spawned = std::thread::Builder::new()
                .name("keel-serve".into())
                .spawn(move || {
                    conn::handle(stream, &site, &*thread_log);
                    held.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                busy.fetch_sub(1, Ordering::SeqCst);
                log(&format!("cannot start a thread: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests;
