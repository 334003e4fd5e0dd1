//! The statistics behind every finding: Mann-Whitney U with a Hodges–Lehmann
//! interval over latency histograms, the two-proportion z-test with Fisher's exact
//! test for small counts, and Benjamini–Hochberg across a pass.

use std::collections::BTreeMap;

/// Complementary error function (Numerical Recipes' Chebyshev fit, relative error
/// below 1.2e-7 everywhere, so tail p-values stay meaningful).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// P(Z > z) for a standard normal Z.
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The z with P(Z > z) = p (Acklam's rational approximation, refined once).
pub fn normal_isf(p: f64) -> f64 {
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    // Lower-tail quantile of 1 - p.
    let q = 1.0 - p;
    const A: [f64; 6] = [
        -39.696_830_286_653_76,
        220.946_098_424_520_5,
        -275.928_510_446_968_7,
        138.357_751_867_269,
        -30.664_798_066_147_16,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -54.476_098_798_224_06,
        161.585_836_858_040_9,
        -155.698_979_859_886_6,
        66.801_311_887_719_72,
        -13.280_681_552_885_72,
    ];
    const C: [f64; 6] = [
        -0.007_784_894_002_430_293,
        -0.322_396_458_041_136_4,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] =
        [0.007_784_695_709_041_462, 0.322_467_129_070_039_8, 2.445_134_137_142_996, 3.754_408_661_907_416];
    let plow = 0.024_25;
    let x = if q < plow {
        let r = (-2.0 * q.ln()).sqrt();
        (((((C[0] * r + C[1]) * r + C[2]) * r + C[3]) * r + C[4]) * r + C[5])
            / ((((D[0] * r + D[1]) * r + D[2]) * r + D[3]) * r + 1.0)
    } else if q <= 1.0 - plow {
        let r = q - 0.5;
        let s = r * r;
        (((((A[0] * s + A[1]) * s + A[2]) * s + A[3]) * s + A[4]) * s + A[5]) * r
            / (((((B[0] * s + B[1]) * s + B[2]) * s + B[3]) * s + B[4]) * s + 1.0)
    } else {
        let r = (-2.0 * p.ln()).sqrt();
        -(((((C[0] * r + C[1]) * r + C[2]) * r + C[3]) * r + C[4]) * r + C[5])
            / ((((D[0] * r + D[1]) * r + D[2]) * r + D[3]) * r + 1.0)
    };
    // One Halley step against the tail function.
    let e = 0.5 * erfc(-x / std::f64::consts::SQRT_2) - q;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

/// A latency histogram: bucket index (log scale) to count.
pub type Histogram = BTreeMap<i64, u64>;

pub fn total(h: &Histogram) -> u64 {
    h.values().sum()
}

/// The `q` quantile of a histogram, as a bucket index.
pub fn hist_quantile(h: &Histogram, q: f64) -> Option<i64> {
    let n = total(h);
    if n == 0 {
        return None;
    }
    let rank = (q * n as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (b, c) in h {
        seen += c;
        if seen >= rank {
            return Some(*b);
        }
    }
    h.keys().next_back().copied()
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShiftTest {
    /// One-sided p-value that `current` is stochastically larger than `baseline`.
    pub p_value: f64,
    /// Hodges–Lehmann estimate of the shift, in buckets.
    pub shift: f64,
    /// Its confidence interval, in buckets.
    pub ci: (f64, f64),
}

/// Mann-Whitney U on two histograms (ties within a bucket get mid-ranks, with the
/// tie correction), and the Hodges–Lehmann shift with the distribution-free
/// interval read off the ordered pairwise differences, as Kayenta's judge does.
pub fn mann_whitney(baseline: &Histogram, current: &Histogram, confidence: f64) -> Option<ShiftTest> {
    let (n, m) = (total(baseline) as f64, total(current) as f64);
    if n == 0.0 || m == 0.0 {
        return None;
    }
    // U = number of (current, baseline) pairs with current > baseline, ties half;
    // the two histograms walked together in bucket order.
    let mut below = 0.0;
    let mut u = 0.0;
    let mut ties = 0.0;
    let (mut bs, mut cs) = (baseline.iter().peekable(), current.iter().peekable());
    loop {
        let (b, c) = match (bs.peek(), cs.peek()) {
            (None, None) => break,
            (Some((kb, _)), Some((kc, _))) if kb == kc => (bs.next(), cs.next()),
            (Some((kb, _)), Some((kc, _))) if kb < kc => (bs.next(), None),
            (Some(_), None) => (bs.next(), None),
            _ => (None, cs.next()),
        };
        let b = b.map_or(0.0, |(_, n)| *n as f64);
        let c = c.map_or(0.0, |(_, n)| *n as f64);
        u += c * (below + 0.5 * b);
        below += b;
        let t = b + c;
        ties += t * t * t - t;
    }
    let nm = n * m;
    let big_n = n + m;
    let var = nm / 12.0 * ((big_n + 1.0) - ties / (big_n * (big_n - 1.0)).max(1.0));
    let z = if var > 0.0 { (u - nm / 2.0 - 0.5) / var.sqrt() } else { 0.0 };
    let p_value = if var > 0.0 { normal_sf(z) } else { 1.0 };

    // Order statistics of the pairwise differences current - baseline,
    // weighted by counts.
    let pairs = Pairs::new(baseline, current);
    let order_stat = |k: f64| pairs.order_stat(k) as f64;
    let shift = order_stat(nm / 2.0);
    let za = normal_isf((1.0 - confidence) / 2.0);
    let c = (nm / 2.0 - za * (nm * (big_n + 1.0) / 12.0).sqrt()).floor().max(1.0);
    let ci = (order_stat(c), order_stat(nm - c + 1.0));
    Some(ShiftTest { p_value, shift, ci })
}

/// The pairs of a bucket `c` of `current` and a bucket `b` of `baseline`,
/// weighted by the product of their counts, ordered by their difference
/// `c - b`, without listing them: how many have a difference at most `d` is
/// a sum over `current`'s buckets of `baseline`'s requests from `c - d` up,
/// so an order statistic is a binary search over differences.
struct Pairs {
    /// `baseline`'s buckets in order, and the requests below each.
    base: Vec<i64>,
    below: Vec<u64>,
    base_total: u64,
    current: Vec<(i64, u64)>,
}

impl Pairs {
    fn new(baseline: &Histogram, current: &Histogram) -> Self {
        let mut below = Vec::with_capacity(baseline.len());
        let mut seen = 0u64;
        for c in baseline.values() {
            below.push(seen);
            seen += c;
        }
        Self {
            base: baseline.keys().copied().collect(),
            below,
            base_total: seen,
            current: current.iter().map(|(b, c)| (*b, *c)).collect(),
        }
    }

    /// The weight of the pairs whose difference is at most `d`.
    fn at_most(&self, d: i64) -> u128 {
        // `cb - d` rises with `cb`: one sweep over both.
        let mut i = 0;
        self.current
            .iter()
            .map(|(cb, cc)| {
                // Baseline requests in buckets at or above `cb - d`.
                let from = cb.saturating_sub(d);
                while i < self.base.len() && self.base[i] < from {
                    i += 1;
                }
                let above = self.base_total - self.below.get(i).copied().unwrap_or(self.base_total);
                u128::from(*cc) * u128::from(above)
            })
            .sum()
    }

    /// The least difference whose pairs, with every pair of a smaller one,
    /// weigh at least `k`; the greatest difference when none do.
    fn order_stat(&self, k: f64) -> i64 {
        let (Some(b_lo), Some(b_hi), Some(c_lo), Some(c_hi)) =
            (self.base.first(), self.base.last(), self.current.first(), self.current.last())
        else {
            return 0;
        };
        let (mut lo, mut hi) = (c_lo.0.saturating_sub(*b_hi), c_hi.0.saturating_sub(*b_lo));
        if (self.at_most(hi) as f64) < k {
            return hi;
        }
        // The least `d` in `[lo, hi]` with `at_most(d) >= k`.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.at_most(mid) as f64 >= k {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProportionTest {
    /// One-sided p-value that the current proportion is larger.
    pub p_value: f64,
    pub baseline: f64,
    pub current: f64,
    pub test: &'static str,
}

fn ln_factorial(n: u64) -> f64 {
    // Stirling with corrections beyond a table of exact small values.
    if n < 2 {
        return 0.0;
    }
    if n < 64 {
        return (2..=n).map(|i| (i as f64).ln()).sum();
    }
    let x = n as f64;
    x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x) - 1.0 / (360.0 * x * x * x)
}

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k)
}

/// Fisher's exact test, one-sided: P(X >= x_current) for the current window's
/// successes given both margins.
pub fn fisher_greater(x_base: u64, n_base: u64, x_cur: u64, n_cur: u64) -> f64 {
    let k = x_base + x_cur;
    let n = n_base + n_cur;
    let hi = k.min(n_cur);
    let denom = ln_choose(n, k);
    let mut p = 0.0;
    for x in x_cur..=hi {
        if k - x > n_base {
            continue;
        }
        p += (ln_choose(n_cur, x) + ln_choose(n_base, k - x) - denom).exp();
    }
    p.min(1.0)
}

/// P(w₁X₁ + … + wₘXₘ ≥ k) for independent binomials Xⱼ ~ Bin(nⱼ, qⱼ) with
/// whole weights wⱼ, `strata` holding each (nⱼ, qⱼ, wⱼ): the exact upper
/// tail, from their probabilities convolved. Each binomial is kept within 12
/// standard deviations (and 10 events) of its mean, beyond which its
/// probabilities are below 1e-30.
pub fn binomials_at_least(strata: &[(u64, f64, u64)], k: u64) -> f64 {
    // The weighted sum's probabilities from `offset` on.
    let (mut offset, mut sum) = (0u64, vec![1.0f64]);
    for &(n, q, w) in strata {
        if n == 0 || w == 0 {
            continue;
        }
        let q = q.clamp(0.0, 1.0);
        let (mean, sd) = (n as f64 * q, (n as f64 * q * (1.0 - q)).sqrt());
        let lo = (mean - 12.0 * sd - 10.0).floor().max(0.0) as u64;
        let hi = ((mean + 12.0 * sd + 10.0).ceil() as u64).min(n);
        let pmf: Vec<f64> = (lo..=hi)
            .map(|x| match q {
                0.0 => f64::from(u8::from(x == 0)),
                1.0 => f64::from(u8::from(x == n)),
                _ => (ln_choose(n, x) + x as f64 * q.ln() + (n - x) as f64 * (1.0 - q).ln()).exp(),
            })
            .collect();
        let step = w as usize;
        let mut next = vec![0.0; sum.len() + (pmf.len() - 1) * step];
        for (i, a) in sum.iter().enumerate() {
            if *a == 0.0 {
                continue;
            }
            for (j, b) in pmf.iter().enumerate() {
                next[i + j * step] += a * b;
            }
        }
        offset += lo * w;
        sum = next;
    }
    let from = k.saturating_sub(offset) as usize;
    sum.iter().skip(from).sum::<f64>().clamp(0.0, 1.0)
}

/// Is the current proportion `x_cur / n_cur` larger than the baseline's? The
/// pooled two-proportion z-test, or Fisher's exact test when an expected count is
/// below 5.
pub fn proportion_greater(x_base: u64, n_base: u64, x_cur: u64, n_cur: u64) -> Option<ProportionTest> {
    if n_base == 0 || n_cur == 0 {
        return None;
    }
    let (pb, pc) = (x_base as f64 / n_base as f64, x_cur as f64 / n_cur as f64);
    let pooled = (x_base + x_cur) as f64 / (n_base + n_cur) as f64;
    let expected_min =
        [n_base as f64 * pooled, n_cur as f64 * pooled, n_base as f64 * (1.0 - pooled), n_cur as f64 * (1.0 - pooled)]
            .into_iter()
            .fold(f64::INFINITY, f64::min);
    if expected_min < 5.0 {
        return Some(ProportionTest {
            p_value: fisher_greater(x_base, n_base, x_cur, n_cur),
            baseline: pb,
            current: pc,
            test: "fisher_exact",
        });
    }
    let se = (pooled * (1.0 - pooled) * (1.0 / n_base as f64 + 1.0 / n_cur as f64)).sqrt();
    let p_value = if se > 0.0 { normal_sf((pc - pb) / se) } else { 1.0 };
    Some(ProportionTest { p_value, baseline: pb, current: pc, test: "two_proportion_z" })
}

/// Benjamini–Hochberg adjusted p-values (q-values), in input order.
pub fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|a, b| p[*a].total_cmp(&p[*b]));
    let mut q = vec![1.0; m];
    let mut running = 1.0f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        let v = (p[i] * m as f64 / (rank + 1) as f64).min(1.0);
        running = running.min(v);
        q[i] = running;
    }
    q
}

