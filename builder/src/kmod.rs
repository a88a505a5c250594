//! Kernel modules: dependency resolution from each module's `.modinfo` section (Debian's
//! kernel package ships no modules.dep or modules.alias: depmod writes them at install
//! time), load order, and the generated `modules.dep` and `modules.alias`.

use std::collections::{BTreeMap, BTreeSet};

use crate::tree::{NodeKind, Tree};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KmodError {
    #[error("kernel module {name:?} is neither in {dir} nor built into kernel {release}")]
    NotFound {
        name: String,
        dir: String,
        release: String,
    },
    #[error("kernel module {path}: {why}")]
    BadModule { path: String, why: String },
    #[error("{dir} is missing from the root tree")]
    NoModuleDir { dir: String },
}

/// A module file in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Canonical name: file stem with `-` replaced by `_` (as the kernel names modules).
    pub name: String,
    /// Path relative to the release's module directory, e.g. `kernel/fs/squashfs/squashfs.ko`.
    pub rel_path: String,
    pub depends: Vec<String>,
    /// The `alias=` entries: glob patterns of the devices (`pci:v00001AF4d*...`) and other
    /// names (`fs-vfat`) the module serves.
    pub aliases: Vec<String>,
}

impl Module {
    /// Whether a device asks for this module: an alias of the form `bus:...` (not
    /// `devname:`), which the init matches against sysfs modaliases. Modules without one
    /// (filesystems, dm-verity, bridge) must be loaded by name.
    pub fn is_driver(&self) -> bool {
        self.aliases.iter().any(|a| {
            a.split_once(':')
                .is_some_and(|(bus, _)| !bus.is_empty() && bus != "devname")
        })
    }
}

/// The modules of one kernel release in a root tree.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    pub release: String,
    pub dir: String,
    pub modules: BTreeMap<String, Module>,
    pub builtin: BTreeSet<String>,
}

/// `/usr/lib/modules/<release>`.
pub fn modules_dir(release: &str) -> String {
    keel_contract::layout::modules::dir(release)
}

fn canonical_name(file_name: &str) -> String {
    let stem = file_name.split(".ko").next().unwrap_or(file_name);
    stem.replace('-', "_")
}

impl ModuleIndex {
    /// Indexes every `.ko` under `/usr/lib/modules/<release>` in `tree`.
    pub fn from_tree(tree: &Tree, release: &str) -> Result<Self, KmodError> {
        let dir = modules_dir(release);
        let root = tree
            .get(&dir)
            .ok_or_else(|| KmodError::NoModuleDir { dir: dir.clone() })?;
        let mut modules = BTreeMap::new();
        let mut stack = vec![(String::new(), root)];
        while let Some((rel, node)) = stack.pop() {
            let Some(children) = node.children() else {
                continue;
            };
            for (name, child) in children {
                let name = String::from_utf8_lossy(name);
                let rel_child = if rel.is_empty() {
                    name.to_string()
                } else {
                    format!("{rel}/{name}")
                };
                match &child.kind {
                    NodeKind::Dir(_) => stack.push((rel_child, child)),
                    NodeKind::File(content) if name.ends_with(".ko") => {
                        let path = format!("{dir}/{rel_child}");
                        let info = modinfo(content.bytes())
                            .map_err(|why| KmodError::BadModule { path, why })?;
                        let module = Module {
                            name: canonical_name(&name),
                            rel_path: rel_child,
                            depends: info.depends,
                            aliases: info.aliases,
                        };
                        modules.insert(module.name.clone(), module);
                    }
                    _ => {}
                }
            }
        }
        let mut builtin = BTreeSet::new();
        if let Some(NodeKind::File(content)) =
            tree.get(format!("{dir}/modules.builtin")).map(|n| &n.kind)
        {
            for line in String::from_utf8_lossy(content.bytes()).lines() {
                if let Some(file) = line.rsplit('/').next().filter(|f| !f.is_empty()) {
                    builtin.insert(canonical_name(file));
                }
            }
        }
        Ok(ModuleIndex {
            release: release.to_owned(),
            dir,
            modules,
            builtin,
        })
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&canonical_name(name))
    }

    pub fn contains(&self, name: &str) -> bool {
        let name = canonical_name(name);
        self.modules.contains_key(&name) || self.builtin.contains(&name)
    }

    /// The modules needed to load `names`, dependencies first, each once. Built-in modules
    /// need no loading and are left out. Unknown names are an error.
    pub fn load_order(&self, names: &[&str]) -> Result<Vec<&Module>, KmodError> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            self.visit(&canonical_name(name), &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit<'a>(
        &'a self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<&'a Module>,
    ) -> Result<(), KmodError> {
        if !seen.insert(name.to_owned()) || self.builtin.contains(name) {
            return Ok(());
        }
        let module = self.modules.get(name).ok_or_else(|| KmodError::NotFound {
            name: name.to_owned(),
            dir: self.dir.clone(),
            release: self.release.clone(),
        })?;
        for dep in &module.depends {
            self.visit(&canonical_name(dep), seen, order)?;
        }
        order.push(module);
        Ok(())
    }

    /// `modules.alias` as depmod writes it (`alias PATTERN NAME`, sorted) for the modules
    /// `keep` selects.
    pub fn modules_alias(&self, keep: &dyn Fn(&Module) -> bool) -> String {
        let mut lines: Vec<String> = self
            .modules
            .values()
            .filter(|m| keep(m))
            .flat_map(|m| {
                m.aliases
                    .iter()
                    .map(move |a| format!("alias {a} {}\n", m.name))
            })
            .collect();
        lines.sort();
        lines.concat()
    }

    /// `modules.dep` as depmod writes it: `path: deps...`, the deps listed so that loading
    /// them from last to first satisfies every dependency.
    pub fn modules_dep(&self) -> String {
        let mut out = String::new();
        for module in self.modules.values() {
            out.push_str(&module.rel_path);
            out.push(':');
            let deps = self.load_order(&[module.name.as_str()]).unwrap_or_default();
            for dep in deps.iter().rev().filter(|d| d.name != module.name) {
                out.push(' ');
                out.push_str(&dep.rel_path);
            }
            out.push('\n');
        }
        out
    }
}

