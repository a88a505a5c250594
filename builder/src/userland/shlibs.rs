//! Checks that every dynamically linked program in a [`Tree`] can find its shared libraries
//! and its program interpreter, and that every script's `#!` interpreter exists.
//!
//! Package exclusions and hand-picked userlands can remove a library something still needs;
//! the image would boot and then fail at the first exec. This check finds that at build time.
//! It searches the way glibc's loader does when there is no `/etc/ld.so.cache` (Keel does not
//! run ldconfig): `DT_RPATH` (only without `DT_RUNPATH`), `DT_RUNPATH`, then the built-in
//! system directories. Directories listed only in `/etc/ld.so.conf.d` are deliberately not
//! searched, because without the cache the loader does not read them either.

use crate::tree::{NodeKind, Tree};

/// A file that needs something the tree does not have.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MissingLibrary {
    /// Path of the ELF file or script in the tree.
    pub binary: String,
    /// The `DT_NEEDED` name, `PT_INTERP` path or `#!` interpreter that was not found.
    pub library: String,
}

impl std::fmt::Display for MissingLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} needs {}", self.binary, self.library)
    }
}

/// Every (ELF file, needed library or interpreter) pair that would fail to load, sorted.
pub fn missing_shared_libraries(tree: &Tree) -> Vec<MissingLibrary> {
    let mut out = Vec::new();
    tree.walk(|path, node| {
        let NodeKind::File(content) = &node.kind else {
            return;
        };
        let Some(deps) = parse_elf_deps(content.bytes()) else {
            return;
        };
        let binary = String::from_utf8_lossy(path).into_owned();
        if let Some(interp) = deps.interp.as_ref().filter(|i| !is_file(tree, i)) {
            out.push(MissingLibrary {
                binary: binary.clone(),
                library: interp.clone(),
            });
        }
        let origin = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => String::from_utf8_lossy(&path[..i]).into_owned(),
            None => String::new(),
        };
        let mut dirs: Vec<String> = Vec::new();
        let expand = |d: &String| d.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin);
        if deps.runpath.is_empty() {
            dirs.extend(deps.rpath.iter().map(expand));
        }
        dirs.extend(deps.runpath.iter().map(expand));
        dirs.extend(system_dirs(deps.machine, deps.class64, deps.little_endian));
        for lib in &deps.needed {
            let found = if lib.contains('/') {
                is_file(tree, lib)
            } else {
                dirs.iter().any(|d| is_file(tree, &format!("{d}/{lib}")))
            };
            if !found {
                out.push(MissingLibrary {
                    binary: binary.clone(),
                    library: lib.clone(),
                });
            }
        }
    });
    out.sort();
    out
}

/// Every executable script whose `#!` interpreter is not in the tree, sorted. Finds, for
/// example, the perl scripts left behind when `perl` is excluded.
pub fn missing_script_interpreters(tree: &Tree) -> Vec<MissingLibrary> {
    let mut out = Vec::new();
    tree.walk(|path, node| {
        let NodeKind::File(content) = &node.kind else {
            return;
        };
        if node.meta.mode & 0o111 == 0 {
            return;
        }
        let Some(interp) = shebang_interpreter(content.bytes()) else {
            return;
        };
        if !is_file(tree, &interp) {
            out.push(MissingLibrary {
                binary: String::from_utf8_lossy(path).into_owned(),
                library: interp,
            });
        }
    });
    out.sort();
    out
}

/// The interpreter path of a `#!` line (`#!/usr/bin/env perl` gives `/usr/bin/env`, which
/// is what the kernel executes).
pub fn shebang_interpreter(bytes: &[u8]) -> Option<String> {
    let rest = bytes.strip_prefix(b"#!")?;
    let line = &rest[..rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len())];
    let line = String::from_utf8_lossy(line);
    let interp = line.split_whitespace().next()?;
    interp.starts_with('/').then(|| interp.to_string())
}

fn is_file(tree: &Tree, path: &str) -> bool {
    tree.get(path)
        .is_some_and(|n| matches!(n.kind, NodeKind::File(_)))
}

/// glibc's built-in search path on Debian: the multiarch directories, then `/lib` and
/// `/usr/lib` (`ld.so --help` lists them as "system search path").
fn system_dirs(machine: u16, class64: bool, little_endian: bool) -> Vec<String> {
    let triplet = match (machine, class64, little_endian) {
        (62, true, _) => Some("x86_64-linux-gnu"),
        (3, false, _) => Some("i386-linux-gnu"),
        (183, true, _) => Some("aarch64-linux-gnu"),
        (40, false, _) => Some("arm-linux-gnueabihf"),
        (243, true, _) => Some("riscv64-linux-gnu"),
        (21, true, true) => Some("powerpc64le-linux-gnu"),
        (22, true, _) => Some("s390x-linux-gnu"),
        _ => None,
    };
    let mut dirs = Vec::new();
    if let Some(t) = triplet {
        dirs.push(format!("/lib/{t}"));
        dirs.push(format!("/usr/lib/{t}"));
    }
    dirs.push("/lib".into());
    dirs.push("/usr/lib".into());
    dirs
}

