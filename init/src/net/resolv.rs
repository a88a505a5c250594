//! `/etc/resolv.conf`.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use super::NetError;

/// glibc and musl read only the first three `nameserver` lines (MAXNS).
pub const MAX_NAMESERVERS: usize = 3;

/// The nameservers resolv.conf will list, in order, without duplicates, and the ones dropped
/// beyond [`MAX_NAMESERVERS`] (so the caller can say so).
pub fn pick(servers: &[IpAddr]) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let mut unique: Vec<IpAddr> = Vec::new();
    for s in servers {
        if !unique.contains(s) {
            unique.push(*s);
        }
    }
    let dropped = unique.split_off(unique.len().min(MAX_NAMESERVERS));
    (unique, dropped)
}

/// The file's text. `search` is the DHCP domain, if any; a value that could inject other
/// directives (whitespace, control characters) is left out.
pub fn render(servers: &[IpAddr], search: Option<&str>) -> String {
    let mut out = String::from("# Written by keel-init from the node profile and DHCP.\n");
    if let Some(domain) = search
        && !domain.is_empty()
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        out.push_str(&format!("search {domain}\n"));
    }
    for s in pick(servers).0 {
        out.push_str(&format!("nameserver {s}\n"));
    }
    out
}

/// Replaces `path` atomically: a resolver reading it mid-write sees the old or the new file.
pub fn write(path: &Path, contents: &str) -> Result<(), NetError> {
    let err = |source| NetError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".keel-tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(contents.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn renders_search_and_nameservers_in_order() {
        let text = render(
            &[ip("10.0.0.53"), ip("1.1.1.1"), ip("fd00::53")],
            Some("corp.example"),
        );
        assert_eq!(
            text,
            "# Written by keel-init from the node profile and DHCP.\n\
             search corp.example\n\
             nameserver 10.0.0.53\n\
             nameserver 1.1.1.1\n\
             nameserver fd00::53\n"
        );
    }

    #[test]
    fn dedups_caps_and_rejects_injection() {
        let servers = [
            ip("1.1.1.1"),
            ip("8.8.8.8"),
            ip("1.1.1.1"),
            ip("9.9.9.9"),
            ip("8.8.4.4"),
        ];
        let (kept, dropped) = pick(&servers);
        assert_eq!(kept, [ip("1.1.1.1"), ip("8.8.8.8"), ip("9.9.9.9")]);
        assert_eq!(dropped, [ip("8.8.4.4")]);
        let text = render(&servers, Some("evil\nnameserver 6.6.6.6"));
        assert!(
            !text.contains("6.6.6.6") && !text.contains("search"),
            "{text}"
        );
        assert_eq!(text.matches("nameserver").count(), 3);
        assert_eq!(
            render(&[], None),
            "# Written by keel-init from the node profile and DHCP.\n"
        );
    }

    #[test]
    fn writes_atomically() {
        let dir = std::env::temp_dir().join(format!("keel-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        write(&path, "old\n").unwrap();
        write(&path, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let err = write(&dir.join("missing/resolv.conf"), "x").unwrap_err();
        assert!(err.to_string().contains("missing/resolv.conf"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
