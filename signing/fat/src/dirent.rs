//! FAT directory entries: 8.3 short names (unique per directory), the long-name (VFAT)
//! entries that carry the real name, and the 32-byte short entry itself.

/// Bytes per directory entry.
pub(super) const ENTRY: usize = 32;
pub(super) const ATTR_LFN: u8 = 0x0F;

/// The 8.3 name of `name` in a directory whose names so far are `taken`: the upper-cased
/// name when it already is a valid 8.3 name, else a `~N` basis.
pub(super) fn short_name(name: &str, taken: &[[u8; 11]]) -> [u8; 11] {
    exact_short_name(name)
        .filter(|s| !taken.contains(s))
        .unwrap_or_else(|| {
            let (stem, ext) = split_ext(name);
            let clean = |s: &str, max: usize| -> Vec<u8> {
                s.chars()
                    .filter_map(|c| {
                        let c = c.to_ascii_uppercase();
                        (c.is_ascii_alphanumeric() || "$%'-_@~`!(){}^#&".contains(c))
                            .then_some(c as u8)
                    })
                    .take(max)
                    .collect()
            };
            let ext = clean(ext, 3);
            (1..)
                .find_map(|n: u32| {
                    let tail = format!("~{n}");
                    let mut s = [b' '; 11];
                    let basis = clean(stem, 8 - tail.len());
                    let basis = if basis.is_empty() {
                        b"F".to_vec()
                    } else {
                        basis
                    };
                    let mut stem_bytes = basis;
                    stem_bytes.extend_from_slice(tail.as_bytes());
                    s[..stem_bytes.len()].copy_from_slice(&stem_bytes);
                    s[8..8 + ext.len()].copy_from_slice(&ext);
                    (!taken.contains(&s)).then_some(s)
                })
                .unwrap_or([b' '; 11])
        })
}

fn split_ext(name: &str) -> (&str, &str) {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, ext),
        _ => (name, ""),
    }
}

/// The 8.3 form of `name` when it is already a valid upper-case 8.3 name.
fn exact_short_name(name: &str) -> Option<[u8; 11]> {
    let (stem, ext) = split_ext(name);
    let valid = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.chars().all(|c| {
                c.is_ascii_uppercase() || c.is_ascii_digit() || "$%'-_@~`!(){}^#&".contains(c)
            })
    };
    if !valid(stem, 8) || !(ext.is_empty() || valid(ext, 3)) || name.matches('.').count() > 1 {
        return None;
    }
    let mut s = [b' '; 11];
    s[..stem.len()].copy_from_slice(stem.as_bytes());
    s[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(s)
}

pub(super) fn needs_lfn(name: &str, short: &[u8; 11]) -> bool {
    exact_short_name(name).as_ref() != Some(short)
}

fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// Long-name entries, last part first as they are stored.
pub(super) fn lfn_entries(name: &str, short: &[u8; 11]) -> Vec<u8> {
    let units: Vec<u16> = name.encode_utf16().collect();
    let parts = units.len().div_ceil(13);
    let checksum = lfn_checksum(short);
    let mut out = Vec::with_capacity(parts * ENTRY);
    for part in (0..parts).rev() {
        let mut chars = [0xFFFFu16; 13];
        for (i, slot) in chars.iter_mut().enumerate() {
            let at = part * 13 + i;
            if at < units.len() {
                *slot = units[at];
            } else if at == units.len() {
                *slot = 0;
            }
        }
        let mut e = [0u8; ENTRY];
        e[0] = (part as u8 + 1) | if part + 1 == parts { 0x40 } else { 0 };
        e[11] = ATTR_LFN;
        e[13] = checksum;
        for (i, c) in chars.iter().enumerate() {
            let at = match i {
                0..=4 => 1 + 2 * i,
                5..=10 => 14 + 2 * (i - 5),
                _ => 28 + 2 * (i - 11),
            };
            e[at..at + 2].copy_from_slice(&c.to_le_bytes());
        }
        out.extend_from_slice(&e);
    }
    out
}

pub(super) fn sfn_entry(
    name: &[u8; 11],
    attr: u8,
    cluster: u32,
    size: u32,
    date: u16,
    time: u16,
) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[0..11].copy_from_slice(name);
    e[11] = attr;
    e[14..16].copy_from_slice(&time.to_le_bytes());
    e[16..18].copy_from_slice(&date.to_le_bytes());
    e[18..20].copy_from_slice(&date.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&time.to_le_bytes());
    e[24..26].copy_from_slice(&date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}
