//! Debian's alternatives, made without running maintainer scripts.
//!
//! A package's `postinst` calls `update-alternatives --install LINK NAME PATH PRIORITY
//! [--slave LINK NAME PATH]...` to make, for example, `/usr/sbin/iptables` point at
//! `iptables-nft` (priority 20) rather than `iptables-legacy` (10). No maintainer script runs
//! when Keel unpacks packages, so this module reads those calls from each `postinst` (literal
//! arguments only: a call built from shell variables is skipped), picks the highest priority
//! per name, as `update-alternatives --auto` does, and links `LINK` (and its slaves) straight
//! to the chosen `PATH`, without the `/etc/alternatives` indirection (the root is read-only, so
//! nobody switches them at run time).

use std::collections::BTreeMap;

use crate::tree::{Node, Tree, TreeError};

/// One `--install` call: the master link and its slaves, (link, path) each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    pub name: String,
    pub link: String,
    pub path: String,
    pub priority: i64,
    pub slaves: Vec<(String, String)>,
}

/// The `update-alternatives --install` calls in a maintainer script.
pub fn parse_postinst(script: &str) -> Vec<Alternative> {
    // Shell line continuations first, then one command per line.
    let joined = script.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(start) = words.iter().position(|w| *w == "update-alternatives") else {
            continue;
        };
        let args = &words[start + 1..];
        let Some(i) = args.iter().position(|w| *w == "--install") else {
            continue;
        };
        let literal = |w: &str| !w.contains(['$', '`', '"', '\'', ';', '|', '&']);
        let Some([link, name, path, priority]) = args.get(i + 1..i + 5) else {
            continue;
        };
        if ![link, name, path, priority].iter().all(|w| literal(w)) {
            continue;
        }
        let Ok(priority) = priority.parse::<i64>() else {
            continue;
        };
        let mut slaves = Vec::new();
        let mut rest = &args[i + 5..];
        while let [flag, slave_link, _slave_name, slave_path, tail @ ..] = rest {
            if *flag != "--slave" || !literal(slave_link) || !literal(slave_path) {
                break;
            }
            slaves.push(((*slave_link).to_owned(), (*slave_path).to_owned()));
            rest = tail;
        }
        out.push(Alternative {
            name: (*name).to_owned(),
            link: (*link).to_owned(),
            path: (*path).to_owned(),
            priority,
            slaves,
        });
    }
    out
}

/// The alternative `update-alternatives --auto` would choose per name: the highest priority;
/// on a tie, the one installed last (packages are applied in name order).
pub fn choose(all: Vec<Alternative>) -> Vec<Alternative> {
    let mut best: BTreeMap<String, Alternative> = BTreeMap::new();
    for alt in all {
        match best.get(&alt.name) {
            Some(b) if b.priority > alt.priority => {}
            _ => {
                best.insert(alt.name.clone(), alt);
            }
        }
    }
    best.into_values().collect()
}

/// Creates the chosen links whose targets exist in `tree` and whose link paths are free;
/// returns the links made.
pub fn apply(tree: &mut Tree, chosen: &[Alternative]) -> Result<Vec<String>, TreeError> {
    let mut made = Vec::new();
    for alt in chosen {
        let pairs =
            std::iter::once((&alt.link, &alt.path)).chain(alt.slaves.iter().map(|(l, p)| (l, p)));
        for (link, path) in pairs {
            if tree.get(path).is_none() || tree.get(link).is_some() {
                continue;
            }
            tree.insert(link, Node::symlink(path.as_bytes()))?;
            made.push(format!("{link} -> {path}"));
        }
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Meta;

    /// The start of Debian 12's iptables postinst, as shipped.
    const IPTABLES: &str = "#!/bin/sh\n\nset -e\n\nif [ \"$1\" = \"configure\" ]; then\n\tupdate-alternatives \\\n\t  --install /usr/sbin/iptables iptables /usr/sbin/iptables-legacy 10 \\\n\t  --slave /usr/sbin/iptables-restore iptables-restore /usr/sbin/iptables-legacy-restore \\\n\t  --slave /usr/sbin/iptables-save iptables-save /usr/sbin/iptables-legacy-save\n        update-alternatives \\\n          --install /usr/sbin/iptables iptables /usr/sbin/iptables-nft 20 \\\n          --slave /usr/sbin/iptables-restore iptables-restore /usr/sbin/iptables-nft-restore \\\n          --slave /usr/sbin/iptables-save iptables-save /usr/sbin/iptables-nft-save\n        update-alternatives --install /usr/bin/x x \"$DIR/x\" 5\nfi\n";

    #[test]
    fn the_highest_priority_wins_with_its_slaves() {
        let all = parse_postinst(IPTABLES);
        assert_eq!(
            all.len(),
            2,
            "the call built from a variable is skipped: {all:?}"
        );
        let chosen = choose(all);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].path, "/usr/sbin/iptables-nft");
        assert_eq!(chosen[0].slaves.len(), 2);

        let mut tree = Tree::with_merged_usr();
        for target in ["/usr/sbin/iptables-nft", "/usr/sbin/iptables-nft-save"] {
            tree.insert(target, Node::file(Meta::root(0o755), b"x".to_vec()))
                .unwrap();
        }
        let made = apply(&mut tree, &chosen).unwrap();
        assert_eq!(
            made,
            [
                "/usr/sbin/iptables -> /usr/sbin/iptables-nft",
                "/usr/sbin/iptables-save -> /usr/sbin/iptables-nft-save"
            ],
            "a slave whose target is missing is left out"
        );
        assert!(
            apply(&mut tree, &chosen).unwrap().is_empty(),
            "existing links are kept"
        );
    }
}
