//! Taking replicas away (steps 3 and 7 of a pass): the replicas being drained go on to
//! their removal, and the ones a scale-down or a rollout makes too many are chosen and
//! started on the same way out. One ladder, [`retire`], for both: a server leaves
//! rotation (drain, then maintenance) before its container is stopped. Pure.

use std::time::Duration;

use tokio::time::Instant;

use crate::model::backend::Admin;
use crate::model::replica::Health;

use super::rotation::{Live, Serving};
use super::{Action, Input, Memory, Now, Plan, RemoveReason, ACTIVE_REQUEUE};

/// One replica on its way out. `draining_since` is when dockscale started draining it
/// (`None` for a replica chosen in this pass). In order: a replica with no server is
/// removed; one whose server may still be in rotation (HAProxy unreadable) waits; one
/// whose server is in maintenance loses it and is removed; one being drained is
/// removed once its sessions are gone or `drain_timeout` passed; any other is drained.
pub fn retire(
    l: &Live,
    reason: RemoveReason,
    draining_since: Option<Instant>,
    drain_timeout: Duration,
    now: Now,
    plan: &mut Plan,
) {
    let remove = Action::Remove {
        id: l.replica.id.clone(),
        name: l.replica.name.clone(),
        reason: reason.clone(),
    };
    let release = |slot: &str| Action::Release {
        slot: slot.to_owned(),
    };
    match (l.serving, draining_since) {
        (Serving::Plain | Serving::Unready | Serving::Unassigned, _) => {
            plan.actions.push(remove);
        }
        // HAProxy unreadable: the server may still be in rotation, so wait.
        (Serving::Unknown, _) => plan.requeue(ACTIVE_REQUEUE),
        (Serving::Warming(slot) | Serving::Held(slot), _) if slot.admin == Admin::Maint => {
            plan.actions.push(release(&slot.name));
            plan.actions.push(remove);
        }
        (Serving::Draining(slot), Some(since)) => {
            let elapsed = now.instant.saturating_duration_since(since);
            if slot.sessions == 0 || elapsed >= drain_timeout {
                plan.actions.push(release(&slot.name));
                plan.actions.push(remove);
            } else {
                plan.requeue(ACTIVE_REQUEUE.min(drain_timeout - elapsed));
            }
        }
        (
            Serving::Ready(slot)
            | Serving::Unhealthy(slot)
            | Serving::Paused(slot)
            | Serving::HealthFailing(slot)
            | Serving::Held(slot)
            | Serving::Warming(slot)
            | Serving::Draining(slot),
            _,
        ) => {
            plan.actions.push(Action::Drain {
                id: l.replica.id.clone(),
                slot: slot.name.clone(),
                reason,
            });
            plan.requeue(ACTIVE_REQUEUE);
        }
    }
}

/// Step 3: the replicas dockscale is draining finish their way out; they leave `lives`.
/// Returns how many there were.
pub fn finish_drains(
    input: &Input<'_>,
    memory: &Memory,
    lives: &mut Vec<Live>,
    plan: &mut Plan,
) -> u32 {
    let drain_timeout = input
        .spec
        .load_balancer
        .as_ref()
        .map(|l| l.drain_timeout.get())
        .unwrap_or_default();
    let mut draining = 0u32;
    lives.retain(|l| {
        let Some(since) = memory.draining_since(&l.replica.name) else {
            return true;
        };
        draining += 1;
        let reason = if l.updated {
            RemoveReason::ScaleDown
        } else {
            RemoveReason::Rollout
        };
        retire(l, reason, Some(since), drain_timeout, input.now, plan);
        false
    });
    draining
}

/// Step 7: which live replicas to remove, by index into `lives`, and why. Without a
/// rollout, the newest beyond the desired count (creates in flight are not counted: a
/// replica that serves is never removed for one that may yet fail to start). In a
/// rollout, old replicas as far as availability allows (ones that do not serve cost
/// nothing; serving ones only while `desired - maxUnavailable` others serve), at most
/// `max_old` of them (what a guarded rolling update lets go), and new ones beyond the
/// desired count.
pub fn victims(
    input: &Input<'_>,
    lives: &[Live],
    ready: u32,
    max_old: u32,
) -> Vec<(usize, RemoveReason)> {
    toward(input, lives, true, ready, max_old)
}

