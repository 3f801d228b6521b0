//! POSIX ACLs as the kernel stores them in `system.posix_acl_*` xattrs, and what a new inode
//! inherits from its directory's default ACL (the kernel's `posix_acl_create`).
//!
//! With `FUSE_POSIX_ACL` the kernel checks access against the ACLs itself and leaves the
//! umask to the filesystem, so creation is the one place where the filesystem must apply
//! them.

pub const ACCESS: &[u8] = b"system.posix_acl_access";
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

fn parse(value: &[u8]) -> Option<Vec<Entry>> {
    let (header, body) = value.split_at_checked(4)?;
    if u32::from_le_bytes(header.try_into().ok()?) != VERSION || body.len() % 8 != 0 {
        return None;
    }
    Some(
        body.chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

fn serialize(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 8 * entries.len());
    out.extend_from_slice(&VERSION.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&e.id.to_le_bytes());
    }
    out
}

/// Whether `value` is a well-formed ACL xattr value.
pub fn is_valid(value: &[u8]) -> bool {
    parse(value).is_some_and(|entries| {
        entries
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | USER | GROUP_OBJ | GROUP | MASK | OTHER))
    })
}

/// The permission bits (0o777) an access ACL stands for: owner from `USER_OBJ`, group from
/// `MASK` (or `GROUP_OBJ` without one), other from `OTHER`; and whether the ACL says no more
/// than those bits (no named entries, no mask), so that the mode alone can hold it.
/// `None` if it lacks one of the three required entries.
pub fn mode_of(value: &[u8]) -> Option<(u32, bool)> {
    let entries = parse(value)?;
    let find = |tag| {
        entries
            .iter()
            .find(|e| e.tag == tag)
            .map(|e| u32::from(e.perm & 7))
    };
    let user = find(USER_OBJ)?;
    let other = find(OTHER)?;
    let group = find(MASK).or_else(|| find(GROUP_OBJ))?;
    let minimal = entries
        .iter()
        .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER));
    Some(((user << 6) | (group << 3) | other, minimal))
}

/// An access ACL after a chmod to `perm` (the kernel's `posix_acl_chmod`): the owner, mask (or
/// owning group without a mask) and other entries take the new bits. `None` if malformed.
pub fn chmod(value: &[u8], perm: u32) -> Option<Vec<u8>> {
    let mut entries = parse(value)?;
    let has_mask = entries.iter().any(|e| e.tag == MASK);
    for e in &mut entries {
        match e.tag {
            USER_OBJ => e.perm = ((perm >> 6) & 7) as u16,
            MASK => e.perm = ((perm >> 3) & 7) as u16,
            GROUP_OBJ if !has_mask => e.perm = ((perm >> 3) & 7) as u16,
            OTHER => e.perm = (perm & 7) as u16,
            _ => {}
        }
    }
    Some(serialize(&entries))
}

/// What a new inode gets from its directory's default ACL (`None` if the directory has
/// none): its mode (permission bits masked by the ACL), its access ACL (unless the ACL says
/// no more than the mode), and, for directories, the default ACL to carry on.
pub struct Inherited {
    pub perm: u32,
    pub access: Option<Vec<u8>>,
    pub default: Option<Vec<u8>>,
}

/// `perm` is the mode requested at creation (07777 bits), before any umask.
pub fn inherit(default_acl: &[u8], perm: u32, is_dir: bool) -> Option<Inherited> {
    let mut entries = parse(default_acl)?;
    if entries.is_empty() {
        return None;
    }
    let mut mode = perm;
    let mut group_obj = None;
    let mut mask = None;
    let mut extended = false;
    for (i, e) in entries.iter_mut().enumerate() {
        match e.tag {
            USER_OBJ => {
                e.perm &= ((mode >> 6) & 7) as u16;
                mode &= (u32::from(e.perm) << 6) | !0o700;
            }
            USER | GROUP => extended = true,
            GROUP_OBJ => group_obj = Some(i),
            MASK => {
                extended = true;
                mask = Some(i);
            }
            OTHER => {
                e.perm &= (mode & 7) as u16;
                mode &= u32::from(e.perm) | !0o7;
            }
            _ => return None,
        }
    }
    let class = mask.or(group_obj)?;
    entries[class].perm &= ((mode >> 3) & 7) as u16;
    mode &= (u32::from(entries[class].perm) << 3) | !0o70;
    Some(Inherited {
        perm: mode,
        access: extended.then(|| serialize(&entries)),
        default: is_dir.then(|| default_acl.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        serialize(
            &entries
                .iter()
                .map(|&(tag, perm, id)| Entry { tag, perm, id })
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn minimal_default_acl_masks_mode_like_a_umask() {
        let d = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0), (OTHER, 0, 0)]);
        let got = inherit(&d, 0o666, false).unwrap();
        assert_eq!(got.perm, 0o640);
        assert!(got.access.is_none());
        assert!(got.default.is_none());
        let got = inherit(&d, 0o777, true).unwrap();
        assert_eq!(got.perm, 0o750);
        assert_eq!(got.default.as_deref(), Some(&d[..]));
    }

    #[test]
    fn extended_default_acl_gives_an_access_acl_and_mask_in_group_bits() {
        let d = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 5, 0),
        ]);
        let got = inherit(&d, 0o644, false).unwrap();
        assert_eq!(got.perm, 0o644);
        let access = parse(got.access.as_deref().unwrap()).unwrap();
        assert_eq!(
            access[3],
            Entry {
                tag: MASK,
                perm: 4,
                id: 0
            }
        );
        assert!(is_valid(got.access.as_deref().unwrap()));
    }

    #[test]
    fn access_acl_and_mode_follow_each_other() {
        let minimal = acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (OTHER, 4, 0)]);
        assert_eq!(mode_of(&minimal), Some((0o644, true)));
        let named = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 4, 65534),
            (GROUP_OBJ, 0, 0),
            (MASK, 4, 0),
            (OTHER, 0, 0),
        ]);
        assert_eq!(mode_of(&named), Some((0o640, false)));
        let after = chmod(&named, 0o600).unwrap();
        assert_eq!(mode_of(&after), Some((0o600, false)));
        let entries = parse(&after).unwrap();
        assert_eq!(entries[1].perm, 4, "named entries keep their bits");
        assert_eq!(entries[2].perm, 0, "the owning group is not the mask");
        assert_eq!(
            mode_of(&chmod(&minimal, 0o751).unwrap()),
            Some((0o751, true))
        );
        assert_eq!(mode_of(&acl(&[(USER_OBJ, 7, 0)])), None);
    }

    #[test]
    fn malformed_acls_are_rejected() {
        assert!(!is_valid(b"\x02\x00\x00\x00\x01"));
        assert!(!is_valid(b"\x01\x00\x00\x00"));
        assert!(inherit(b"junk", 0o644, false).is_none());
        assert!(!is_valid(&acl(&[(0x40, 7, 0)])));
    }
}
