//! The scenario a run drives — who publishes what and who watches whom — and its named presets.

use anyhow::{Result, bail};
use serde::Serialize;
use std::time::Duration;

/// What each subscriber watches: how many video publishers, rendered at what size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Video publishers each subscriber watches (`None`: all of them).
    pub videos: Option<u32>,
    /// The render size announced for each watched video.
    pub width: u32,
    /// The render size announced for each watched video.
    pub height: u32,
}

impl Layout {
    /// Parses `all@WxH`, `K@WxH`, `K` or `all` (size defaults to 640x360).
    pub fn parse(text: &str) -> Result<Self> {
        let (count, size) = match text.split_once('@') {
            Some((count, size)) => (count, Some(size)),
            None => (text, None),
        };
        let videos = match count.trim() {
            "all" | "" => None,
            n => match n.parse::<u32>() {
                Ok(k) => Some(k),
                Err(_) => bail!("layout {text:?}: {n:?} is neither a number nor \"all\""),
            },
        };
        let (width, height) = match size {
            None => (640, 360),
            Some(size) => {
                let Some((w, h)) = size.split_once('x') else {
                    bail!("layout {text:?}: size must be WIDTHxHEIGHT");
                };
                match (w.trim().parse(), h.trim().parse()) {
                    (Ok(w), Ok(h)) => (w, h),
                    _ => bail!("layout {text:?}: size must be WIDTHxHEIGHT"),
                }
            }
        };
        Ok(Self {
            videos,
            width,
            height,
        })
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.videos {
            Some(k) => write!(f, "{k}@{}x{}", self.width, self.height),
            None => write!(f, "all@{}x{}", self.width, self.height),
        }
    }
}

/// The shape of one load test.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scenario {
    /// The preset this came from, if any.
    pub preset: Option<String>,
    /// Devices publishing audio and video.
    pub video_publishers: u32,
    /// Devices publishing audio only.
    pub audio_publishers: u32,
    /// Devices publishing nothing and watching per `layout`.
    pub subscribers: u32,
    /// Whether publishers also watch each other (a meeting) or only publish (a broadcast).
    pub publishers_subscribe: bool,
    /// Whether video publishers send three simulcast layers.
    pub simulcast: bool,
    /// Video bitrate of a publisher without simulcast, bit/s.
    pub video_bitrate_bps: u32,
    /// What each subscriber watches.
    pub layout: Layout,
    /// How long media runs once everyone has joined.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// Joins started per second.
    pub join_rate: f64,
    /// Seed of user names and of who-watches-whom.
    pub seed: u64,
    /// Conferences run side by side, each with all of the devices above (in one room, each its
    /// own conf id), so that the focus can spread them over its event loops.
    pub conferences: u32,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            preset: None,
            video_publishers: 1,
            audio_publishers: 0,
            subscribers: 10,
            publishers_subscribe: false,
            simulcast: false,
            video_bitrate_bps: 1_700_000,
            layout: Layout {
                videos: None,
                width: 1280,
                height: 720,
            },
            duration: Duration::from_secs(20),
            join_rate: 20.0,
            seed: 1,
            conferences: 1,
        }
    }
}

impl Scenario {
    /// Every device of the run.
    pub fn devices(&self) -> u32 {
        (self.video_publishers + self.audio_publishers + self.subscribers) * self.conferences.max(1)
    }
}

/// A named scenario.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    /// Name used with `--preset`.
    pub name: &'static str,
    /// One line saying what it models.
    pub about: &'static str,
    video_publishers: u32,
    audio_publishers: u32,
    subscribers: u32,
    publishers_subscribe: bool,
    video_bitrate_bps: u32,
    layout: Layout,
    duration_secs: u64,
    join_rate: f64,
}

