//! Choosing the endpoint for the next request among those eligible — the pure part of
//! balancing. The pool supplies each endpoint's load (tower's peak-EWMA `Cost`, its in-flight
//! count) and weight; randomness is injected so every strategy is tested deterministically.

use std::fmt;
use std::str::FromStr;

/// How the next endpoint is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Power of two random choices, the one with the lower peak-EWMA latency × (in-flight + 1).
    #[default]
    PeakEwma,
    /// Each eligible endpoint in turn.
    RoundRobin,
    /// Each eligible endpoint in turn, as often as its weight says (smooth, as nginx does it:
    /// weights 5:1:1 give a a b a c a a, not a a a a a b c).
    WeightedRoundRobin,
    /// Power of two random choices, the one with fewer requests in flight.
    LeastRequest,
}

impl Strategy {
    pub const NAMES: [&str; 4] = [
        "peak-ewma",
        "round-robin",
        "weighted-round-robin",
        "least-request",
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::PeakEwma => Self::NAMES[0],
            Strategy::RoundRobin => Self::NAMES[1],
            Strategy::WeightedRoundRobin => Self::NAMES[2],
            Strategy::LeastRequest => Self::NAMES[3],
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "peak-ewma" | "p2c" => Ok(Strategy::PeakEwma),
            "round-robin" => Ok(Strategy::RoundRobin),
            "weighted-round-robin" => Ok(Strategy::WeightedRoundRobin),
            "least-request" => Ok(Strategy::LeastRequest),
            other => Err(format!(
                "unknown balancing strategy {other:?}; use one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// What the balancer can ask about the endpoint at an index.
pub trait Loads {
    /// Peak-EWMA cost (latency estimate × (in-flight + 1)); only compared, never read.
    type Cost: PartialOrd;
    fn cost(&self, index: usize) -> Self::Cost;
    fn in_flight(&self, index: usize) -> u32;
    fn weight(&self, index: usize) -> u32;
}

/// Balancer state that lives across picks: the round-robin cursor and the smooth weighted
/// round-robin counters (one per endpoint, indexed like the pool's endpoints).
#[derive(Clone, Debug, Default)]
pub struct Balancer {
    strategy: Strategy,
    cursor: usize,
    current_weight: Vec<i64>,
}

impl Balancer {
    pub fn new(strategy: Strategy) -> Self {
        Balancer {
            strategy,
            ..Balancer::default()
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The pool's endpoint list changed to `len` endpoints: weighted round-robin starts over.
    pub fn reset(&mut self, len: usize) {
        self.current_weight = vec![0; len];
    }

    /// Picks one of `eligible` (indices into the pool's endpoints); `random` returns uniformly
    /// distributed integers.
    pub fn pick(
        &mut self,
        eligible: &[usize],
        loads: &(impl Loads + ?Sized),
        random: &mut impl FnMut() -> u64,
    ) -> Option<usize> {
        match eligible {
            [] => None,
            [only] => Some(*only),
            _ => Some(match self.strategy {
                Strategy::RoundRobin => {
                    self.cursor = self.cursor.wrapping_add(1);
                    eligible[self.cursor % eligible.len()]
                }
                Strategy::WeightedRoundRobin => self.smooth_weighted(eligible, loads),
                Strategy::PeakEwma => two_choices(eligible, random, |i| loads.cost(i)),
                Strategy::LeastRequest => two_choices(eligible, random, |i| loads.in_flight(i)),
            }),
        }
    }

    fn smooth_weighted(&mut self, eligible: &[usize], loads: &(impl Loads + ?Sized)) -> usize {
        let needed = eligible.iter().max().map_or(0, |m| m + 1);
        if self.current_weight.len() < needed {
            self.current_weight.resize(needed, 0);
        }
        let mut total = 0i64;
        let mut best = eligible[0];
        for &i in eligible {
            let weight = i64::from(loads.weight(i).max(1));
            total += weight;
            self.current_weight[i] += weight;
            if self.current_weight[i] > self.current_weight[best] {
                best = i;
            }
        }
        self.current_weight[best] -= total;
        best
    }
}

/// Two distinct random candidates; the less loaded wins (the first on a tie).
fn two_choices<C: PartialOrd>(
    eligible: &[usize],
    random: &mut impl FnMut() -> u64,
    load: impl Fn(usize) -> C,
) -> usize {
    let n = eligible.len() as u64;
    let a = (random() % n) as usize;
    let mut b = (random() % (n - 1)) as usize;
    if b >= a {
        b += 1;
    }
    let (a, b) = (eligible[a], eligible[b]);
    if load(b) < load(a) { b } else { a }
}

/// A small xorshift generator: balancing needs cheap, not cryptographic, randomness.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed | 1)
    }

    pub fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9, |d| d.as_nanos() as u64);
        XorShift::new(nanos ^ u64::from(std::process::id()).rotate_left(32))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy)]
    struct Load {
        cost: f64,
        in_flight: u32,
        weight: u32,
    }

    impl Loads for [Load] {
        type Cost = f64;
        fn cost(&self, i: usize) -> f64 {
            self[i].cost
        }
        fn in_flight(&self, i: usize) -> u32 {
            self[i].in_flight
        }
        fn weight(&self, i: usize) -> u32 {
            self[i].weight
        }
    }

    fn counts(strategy: Strategy, loads: &[Load], picks: usize) -> Vec<usize> {
        let mut balancer = Balancer::new(strategy);
        balancer.reset(loads.len());
        let eligible: Vec<usize> = (0..loads.len()).collect();
        let mut rng = XorShift::new(7);
        let mut random = || rng.next_u64();
        let mut counts = vec![0; loads.len()];
        for _ in 0..picks {
            counts[balancer.pick(&eligible, loads, &mut random).unwrap()] += 1;
        }
        counts
    }

    fn load(cost: f64, in_flight: u32, weight: u32) -> Load {
        Load {
            cost,
            in_flight,
            weight,
        }
    }

    #[test]
    fn round_robin_is_exactly_even() {
        let loads = [load(1.0, 0, 1), load(9.0, 5, 1), load(3.0, 0, 1)];
        assert_eq!(counts(Strategy::RoundRobin, &loads, 300), [100, 100, 100]);
    }

    #[test]
    fn weighted_round_robin_follows_the_weights_smoothly() {
        let loads = [load(0.0, 0, 5), load(0.0, 0, 1), load(0.0, 0, 1)];
        assert_eq!(
            counts(Strategy::WeightedRoundRobin, &loads, 700),
            [500, 100, 100]
        );
        let mut balancer = Balancer::new(Strategy::WeightedRoundRobin);
        let mut random = || 0;
        let order: Vec<usize> = (0..7)
            .map(|_| balancer.pick(&[0, 1, 2], &loads[..], &mut random).unwrap())
            .collect();
        assert_eq!(order, [0, 0, 1, 0, 2, 0, 0], "interleaved, not in a burst");
    }

    #[test]
    fn peak_ewma_prefers_the_cheaper_endpoint_but_never_starves_a_pair_member() {
        let loads = [load(1.0, 0, 1), load(1.0, 0, 1), load(10.0, 0, 1)];
        let c = counts(Strategy::PeakEwma, &loads, 3000);
        // The costly one only wins when drawn against itself, which two distinct draws never do.
        assert_eq!(c[2], 0, "{c:?}");
        assert!(c[0].abs_diff(c[1]) < 300, "equal costs share evenly: {c:?}");
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let loads = [
            load(0.0, 0, 1),
            load(0.0, 8, 1),
            load(0.0, 1, 1),
            load(0.0, 1, 1),
        ];
        let c = counts(Strategy::LeastRequest, &loads, 1200);
        assert_eq!(c[1], 0, "{c:?}");
        assert!(
            c[0] > c[2] && c[0] > c[3],
            "the idle one wins every draw it is in: {c:?}"
        );
    }

    #[test]
    fn strategies_are_chosen_by_name_with_a_helpful_error() {
        for name in Strategy::NAMES {
            assert_eq!(name.parse::<Strategy>().unwrap().name(), name);
        }
        let error = "fastest".parse::<Strategy>().unwrap_err();
        assert!(error.contains("peak-ewma, round-robin"), "{error}");
    }
}
