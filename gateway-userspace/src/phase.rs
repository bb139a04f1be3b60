//! Receive first, then send: the sends of one round of ready connections go out together.
//!
//! A worker's round starts with the connections its reactor found ready. Left alone, each
//! connection's task reads and at once writes what it read (to the backend, or back to
//! the client), so the sends of a round are spread between its reads, and nearly every
//! send finds its peer asleep and wakes it. With the gate, a task about to send waits
//! until the tasks queued before it have run: the round's reads happen first, then its
//! requests to backends go out back to back, then its responses to clients. A peer woken
//! by the first send of a burst finds the rest already queued and handles them in one go,
//! which is how HAProxy's event loop sends too. On a loaded node that is fewer wake-ups
//! for the backends and the clients, and a shorter tail (`docs/benchmarks.md`, "Sends
//! grouped by round").
//!
//! Waiting costs a task one more poll and changes no byte that is sent. It pays only when
//! a round holds several connections, so the gate holds sends back only on a busy worker:
//! one whose recent rounds (the stretches between two times it ran out of work, see
//! [`on_park`]) let [`BUSY_TURNS`] sends or more out on average, or whose current round
//! has let [`BURST_TURNS`] out already. On a worker with little to do, each send goes
//! out at once.
//!
//! The gate is a task of each current-thread worker (see [`run`]); where there is none
//! (multi-thread runtimes, tests, the admin runtime) every turn is granted at once.
//! `GATEWAYD_PHASES=off` leaves the gate out; `GATEWAYD_PHASES=always` has every send wait
//! for its phase, busy or not (the integration tests use it).

use std::{
    cell::{Cell, RefCell},
    future::poll_fn,
    task::{Context, Poll, Waker},
};

/// Which way a send goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// A request (head and body) to a backend.
    Backend = 0,
    /// A response to a client.
    Client = 1,
}

/// The order in which a round's sends go out.
const ORDER: [Side; 2] = [Side::Backend, Side::Client];

/// Sends let out per round, on average, from which the gate holds sends back: about
/// four requests' worth (one send each way).
pub const BUSY_TURNS: u32 = 8;
/// Sends let out in the current round after which the gate holds the rest back even on
/// a worker that was not busy.
pub const BURST_TURNS: u32 = 4 * BUSY_TURNS;

#[derive(Default)]
struct Gate {
    /// Sends to this side go straight out: its waiting tasks are having their turn.
    open: [bool; 2],
    /// Tasks waiting to send, per side, in the order they asked.
    waiting: [Vec<Waker>; 2],
    /// The gate's own task while it sleeps.
    idle: Option<Waker>,
    /// The gate's task is queued or running: a round is under way.
    queued: bool,
    /// How far through `ORDER` this round is.
    step: usize,
    /// Every send waits for its phase, busy or not (`GATEWAYD_PHASES=always`).
    always: bool,
    /// An empty list with room, swapped in for the list of the side being woken so that
    /// the lists keep their capacity from round to round.
    spare: Vec<Waker>,
}

/// Sends let out since the worker last ran out of work, and their running average
/// (x16) over the last rounds.
struct Load {
    turns: Cell<u32>,
    average16: Cell<u32>,
}

thread_local! {
    static GATE: RefCell<Option<Gate>> = const { RefCell::new(None) };
    static LOAD: Load = const {
        Load {
            turns: Cell::new(0),
            average16: Cell::new(0),
        }
    };
}

/// The worker ran out of work: a round ended. Install as the runtime's
/// `on_thread_park` hook.
pub fn on_park() {
    LOAD.with(|l| {
        let turns = l.turns.replace(0).min(1 << 20);
        if turns == 0 {
            // Nothing was sent (timers, partial reads): says nothing about round sizes.
            return;
        }
        // An average over about the last four rounds, in 1/16ths.
        let avg = l.average16.get();
        l.average16.set(avg - avg / 4 + turns * 4);
    });
}

/// `true` when the worker is busy enough for the gate: its recent rounds were large, or
/// this one already is (a burst after a quiet time, or a worker so loaded that it never
/// runs out of work).
fn busy() -> bool {
    LOAD.with(|l| l.turns.get() >= BURST_TURNS || l.average16.get() >= BUSY_TURNS * 16)
}

/// When sends wait for their phase (`GATEWAYD_PHASES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `off`: no gate; each task sends as soon as it has something.
    Off,
    /// The default: on a busy worker.
    Busy,
    /// `always`: every send, busy or not.
    Always,
}