/// What a dynamically linked ELF file asks of the loader.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ElfDeps {
    pub machine: u16,
    pub class64: bool,
    pub little_endian: bool,
    pub interp: Option<String>,
    pub needed: Vec<String>,
    pub rpath: Vec<String>,
    pub runpath: Vec<String>,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// Reads the program interpreter and dynamic section of an ELF executable or shared object.
/// `None` for anything else: not ELF, relocatable objects (kernel modules), static programs
/// without an interpreter or dynamic section, or a file too malformed to read.
pub fn parse_elf_deps(bytes: &[u8]) -> Option<ElfDeps> {
    if bytes.get(..4)? != b"\x7fELF" {
        return None;
    }
    let class64 = match bytes.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let le = match bytes.get(5)? {
        1 => true,
        2 => false,
        _ => return None,
    };
    let r = Reader { bytes, le };
    let e_type = r.u16(16)?;
    if e_type != 2 && e_type != 3 {
        return None;
    }
    let machine = r.u16(18)?;
    let (phoff, phentsize, phnum) = if class64 {
        (r.u64(32)?, r.u16(54)?, r.u16(56)?)
    } else {
        (u64::from(r.u32(28)?), r.u16(42)?, r.u16(44)?)
    };
    // (type, offset, vaddr, filesz)
    let mut phdrs = Vec::with_capacity(usize::from(phnum));
    for i in 0..u64::from(phnum) {
        let at = usize::try_from(phoff.checked_add(i.checked_mul(u64::from(phentsize))?)?).ok()?;
        let ph = if class64 {
            (r.u32(at)?, r.u64(at + 8)?, r.u64(at + 16)?, r.u64(at + 32)?)
        } else {
            (
                r.u32(at)?,
                u64::from(r.u32(at + 4)?),
                u64::from(r.u32(at + 8)?),
                u64::from(r.u32(at + 16)?),
            )
        };
        phdrs.push(ph);
    }
    let mut deps = ElfDeps {
        machine,
        class64,
        little_endian: le,
        ..ElfDeps::default()
    };
    if let Some(&(_, off, _, size)) = phdrs.iter().find(|p| p.0 == PT_INTERP) {
        deps.interp = Some(r.cstr(usize::try_from(off).ok()?, usize::try_from(size).ok()?)?);
    }
    let Some(&(_, dyn_off, _, dyn_size)) = phdrs.iter().find(|p| p.0 == PT_DYNAMIC) else {
        return deps.interp.is_some().then_some(deps);
    };
    let entsize = if class64 { 16 } else { 8 };
    let mut entries = Vec::new();
    let mut strtab_vaddr = None;
    for i in 0..dyn_size / entsize {
        let at = usize::try_from(dyn_off.checked_add(i * entsize)?).ok()?;
        let (tag, val) = if class64 {
            (r.u64(at)?, r.u64(at + 8)?)
        } else {
            (u64::from(r.u32(at)?), u64::from(r.u32(at + 4)?))
        };
        match tag {
            DT_NULL => break,
            DT_STRTAB => strtab_vaddr = Some(val),
            DT_NEEDED | DT_RPATH | DT_RUNPATH => entries.push((tag, val)),
            _ => {}
        }
    }
    // DT_STRTAB is an address; the loadable segment containing it maps it to a file offset.
    let strtab_vaddr = strtab_vaddr?;
    let strtab_off = phdrs.iter().find_map(|&(t, off, vaddr, filesz)| {
        (t == PT_LOAD && strtab_vaddr >= vaddr && strtab_vaddr - vaddr < filesz)
            .then(|| off + (strtab_vaddr - vaddr))
    })?;
    for (tag, val) in entries {
        let at = usize::try_from(strtab_off.checked_add(val)?).ok()?;
        let s = r.cstr(at, bytes.len().saturating_sub(at))?;
        match tag {
            DT_NEEDED => deps.needed.push(s),
            DT_RPATH => deps.rpath.extend(s.split(':').map(str::to_string)),
            _ => deps.runpath.extend(s.split(':').map(str::to_string)),
        }
    }
    Some(deps)
}

struct Reader<'a> {
    bytes: &'a [u8],
    le: bool,
}

