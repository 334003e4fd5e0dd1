//! Telling one problem from several: candidates whose trouble starts in the
//! same operation describe one problem, and one of them is reported while the
//! rest are linked under it.

use std::collections::BTreeMap;

/// What choosing a cluster's headline reads of each candidate.
#[derive(Debug, Clone)]
pub struct Member {
    /// Where its trouble starts.
    pub cause: (String, String),
    /// Where it was measured.
    pub site: (String, String),
    pub q_value: f64,
    pub effect: f64,
    /// Its detector's rank among accounts of one cause (lower first).
    pub rank: u8,
    /// Its detector reports it as the headline wherever the cause starts.
    pub headline: bool,
    /// The segment it was found in (empty: everyone).
    pub segment: BTreeMap<String, serde_json::Value>,
}

/// Whether `a`'s segment lies strictly inside `b`'s: every value `b` fixes,
/// `a` fixes too, and `a` fixes more.
fn narrower(a: &Member, b: &Member) -> bool {
    a.segment.len() > b.segment.len() && b.segment.iter().all(|(k, v)| a.segment.get(k) == Some(v))
}

/// Groups of candidates that share where their trouble starts. Two problems
/// that merely meet at one operation (a slow callee and a rate limiter on the
/// same route) stay apart.
pub fn clusters(members: &[Member]) -> Vec<Vec<usize>> {
    let n = members.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], i: usize) -> usize {
        let mut r = i;
        while p[r] != r {
            r = p[r];
        }
        p[i] = r;
        r
    }
    for a in 0..n {
        for b in a + 1..n {
            if members[a].cause == members[b].cause {
                let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
                parent[ra] = rb;
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..n {
        let r = find(&mut parent, i);
        groups.entry(r).or_default().push(i);
    }
    groups.into_values().collect()
}

/// The most common cause among a cluster's members.
fn cluster_cause(members: &[Member], cluster: &[usize]) -> (String, String) {
    let mut counts: BTreeMap<&(String, String), usize> = BTreeMap::new();
    for i in cluster {
        *counts.entry(&members[*i].cause).or_default() += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(k, _)| k.clone()).unwrap_or_default()
}

/// The member a cluster is reported as: a headline (the largest); else, at the
/// operation where the trouble starts, the most specific account of it by its
/// detector's rank among the accounts that no other account there covers (an
/// account of some of the users never stands for one of all of them); else
/// the strongest.
pub fn primary(members: &[Member], cluster: &[usize]) -> usize {
    let headline = cluster
        .iter()
        .filter(|i| members[**i].headline)
        .max_by(|a, b| members[**a].effect.total_cmp(&members[**b].effect));
    if let Some(i) = headline {
        return *i;
    }
    let cause = cluster_cause(members, cluster);
    let at_cause: Vec<usize> = cluster.iter().copied().filter(|i| members[*i].site == cause).collect();
    at_cause
        .iter()
        .filter(|i| !at_cause.iter().any(|j| narrower(&members[**i], &members[*j])))
        .min_by_key(|i| (members[**i].rank, **i))
        .or_else(|| cluster.iter().min_by(|a, b| members[**a].q_value.total_cmp(&members[**b].q_value)))
        .copied()
        .unwrap_or(cluster[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(cause: &str, site: &str, rank: u8) -> Member {
        let op = |s: &str| ("svc".to_owned(), s.to_owned());
        Member {
            cause: op(cause),
            site: op(site),
            q_value: 0.01,
            effect: 0.1,
            rank,
            headline: false,
            segment: BTreeMap::new(),
        }
    }

    #[test]
    fn members_sharing_a_cause_are_one_problem_reported_where_it_starts() {
        let members = vec![m("db", "checkout", 3), m("db", "db", 2), m("cache", "search", 3)];
        let groups = clusters(&members);
        assert_eq!(groups.len(), 2);
        let one = groups.iter().find(|g| g.len() == 2).unwrap();
        assert_eq!(primary(&members, one), 1, "the account at the cause, not its caller");
        let mut headline = members.clone();
        headline[0].headline = true;
        assert_eq!(primary(&headline, one), 0, "a headline wins wherever it is");
    }

    #[test]
    fn an_account_of_some_users_does_not_stand_for_one_of_all_of_them() {
        let ios = |mut m: Member| {
            m.segment.insert("os.type".into(), serde_json::json!("ios"));
            m
        };
        // Errors for everyone (rank 2), and a narrower, more specific account
        // of them in one OS (rank 1): everyone's is reported.
        let members = vec![m("db", "db", 2), ios(m("db", "db", 1))];
        assert_eq!(primary(&members, &[0, 1]), 0);
        // In the same segment, the more specific account wins.
        let members = vec![ios(m("db", "db", 2)), ios(m("db", "db", 1))];
        assert_eq!(primary(&members, &[0, 1]), 1);
        // Segments neither of which holds the other: rank decides.
        let mut android = m("db", "db", 2);
        android.segment.insert("os.type".into(), serde_json::json!("android"));
        let members = vec![android, ios(m("db", "db", 1))];
        assert_eq!(primary(&members, &[0, 1]), 1);
    }
}