/// Simes' combination of a family's p-values: the smallest `p(k) · m / k`
/// over the sorted p-values, a valid p-value for "none of the family's
/// hypotheses is false" under the positive dependence of overlapping
/// segments of the same data. 1 for an empty family.
pub fn simes(p: &[f64]) -> f64 {
    let mut sorted = p.to_vec();
    sorted.sort_by(f64::total_cmp);
    let m = sorted.len() as f64;
    sorted.iter().enumerate().map(|(k, p)| p * m / (k + 1) as f64).fold(1.0f64, f64::min)
}

/// Two-level false discovery control (Benjamini & Bogomolov, 2014) over
/// tests grouped in families (`family[i]` is test `i`'s): each family's
/// Simes p-value, Benjamini–Hochberg over the families at `fdr` selecting R
/// of S, and within a selected family each test's Benjamini–Hochberg q-value
/// among its own, scaled by S / R; every test of a family not selected gets
/// a q-value of 1. A test with q ≤ `fdr` is then a discovery with the rate
/// of false families held at `fdr`, however many true discoveries other
/// families hold: BH over every test at once lets a lone marginal test
/// through when hundreds of tests elsewhere are significant.
pub fn two_level_fdr(p: &[f64], family: &[usize], fdr: f64) -> Vec<f64> {
    let families = family.iter().copied().max().map_or(0, |m| m + 1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); families];
    for (i, f) in family.iter().enumerate() {
        members[*f].push(i);
    }
    members.retain(|m| !m.is_empty());
    let combined: Vec<f64> = members.iter().map(|m| simes(&m.iter().map(|i| p[*i]).collect::<Vec<_>>())).collect();
    let family_q = benjamini_hochberg(&combined);
    let selected = family_q.iter().filter(|q| **q <= fdr).count();
    let scale = members.len() as f64 / selected.max(1) as f64;
    let mut q = vec![1.0; p.len()];
    for (m, fq) in members.iter().zip(&family_q) {
        if *fq > fdr {
            continue;
        }
        let within = benjamini_hochberg(&m.iter().map(|i| p[*i]).collect::<Vec<_>>());
        for (i, w) in m.iter().zip(within) {
            q[*i] = (w * scale).min(1.0);
        }
    }
    q
}

