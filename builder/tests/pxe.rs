//! Network boot on the host, from synthetic parts (no Debian packages, no build, no VM): the
//! pxe directory `keel_builder::pxe::write_dir` writes (what `keel build` calls), `keel
//! verify` on it and on a tampered copy, and `keel serve` checked with an independent client,
//! curl: whole files, byte ranges, HEAD, 404s, path traversal, per-node profiles with their
//! signatures, the generated base script, access lines, and bad input (exit code 2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use keel_builder::pxe::{PxeParts, write_dir};
use keel_contract::output::pxe;

#[path = "common/synthetic.rs"]
mod synthetic;
use synthetic::{manifest_for, noise, secret, sign, write_pub};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// An image's parts; the payload is not a multiple of anything, so ranges end oddly.
struct Image {
    outdir: PathBuf,
    payload: Vec<u8>,
}

/// `OUTDIR/pxe/` of image `version`, written by the builder's own writer.
fn image(root: &Path, version: &str, seed: u8) -> Image {
    let kernel = noise(seed, 30_001);
    let initramfs = noise(seed + 1, 40_003);
    let payload = noise(seed + 2, 300_007);
    let manifest = manifest_for(version, &kernel, &initramfs, &payload);
    let (bytes, signature) = sign(&manifest);
    let outdir = root.join(format!("out-{version}"));
    std::fs::create_dir_all(&outdir).unwrap();
    write_dir(
        &outdir.join(pxe::DIR),
        &PxeParts {
            manifest: &manifest,
            manifest_bytes: &bytes,
            signature: signature.as_bytes(),
            kernel: &kernel,
            initramfs: &initramfs,
            payload: &|w: &mut dyn Write| w.write_all(&payload),
        },
    )
    .unwrap();
    Image { outdir, payload }
}

const MAC: &str = "52-54-00-12-34-56";

/// A signed per-node profile in `dir`.
fn node_profile(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    std::fs::create_dir_all(dir).unwrap();
    let profile = b"[node]\nhostname = \"node-7\"\nconfig_generation = 3\n".to_vec();
    let signature = keel_minisign::sign_bytes(&secret(), &profile, "timestamp:0\tfile:node")
        .unwrap()
        .to_file_string()
        .into_bytes();
    std::fs::write(dir.join(format!("{MAC}.toml")), &profile).unwrap();
    std::fs::write(dir.join(format!("{MAC}.toml.minisig")), &signature).unwrap();
    (profile, signature)
}