/// What the builder reads of a module's `.modinfo` ELF section.
pub struct ModInfo {
    pub depends: Vec<String>,
    pub aliases: Vec<String>,
}

/// The `depends=` and `alias=` entries of a module's `.modinfo` ELF section.
pub fn modinfo(elf: &[u8]) -> Result<ModInfo, String> {
    let info = modinfo_section(elf)?;
    let mut out = ModInfo {
        depends: Vec::new(),
        aliases: Vec::new(),
    };
    for entry in info.split(|&b| b == 0) {
        if let Some(list) = entry.strip_prefix(b"depends=") {
            out.depends.extend(
                String::from_utf8_lossy(list)
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(canonical_name),
            );
        } else if let Some(alias) = entry.strip_prefix(b"alias=") {
            let alias = String::from_utf8_lossy(alias);
            // A pattern with blanks could not be written as one modules.alias field.
            if !alias.is_empty() && !alias.contains(char::is_whitespace) {
                out.aliases.push(alias.into_owned());
            }
        }
    }
    Ok(out)
}

fn modinfo_section(elf: &[u8]) -> Result<&[u8], String> {
    let read = |at: usize, len: usize| -> Result<u64, String> {
        let bytes = elf.get(at..at + len).ok_or("truncated ELF file")?;
        let mut buf = [0u8; 8];
        buf[..len].copy_from_slice(bytes);
        Ok(u64::from_le_bytes(buf))
    };
    if elf.get(0..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let shoff = read(0x28, 8)? as usize;
    let shentsize = read(0x3A, 2)? as usize;
    let shnum = read(0x3C, 2)? as usize;
    let shstrndx = read(0x3E, 2)? as usize;
    let section = |i: usize| -> Result<(u64, usize, usize), String> {
        let base = shoff + i * shentsize;
        Ok((
            read(base, 4)?,
            read(base + 24, 8)? as usize,
            read(base + 32, 8)? as usize,
        ))
    };
    let (_, str_off, str_size) = section(shstrndx)?;
    let names = elf
        .get(str_off..str_off + str_size)
        .ok_or("section names out of range")?;
    for i in 0..shnum {
        let (name_off, off, size) = section(i)?;
        let name = names.get(name_off as usize..).unwrap_or_default();
        if name.starts_with(b".modinfo\0") {
            return elf
                .get(off..off + size)
                .ok_or_else(|| "modinfo out of range".into());
        }
    }
    Err("no .modinfo section".into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tree::{Meta, Node};

    /// A minimal ELF64 with a `.modinfo` section holding `info`.
    pub fn fake_module(info: &str) -> Vec<u8> {
        let shstr = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[0..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let info_off = elf.len();
        elf.extend_from_slice(info.as_bytes());
        elf.push(0);
        let str_off = elf.len();
        elf.extend_from_slice(shstr);
        let shoff = elf.len();
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3E..0x40].copy_from_slice(&2u16.to_le_bytes());
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut s = vec![0u8; 64];
            s[0..4].copy_from_slice(&name.to_le_bytes());
            s[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            s[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend(s);
        };
        sh(0, 0, 0);
        sh(1, info_off, info.len() + 1);
        sh(10, str_off, shstr.len());
        elf
    }

    pub fn tree_with_modules(release: &str, mods: &[(&str, &str)], builtin: &[&str]) -> Tree {
        let mut tree = Tree::with_merged_usr();
        let dir = modules_dir(release);
        for (path, depends) in mods {
            let info = format!("license=GPL\0depends={depends}\0name=x");
            tree.insert(
                format!("{dir}/{path}"),
                Node::file(Meta::root(0o644), fake_module(&info)),
            )
            .unwrap();
        }
        let text: String = builtin.iter().map(|b| format!("kernel/{b}.ko\n")).collect();
        tree.insert(
            format!("{dir}/modules.builtin"),
            Node::file(Meta::root(0o644), text.into_bytes()),
        )
        .unwrap();
        tree
    }

    #[test]
    fn load_order_puts_dependencies_first_and_skips_builtins() {
        let tree = tree_with_modules(
            "6.1.0-test",
            &[
                ("kernel/drivers/md/dm-verity.ko", "dm-bufio,dm-mod"),
                ("kernel/drivers/md/dm-bufio.ko", ""),
                (
                    "kernel/drivers/md/dm-mod.ko",
                    "\0alias=devname:mapper/control",
                ),
                // Not squashfs's real alias: a device alias to tell drivers from the rest.
                (
                    "kernel/fs/squashfs/squashfs.ko",
                    "\0alias=pci:v00001AF4d*sv*sd*bc*sc*i*",
                ),
                ("kernel/fs/fat/vfat.ko", "fat\0alias=fs-vfat"),
                ("kernel/fs/fat/fat.ko", ""),
            ],
            &["crc32c_generic", "nvme"],
        );
        let index = ModuleIndex::from_tree(&tree, "6.1.0-test").unwrap();
        let order: Vec<&str> = index
            .load_order(&["dm_verity", "vfat", "nvme", "squashfs", "dm-mod"])
            .unwrap()
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            order,
            ["dm_bufio", "dm_mod", "dm_verity", "fat", "vfat", "squashfs"]
        );
        assert!(index.is_builtin("nvme"));
        let err = index.load_order(&["nope"]).unwrap_err();
        assert!(err.to_string().contains("\"nope\""), "{err}");
        assert_eq!(
            index.modules_alias(&|m| m.name != "vfat"),
            "alias devname:mapper/control dm_mod\nalias pci:v00001AF4d*sv*sd*bc*sc*i* squashfs\n"
        );
        assert!(index.modules["squashfs"].is_driver());
        assert!(
            !index.modules["dm_mod"].is_driver(),
            "devname: is no device"
        );
        assert!(!index.modules["vfat"].is_driver(), "fs-vfat is no device");
        let dep = index.modules_dep();
        assert!(
            dep.contains("kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-mod.ko kernel/drivers/md/dm-bufio.ko\n"),
            "{dep}"
        );
    }

    #[test]
    fn non_elf_module_is_an_error_naming_it() {
        let mut tree = Tree::new();
        tree.insert(
            "/usr/lib/modules/r/kernel/x.ko",
            Node::file(Meta::root(0o644), b"junk".to_vec()),
        )
        .unwrap();
        let err = ModuleIndex::from_tree(&tree, "r").unwrap_err().to_string();
        assert!(err.contains("/usr/lib/modules/r/kernel/x.ko"), "{err}");
    }
}
