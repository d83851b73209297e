//! Following a rollout to the current template, for its progress deadline. Pure.

use tokio::time::Instant;

/// Progress of a rollout to a template hash.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutProgress {
    pub template_hash: String,
    /// When the ready updated replicas last grew or the old ones last shrank.
    pub last_progress: Instant,
    /// Best ready-updated count seen, and fewest old replicas seen.
    pub ready_updated: u32,
    pub old_left: u32,
    pub complete: bool,
}

/// Follows the rollout to `template_hash`: started when old replicas exist, progressing
/// while ready updated replicas grow or old ones shrink, complete when no old replica is
/// left and all `desired` are ready.
pub fn track(
    previous: Option<&RolloutProgress>,
    template_hash: &str,
    desired: u32,
    live_old: u32,
    ready_new: u32,
    now: Instant,
) -> Option<RolloutProgress> {
    let complete = live_old == 0 && ready_new >= desired;
    match previous {
        Some(r) if r.template_hash == template_hash => {
            let mut next = r.clone();
            if ready_new > r.ready_updated || live_old < r.old_left {
                next.last_progress = now;
            }
            next.ready_updated = next.ready_updated.max(ready_new);
            next.old_left = next.old_left.min(live_old);
            next.complete = r.complete || complete;
            Some(next)
        }
        // A new template (or the first look after start) with replicas to replace.
        _ if live_old > 0 => Some(RolloutProgress {
            template_hash: template_hash.to_owned(),
            last_progress: now,
            ready_updated: ready_new,
            old_left: live_old,
            complete: false,
        }),
        _ => None,
    }
}