impl Reader<'_> {
    fn array<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        self.bytes.get(at..at.checked_add(N)?)?.try_into().ok()
    }
    fn u16(&self, at: usize) -> Option<u16> {
        let a = self.array(at)?;
        Some(if self.le {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        })
    }
    fn u32(&self, at: usize) -> Option<u32> {
        let a = self.array(at)?;
        Some(if self.le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    }
    fn u64(&self, at: usize) -> Option<u64> {
        let a = self.array(at)?;
        Some(if self.le {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        })
    }
    /// A NUL-terminated string starting at `at`, looking at most `max` bytes ahead.
    fn cstr(&self, at: usize, max: usize) -> Option<String> {
        let window = self
            .bytes
            .get(at..at.checked_add(max)?.min(self.bytes.len()))?;
        let end = window.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&window[..end]).into_owned())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tree::{Meta, Node};

    /// A minimal little-endian ELF64 x86-64 file: one PT_LOAD mapping the whole file at
    /// `base`, an optional PT_INTERP, and a PT_DYNAMIC with the given NEEDED/RUNPATH strings.
    pub(crate) fn elf64(interp: Option<&str>, needed: &[&str], runpath: Option<&str>) -> Vec<u8> {
        let base: u64 = 0x400000;
        let phnum: u64 = 2 + u64::from(interp.is_some());
        let ph_end = 64 + 56 * phnum;
        // String table: leading NUL, then the strings.
        let mut strtab = vec![0u8];
        let mut offsets = Vec::new();
        for s in needed.iter().chain(runpath.iter()) {
            offsets.push(strtab.len() as u64);
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
        }
        let interp_off = ph_end;
        let interp_bytes: Vec<u8> = interp
            .map(|i| [i.as_bytes(), b"\0"].concat())
            .unwrap_or_default();
        let strtab_off = interp_off + interp_bytes.len() as u64;
        let dyn_off = (strtab_off + strtab.len() as u64).next_multiple_of(8);
        let mut dynamic: Vec<(u64, u64)> = Vec::new();
        for (i, _) in needed.iter().enumerate() {
            dynamic.push((DT_NEEDED, offsets[i]));
        }
        if runpath.is_some() {
            dynamic.push((DT_RUNPATH, offsets[needed.len()]));
        }
        dynamic.push((DT_STRTAB, base + strtab_off));
        dynamic.push((DT_NULL, 0));
        let dyn_size = 16 * dynamic.len() as u64;
        let total = dyn_off + dyn_size;

        let mut f = Vec::new();
        f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        f.extend_from_slice(&3u16.to_le_bytes()); // ET_DYN
        f.extend_from_slice(&62u16.to_le_bytes()); // x86-64
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&base.to_le_bytes()); // entry
        f.extend_from_slice(&64u64.to_le_bytes()); // phoff
        f.extend_from_slice(&0u64.to_le_bytes()); // shoff
        f.extend_from_slice(&0u32.to_le_bytes()); // flags
        f.extend_from_slice(&64u16.to_le_bytes()); // ehsize
        f.extend_from_slice(&56u16.to_le_bytes()); // phentsize
        f.extend_from_slice(&(phnum as u16).to_le_bytes());
        f.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
        let mut ph = |t: u32, off: u64, size: u64| {
            f.extend_from_slice(&t.to_le_bytes());
            f.extend_from_slice(&4u32.to_le_bytes());
            f.extend_from_slice(&off.to_le_bytes());
            f.extend_from_slice(&(base + off).to_le_bytes());
            f.extend_from_slice(&(base + off).to_le_bytes());
            f.extend_from_slice(&size.to_le_bytes());
            f.extend_from_slice(&size.to_le_bytes());
            f.extend_from_slice(&8u64.to_le_bytes());
        };
        if interp.is_some() {
            ph(PT_INTERP, interp_off, interp_bytes.len() as u64);
        }
        ph(PT_LOAD, 0, total);
        ph(PT_DYNAMIC, dyn_off, dyn_size);
        f.extend_from_slice(&interp_bytes);
        f.extend_from_slice(&strtab);
        f.resize(dyn_off as usize, 0);
        for (tag, val) in dynamic {
            f.extend_from_slice(&tag.to_le_bytes());
            f.extend_from_slice(&val.to_le_bytes());
        }
        f
    }

    fn exe(bytes: Vec<u8>) -> Node {
        Node::file(Meta::root(0o755), bytes)
    }

    #[test]
    fn parses_needed_interp_and_runpath() {
        let bytes = elf64(
            Some("/lib64/ld-linux-x86-64.so.2"),
            &["libseccomp.so.2", "libc.so.6"],
            Some("$ORIGIN/../lib:/opt/x"),
        );
        let deps = parse_elf_deps(&bytes).unwrap();
        assert_eq!(deps.machine, 62);
        assert!(deps.class64);
        assert_eq!(deps.interp.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(deps.needed, ["libseccomp.so.2", "libc.so.6"]);
        assert_eq!(deps.runpath, ["$ORIGIN/../lib", "/opt/x"]);
        assert!(parse_elf_deps(b"#!/bin/sh\n").is_none());
        assert!(parse_elf_deps(&bytes[..40]).is_none(), "truncated");
    }

    #[test]
    fn reports_missing_libraries_and_interpreter() {
        let mut tree = Tree::with_merged_usr();
        tree.insert(
            "/usr/sbin/runc",
            exe(elf64(
                Some("/lib64/ld-linux-x86-64.so.2"),
                &["libseccomp.so.2", "libc.so.6"],
                None,
            )),
        )
        .unwrap();
        let missing = missing_shared_libraries(&tree);
        let names: Vec<&str> = missing.iter().map(|m| m.library.as_str()).collect();
        assert_eq!(
            names,
            [
                "/lib64/ld-linux-x86-64.so.2",
                "libc.so.6",
                "libseccomp.so.2"
            ]
        );
        assert!(missing.iter().all(|m| m.binary == "/usr/sbin/runc"));

        // The loader and libc as Debian ships them: via the merged-/usr links and a
        // versioned-name symlink.
        let lib = elf64(None, &["libc.so.6"], None);
        tree.insert("/lib/x86_64-linux-gnu/libc.so.6", exe(lib.clone()))
            .unwrap();
        tree.insert(
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            exe(elf64(None, &[], None)),
        )
        .unwrap();
        tree.insert(
            "/lib64/ld-linux-x86-64.so.2",
            Node::symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        tree.insert(
            "/usr/lib/x86_64-linux-gnu/libseccomp.so.2",
            Node::symlink("libseccomp.so.2.5.4"),
        )
        .unwrap();
        assert_eq!(
            missing_shared_libraries(&tree),
            [MissingLibrary {
                binary: "/usr/sbin/runc".into(),
                library: "libseccomp.so.2".into()
            }],
            "a dangling symlink is not a library"
        );
        tree.insert(
            "/usr/lib/x86_64-linux-gnu/libseccomp.so.2.5.4",
            exe(elf64(None, &["libc.so.6"], None)),
        )
        .unwrap();
        assert_eq!(missing_shared_libraries(&tree), []);
    }

    #[test]
    fn runpath_origin_is_searched_but_ld_so_conf_dirs_are_not() {
        let mut tree = Tree::new();
        tree.insert(
            "/opt/app/bin/app",
            exe(elf64(
                None,
                &["libapp.so", "libother.so"],
                Some("$ORIGIN/../lib"),
            )),
        )
        .unwrap();
        tree.insert("/opt/app/lib/libapp.so", exe(elf64(None, &[], None)))
            .unwrap();
        tree.insert("/opt/other/libother.so", exe(elf64(None, &[], None)))
            .unwrap();
        tree.insert(
            "/etc/ld.so.conf.d/other.conf",
            Node::file(Meta::root(0o644), b"/opt/other\n".to_vec()),
        )
        .unwrap();
        assert_eq!(
            missing_shared_libraries(&tree),
            [MissingLibrary {
                binary: "/opt/app/bin/app".into(),
                library: "libother.so".into()
            }]
        );
    }

    #[test]
    fn scripts_need_their_interpreter() {
        let mut tree = Tree::with_merged_usr();
        let script = |s: &str| Node::file(Meta::root(0o755), s.as_bytes().to_vec());
        tree.insert("/usr/sbin/update-x", script("#!/usr/bin/perl -w\n"))
            .unwrap();
        tree.insert("/usr/bin/ok", script("#! /bin/sh\n")).unwrap();
        tree.insert(
            "/usr/share/doc/example",
            Node::file(Meta::root(0o644), b"#!/usr/bin/python3\n".to_vec()),
        )
        .unwrap();
        tree.insert("/usr/bin/dash", exe(b"\x7fELF".to_vec()))
            .unwrap();
        tree.insert("/usr/bin/sh", Node::symlink("dash")).unwrap();
        assert_eq!(
            missing_script_interpreters(&tree),
            [MissingLibrary {
                binary: "/usr/sbin/update-x".into(),
                library: "/usr/bin/perl".into()
            }]
        );
        assert_eq!(
            shebang_interpreter(b"#!/usr/bin/env python3\n").as_deref(),
            Some("/usr/bin/env")
        );
    }
}
