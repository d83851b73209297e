//! Faults in quick succession: each repaired at once, and the whole converging with
//! every invariant held once they stop.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

#[tokio::test(start_paused = true)]
async fn six_kills_in_ten_seconds_are_each_replaced_within_a_second_and_never_served_dead() {
    let w = World::new(&[svc("web").replicas(3).lb()])
        .with_settings(|s| s.sync_period = secs(300))
        .start();
    w.converge("web", 3, secs(5)).await;
    let mut rng = StdRng::seed_from_u64(6);
    for kill in 0..6 {
        let running = w.running("web");
        let victim = running[rng.random_range(0..running.len())].clone();
        let addr = victim.addr().expect("addr");
        w.rt.kill(&victim.id);
        let out = w
            .until("out of rotation", secs(1), |w| {
                !w.lb.in_rotation("web").contains(&addr)
            })
            .await;
        assert!(
            out <= ms(20),
            "kill {kill}: in rotation {out:?} after its death"
        );
        let back = w.converge("web", 3, secs(2)).await;
        assert!(back < secs(1), "kill {kill}: replaced after {back:?}");
        w.settle(ms(1600) - back).await;
    }
    assert!(w.events_with("web", "BackOff").is_empty());
    w.check_invariants();
}

/// One fault from outside, picked by the seeded generator.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Stop,
    Remove,
    Crash,
    OutOfMemory,
    Pause,
    Disconnect,
    Scale,
    Roll,
    HaproxyRestart,
    EventsLost,
    EngineBlip,
    EngineRestart,
    HaproxyBlip,
    HaproxyRefuses,
    StopsHang,
    Sessions,
    InvalidEdit,
}

const FAULTS: [Fault; 18] = [
    Fault::Kill,
    Fault::Stop,
    Fault::Remove,
    Fault::Crash,
    Fault::OutOfMemory,
    Fault::Pause,
    Fault::Disconnect,
    Fault::Scale,
    Fault::Roll,
    Fault::HaproxyRestart,
    Fault::EventsLost,
    Fault::EngineBlip,
    Fault::EngineRestart,
    Fault::HaproxyBlip,
    Fault::HaproxyRefuses,
    Fault::StopsHang,
    Fault::Sessions,
    Fault::InvalidEdit,
];

async fn soak(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut spec = svc("web").replicas(3).lb().drain_timeout("2s");
    let w = World::new(&[spec.clone(), svc("pool").replicas(2)])
        .with_settings(|s| {
            s.crash_backoff.base = secs(1);
            s.crash_backoff.max = secs(8);
        })
        .start();
    let impostor = w.rt.run_unmanaged("web-zzzzz", NET);
    w.converge("web", 3, secs(5)).await;
    let mut paused: Vec<ContainerId> = Vec::new();
    let mut log = Vec::new();
    for _ in 0..40 {
        let fault = FAULTS[rng.random_range(0..FAULTS.len())];
        let service = if rng.random_bool(0.8) { "web" } else { "pool" };
        let running = w.running(service);
        let victim =
            (!running.is_empty()).then(|| running[rng.random_range(0..running.len())].id.clone());
        log.push(format!("{fault:?} {service} {victim:?}"));
        match (fault, victim) {
            (Fault::Kill, Some(id)) => w.rt.kill(&id),
            (Fault::Stop, Some(id)) => w.rt.stop_from_outside(&id),
            (Fault::Remove, Some(id)) => w.rt.remove_from_outside(&id),
            (Fault::Crash, Some(id)) => w.rt.crash(&id, 2),
            (Fault::OutOfMemory, Some(id)) => w.rt.oom_kill(&id),
            (Fault::Pause, Some(id)) => {
                w.rt.pause(&id);
                paused.push(id);
            }
            (Fault::Disconnect, Some(id)) => w.rt.disconnect(&id, NET),
            (Fault::Scale, _) => {
                spec = spec.replicas(rng.random_range(1..=5));
                w.edit(&[spec.clone(), svc("pool").replicas(2)]);
            }
            (Fault::Roll, _) => {
                spec = spec.clone().version(spec.version + 1);
                w.edit(&[spec.clone(), svc("pool").replicas(2)]);
            }
            (Fault::HaproxyRestart, _) => w.lb.restart(),
            (Fault::EventsLost, _) => {
                w.rt.lose_events();
                w.rt.end_event_streams();
                w.settle(ms(rng.random_range(0..500))).await;
                w.rt.deliver_events();
            }
            (Fault::EngineBlip, _) => {
                w.rt.engine_unreachable();
                w.settle(ms(rng.random_range(100..3000))).await;
                w.rt.engine_reachable();
            }
            (Fault::EngineRestart, _) => {
                w.rt.engine_unreachable();
                w.settle(ms(rng.random_range(100..3000))).await;
                w.rt.engine_restarted();
                paused.clear();
            }
            (Fault::HaproxyBlip, _) => {
                w.lb.set_reachable(false);
                w.settle(ms(rng.random_range(100..3000))).await;
                w.lb.set_reachable(true);
            }
            (Fault::HaproxyRefuses, _) => w.lb.refuse_next(rng.random_range(1..=3)),
            (Fault::StopsHang, _) => {
                w.rt.hold_stops();
                w.settle(ms(rng.random_range(100..5000))).await;
                w.rt.release_stops();
            }
            (Fault::Sessions, _) => {
                let serving: Vec<SocketAddrV4> = w.serving("web").into_iter().collect();
                if !serving.is_empty() {
                    let addr = serving[rng.random_range(0..serving.len())];
                    w.lb.set_sessions(addr, rng.random_range(1..20));
                }
            }
            (Fault::InvalidEdit, _) => {
                let before = w.rt.of_service("web").len();
                w.write(&format!("{}  bogus: 1\n", spec.yaml()));
                w.settle(ms(rng.random_range(100..3000))).await;
                assert!(
                    w.rt.of_service("web").len() + 1 >= before,
                    "an invalid spec removed replicas"
                );
                w.edit(&[spec.clone(), svc("pool").replicas(2)]);
            }
            (_, None) => {}
        }
        w.settle(ms(rng.random_range(100..3000))).await;
        if rng.random_bool(0.3) {
            for id in paused.drain(..) {
                w.rt.unpause(&id);
            }
        }
    }
    for id in paused.drain(..) {
        w.rt.unpause(&id);
    }
    // Crash back-offs are at most 8s, the resync 10s.
    let desired = spec.replicas as usize;
    w.until(
        &format!("seed {seed}: converged after {log:#?}"),
        secs(60),
        |w| w.converged("web", desired) && w.converged("pool", 2),
    )
    .await;
    // Never stopped or removed by dockscale (an engine restart may have stopped it).
    assert!(w.rt.container(&impostor).is_some());
    w.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn seeded_chaos_converges_after_the_last_fault_with_every_invariant_held() {
    for seed in 1..=3 {
        soak(seed).await;
    }
}
