//! Simulcast layers: which one a subscriber should get.

/// Index of a simulcast layer within its track, 0 being the lowest.
pub type LayerId = u8;

/// What layer selection knows about one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// Whether packets are arriving on it.
    pub active: bool,
    /// Its picture height in pixels (nominal).
    pub height: u32,
}

/// The nominal height of the layer with RTP stream id `rid`, for a track whose full size is
/// `full_height` (matrix-js-sdk's `q`/`h`/`f` are a quarter, half and full size).
pub fn nominal_height(rid: Option<&str>, full_height: u32) -> u32 {
    match rid {
        Some("q") => full_height / 4,
        Some("h") => full_height / 2,
        _ => full_height,
    }
}

/// Orders layers from the lowest; `rid`s other than `q`/`h`/`f` keep their order of arrival.
pub fn rank(rid: Option<&str>) -> u8 {
    match rid {
        Some("q") => 0,
        Some("h") => 1,
        Some("f") => 2,
        None => 2,
        Some(_) => 3,
    }
}

/// The layer a subscriber rendering `requested_height` pixels tall should get: the smallest
/// active layer at least that tall, else the tallest active one; `None` if none is active.
///
/// Without a requested size, the tallest active layer.
pub fn select(requested_height: Option<u32>, layers: &[LayerInfo]) -> Option<LayerId> {
    let active = layers
        .iter()
        .enumerate()
        .filter(|(_, layer)| layer.active)
        .map(|(index, layer)| (index as LayerId, layer.height));
    let tallest = active.clone().max_by_key(|(_, height)| *height);
    let Some(wanted) = requested_height else {
        return tallest.map(|(index, _)| index);
    };
    active
        .filter(|(_, height)| *height >= wanted)
        .min_by_key(|(_, height)| *height)
        .or(tallest)
        .map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(active: [bool; 3]) -> Vec<LayerInfo> {
        [180, 360, 720]
            .into_iter()
            .zip(active)
            .map(|(height, active)| LayerInfo { active, height })
            .collect()
    }

    #[test]
    fn table() {
        let cases = [
            (Some(180), [true; 3], Some(0), "small window gets q"),
            (Some(200), [true; 3], Some(1), "just above q gets h"),
            (Some(720), [true; 3], Some(2), "large window gets f"),
            (Some(1080), [true; 3], Some(2), "larger than any gets f"),
            (None, [true; 3], Some(2), "no size gets the best"),
            (
                Some(720),
                [true, true, false],
                Some(1),
                "f stopped: fall back to h",
            ),
            (
                Some(180),
                [false, true, true],
                Some(1),
                "q stopped: next one up",
            ),
            (Some(360), [false, false, false], None, "nothing arrives"),
        ];
        for (requested, active, expected, name) in cases {
            assert_eq!(select(requested, &layers(active)), expected, "{name}");
        }
    }

    #[test]
    fn nominal_heights_and_ranks() {
        assert_eq!(nominal_height(Some("q"), 720), 180);
        assert_eq!(nominal_height(Some("h"), 720), 360);
        assert_eq!(nominal_height(None, 720), 720);
        assert!(rank(Some("q")) < rank(Some("h")) && rank(Some("h")) < rank(Some("f")));
    }
}
