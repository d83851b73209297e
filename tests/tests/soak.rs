//! The chaos soak of the e2e suite (issue 14): dockscale as a child process behind its
//! managed HAProxy, 8 keep-alive clients through the frontend, and one deck of seeded
//! random faults (every kind once, 4–8 s apart): replicas killed, stopped, removed,
//! restarted, paused and disconnected from outside; `replicas`, in-place, template and
//! invalid edits; dockscale SIGKILLed and restarted, and SIGSTOPped; HAProxy SIGKILLed.
//! The rules are in `dockscale_e2e::chaos`; `SOAK_SEED=<seed>` replays a run.
//!
//! Regression test for the bug the soak found: replicas removed from outside
//! counted as one service-wide crash loop (`5 exits in a row; back-off 1m 20s`), which
//! held back every create and left the service at zero replicas.

use dockscale_e2e::chaos::{self, SoakConfig};
use dockscale_e2e::dockscale_bin;
use dockscale_e2e::haproxy::LbFixture;

#[tokio::test(flavor = "multi_thread")]
async fn a_chaos_soak_fails_no_request_and_converges_after_the_last_fault() {
    let fixture = LbFixture::new("e2e-soak");
    let config = SoakConfig::ci(SoakConfig::seed_from_env());
    let report = chaos::run(&fixture, &dockscale_bin(), &config).await;
    report.assert_passed();
}
