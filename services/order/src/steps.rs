//! The saga as a pure state machine: from the order as stored and what the product service last
//! said about the order's reservation, the next step. No I/O here; [`crate::saga`] stores each
//! decision's result, performs the step, and asks again, whether it runs for `POST /orders`, a
//! cancellation, or the recoverer after a crash. Every step is safe to repeat (the reservation's
//! id is the order's, and the product service's transitions are conditional), so a step cut off
//! by a crash is simply decided again.
//!
//! The rules:
//! - An order that ended (confirmed, shipped, delivered; failed or cancelled with nothing to give
//!   back) is done.
//! - A failed or cancelled order marked `release_pending` gets its stock back: release it, or
//!   return it when it was committed. Only such an order is ever returned.
//! - A pending order: reserve (the saga) or look (the recoverer); a held reservation is
//!   committed when it charged an accepted total, then the order is confirmed at the
//!   reservation's prices; a committed one is confirmed; a released or missing one fails the
//!   order; a refusal fails it; no answer makes the saga look once more and the recoverer wait.

use std::collections::BTreeMap;

use msa_service_kit::Problem;
use serde::Deserialize;

use crate::model::{OrderLine, RequestedItem, Status, price_lines};

/// How often one run commits a held reservation before it gives up on the product service.
pub const MAX_COMMITS: u8 = 2;
/// How often one run of the saga looks up the reservation after an unanswered step.
pub const MAX_LOOKS: u8 = 2;

/// A reservation's state at the product service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Held {
    /// Stock taken for a pending order.
    Reserved,
    /// Sold: the order was (or is being) confirmed.
    Committed,
    /// Given back, expired, or released before it arrived.
    Released,
}

/// A line as the product service reserved it, at the price it charged.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ReservedLine {
    pub product_id: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

/// A reservation as the product service reported it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Reservation {
    pub state: Held,
    pub items: Vec<ReservedLine>,
    pub total_cents: i64,
}

/// A request to the product service about the order's reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// `POST /reservations` with the order's lines, under the order's id.
    Reserve,
    /// `POST /reservations/{id}/commit`.
    Commit,
    /// `POST /reservations/{id}/release` (also records an id never reserved as released, so a
    /// reservation that arrives late is refused).
    Release,
    /// `POST /reservations/{id}/return`: committed stock back, for a failed or cancelled order.
    Return,
    /// `GET /reservations/{id}`.
    Look,
}

/// What the last answer from the product service says about the reservation.
#[derive(Clone, Debug, PartialEq)]
pub enum Known {
    /// Nothing asked yet in this run.
    Nothing,
    /// No reservation under the order's id.
    Absent,
    /// The reservation with its lines.
    Reservation(Reservation),
    /// Its state only (a refusal named it).
    State(Held),
    /// The reservation was refused (insufficient stock, an unknown product): nothing was taken.
    Refused(Problem),
    /// No usable answer to this request: it may or may not have happened.
    NoAnswer(Ask),
}

/// What one run has learnt so far.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub known: Known,
    pub commits: u8,
    pub looks: u8,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            known: Known::Nothing,
            commits: 0,
            looks: 0,
        }
    }
}

impl Progress {
    /// Records the answer to `ask`.
    pub fn learn(&mut self, ask: Ask, known: Known) {
        match ask {
            Ask::Commit => self.commits = self.commits.saturating_add(1),
            Ask::Look => self.looks = self.looks.saturating_add(1),
            _ => {}
        }
        self.known = known;
    }
}

/// Who runs the steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// `POST /orders`, right after recording the order: it reserves, and accepts the
    /// reservation's charge when it equals the total the client named (any, when it named none).
    Saga { expected_total_cents: Option<i64> },
    /// The recoverer (and a cancellation): it never reserves, and accepts only the total the
    /// order recorded.
    Recovery,
}

/// The order as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderView {
    pub status: Status,
    /// Stock may still be held for this failed or cancelled order.
    pub release_pending: bool,
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
}

