use cascade_simclient::{PeerOptions, SimPeer};
use std::time::{Duration, Instant};

async fn pair_run(secs: u64) -> u64 {
    let mut a = SimPeer::bind(PeerOptions::new("@a:hs", "A")).await.unwrap();
    let mut o = PeerOptions::new("@b:hs", "B");
    o.publish_audio = false;
    o.publish_video = false;
    o.create_data_channel = false;
    let mut b = SimPeer::bind(o).await.unwrap();
    let offer = a.create_offer().unwrap();
    let answer = b.accept_offer(&offer).unwrap();
    a.accept_answer(&answer).unwrap();
    for c in a.local_candidates() {
        b.add_remote_candidate(&c).unwrap();
    }
    for c in b.local_candidates() {
        a.add_remote_candidate(&c).unwrap();
    }
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        a.process();
        a.flush().await;
        while a.poll_event().is_some() {}
        b.process();
        b.flush().await;
        while b.poll_event().is_some() {}
        tokio::select! { _ = a.wait() => {}, _ = b.wait() => {} }
    }
    let r = b.receiving();
    let r = r.lock().unwrap();
    r.tracks.values().map(|t| t.packets).sum()
}

#[test]
#[ignore]
fn scale() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n = 50;
    let t0 = std::time::Instant::now();
    let start_cpu = cpu();
    let total: u64 = rt.block_on(async {
        let hs: Vec<_> = (0..n).map(|_| tokio::spawn(pair_run(10))).collect();
        let mut s = 0;
        for h in hs {
            s += h.await.unwrap();
        }
        s
    });
    let cpu_used = cpu() - start_cpu;
    eprintln!(
        "pairs={n} packets={total} wall={:?} cpu={:.2}s",
        t0.elapsed(),
        cpu_used
    );
}

fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}