/// The presets, smallest first.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "smoke",
        about: "2 audio+video publishers, 3 subscribers, 5 s: does media flow at all",
        video_publishers: 2,
        audio_publishers: 0,
        subscribers: 3,
        publishers_subscribe: true,
        video_bitrate_bps: 300_000,
        layout: Layout {
            videos: None,
            width: 640,
            height: 360,
        },
        duration_secs: 5,
        join_rate: 20.0,
    },
    Preset {
        name: "audio-1000",
        about: "10 audio publishers to 100 listeners: 1,000 audio subscriptions (LiveKit's audio benchmark, scaled)",
        video_publishers: 0,
        audio_publishers: 10,
        subscribers: 100,
        publishers_subscribe: false,
        video_bitrate_bps: 0,
        layout: Layout {
            videos: None,
            width: 0,
            height: 0,
        },
        duration_secs: 30,
        join_rate: 20.0,
    },
    Preset {
        name: "video-1x100",
        about: "1 camera (720p, 1.7 Mb/s, with audio) to 100 viewers (LiveKit's video benchmark, scaled)",
        video_publishers: 1,
        audio_publishers: 0,
        subscribers: 100,
        publishers_subscribe: false,
        video_bitrate_bps: 1_700_000,
        layout: Layout {
            videos: None,
            width: 1280,
            height: 720,
        },
        duration_secs: 30,
        join_rate: 20.0,
    },
    Preset {
        name: "meeting-10x10",
        about: "10 participants with camera (360p, 300 kb/s) and microphone, each watching the 9 others",
        video_publishers: 10,
        audio_publishers: 0,
        subscribers: 0,
        publishers_subscribe: true,
        video_bitrate_bps: 300_000,
        layout: Layout {
            videos: None,
            width: 640,
            height: 360,
        },
        duration_secs: 30,
        join_rate: 10.0,
    },
    Preset {
        name: "livestream-1x500",
        about: "1 camera (360p, 300 kb/s, with audio) to 500 viewers",
        video_publishers: 1,
        audio_publishers: 0,
        subscribers: 500,
        publishers_subscribe: false,
        video_bitrate_bps: 300_000,
        layout: Layout {
            videos: None,
            width: 640,
            height: 360,
        },
        duration_secs: 30,
        join_rate: 25.0,
    },
];

/// Looks a preset up by name.
pub fn find(name: &str) -> Result<&'static Preset> {
    match PRESETS.iter().find(|p| p.name == name) {
        Some(p) => Ok(p),
        None => {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            bail!("no preset {name:?}; known: {}", names.join(", "))
        }
    }
}

impl Preset {
    /// The scenario this preset describes.
    pub fn scenario(&self) -> Scenario {
        Scenario {
            preset: Some(self.name.to_owned()),
            video_publishers: self.video_publishers,
            audio_publishers: self.audio_publishers,
            subscribers: self.subscribers,
            publishers_subscribe: self.publishers_subscribe,
            simulcast: false,
            video_bitrate_bps: self.video_bitrate_bps,
            layout: self.layout,
            duration: Duration::from_secs(self.duration_secs),
            join_rate: self.join_rate,
            seed: 1,
            conferences: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_parse() {
        let l = Layout::parse("4@320x180").expect("valid");
        assert_eq!((l.videos, l.width, l.height), (Some(4), 320, 180));
        let l = Layout::parse("all").expect("valid");
        assert_eq!((l.videos, l.width, l.height), (None, 640, 360));
        assert_eq!(
            Layout::parse("all@1280x720").expect("valid").to_string(),
            "all@1280x720"
        );
        assert!(Layout::parse("x@1x1").is_err());
        assert!(Layout::parse("2@big").is_err());
    }

    #[test]
    fn presets_resolve() {
        for preset in PRESETS {
            let s = find(preset.name).expect("listed").scenario();
            assert!(s.devices() > 0);
            assert!(
                s.video_publishers + s.audio_publishers > 0,
                "{} publishes nothing",
                preset.name
            );
        }
        assert!(find("nope").is_err());
    }
}
