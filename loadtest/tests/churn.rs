//! Churn in the test command: 20 devices call a local focus (through a local Synapse) and hang
//! up, 500 times in all (about a minute here); the focus's memory stays within 10 %, its file
//! descriptors (other than pooled homeserver connections, which are bounded), threads, calls,
//! peer connections and subscriptions come back to where they were. `cascade-loadtest churn`
//! runs the same at any count (README, "Faults survived").

use cascade_loadtest::churn::{self, ChurnOptions};
use std::time::Duration;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_focus_comes_back_to_its_footprint_after_five_hundred_joins_and_leaves() {
    let binary = common::focus_binary();
    let (setup, target) = cascade_loadtest::local::start(Some(binary), 1, 1)
        .await
        .expect("Synapse and the focus start");
    let options = ChurnOptions {
        devices: 20,
        cycles: 500,
        max_duration: Duration::from_secs(300),
        account_prefix: "churn".into(),
        progress: true,
    };
    let report = tokio::time::timeout(Duration::from_secs(420), churn::run(target, &options))
        .await
        .expect("the churn run finishes")
        .unwrap_or_else(|err| panic!("the churn run: {err:#}\n{}", setup.log_tails()));
    println!("{}", report.table());
    if let Some(why) = report.failure() {
        panic!("{why}\n{}", setup.log_tails());
    }
}
