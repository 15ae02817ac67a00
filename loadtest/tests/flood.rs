//! Floods in the test command: 20,000 garbage datagrams per second (random bytes, STUN for
//! unknown ufrags, RTP from unknown SSRCs) at a debug focus's media port while three devices
//! meet, then 1,000 malformed `m.call.invite` to-device events while a device joins. The
//! conference must lose nothing, every piece of garbage and every malformed event must be
//! counted, and the joining device must be answered. Delays are figures, not asserted here
//! (timings are for the release command in README "Faults survived", on a quiet machine).

use cascade_loadtest::flood::{self, FloodOptions, MAX_LOSS_PERCENT};
use std::time::Duration;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_at_the_port_and_malformed_events_leave_a_conference_alone() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port();
    let env = [("CASCADE_RTC__UDP_PORT".to_owned(), port.to_string())];
    let (setup, target) =
        cascade_loadtest::local::start_with(Some(common::focus_binary()), 1, 1, &env)
            .await
            .expect("Synapse and the focus start");
    let options = FloodOptions {
        pps: 20_000,
        window: Duration::from_secs(5),
        account_prefix: "flood".into(),
    };
    let report = tokio::time::timeout(Duration::from_secs(300), flood::run(target, port, &options))
        .await
        .expect("the flood run finishes")
        .unwrap_or_else(|err| panic!("the flood run: {err:#}\n{}", setup.log_tails()));
    println!("{}", report.table());
    let flood_sent = report.pps_sent * options.window.as_secs_f64();
    assert!(
        report.pps_sent >= options.pps as f64 * flood::MIN_RATE_SHARE,
        "the flood went out at {:.0} datagrams/s of the {} asked for",
        report.pps_sent,
        options.pps
    );
    assert!(
        report.flooded.packets > 0 && report.flooded.loss_percent() < MAX_LOSS_PERCENT,
        "the conference lost {:.2} % under the flood",
        report.flooded.loss_percent()
    );
    assert_eq!(report.calls_ended, 0, "calls ended under the flood");
    assert!(
        report.focus_dropped_unknown as f64 >= flood_sent * 0.9,
        "the focus counted {} of about {flood_sent:.0} garbage datagrams",
        report.focus_dropped_unknown
    );
    assert_eq!(
        report.malformed_sent,
        flood::MALFORMED_EVENTS,
        "malformed events sent"
    );
    // At least each once (a sync batch delivered again would be counted again).
    assert!(
        report.malformed_counted >= report.malformed_sent,
        "{} of {} malformed events counted",
        report.malformed_counted,
        report.malformed_sent
    );
    // Counted each, but not each written to the log: a few warnings per window (they used to
    // be one line per event, so a flood of bad events flooded the log too).
    let log = setup.foci[0].log();
    let warned = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("call event"))
        .count() as u64;
    assert!(
        warned > 0 && warned < flood::MALFORMED_EVENTS / 4,
        "{warned} warnings about {} malformed events in the focus's log",
        report.malformed_sent
    );
}
