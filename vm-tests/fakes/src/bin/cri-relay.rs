//! `cri-relay LISTEN SOCKET`: relays every TCP connection accepted on `LISTEN` to the Unix
//! socket `SOCKET`, byte for byte, both ways (what `socat TCP-LISTEN:...,fork UNIX:...` does).
//!
//! A TEST TOOL: the vm-tests run it as a host-network static pod with containerd's socket
//! mounted, so that their CRI client on the build machine reaches containerd through a QEMU
//! port forward. It has no authentication; it is never part of an image Keel ships.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

fn pump(mut from: impl Read, to: &mut impl Write) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}

fn relay(tcp: TcpStream, socket: &str) -> std::io::Result<()> {
    let unix = UnixStream::connect(socket)?;
    let _ = tcp.set_nodelay(true);
    let (tcp_r, mut unix_w) = (tcp.try_clone()?, unix.try_clone()?);
    let up = std::thread::spawn(move || {
        pump(tcp_r, &mut unix_w);
        let _ = unix_w.shutdown(Shutdown::Write);
    });
    let mut tcp_w = tcp.try_clone()?;
    pump(unix, &mut tcp_w);
    let _ = tcp.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, socket] = args.as_slice() else {
        eprintln!("usage: cri-relay LISTEN-ADDRESS UNIX-SOCKET");
        return ExitCode::from(2);
    };
    let listener = match TcpListener::bind(listen.as_str()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cri-relay: {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("cri-relay: relaying {listen} to {socket}");
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let socket = socket.clone();
        std::thread::spawn(move || {
            if let Err(e) = relay(conn, &socket) {
                eprintln!("cri-relay: {socket}: {e}");
            }
        });
    }
    ExitCode::FAILURE
}