impl Mode {
    /// From `GATEWAYD_PHASES`, read once per worker.
    pub fn from_env() -> Mode {
        match std::env::var("GATEWAYD_PHASES").as_deref() {
            Ok("off") => Mode::Off,
            Ok("always") => Mode::Always,
            _ => Mode::Busy,
        }
    }
}

/// Counts a send let out (once per send, however long it waited).
fn count_turn() {
    LOAD.with(|l| l.turns.set(l.turns.get().saturating_add(1)));
}

/// Ready when a send to `side` may go out now; otherwise the task is woken when the
/// round's sends to `side` go out.
pub fn poll_turn(cx: &mut Context<'_>, side: Side) -> Poll<()> {
    GATE.with(|g| {
        let Ok(mut g) = g.try_borrow_mut() else {
            return Poll::Ready(());
        };
        let Some(gate) = g.as_mut() else {
            return Poll::Ready(());
        };
        if gate.open[side as usize] || (!gate.queued && !gate.always && !busy()) {
            count_turn();
            return Poll::Ready(());
        }
        gate.waiting[side as usize].push(cx.waker().clone());
        if !gate.queued {
            gate.queued = true;
            if let Some(gate_task) = gate.idle.take() {
                gate_task.wake();
            }
        }
        Poll::Pending
    })
}

/// Waits for this round's turn to send to `side`.
pub async fn turn(side: Side) {
    poll_fn(|cx| poll_turn(cx, side)).await;
}