/// The index splitting `series` into two segments of least total squared error
/// (a single change point), if the split lowers the error by at least
/// `min_gain` of the unsplit error.
pub fn change_point(series: &[f64], min_gain: f64) -> Option<usize> {
    let n = series.len();
    if n < 4 {
        return None;
    }
    let mut prefix = vec![0.0; n + 1];
    let mut prefix2 = vec![0.0; n + 1];
    for (i, v) in series.iter().enumerate() {
        prefix[i + 1] = prefix[i] + v;
        prefix2[i + 1] = prefix2[i] + v * v;
    }
    let sse = |a: usize, b: usize| {
        let len = (b - a) as f64;
        let s = prefix[b] - prefix[a];
        (prefix2[b] - prefix2[a]) - s * s / len
    };
    let whole = sse(0, n);
    if whole <= 0.0 {
        return None;
    }
    let (best, cost) = (2..n - 1).map(|k| (k, sse(0, k) + sse(k, n))).min_by(|a, b| a.1.total_cmp(&b.1))?;
    ((whole - cost) / whole >= min_gain).then_some(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn binomials_summed_have_the_tail_of_their_convolution() {
        // One binomial: its own tail, 1 at k = 0, none beyond n.
        assert!((binomials_at_least(&[(10, 0.5, 1)], 8) - 56.0 / 1024.0).abs() < 1e-12);
        assert!((binomials_at_least(&[(10, 0.3, 1)], 0) - 1.0).abs() < 1e-12);
        assert_eq!(binomials_at_least(&[(10, 0.3, 1)], 11), 0.0);
        // Two of the same q are one binomial of both sizes.
        let two = binomials_at_least(&[(30, 0.1, 1), (50, 0.1, 1)], 15);
        let one = binomials_at_least(&[(80, 0.1, 1)], 15);
        assert!((two - one).abs() < 1e-12, "{two} against {one}");
        // Certain and impossible events shift the sum; a weight spreads it.
        assert!((binomials_at_least(&[(5, 1.0, 1), (10, 0.5, 1), (7, 0.0, 1)], 13) - 56.0 / 1024.0).abs() < 1e-12);
        assert!((binomials_at_least(&[(10, 0.5, 3)], 22) - 56.0 / 1024.0).abs() < 1e-12);
        assert!((binomials_at_least(&[(10, 0.5, 3), (4, 0.2, 0)], 24) - 56.0 / 1024.0).abs() < 1e-12);
        // Two events of weight 1 against one of weight 2: P(X + 2Y ≥ 2) with
        // X ~ Bin(2, ½) and Y ~ Bin(1, ½) is 1 - P(X ≤ 1, Y = 0) = 1 - ¾·½.
        assert!((binomials_at_least(&[(2, 0.5, 1), (1, 0.5, 2)], 2) - 0.625).abs() < 1e-12);
        // Against the normal's tail at a large size: close in the bulk.
        let p = binomials_at_least(&[(10_000, 0.2, 1), (5_000, 0.4, 1)], 4_080);
        let (mean, sd) = (4_000.0, (10_000.0f64 * 0.16 + 5_000.0 * 0.24).sqrt());
        assert!((p - normal_sf((4_079.5 - mean) / sd)).abs() < 0.01, "{p}");
    }

    #[test]
    fn normal_tails_match_tables() {
        assert!(close(normal_sf(0.0), 0.5, 1e-7));
        assert!(close(normal_sf(1.96), 0.024_997_9, 1e-6));
        assert!(close(normal_sf(-1.0), 0.841_344_7, 1e-6));
        assert!(close(normal_isf(0.025), 1.959_964, 1e-5));
        assert!(close(normal_isf(0.5), 0.0, 1e-6));
        assert!(normal_sf(10.0) > 0.0 && normal_sf(10.0) < 1e-22);
    }

    #[test]
    fn order_statistics_of_pairwise_differences_are_those_of_every_pair_however_far_apart() {
        // Every pair's difference, repeated by its weight, in order.
        let listed = |b: &Histogram, c: &Histogram| -> Vec<i64> {
            let mut diffs = Vec::new();
            for (cb, cc) in c {
                for (bb, bc) in b {
                    diffs.extend(std::iter::repeat_n(cb - bb, (cc * bc) as usize));
                }
            }
            diffs.sort_unstable();
            diffs
        };
        let near: Histogram = [(-3, 2), (0, 5), (7, 1), (40, 9)].into();
        let other: Histogram = [(1, 4), (2, 3), (41, 1)].into();
        let far: Histogram = [(-5, 1), (1 << 20, 2)].into();
        for (b, c) in [(&near, &other), (&other, &near), (&near, &far), (&far, &near), (&near, &near)] {
            let diffs = listed(b, c);
            let pairs = Pairs::new(b, c);
            for k in 1..=diffs.len() {
                assert_eq!(pairs.order_stat(k as f64), diffs[k - 1], "{k} of {b:?} {c:?}");
            }
            // Halfway between two weights, the next; past the end, the last.
            assert_eq!(pairs.order_stat(1.5), diffs[1]);
            assert_eq!(pairs.order_stat(diffs.len() as f64 + 1.0), *diffs.last().unwrap());
        }
        assert_eq!(Pairs::new(&near, &other).order_stat(1.0), 1 - 40);
        assert_eq!(Pairs::new(&near, &Histogram::new()).order_stat(1.0), 0);
    }

    #[test]
    fn mann_whitney_finds_a_shift_and_its_size() {
        let base: Histogram = (0..20).map(|b| (b, 50)).collect();
        let same = base.clone();
        let shifted: Histogram = (0..20).map(|b| (b + 10, 50)).collect();
        let t = mann_whitney(&base, &same, 0.95).unwrap();
        assert!(t.p_value > 0.3, "{t:?}");
        assert!(close(t.shift, 0.0, 0.5));
        let t = mann_whitney(&base, &shifted, 0.95).unwrap();
        assert!(t.p_value < 1e-10, "{t:?}");
        assert!(close(t.shift, 10.0, 0.5), "{t:?}");
        assert!(t.ci.0 <= 10.0 && t.ci.1 >= 10.0 && t.ci.0 > 5.0, "{t:?}");
        // A decrease is not a regression.
        let t = mann_whitney(&shifted, &base, 0.95).unwrap();
        assert!(t.p_value > 0.99);
    }

    #[test]
    fn proportions_use_fisher_for_small_counts() {
        let t = proportion_greater(10, 10_000, 900, 10_000).unwrap();
        assert_eq!(t.test, "two_proportion_z");
        assert!(t.p_value < 1e-100_f64.max(f64::MIN_POSITIVE) || t.p_value < 1e-12);
        let t = proportion_greater(0, 20, 3, 20).unwrap();
        assert_eq!(t.test, "fisher_exact");
        // P(X >= 3) with 3 successes out of 40 and 20 drawn: C(20,3)/C(40,3).
        assert!(close(t.p_value, 1140.0 / 9880.0, 1e-9), "{t:?}");
        let t = proportion_greater(50, 1000, 50, 1000).unwrap();
        assert!(t.p_value > 0.4);
    }

    #[test]
    fn a_lone_marginal_test_is_no_discovery_beside_many_true_ones_elsewhere() {
        // Twenty families: one holds 300 tests of a real fault, one a test of
        // 1e-3 among 49 of nothing, one a single strong test among 49 of
        // nothing, and seventeen nothing at all (49 tests each).
        let (mut p, mut family) = (Vec::new(), Vec::new());
        for k in 0..300 {
            p.push(1e-20 * f64::from(k + 1));
            family.push(0);
        }
        for (f, first) in [(1, 1e-3), (2, 1e-9)] {
            p.push(first);
            family.push(f);
            for k in 0..49 {
                p.push(0.2 + 0.016 * f64::from(k));
                family.push(f);
            }
        }
        for f in 3..20 {
            for k in 0..49 {
                p.push(0.05 + 0.019 * f64::from(k));
                family.push(f);
            }
        }
        let flat = benjamini_hochberg(&p);
        assert!(flat[300] <= 0.01, "BH over every test lets the marginal one through: {}", flat[300]);
        let q = two_level_fdr(&p, &family, 0.01);
        assert!(q[300] > 0.01, "{}", q[300]);
        assert!(q[350] <= 0.01, "a strong test stands in a family of nothing else: {}", q[350]);
        assert!(q[..300].iter().all(|q| *q <= 0.01));
        assert!(q[301..350].iter().chain(&q[351..]).all(|q| *q > 0.01));
        assert!((simes(&[0.04, 0.01, 0.5]) - 0.03).abs() < 1e-12);
        assert_eq!(simes(&[]), 1.0);
    }

    #[test]
    fn benjamini_hochberg_matches_a_worked_example() {
        let q = benjamini_hochberg(&[0.01, 0.04, 0.03, 0.005]);
        assert!(close(q[3], 0.02, 1e-12));
        assert!(close(q[0], 0.02, 1e-12));
        assert!(close(q[2], 0.04, 1e-12));
        assert!(close(q[1], 0.04, 1e-12));
    }

    #[test]
    fn change_point_finds_the_step() {
        let mut s = vec![1.0; 30];
        s.extend(vec![5.0; 20]);
        for (i, v) in s.iter_mut().enumerate() {
            *v += ((i * 7) % 5) as f64 * 0.05;
        }
        assert_eq!(change_point(&s, 0.3), Some(30));
        assert_eq!(change_point(&[1.0; 40], 0.3), None);
    }
}
