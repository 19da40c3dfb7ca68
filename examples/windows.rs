//! Per-minute click counts over a live stream, with late clicks.
//!
//! `cargo run --release --example windows`
//!
//! A tokio task plays back simulated clicks (user, page, event-time timestamp) into a
//! channel, a few milliseconds apart; `Flow::from_stream` reads them, partitions them by
//! page over two stages, and counts clicks per page in fixed one-minute windows of event
//! time. The results are read with `into_stream` as the triggers fire:
//!
//! - `Watermark`: the stage has seen a click of a later minute, so the minute is complete
//!   as far as it knows; the window stays open for its allowed lateness (250 ms of real
//!   time) for clicks that were delayed on the way.
//! - `Done`: the lateness ran out (or the input ended); the final count, late arrivals
//!   included.
//!
//! Some clicks arrive a few positions out of order (they land in their window while it is
//! in its lateness); one straggler arrives after a pause, when its window is done: it goes
//! to the `LateEvents` side output, printed at the end. Event time is data — the
//! timestamps say 09:00 to 09:05 — and the real-time gaps are wide, so every run prints
//! the same triggers and counts; only the order of lines fired at nearly the same moment
//! (the two partitions' lines for one trigger) may vary. It takes about a second.

use std::collections::BTreeMap;
use std::time::Duration;

use flowstage::flow::{Flow, Partition, TriggerName};
use flowstage::window::{LateEvents, Window};
use futures::StreamExt;

/// One click, stamped with event time in milliseconds since midnight.
#[derive(Debug, Clone)]
struct Click {
    user: &'static str,
    page: &'static str,
    ts: i64,
}

const MINUTE: i64 = 60_000;
/// 09:00:00.
const START: i64 = 9 * 60 * MINUTE;
const MINUTES: i64 = 5;
const CLICKS_PER_MINUTE: i64 = 12;
const USERS: [&str; 4] = ["ana", "bo", "cy", "dee"];
const PAGES: [&str; 4] = ["/home", "/product", "/cart", "/checkout"];

/// Real time between two clicks of the playback.
const GAP: Duration = Duration::from_millis(8);
/// How long a window stays open, in real time, after the watermark passed it.
const LATENESS: Duration = Duration::from_millis(250);
/// The pause before the straggler: longer than the lateness.
const PAUSE: Duration = Duration::from_millis(400);

fn hh_mm_ss(ms: i64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The clicks in arrival order, and the straggler that comes last, after a pause.
fn clicks() -> (Vec<Click>, Click) {
    // A small LCG: the same clicks on every run.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let mut in_time_order = Vec::new();
    for minute in 0..MINUTES {
        for k in 0..CLICKS_PER_MINUTE {
            let offset = k * (MINUTE / CLICKS_PER_MINUTE) + next(4_000) as i64;
            in_time_order.push(Click {
                user: USERS[next(USERS.len() as u64) as usize],
                page: PAGES[next(PAGES.len() as u64) as usize],
                ts: START + minute * MINUTE + offset,
            });
        }
    }
    // The straggler: a click of 09:01 that was stuck on a phone with no signal.
    let straggler = Click {
        user: "eve",
        page: "/cart",
        ts: START + MINUTE + 42_000,
    };
    // The last click of every minute is delayed on the way by three clicks: it arrives
    // after the next minute started, while its window is in its lateness.
    let mut arrival = in_time_order.clone();
    for minute in 0..MINUTES - 1 {
        let last = ((minute + 1) * CLICKS_PER_MINUTE - 1) as usize;
        let click = arrival.remove(last);
        arrival.insert(last + 3, click);
    }
    (arrival, straggler)
}

type Counts = BTreeMap<&'static str, u64>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (arrival, straggler) = clicks();
    println!(
        "{} clicks from {} to {}, then a straggler from {}",
        arrival.len() + 1,
        hh_mm_ss(START),
        hh_mm_ss(START + MINUTES * MINUTE),
        hh_mm_ss(straggler.ts)
    );

    // The playback: a task sends the clicks into a channel in real time.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Click>(16);
    let playback = tokio::spawn(async move {
        for click in arrival {
            tokio::time::sleep(GAP).await;
            if tx.send(click).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(PAUSE).await;
        let _ = tx.send(straggler).await;
    });
    let clicks = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));

    let late = LateEvents::keep();
    let window = Window::fixed(Duration::from_secs(60), |click: &Click| click.ts)
        .allowed_lateness(LATENESS)
        .late_events(&late);
    let mut results = Flow::from_stream(clicks)
        .partition(
            Partition::by_key(|click: &Click| click.page)
                .stages(2)
                .window(window),
        )
        .reduce(Counts::new, |click: Click, mut counts: Counts| {
            *counts.entry(click.page).or_default() += 1;
            counts
        })
        // Emit the counts at every trigger and keep them: `Done` then includes the clicks
        // that arrived during the lateness.
        .on_trigger(|counts, partition, trigger| {
            let fired = (
                trigger.window.id,
                trigger.name.clone(),
                partition.index,
                counts.clone(),
            );
            (Some(fired), counts)
        })
        .into_stream()?;

    // Clicks per (window, partition) at its watermark, to show what came in late.
    let mut at_watermark: BTreeMap<(i64, usize), u64> = BTreeMap::new();
    while let Some(result) = results.next().await {
        let (window, trigger, partition, counts) = result?;
        let total: u64 = counts.values().sum();
        let note = match trigger {
            TriggerName::Watermark => {
                at_watermark.insert((window, partition), total);
                String::new()
            }
            _ => match at_watermark.remove(&(window, partition)) {
                Some(before) if total > before => format!("  (+{} late)", total - before),
                _ => String::new(),
            },
        };
        let counts: Vec<String> = counts
            .iter()
            .map(|(page, n)| format!("{page} {n}"))
            .collect();
        println!(
            "{} {:<9} partition {}: {}{note}",
            &hh_mm_ss(window)[..5],
            format!("{trigger:?}"),
            partition,
            counts.join(", ")
        );
    }
    playback.await?;

    let late = late.take();
    println!("late beyond the allowed lateness: {}", late.len());
    for click in late {
        println!(
            "  {} {} at {} (window {} already done)",
            click.user,
            click.page,
            hh_mm_ss(click.ts),
            &hh_mm_ss(click.ts.div_euclid(MINUTE) * MINUTE)[..5]
        );
    }
    Ok(())
}
