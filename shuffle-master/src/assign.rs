//! Partition placement: least loaded first, deterministic for the same state.
//!
//! Invariants: only workers passed in as candidates are used (the caller passes Active ones);
//! a replica never lands on its primary's worker; ties break on the worker id, so the same
//! loads always give the same placement.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use shuffle_proto::WorkerId;

/// Load of a candidate worker when placement starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: WorkerId,
    pub partitions: u64,
    pub bytes: u64,
}

/// Where one partition goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub primary: WorkerId,
    pub replica: Option<WorkerId>,
}

/// Places `count` partitions. Returns `None` when there are too few candidates for the
/// replication factor.
pub fn place(candidates: &[Candidate], count: usize, replication: u8) -> Option<Vec<Placement>> {
    let need = if replication >= 2 { 2 } else { 1 };
    if candidates.len() < need {
        return None;
    }
    // Min-heap on (partitions owned, bytes held, id): each placement bumps the chosen worker.
    let mut heap: BinaryHeap<Reverse<(u64, u64, usize)>> =
        candidates.iter().enumerate().map(|(i, c)| Reverse((c.partitions, c.bytes, i))).collect();
    // Heap order on the index must follow the id order for determinism across callers.
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|a, b| candidates[*a].id.cmp(&candidates[*b].id));
    let rank: Vec<usize> = {
        let mut r = vec![0; candidates.len()];
        for (pos, idx) in order.iter().enumerate() {
            r[*idx] = pos;
        }
        r
    };
    heap = heap.into_iter().map(|Reverse((p, b, i))| Reverse((p, b, rank[i]))).collect();

    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let Reverse((p, b, r)) = heap.pop()?;
        let primary = candidates[order[r]].id.clone();
        let replica = if need == 2 {
            let Reverse((p2, b2, r2)) = heap.pop()?;
            heap.push(Reverse((p2 + 1, b2, r2)));
            Some(candidates[order[r2]].id.clone())
        } else {
            None
        };
        heap.push(Reverse((p + 1, b, r)));
        out.push(Placement { primary, replica });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, partitions: u64, bytes: u64) -> Candidate {
        Candidate { id: WorkerId::new(id).unwrap(), partitions, bytes }
    }

    #[test]
    fn spreads_evenly_and_prefers_the_least_loaded() {
        let cands = [c("w1", 10, 0), c("w2", 0, 0), c("w3", 0, 500)];
        let p = place(&cands, 12, 1).unwrap();
        let count = |id: &str| p.iter().filter(|x| x.primary.as_str() == id).count();
        // w2 and w3 catch up with w1 first; w2 before w3 because it holds fewer bytes.
        assert_eq!(p[0].primary.as_str(), "w2");
        assert_eq!(p[1].primary.as_str(), "w3");
        assert_eq!(count("w1"), 0);
        assert_eq!(count("w2") + count("w3"), 12);
    }

    #[test]
    fn replicas_never_share_the_primary_worker() {
        let cands = [c("a", 0, 0), c("b", 0, 0), c("c", 0, 0)];
        let p = place(&cands, 30, 2).unwrap();
        assert!(p.iter().all(|x| x.replica.as_ref().is_some_and(|r| *r != x.primary)));
        // Each worker carries 20 of the 60 copies.
        for id in ["a", "b", "c"] {
            let n = p.iter().filter(|x| x.primary.as_str() == id || x.replica.as_ref().unwrap().as_str() == id).count();
            assert_eq!(n, 20, "{id}");
        }
    }

    #[test]
    fn too_few_workers_is_none() {
        assert!(place(&[], 1, 1).is_none());
        assert!(place(&[c("a", 0, 0)], 1, 2).is_none());
    }

    #[test]
    fn deterministic_whatever_the_input_order() {
        let a = [c("x", 1, 0), c("y", 1, 0), c("z", 0, 0)];
        let b = [c("z", 0, 0), c("y", 1, 0), c("x", 1, 0)];
        assert_eq!(place(&a, 7, 2), place(&b, 7, 2));
    }
}