/// Step 7 once a rollout was aborted: the same ladder the other way round. The new
/// replicas go as far as availability allows (the old ones restored take their place),
/// and old ones beyond the desired count.
pub fn rollback_victims(
    input: &Input<'_>,
    lives: &[Live],
    ready: u32,
) -> Vec<(usize, RemoveReason)> {
    toward(input, lives, false, ready, u32::MAX)
}

/// The victims of a move to the replicas whose `updated` is `kept`: at most `max_leaving`
/// of the others, as availability allows, and kept ones beyond the desired count.
fn toward(
    input: &Input<'_>,
    lives: &[Live],
    kept: bool,
    ready: u32,
    max_leaving: u32,
) -> Vec<(usize, RemoveReason)> {
    let desired = input.desired;
    let order = |pick: &dyn Fn(&Live) -> bool| -> Vec<usize> {
        let mut idx: Vec<usize> = (0..lives.len()).filter(|&i| pick(&lives[i])).collect();
        // Not serving first, then newest first.
        idx.sort_by_key(|&i| {
            (
                lives[i].serving.removal_rank(),
                std::cmp::Reverse(lives[i].replica.created_at_ns),
                lives[i].replica.name.clone(),
            )
        });
        idx
    };
    let mut victims = Vec::new();
    let min_available = desired.saturating_sub(input.spec.rollout.max_unavailable);
    let mut ready = ready;
    for i in order(&|l| l.updated != kept)
        .into_iter()
        .take(max_leaving as usize)
    {
        let serving = lives[i].serving.is_ready();
        if serving && ready <= min_available {
            break;
        }
        if serving {
            ready -= 1;
        }
        victims.push((i, RemoveReason::Rollout));
    }
    let staying = lives.iter().filter(|l| l.updated == kept).count();
    let excess = staying.saturating_sub(desired as usize);
    for i in order(&|l| l.updated == kept).into_iter().take(excess) {
        victims.push((i, RemoveReason::ScaleDown));
    }
    victims
}

/// Step 7 during a canary: the old replicas all stay (they carry the rest of the
/// traffic); new ones beyond `new_target` go, newest first (all of them once the
/// canary is aborted).
pub fn canary_victims(lives: &[Live], new_target: u32) -> Vec<(usize, RemoveReason)> {
    let mut new: Vec<usize> = (0..lives.len()).filter(|&i| lives[i].updated).collect();
    new.sort_by_key(|&i| {
        (
            lives[i].serving.removal_rank(),
            std::cmp::Reverse(lives[i].replica.created_at_ns),
        )
    });
    new.into_iter()
        .skip(new_target as usize)
        .map(|i| (i, RemoveReason::Rollout))
        .collect()
}

/// The live replicas Docker has reported unhealthy for `unhealthyReplaceAfter`, by index
/// into `lives`: they are drained and replaced. Records in the plan since when each
/// unhealthy one has been (memory keeps it), and looks again when the next one is due.
pub fn unhealthy(
    input: &Input<'_>,
    memory: &Memory,
    lives: &[Live],
    plan: &mut Plan,
) -> Vec<usize> {
    let now = input.now.instant;
    let limit = input.spec.template.unhealthy_replace_after();
    let mut due = Vec::new();
    for (i, l) in lives.iter().enumerate() {
        if l.replica.health != Some(Health::Unhealthy) {
            continue;
        }
        let name = &l.replica.name;
        let since = memory.unhealthy_since(name).unwrap_or(now);
        plan.unhealthy_since.insert(name.clone(), since);
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= limit {
            due.push(i);
        } else {
            plan.requeue(limit - elapsed);
        }
    }
    due
}