/// Why an order failed.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// The product service refused the reservation; its problem goes to the client.
    Refused(Problem),
    /// The reservation charged another total than the one accepted.
    TotalMismatch {
        charged_cents: i64,
        accepted_cents: i64,
    },
    /// The reservation was released before the order was confirmed (it expired, or a give-back
    /// overtook it).
    Released,
    /// The product service has no reservation for the order (the saga stopped before it).
    NeverReserved,
    /// The product service holds other lines under the order's id.
    Mismatch,
    /// The product service did not answer this step.
    NoAnswer(Ask),
}

impl Failure {
    /// The reason stored with the order.
    pub fn reason(&self) -> String {
        match self {
            Failure::Refused(problem) => problem.detail.clone(),
            Failure::TotalMismatch {
                charged_cents,
                accepted_cents,
            } => format!(
                "the reservation charged {}, not the accepted {}; the stock was given back",
                msa_service_kit::format_cents(*charged_cents),
                msa_service_kit::format_cents(*accepted_cents)
            ),
            Failure::Released => {
                "the reservation was released before the order was confirmed (it expired or was given back)".to_owned()
            }
            Failure::NeverReserved => {
                "the stock was never reserved: placing the order stopped before it".to_owned()
            }
            Failure::Mismatch => "the product service holds other lines for this order".to_owned(),
            Failure::NoAnswer(ask) => format!(
                "the stock could not be {}: the product service did not answer",
                match ask {
                    Ask::Commit => "committed",
                    _ => "reserved",
                }
            ),
        }
    }
}

/// What to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Ask the product service.
    Ask(Ask),
    /// Record the order confirmed with these lines and total (only if still pending).
    Confirm {
        lines: Vec<OrderLine>,
        total_cents: i64,
    },
    /// Record the order failed (only if still pending); `give_back` marks stock that may be
    /// held to be given back.
    Fail { why: Failure, give_back: bool },
    /// The stock is back: clear the order's mark.
    GivenBack,
    /// Stop for now: the product service cannot say; a later run continues.
    Wait,
    /// The order has ended and holds nothing it should not.
    Done,
}

/// The next step for `order`, given what this run learnt.
pub fn next(order: &OrderView, progress: &Progress, driver: Driver) -> Step {
    match order.status {
        Status::Confirmed | Status::Shipped | Status::Delivered => Step::Done,
        Status::Failed | Status::Cancelled if !order.release_pending => Step::Done,
        Status::Failed | Status::Cancelled => give_back(&progress.known),
        Status::Pending => pending(order, progress, driver),
    }
}

/// A failed or cancelled order's stock goes back: whatever state the reservation is in, one of
/// release or return moves it to `released`, exactly once (the product service's transitions
/// are conditional on the state).
fn give_back(known: &Known) -> Step {
    match known {
        Known::Reservation(Reservation {
            state: Held::Released,
            ..
        })
        | Known::State(Held::Released) => Step::GivenBack,
        Known::Reservation(Reservation {
            state: Held::Committed,
            ..
        })
        | Known::State(Held::Committed) => Step::Ask(Ask::Return),
        Known::NoAnswer(Ask::Release | Ask::Return) => Step::Wait,
        // Held, absent (the release blocks a late reservation), refused (an earlier delivery
        // of the reservation could still arrive), or not known yet.
        Known::Nothing
        | Known::Absent
        | Known::Refused(_)
        | Known::NoAnswer(_)
        | Known::Reservation(_)
        | Known::State(Held::Reserved) => Step::Ask(Ask::Release),
    }
}