/// The gate of the current thread: spawn it once on a current-thread runtime, whose tasks
/// all run on the thread that polls it. It never ends.
///
/// The first task to wait wakes it, which queues it behind every task already ready;
/// when it runs, those have done their reads. It then opens the sides one at a time:
/// it wakes the tasks that wait for that side, queues itself behind them, and closes the
/// side when it runs again. A task that asks for a side while another side is open (a
/// response that came in during the round) waits for that side's next opening.
pub async fn run(mode: Mode) {
    GATE.with(|g| {
        *g.borrow_mut() = Some(Gate {
            always: mode == Mode::Always,
            ..Gate::default()
        })
    });
    poll_fn(|cx: &mut Context<'_>| {
        GATE.with(|cell| {
            let mut g = cell.borrow_mut();
            let Some(gate) = g.as_mut() else {
                return Poll::Ready(());
            };
            if !gate.queued {
                gate.idle = Some(cx.waker().clone());
                return Poll::Pending;
            }
            // The side opened last has had its turn: the tasks it woke ran before this.
            gate.open = [false, false];
            while let Some(&side) = ORDER.get(gate.step) {
                gate.step += 1;
                if gate.waiting[side as usize].is_empty() {
                    continue;
                }
                gate.open[side as usize] = true;
                let spare = std::mem::take(&mut gate.spare);
                let mut waking = std::mem::replace(&mut gate.waiting[side as usize], spare);
                drop(g);
                for task in waking.drain(..) {
                    task.wake();
                }
                if let Some(gate) = cell.borrow_mut().as_mut() {
                    gate.spare = waking;
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            gate.step = 0;
            if gate.waiting.iter().all(Vec::is_empty) {
                gate.queued = false;
                gate.idle = Some(cx.waker().clone());
            } else {
                // Tasks that became ready during the round wait for a round of their own.
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        })
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        pin::pin,
        sync::{Arc, Mutex},
        task::Waker,
    };

    use super::*;

    type Log = Arc<Mutex<Vec<String>>>;

    fn note(log: &Log, what: String) {
        log.lock().expect("log lock").push(what);
    }

    /// One connection's request: read, send it on to the backend, read the answer, send
    /// it back to the client.
    async fn exchange(log: Log, id: usize) {
        note(&log, format!("read{id}"));
        turn(Side::Backend).await;
        note(&log, format!("backend{id}"));
        // The backend's answer: the task is queued again, behind the ready ones.
        let mut yielded = false;
        poll_fn(|cx| {
            if std::mem::replace(&mut yielded, true) {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
        note(&log, format!("answer{id}"));
        turn(Side::Client).await;
        note(&log, format!("client{id}"));
    }

    /// Rounds of `sizes[i]` exchanges each, on a worker with a gate (`gate`), whose load
    /// is measured by the park hook (`measured`) or taken as busy throughout.
    fn rounds(gate: bool, measured: bool, sizes: &[usize]) -> Vec<Vec<String>> {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_time();
        if measured {
            builder.on_thread_park(on_park);
        } else {
            LOAD.with(|l| l.average16.set(BUSY_TURNS * 16 * 4));
        }
        let rt = builder.build().expect("runtime");
        let log = Log::default();
        let sizes = sizes.to_vec();
        // Everything runs in one task, so that the runtime runs out of work (and parks)
        // between two rounds, while it sleeps.
        let all = rt.spawn(async move {
            if gate {
                tokio::spawn(run(Mode::Busy));
                tokio::task::yield_now().await;
            }
            let mut out = Vec::new();
            for (round, size) in sizes.into_iter().enumerate() {
                let handles: Vec<_> = (0..size)
                    .map(|id| tokio::spawn(exchange(log.clone(), round * 100 + id)))
                    .collect();
                for h in handles {
                    h.await.expect("task");
                }
                out.push(std::mem::take(&mut *log.lock().expect("log lock")));
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            out
        });
        rt.block_on(all).expect("rounds")
    }

    fn kinds(log: &[String]) -> Vec<&str> {
        log.iter()
            .map(|s| s.trim_end_matches(|c: char| c.is_ascii_digit()))
            .collect()
    }

    const GROUPED: [&str; 8] = [
        "read", "read", "backend", "backend", "answer", "answer", "client", "client",
    ];
    const UNGROUPED: [&str; 8] = [
        "read", "backend", "read", "backend", "answer", "client", "answer", "client",
    ];

    #[test]
    fn a_rounds_reads_come_before_its_backend_sends_and_those_before_client_sends() {
        let log = rounds(true, false, &[4]).remove(0);
        assert_eq!(
            kinds(&log),
            [
                "read", "read", "read", "read", "backend", "backend", "backend", "backend",
                "answer", "answer", "answer", "answer", "client", "client", "client", "client"
            ],
            "{log:?}"
        );
        // Within each phase, tasks keep the order in which they asked.
        assert_eq!(log[4..8], ["backend0", "backend1", "backend2", "backend3"]);
        assert_eq!(log[12..], ["client0", "client1", "client2", "client3"]);
    }

    #[test]
    fn without_a_gate_each_task_sends_as_soon_as_it_has_read() {
        let log = rounds(false, false, &[2]).remove(0);
        assert_eq!(kinds(&log), UNGROUPED, "{log:?}");
    }

    #[test]
    fn a_turn_is_granted_at_once_on_a_thread_without_a_gate() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut fut = pin!(turn(Side::Client));
        assert!(fut.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn the_gate_closes_after_a_round_and_groups_the_next_one() {
        let logs = rounds(true, false, &[2, 2, 1]);
        assert_eq!(kinds(&logs[0]), GROUPED, "{logs:?}");
        assert_eq!(kinds(&logs[1]), GROUPED, "{logs:?}");
        // A task alone in its round still gets its turns.
        assert_eq!(logs[2], ["read200", "backend200", "answer200", "client200"]);
    }

    #[test]
    fn the_gate_holds_sends_back_only_while_rounds_are_large() {
        // Rounds of 6 requests (12 turns) make the worker busy after a few rounds; rounds
        // of 2 (4 turns) make it idle again, and each send then goes out at once.
        let mut sizes = vec![6; 8];
        sizes.extend([2; 12]);
        let logs = rounds(true, true, &sizes);
        let first = kinds(&logs[0]);
        assert_eq!(
            first[..4],
            ["read", "backend", "read", "backend"],
            "{logs:?}"
        );
        let busy = kinds(&logs[7]);
        assert_eq!(busy[..6], ["read"; 6], "{logs:?}");
        assert_eq!(busy[6..12], ["backend"; 6], "{logs:?}");
        assert_eq!(kinds(&logs[8]), GROUPED, "{logs:?}");
        assert_eq!(kinds(&logs[19]), UNGROUPED, "{logs:?}");
    }

    #[test]
    fn a_burst_on_an_idle_worker_is_grouped_once_it_is_large() {
        // 20 requests at once on a worker that was idle: the first 32 sends go out as they
        // come (20 backend sends, 12 client ones); the other 8 client sends wait until
        // the round's last answer is in.
        let log = rounds(true, true, &[20]).remove(0);
        assert_eq!(kinds(&log[..40]), ["read", "backend"].repeat(20), "{log:?}");
        let pos = |what: &str| log.iter().position(|s| s == what).expect(what);
        assert_eq!(pos("client11"), pos("answer11") + 1, "{log:?}");
        for id in 12..20 {
            assert!(pos(&format!("client{id}")) > pos("answer19"), "{log:?}");
        }
    }
}