/// `keel serve` on a free port of 127.0.0.1, its stderr collected.
struct Serve {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Serve {
    fn start(args: &[&str]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("keel serve --json: {e}: {line:?}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Serve {
            child,
            addr: json["listen"].as_str().unwrap().to_owned(),
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits a little for a line to reach stderr (the server logs after it answered).
    fn logged(&self, want: &str) -> bool {
        for _ in 0..50 {
            if self.stderr.lock().unwrap().contains(want) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What curl got: status, response headers (lower-case names), body, and the body bytes
/// curl counted (with `-I` curl writes the headers where the body would go).
struct Got {
    status: u16,
    headers: String,
    body: Vec<u8>,
    downloaded: u64,
}

fn curl(args: &[&str], url: &str) -> Got {
    let dir = tempfile::tempdir().unwrap();
    let (headers, body) = (dir.path().join("headers"), dir.path().join("body"));
    let out = Command::new("curl")
        .args(["-sS", "--path-as-is", "-o", p(&body), "-D", p(&headers)])
        .args(["-w", "%{http_code} %{size_download}"])
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("curl: {e} (install curl: vm-tests/install-host-packages)"));
    assert!(
        out.status.success(),
        "curl {args:?} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, downloaded) = written.trim().split_once(' ').unwrap();
    Got {
        status: status.parse().unwrap(),
        downloaded: downloaded.parse().unwrap(),
        headers: std::fs::read_to_string(&headers)
            .unwrap()
            .to_ascii_lowercase(),
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

#[test]
fn serve_answers_curl_with_files_ranges_and_profiles() {
    let tmp = tempfile::tempdir().unwrap();
    let first = image(tmp.path(), "1.0.0", 10);
    let second = image(tmp.path(), "1.1.0", 20);
    let configs = tmp.path().join("configs");
    let (profile, signature) = node_profile(&configs);
    let serve = Serve::start(&[
        p(&first.outdir),
        p(&second.outdir.join(pxe::DIR)),
        "--configs",
        p(&configs),
    ]);

    // Whole files, both versions side by side, the first at the root too.
    let got = curl(&[], &serve.url("/keel-test/1.0.0/root.img"));
    assert_eq!(got.status, 200);
    assert!(got.body == first.payload, "root.img of 1.0.0 differs");
    assert!(
        got.headers.contains("accept-ranges: bytes"),
        "{}",
        got.headers
    );
    let got = curl(&[], &serve.url("/keel-test/1.1.0/root.img"));
    assert!(got.status == 200 && got.body == second.payload);
    let got = curl(&[], &serve.url("/root.img"));
    assert!(got.status == 200 && got.body == first.payload);
    for file in pxe::FILES {
        let got = curl(&[], &serve.url(&format!("/keel-test/1.1.0/{file}")));
        let on_disk = std::fs::read(second.outdir.join(pxe::DIR).join(file)).unwrap();
        assert!(got.status == 200 && got.body == on_disk, "{file}");
    }

    // One range, a suffix range, an open range, and one past the end.
    let got = curl(&["-r", "1000-4999"], &serve.url("/root.img"));
    assert_eq!(got.status, 206);
    assert!(got.body == first.payload[1000..5000]);
    let len = first.payload.len();
    assert!(
        got.headers
            .contains(&format!("content-range: bytes 1000-4999/{len}")),
        "{}",
        got.headers
    );
    let got = curl(&["-r", "-7"], &serve.url("/root.img"));
    assert!(got.status == 206 && got.body == first.payload[len - 7..]);
    let got = curl(&["-r", "300000-"], &serve.url("/root.img"));
    assert!(got.status == 206 && got.body == first.payload[300_000..]);
    let got = curl(&["-r", &format!("{len}-")], &serve.url("/root.img"));
    assert_eq!(got.status, 416);
    assert!(
        got.headers
            .contains(&format!("content-range: bytes */{len}")),
        "{}",
        got.headers
    );

    // HEAD: the length, no body.
    let got = curl(&["-I"], &serve.url("/keel-test/1.0.0/root.img"));
    assert_eq!(got.status, 200);
    assert!(got.headers.contains(&format!("content-length: {len}")));
    assert_eq!(got.downloaded, 0);
    // curl would not read a body sent after a HEAD answer anyway: look at the wire.
    let mut raw = std::net::TcpStream::connect(&serve.addr).unwrap();
    raw.write_all(b"HEAD /root.img HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("\r\n\r\n"),
        "{answer}"
    );

    // Per-node profiles and their signatures, by MAC.
    let got = curl(&[], &serve.url(&format!("/configs/{MAC}.toml")));
    assert!(got.status == 200 && got.body == profile);
    let got = curl(&[], &serve.url(&format!("/configs/{MAC}.toml.minisig")));
    assert!(got.status == 200 && got.body == signature);
    let got = curl(&[], &serve.url("/configs/52-54-00-00-00-01.toml"));
    assert_eq!(got.status, 404);

    // The base script names this server as the client reached it.
    let got = curl(&[], &serve.url("/keel-test/1.1.0/base.ipxe"));
    assert_eq!(got.status, 200);
    let text = String::from_utf8(got.body).unwrap();
    assert!(text.starts_with("#!ipxe\n"), "{text}");
    assert!(
        text.contains(&format!(
            "set keel-base http://{}/keel-test/1.1.0/\n",
            serve.addr
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "set keel-configs http://{}/configs/\n",
            serve.addr
        )),
        "{text}"
    );

    // Nothing else, and no way out of the directories.
    for path in [
        "/nope",
        "/disk.raw",
        "/keel-test/2.0.0/root.img",
        "/../../../etc/passwd",
        "/keel-test/1.0.0/../../../../etc/passwd",
        "/configs/../../../../etc/passwd",
        "/configs/..%2f..%2f..%2fetc%2fpasswd",
        "/%2e%2e/%2e%2e/etc/passwd",
    ] {
        let got = curl(&[], &serve.url(path));
        assert_eq!(got.status, 404, "{path}");
        assert!(
            !String::from_utf8_lossy(&got.body).contains("root:"),
            "{path}"
        );
    }
    let got = curl(&["-X", "POST", "-d", "x"], &serve.url("/root.img"));
    assert_eq!(got.status, 405);

    // One access line per request: method, path, status, bytes, peer.
    for want in [
        format!("GET /keel-test/1.0.0/root.img 200 {len} 127.0.0.1:"),
        "GET /root.img 206 4000 127.0.0.1:".to_owned(),
        "HEAD /keel-test/1.0.0/root.img 200 0 127.0.0.1:".to_owned(),
        "GET /nope 404 ".to_owned(),
        "GET /../../../etc/passwd 404 ".to_owned(),
        format!("GET /configs/{MAC}.toml.minisig 200 {} ", signature.len()),
    ] {
        assert!(
            serve.logged(&want),
            "no access line {want:?} in:\n{}",
            serve.stderr.lock().unwrap()
        );
    }
    assert!(serve.logged(&format!(
        "serving keel-test 1.0.0 from {}",
        first.outdir.join(pxe::DIR).display()
    )));
}

/// Threads are bounded: with every place held by a client that sends nothing, the next one
/// gets 503 at once, and is served again once those go away.
#[test]
fn serve_is_bounded_and_says_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), "1.0.0", 50);
    let serve = Serve::start(&[p(&img.outdir)]);
    let idle: Vec<_> = (0..keel_builder::pxe::serve::MAX_CONNECTIONS)
        .map(|_| std::net::TcpStream::connect(&serve.addr).unwrap())
        .collect();
    let got = curl(&[], &serve.url("/boot.ipxe"));
    assert_eq!(got.status, 503);
    assert!(got.headers.contains("retry-after: 1"), "{}", got.headers);
    assert!(serve.logged("- - 503 "));
    drop(idle);
    // Their threads see the connections close and give their places back.
    let mut status = 0;
    for _ in 0..100 {
        status = curl(&[], &serve.url("/boot.ipxe")).status;
        if status == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(status, 200);
}

#[test]
fn verify_checks_a_pxe_directory_against_its_signed_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), "1.0.0", 30);
    let public = write_pub(tmp.path());
    let dir = img.outdir.join(pxe::DIR);
    let ok = keel(&["verify", p(&dir), "--pub", p(&public), "--json"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["kind"], "pxe");
    let checked = v["checked"].to_string();
    for want in [pxe::ROOT, pxe::KERNEL, pxe::INITRAMFS, pxe::SCRIPT] {
        assert!(checked.contains(want), "{want}: {checked}");
    }

    // A flipped byte in root.img, a truncated one, and an edited script: exit 1, named.
    let root = dir.join(pxe::ROOT);
    let mut bytes = std::fs::read(&root).unwrap();
    bytes[123_456] ^= 0x20;
    std::fs::write(&root, &bytes).unwrap();
    let bad = keel(&["verify", p(&dir), "--pub", p(&public)]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("root.img") && err.contains("does not match"),
        "{err}"
    );
    std::fs::write(&root, &img.payload[..img.payload.len() - 1]).unwrap();
    let bad = keel(&["verify", p(&dir), "--pub", p(&public)]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("bytes, the signed manifest says"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    std::fs::write(&root, &img.payload).unwrap();
    let script = dir.join(pxe::SCRIPT);
    let text = std::fs::read_to_string(&script).unwrap();
    std::fs::write(&script, text.replace("keel.roothash=", "keel.roothash=0")).unwrap();
    let bad = keel(&["verify", p(&dir), "--pub", p(&public)]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("boot.ipxe"));
}

#[test]
fn serve_refuses_bad_input_with_exit_code_2() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), "1.0.0", 40);
    let missing = tmp.path().join("missing");
    let no_pxe = tmp.path().join("no-pxe");
    std::fs::create_dir(&no_pxe).unwrap();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec![p(&missing)],
            format!("{}: no such directory", p(&missing)),
        ),
        (
            vec![p(&no_pxe)],
            format!("{}: no pxe/ directory", p(&no_pxe)),
        ),
        (
            vec![p(&img.outdir), "--listen", "nonsense"],
            "--listen".to_owned(),
        ),
        (
            vec![p(&img.outdir), "--configs", p(&missing)],
            format!("--configs {}: not a directory", p(&missing)),
        ),
        (
            vec![p(&img.outdir), p(&img.outdir)],
            "both are keel-test 1.0.0".to_owned(),
        ),
        (vec![], "OUTDIR".to_owned()),
    ];
    for (args, want) in cases {
        let out = keel(&[&["serve"], args.as_slice()].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: want {want:?} in {err}");
    }
}