fn pending(order: &OrderView, progress: &Progress, driver: Driver) -> Step {
    let fail = |why, give_back| Step::Fail { why, give_back };
    match &progress.known {
        Known::Nothing => match driver {
            Driver::Saga { .. } => Step::Ask(Ask::Reserve),
            Driver::Recovery => Step::Ask(Ask::Look),
        },
        Known::Refused(problem) => fail(Failure::Refused(problem.clone()), true),
        Known::Absent => match driver {
            Driver::Saga { .. } => fail(Failure::NoAnswer(Ask::Reserve), true),
            Driver::Recovery => fail(Failure::NeverReserved, true),
        },
        Known::Reservation(reservation) => held(order, reservation, progress, driver),
        Known::State(Held::Released) => fail(Failure::Released, false),
        Known::State(Held::Reserved | Held::Committed) => look_again(progress, driver),
        Known::NoAnswer(_) => look_again(progress, driver),
    }
}

/// After an unanswered or partial answer: the saga looks (a bounded number of times), the
/// recoverer waits for its next round.
fn look_again(progress: &Progress, driver: Driver) -> Step {
    match driver {
        Driver::Saga { .. } if progress.looks < MAX_LOOKS => Step::Ask(Ask::Look),
        _ => Step::Wait,
    }
}

fn held(order: &OrderView, reservation: &Reservation, progress: &Progress, driver: Driver) -> Step {
    let fail = |why, give_back| Step::Fail { why, give_back };
    if reservation.state == Held::Released {
        return fail(Failure::Released, false);
    }
    let Some((lines, total_cents)) = charged(&order.items, &reservation.items) else {
        return fail(Failure::Mismatch, true);
    };
    if reservation.state == Held::Committed {
        // Committed only after the total was accepted: confirm at what it charged.
        return Step::Confirm { lines, total_cents };
    }
    let accepted = match driver {
        Driver::Saga {
            expected_total_cents,
        } => expected_total_cents,
        Driver::Recovery => Some(order.total_cents),
    };
    if let Some(accepted_cents) = accepted.filter(|a| *a != total_cents) {
        return fail(
            Failure::TotalMismatch {
                charged_cents: total_cents,
                accepted_cents,
            },
            true,
        );
    }
    if progress.commits < MAX_COMMITS {
        Step::Ask(Ask::Commit)
    } else {
        fail(Failure::NoAnswer(Ask::Commit), true)
    }
}

