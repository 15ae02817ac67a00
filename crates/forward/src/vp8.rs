//! Keeping VP8 picture ids and TL0PICIDX continuous for a subscriber across layer switches
//! (RFC 7741 payload descriptor), by patching the descriptor bytes in place.

/// How many leading payload bytes [`Vp8Munger::munge`] can change: the descriptor's first
/// byte, its extension byte, a 2-byte picture id and TL0PICIDX (RFC 7741 §4.2).
pub const MUNGED_PREFIX: usize = 5;

/// Where the picture id and TL0PICIDX sit in a VP8 payload descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Offset and width (1 or 2 bytes) of the picture id, if present.
    pub picture_id: Option<(usize, usize)>,
    /// Offset of TL0PICIDX, if present.
    pub tl0picidx: Option<usize>,
}

/// Finds the picture id and TL0PICIDX fields of a VP8 payload; `None` if truncated.
pub fn descriptor(payload: &[u8]) -> Option<Descriptor> {
    let first = *payload.first()?;
    if first & 0x80 == 0 {
        return Some(Descriptor {
            picture_id: None,
            tl0picidx: None,
        });
    }
    let x = *payload.get(1)?;
    let mut at = 2;
    let picture_id = if x & 0x80 != 0 {
        let width = if payload.get(at)? & 0x80 != 0 { 2 } else { 1 };
        payload.get(at + width - 1)?;
        let field = (at, width);
        at += width;
        Some(field)
    } else {
        None
    };
    let tl0picidx = if x & 0x40 != 0 {
        payload.get(at)?;
        Some(at)
    } else {
        None
    };
    Some(Descriptor {
        picture_id,
        tl0picidx,
    })
}

fn read_picture_id(payload: &[u8], (at, width): (usize, usize)) -> u16 {
    if width == 2 {
        u16::from_be_bytes([payload[at] & 0x7f, payload[at + 1]])
    } else {
        u16::from(payload[at] & 0x7f)
    }
}

fn write_picture_id(payload: &mut [u8], (at, width): (usize, usize), value: u16) {
    if width == 2 {
        let [high, low] = (value & 0x7fff).to_be_bytes();
        payload[at] = 0x80 | high;
        payload[at + 1] = low;
    } else {
        payload[at] = (value & 0x7f) as u8;
    }
}

/// Per-subscriber offsets that make picture ids and TL0PICIDX continue across source switches.
#[derive(Clone, Debug, Default)]
pub struct Vp8Munger {
    picture_id_offset: u16,
    tl0_offset: u8,
    last_picture_id: Option<u16>,
    last_tl0: Option<u8>,
    rebase: bool,
}

impl Vp8Munger {
    /// Re-bases on the next packet: it continues after the last picture id and TL0PICIDX sent.
    pub fn switch_source(&mut self) {
        self.rebase = true;
    }

    /// Whether packets currently need patching (an offset is in force or a re-base is due).
    pub fn active(&self) -> bool {
        self.rebase || self.picture_id_offset != 0 || self.tl0_offset != 0
    }

    /// Patches `payload`'s descriptor in place; a truncated descriptor is left alone.
    pub fn munge(&mut self, payload: &mut [u8]) {
        let Some(fields) = descriptor(payload) else {
            return;
        };
        if let Some(field) = fields.picture_id {
            let modulus: u16 = if field.1 == 2 { 0x8000 } else { 0x80 };
            let incoming = read_picture_id(payload, field);
            if self.rebase {
                let next = self
                    .last_picture_id
                    .map_or(incoming, |last| last.wrapping_add(1));
                self.picture_id_offset = next.wrapping_sub(incoming) % modulus;
            }
            let out = incoming.wrapping_add(self.picture_id_offset) % modulus;
            write_picture_id(payload, field, out);
            self.last_picture_id = Some(out);
        }
        if let Some(at) = fields.tl0picidx {
            let incoming = payload[at];
            if self.rebase {
                let next = self.last_tl0.map_or(incoming, |last| last.wrapping_add(1));
                self.tl0_offset = next.wrapping_sub(incoming);
            }
            let out = incoming.wrapping_add(self.tl0_offset);
            payload[at] = out;
            self.last_tl0 = Some(out);
        }
        self.rebase = false;
    }

    /// Records a packet sent unpatched, so a later re-base continues after it.
    pub fn observe(&mut self, payload: &[u8]) {
        let Some(fields) = descriptor(payload) else {
            return;
        };
        if let Some(field) = fields.picture_id {
            self.last_picture_id = Some(read_picture_id(payload, field));
        }
        if let Some(at) = fields.tl0picidx {
            self.last_tl0 = Some(payload[at]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor with a 15-bit picture id and TL0PICIDX.
    fn packet(picture_id: u16, tl0: u8) -> Vec<u8> {
        let [high, low] = picture_id.to_be_bytes();
        vec![0x90, 0xc0, 0x80 | high, low, tl0, 0x00, 0xaa]
    }

    #[test]
    fn munging_changes_nothing_past_the_prefix() {
        // Every first two bytes (so every combination of the descriptor's flags), then bytes
        // that look like further flags and fields, re-based onto far-away numbers.
        for first in [0x00, 0x10, 0x80, 0x90, 0xff] {
            for x in 0..=255u8 {
                let payload = [first, x, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
                let mut munger = Vp8Munger::default();
                munger.munge(&mut packet(1000, 3));
                munger.switch_source();
                let mut out = payload;
                munger.munge(&mut out);
                assert_eq!(
                    out[MUNGED_PREFIX..],
                    payload[MUNGED_PREFIX..],
                    "{first:#x} {x:#x}"
                );
            }
        }
    }

    #[test]
    fn finds_fields() {
        assert_eq!(
            descriptor(&packet(300, 7)),
            Some(Descriptor {
                picture_id: Some((2, 2)),
                tl0picidx: Some(4)
            })
        );
        assert_eq!(
            descriptor(&[0x10, 0x00]),
            Some(Descriptor {
                picture_id: None,
                tl0picidx: None
            })
        );
        assert_eq!(descriptor(&[0x90, 0x80, 0x81]), None, "truncated 15-bit id");
    }

    #[test]
    fn continues_after_a_switch_and_wraps() {
        let mut munger = Vp8Munger::default();
        munger.observe(&packet(0x7fff, 255));
        munger.switch_source();
        let mut p = packet(100, 9);
        munger.munge(&mut p);
        assert_eq!(
            p,
            packet(0, 0),
            "continues after 0x7fff/255 with wrap-around"
        );
        let mut q = packet(101, 10);
        munger.munge(&mut q);
        assert_eq!(q, packet(1, 1));
        assert_eq!(q[6], 0xaa, "payload after the descriptor untouched");
    }

    #[test]
    fn seven_bit_picture_ids_wrap_at_128() {
        let mut munger = Vp8Munger::default();
        munger.observe(&[0x90, 0x80, 0x7f, 0x00]);
        munger.switch_source();
        let mut p = [0x90, 0x80, 0x05, 0x00];
        munger.munge(&mut p);
        assert_eq!(p, [0x90, 0x80, 0x00, 0x00]);
    }
}
