//! Choosing a conference's active speaker from RFC 6464 audio levels.
//!
//! Audio levels arrive as -dBov (0 loudest, 127 silence); the media plane keeps a smoothed
//! loudness per audio track (`127 - level`). The active speaker changes only when another
//! track is clearly speaking and clearly louder, so it does not flicker between two voices.

/// Smoothed loudness above which a track counts as speaking (levels under ~-60 dBov).
pub const SPEAKING: f32 = 67.0;
/// How much louder than the current speaker another track must be to take over.
pub const MARGIN: f32 = 6.0;

/// The active speaker after this round, given each candidate's smoothed loudness and the
/// current speaker.
pub fn select_speaker<K: Copy + PartialEq>(
    candidates: &[(K, f32)],
    current: Option<K>,
) -> Option<K> {
    let loudest = candidates
        .iter()
        .filter(|(_, loudness)| *loudness >= SPEAKING)
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let current_loudness = current.and_then(|key| {
        candidates
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, loudness)| *loudness)
    });
    match (loudest, current_loudness) {
        (None, Some(_)) => current,
        (None, None) => None,
        (Some(&(key, _)), None) => Some(key),
        (Some(&(key, loudness)), Some(held)) => {
            if loudness >= held + MARGIN || held < SPEAKING - MARGIN {
                Some(key)
            } else {
                current
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Candidates, current speaker, expected speaker, case name.
    type Case = (&'static [(u8, f32)], Option<u8>, Option<u8>, &'static str);

    #[test]
    fn table() {
        let cases: [Case; 7] = [
            (&[], None, None, "nobody"),
            (&[(1, 20.0), (2, 30.0)], None, None, "only silence"),
            (&[(1, 90.0), (2, 80.0)], None, Some(1), "loudest speaker"),
            (
                &[(1, 90.0), (2, 93.0)],
                Some(1),
                Some(1),
                "slightly louder does not take over",
            ),
            (
                &[(1, 80.0), (2, 93.0)],
                Some(1),
                Some(2),
                "clearly louder takes over",
            ),
            (
                &[(1, 30.0), (2, 70.0)],
                Some(1),
                Some(2),
                "current went quiet",
            ),
            (
                &[(2, 20.0)],
                Some(1),
                None,
                "speaker left and nobody speaks",
            ),
        ];
        for (candidates, current, expected, name) in cases {
            assert_eq!(select_speaker(candidates, current), expected, "{name}");
        }
    }
}