/// The order's lines at the prices the reservation charged, and their total; `None` when the
/// reservation holds other quantities or products than the order (or the total is too large).
pub fn charged(order: &[OrderLine], reserved: &[ReservedLine]) -> Option<(Vec<OrderLine>, i64)> {
    let mut wanted: BTreeMap<&str, i64> = BTreeMap::new();
    for line in order {
        let sum = wanted.entry(&line.product_id).or_default();
        *sum = sum.checked_add(line.quantity)?;
    }
    let prices: BTreeMap<&str, (i64, i64)> = reserved
        .iter()
        .map(|l| (l.product_id.as_str(), (l.quantity, l.unit_price_cents)))
        .collect();
    let same = wanted.len() == prices.len()
        && wanted
            .iter()
            .all(|(product, quantity)| prices.get(product).map(|p| p.0) == Some(*quantity));
    if !same {
        return None;
    }
    let priced: Vec<(RequestedItem, i64)> = order
        .iter()
        .map(|line| {
            (
                RequestedItem {
                    product_id: line.product_id.clone(),
                    quantity: line.quantity,
                },
                prices[line.product_id.as_str()].1,
            )
        })
        .collect();
    price_lines(&priced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    const A: &str = "a";
    const B: &str = "b";

    fn line(product: &str, quantity: i64, price: i64) -> OrderLine {
        price_lines(&[(
            RequestedItem {
                product_id: product.into(),
                quantity,
            },
            price,
        )])
        .unwrap()
        .0
        .remove(0)
    }

    /// An order of 2 × A at 1.00 and 1 × B at 5.00, recorded at 7.00.
    fn order(status: Status, release_pending: bool) -> OrderView {
        OrderView {
            status,
            release_pending,
            items: vec![line(A, 2, 100), line(B, 1, 500)],
            total_cents: 700,
        }
    }

    /// Its reservation, charging `a_price` for A.
    fn reservation(state: Held, a_price: i64) -> Reservation {
        Reservation {
            state,
            items: vec![
                ReservedLine {
                    product_id: A.into(),
                    quantity: 2,
                    unit_price_cents: a_price,
                },
                ReservedLine {
                    product_id: B.into(),
                    quantity: 1,
                    unit_price_cents: 500,
                },
            ],
            total_cents: 2 * a_price + 500,
        }
    }

    fn knowing(known: Known) -> Progress {
        Progress {
            known,
            ..Progress::default()
        }
    }

    fn refusal() -> Problem {
        Problem::conflict("insufficient-stock", "only 1 of product a in stock")
    }

    const SAGA: Driver = Driver::Saga {
        expected_total_cents: None,
    };
    const RECOVERY: Driver = Driver::Recovery;

    /// Every state the product service can report, and no answer to each request.
    fn every_known() -> Vec<Known> {
        let mut all = vec![
            Known::Nothing,
            Known::Absent,
            Known::Refused(refusal()),
            Known::State(Held::Reserved),
            Known::State(Held::Committed),
            Known::State(Held::Released),
        ];
        for state in [Held::Reserved, Held::Committed, Held::Released] {
            all.push(Known::Reservation(reservation(state, 100)));
            all.push(Known::Reservation(reservation(state, 150)));
        }
        for ask in [
            Ask::Reserve,
            Ask::Commit,
            Ask::Release,
            Ask::Return,
            Ask::Look,
        ] {
            all.push(Known::NoAnswer(ask));
        }
        all
    }

    fn every_driver() -> [Driver; 4] {
        [
            SAGA,
            Driver::Saga {
                expected_total_cents: Some(700),
            },
            Driver::Saga {
                expected_total_cents: Some(1),
            },
            RECOVERY,
        ]
    }

    #[test]
    fn a_new_order_is_reserved_by_the_saga_and_looked_up_by_the_recoverer() {
        let pending = order(Status::Pending, false);
        assert_eq!(
            next(&pending, &Progress::default(), SAGA),
            Step::Ask(Ask::Reserve)
        );
        assert_eq!(
            next(&pending, &Progress::default(), RECOVERY),
            Step::Ask(Ask::Look)
        );
    }

    #[test]
    fn a_held_reservation_is_committed_then_confirmed_at_its_prices() {
        let pending = order(Status::Pending, false);
        let reserved = knowing(Known::Reservation(reservation(Held::Reserved, 100)));
        assert_eq!(next(&pending, &reserved, SAGA), Step::Ask(Ask::Commit));
        assert_eq!(next(&pending, &reserved, RECOVERY), Step::Ask(Ask::Commit));
        let committed = knowing(Known::Reservation(reservation(Held::Committed, 120)));
        for driver in every_driver() {
            let Step::Confirm { lines, total_cents } = next(&pending, &committed, driver) else {
                panic!("{driver:?}: a committed reservation confirms the order");
            };
            assert_eq!((lines[0].unit_price_cents, total_cents), (120, 740));
        }
    }

    #[test]
    fn a_charge_nobody_accepted_gives_the_stock_back() {
        let pending = order(Status::Pending, false);
        // The price of A moved from 1.00 to 1.50 between the lookup and the reservation.
        let moved = knowing(Known::Reservation(reservation(Held::Reserved, 150)));
        // The saga of a client who named no total charges today's price.
        assert_eq!(next(&pending, &moved, SAGA), Step::Ask(Ask::Commit));
        // One who named 7.00 is not charged 8.00; the recoverer only charges what was recorded.
        for driver in [
            Driver::Saga {
                expected_total_cents: Some(700),
            },
            RECOVERY,
        ] {
            assert_eq!(
                next(&pending, &moved, driver),
                Step::Fail {
                    why: Failure::TotalMismatch {
                        charged_cents: 800,
                        accepted_cents: 700
                    },
                    give_back: true
                }
            );
        }
    }

    #[test]
    fn refusals_and_missing_or_released_reservations_fail_the_order() {
        let pending = order(Status::Pending, false);
        assert_eq!(
            next(&pending, &knowing(Known::Refused(refusal())), SAGA),
            Step::Fail {
                why: Failure::Refused(refusal()),
                give_back: true
            }
        );
        assert_eq!(
            next(&pending, &knowing(Known::Absent), RECOVERY),
            Step::Fail {
                why: Failure::NeverReserved,
                give_back: true
            }
        );
        for known in [
            Known::State(Held::Released),
            Known::Reservation(reservation(Held::Released, 100)),
        ] {
            for driver in every_driver() {
                assert_eq!(
                    next(&pending, &knowing(known.clone()), driver),
                    Step::Fail {
                        why: Failure::Released,
                        give_back: false
                    }
                );
            }
        }
        let mut other = reservation(Held::Reserved, 100);
        other.items[0].quantity = 3;
        assert_eq!(
            next(&pending, &knowing(Known::Reservation(other)), RECOVERY),
            Step::Fail {
                why: Failure::Mismatch,
                give_back: true
            }
        );
    }

    #[test]
    fn no_answer_makes_the_saga_look_a_bounded_number_of_times_and_the_recoverer_wait() {
        let pending = order(Status::Pending, false);
        for ask in [Ask::Reserve, Ask::Commit, Ask::Look] {
            let mut progress = knowing(Known::NoAnswer(ask));
            assert_eq!(next(&pending, &progress, RECOVERY), Step::Wait);
            assert_eq!(next(&pending, &progress, SAGA), Step::Ask(Ask::Look));
            progress.looks = MAX_LOOKS;
            assert_eq!(next(&pending, &progress, SAGA), Step::Wait);
        }
        assert_eq!(
            next(&pending, &knowing(Known::Absent), SAGA),
            Step::Fail {
                why: Failure::NoAnswer(Ask::Reserve),
                give_back: true
            },
            "an unanswered reservation that never arrived: released so it cannot arrive late"
        );
        let mut stuck = knowing(Known::Reservation(reservation(Held::Reserved, 100)));
        stuck.commits = MAX_COMMITS;
        assert_eq!(
            next(&pending, &stuck, SAGA),
            Step::Fail {
                why: Failure::NoAnswer(Ask::Commit),
                give_back: true
            }
        );
    }

    /// A state named without lines is looked up before anything is decided on it.
    #[test]
    fn a_state_without_lines_is_looked_up() {
        let pending = order(Status::Pending, false);
        for state in [Held::Reserved, Held::Committed] {
            assert_eq!(
                next(&pending, &knowing(Known::State(state)), SAGA),
                Step::Ask(Ask::Look)
            );
            assert_eq!(
                next(&pending, &knowing(Known::State(state)), RECOVERY),
                Step::Wait
            );
        }
    }

    #[test]
    fn a_failed_or_cancelled_order_gets_its_stock_back_by_release_or_return() {
        for status in [Status::Failed, Status::Cancelled] {
            let owed = order(status, true);
            let cases = [
                (Known::Nothing, Step::Ask(Ask::Release)),
                (Known::Absent, Step::Ask(Ask::Release)),
                (Known::Refused(refusal()), Step::Ask(Ask::Release)),
                (Known::State(Held::Reserved), Step::Ask(Ask::Release)),
                (
                    Known::Reservation(reservation(Held::Reserved, 100)),
                    Step::Ask(Ask::Release),
                ),
                (Known::State(Held::Committed), Step::Ask(Ask::Return)),
                (
                    Known::Reservation(reservation(Held::Committed, 100)),
                    Step::Ask(Ask::Return),
                ),
                (Known::State(Held::Released), Step::GivenBack),
                (
                    Known::Reservation(reservation(Held::Released, 100)),
                    Step::GivenBack,
                ),
                (Known::NoAnswer(Ask::Release), Step::Wait),
                (Known::NoAnswer(Ask::Return), Step::Wait),
                (Known::NoAnswer(Ask::Reserve), Step::Ask(Ask::Release)),
                (Known::NoAnswer(Ask::Commit), Step::Ask(Ask::Release)),
            ];
            for (known, step) in cases {
                for driver in every_driver() {
                    assert_eq!(
                        next(&owed, &knowing(known.clone()), driver),
                        step,
                        "{status:?} {known:?}"
                    );
                }
            }
        }
    }

    /// Exhaustive over every stored state, every answer and every driver: an ended order is
    /// done; stock is returned only for a failed or cancelled order; only a pending order is
    /// reserved, committed or confirmed; only the saga reserves.
    #[test]
    fn every_decision_respects_the_orders_state() {
        let statuses = [
            Status::Pending,
            Status::Confirmed,
            Status::Shipped,
            Status::Delivered,
            Status::Cancelled,
            Status::Failed,
        ];
        for status in statuses {
            for release_pending in [false, true] {
                let view = order(status, release_pending);
                for known in every_known() {
                    for driver in every_driver() {
                        for (commits, looks) in [(0, 0), (MAX_COMMITS, MAX_LOOKS)] {
                            let progress = Progress {
                                known: known.clone(),
                                commits,
                                looks,
                            };
                            let step = next(&view, &progress, driver);
                            let case = format!(
                                "{status:?} {release_pending} {known:?} {driver:?} → {step:?}"
                            );
                            let owes = matches!(status, Status::Failed | Status::Cancelled)
                                && release_pending;
                            match &step {
                                Step::Ask(Ask::Return | Ask::Release) | Step::GivenBack => {
                                    assert!(owes, "{case}")
                                }
                                Step::Ask(Ask::Reserve) => assert!(
                                    status == Status::Pending
                                        && matches!(driver, Driver::Saga { .. }),
                                    "{case}"
                                ),
                                Step::Ask(Ask::Commit | Ask::Look)
                                | Step::Confirm { .. }
                                | Step::Fail { .. } => {
                                    assert_eq!(status, Status::Pending, "{case}")
                                }
                                Step::Wait => assert!(owes || status == Status::Pending, "{case}"),
                                Step::Done => assert!(!owes && status != Status::Pending, "{case}"),
                            }
                            if let Step::Confirm { total_cents, .. } = step {
                                assert!(
                                    matches!(&known, Known::Reservation(r) if r.state == Held::Committed),
                                    "confirmed only once committed: {case}"
                                );
                                assert!(total_cents > 0);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Running the machine against a model of the product service ends every order, whatever
    /// the service answers, within a bounded number of steps, with the stock given back exactly
    /// when the order did not end confirmed.
    #[test]
    fn every_run_ends_confirmed_or_with_the_stock_back() {
        // Faults: for each of the first seven requests, none, the answer lost (the product
        // service applied it), or the request lost (it did not); every combination.
        for faults in 0u32..3u32.pow(7) {
            for driver in [SAGA, RECOVERY] {
                let mut model = Model::default();
                if driver == RECOVERY {
                    // A saga that crashed after reserving.
                    model.reservation = Some(Held::Reserved);
                    model.stock_taken = 3;
                }
                let mut view = order(Status::Pending, false);
                let mut progress = Progress::default();
                let mut code = faults;
                let mut ended = false;
                for _ in 0..32 {
                    match next(&view, &progress, driver) {
                        Step::Ask(ask) => {
                            let fault = code % 3;
                            code /= 3;
                            let answer = match fault {
                                0 => model.apply(ask, &view),
                                1 => {
                                    model.apply(ask, &view);
                                    Known::NoAnswer(ask)
                                }
                                _ => Known::NoAnswer(ask),
                            };
                            progress.learn(ask, answer);
                        }
                        Step::Confirm { .. } => view.status = Status::Confirmed,
                        Step::Fail { give_back, .. } => {
                            view.status = Status::Failed;
                            view.release_pending = give_back;
                        }
                        Step::GivenBack => view.release_pending = false,
                        Step::Wait => {
                            // A later run (the recoverer) starts afresh with no faults.
                            progress = Progress::default();
                            let mut later = 0;
                            loop {
                                later += 1;
                                assert!(later < 16, "the recoverer ends it");
                                match next(&view, &progress, RECOVERY) {
                                    Step::Ask(ask) => {
                                        let answer = model.apply(ask, &view);
                                        progress.learn(ask, answer);
                                    }
                                    Step::Confirm { .. } => view.status = Status::Confirmed,
                                    Step::Fail { give_back, .. } => {
                                        view.status = Status::Failed;
                                        view.release_pending = give_back;
                                    }
                                    Step::GivenBack => view.release_pending = false,
                                    Step::Wait => panic!("no faults: no wait"),
                                    Step::Done => break,
                                }
                            }
                            ended = true;
                            break;
                        }
                        Step::Done => {
                            ended = true;
                            break;
                        }
                    }
                }
                assert!(ended, "faults {faults}: the run ends");
                let case = format!("faults {faults} {driver:?}: {view:?} {model:?}");
                match view.status {
                    Status::Confirmed => {
                        assert_eq!(model.reservation, Some(Held::Committed), "{case}");
                        assert_eq!(model.stock_taken, 3, "{case}");
                    }
                    Status::Failed => {
                        assert!(!view.release_pending, "{case}");
                        assert_eq!(model.stock_taken, 0, "{case}");
                        assert_eq!(model.reservation, Some(Held::Released), "{case}");
                    }
                    other => panic!("{other:?}: {case}"),
                }
            }
        }
    }

    /// The product service's reservation rules, for one order of 3 units.
    #[derive(Debug, Default)]
    struct Model {
        reservation: Option<Held>,
        stock_taken: i64,
    }

    impl Model {
        fn apply(&mut self, ask: Ask, view: &OrderView) -> Known {
            let full = |state| Known::Reservation(reservation(state, 100));
            match (ask, self.reservation) {
                (Ask::Reserve, None) => {
                    self.reservation = Some(Held::Reserved);
                    self.stock_taken = 3;
                    full(Held::Reserved)
                }
                (Ask::Reserve, Some(Held::Released)) => {
                    Known::Refused(Problem::conflict("reservation-released", "released"))
                }
                (Ask::Reserve, Some(state)) => full(state),
                (Ask::Commit, None) => Known::Absent,
                (Ask::Commit, Some(Held::Released)) => Known::State(Held::Released),
                (Ask::Commit, Some(_)) => {
                    self.reservation = Some(Held::Committed);
                    full(Held::Committed)
                }
                (Ask::Release, None | Some(Held::Released)) => {
                    self.reservation = Some(Held::Released);
                    full(Held::Released)
                }
                (Ask::Release, Some(Held::Reserved)) => {
                    self.reservation = Some(Held::Released);
                    self.stock_taken = 0;
                    full(Held::Released)
                }
                (Ask::Release, Some(Held::Committed)) => Known::State(Held::Committed),
                (Ask::Return, Some(Held::Committed)) => {
                    assert!(
                        matches!(view.status, Status::Failed | Status::Cancelled),
                        "returns only for failed or cancelled orders"
                    );
                    self.reservation = Some(Held::Released);
                    self.stock_taken = 0;
                    full(Held::Released)
                }
                (Ask::Return, Some(Held::Released)) => full(Held::Released),
                (Ask::Return, Some(Held::Reserved)) => Known::State(Held::Reserved),
                (Ask::Return, None) => Known::Absent,
                (Ask::Look, None) => Known::Absent,
                (Ask::Look, Some(state)) => full(state),
            }
        }
    }

    #[test]
    fn reasons_name_the_step_and_leak_nothing() {
        assert!(
            Failure::NoAnswer(Ask::Commit)
                .reason()
                .contains("could not be committed")
        );
        assert!(
            Failure::TotalMismatch {
                charged_cents: 800,
                accepted_cents: 700
            }
            .reason()
            .contains("8.00")
        );
        let refused = Problem::new(StatusCode::CONFLICT, "insufficient-stock", "only 1 left");
        assert_eq!(Failure::Refused(refused).reason(), "only 1 left");
    }
}
