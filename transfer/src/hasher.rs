//! SHA-256 of a whole disk's raw content, fed chunk by chunk from several worker threads in any
//! order. Out-of-order pieces wait in a small reorder buffer; a worker whose piece is not next
//! blocks while the buffer is full, so memory stays bounded.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};

pub enum Piece {
    Zero(usize),
    Data(Arc<Vec<u8>>),
}

struct State {
    sha: Sha256,
    next: usize,
    end: usize,
    waiting: BTreeMap<usize, Piece>,
    closed: bool,
}

pub struct OrderedHasher {
    st: Mutex<State>,
    cv: Condvar,
    limit: usize,
}

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl OrderedHasher {
    /// Hash pieces `next..end` (chunk indexes), continuing from `sha`.
    pub fn new(sha: Sha256, next: usize, end: usize, limit: usize) -> Self {
        OrderedHasher {
            st: Mutex::new(State {
                sha,
                next,
                end,
                waiting: BTreeMap::new(),
                closed: false,
            }),
            cv: Condvar::new(),
            limit: limit.max(1),
        }
    }

    /// Hand in piece `i`. Blocks while the reorder buffer is full and `i` is not the next one.
    pub fn feed(&self, i: usize, p: Piece) {
        let Ok(mut st) = self.st.lock() else { return };
        while !st.closed && i != st.next && st.waiting.len() >= self.limit {
            st = match self.cv.wait(st) {
                Ok(s) => s,
                Err(_) => return,
            };
        }
        if st.closed || i < st.next {
            return;
        }
        st.waiting.insert(i, p);
        self.cv.notify_all();
    }

    /// Stop early (a failed pass): `run` returns with what it has.
    pub fn close(&self) {
        if let Ok(mut st) = self.st.lock() {
            st.closed = true;
        }
        self.cv.notify_all();
    }

    /// Hash in order until every piece is in or the hasher is closed. Runs on its own thread.
    pub fn run(&self) {
        loop {
            let piece = {
                let Ok(mut st) = self.st.lock() else { return };
                loop {
                    if st.next >= st.end {
                        return;
                    }
                    let n = st.next;
                    if let Some(p) = st.waiting.remove(&n) {
                        break p;
                    }
                    if st.closed {
                        return;
                    }
                    st = match self.cv.wait(st) {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                }
            };
            // Hash outside the lock, on a private copy of the state.
            let mut sha = match self.st.lock() {
                Ok(mut st) => std::mem::take(&mut st.sha),
                Err(_) => return,
            };
            match &piece {
                Piece::Zero(n) => {
                    let mut n = *n;
                    while n > 0 {
                        let k = n.min(ZEROS.len());
                        sha.update(&ZEROS[..k]);
                        n -= k;
                    }
                }
                Piece::Data(d) => sha.update(d.as_slice()),
            }
            if let Ok(mut st) = self.st.lock() {
                st.sha = sha;
                st.next += 1;
            }
            self.cv.notify_all();
        }
    }

    /// The state and the next chunk index to hash.
    pub fn finish(self) -> (Sha256, usize) {
        match self.st.into_inner() {
            Ok(st) => (st.sha, st.next),
            Err(p) => {
                let st = p.into_inner();
                (st.sha, st.next)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_order_gives_the_sequential_hash() {
        let parts: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        let mut want = Sha256::new();
        for (i, p) in parts.iter().enumerate() {
            if i % 3 == 0 {
                want.update(vec![0u8; 777]);
            } else {
                want.update(p);
            }
        }
        let h = Arc::new(OrderedHasher::new(Sha256::new(), 0, parts.len(), 2));
        std::thread::scope(|s| {
            let h2 = h.clone();
            s.spawn(move || h2.run());
            for w in 0..3 {
                let h = h.clone();
                let parts = &parts;
                s.spawn(move || {
                    for i in (0..parts.len()).filter(|i| i % 3 == w) {
                        let p = if i % 3 == 0 {
                            Piece::Zero(777)
                        } else {
                            Piece::Data(Arc::new(parts[i].clone()))
                        };
                        h.feed(i, p);
                    }
                });
            }
        });
        let (sha, next) = Arc::try_unwrap(h).ok().unwrap().finish();
        assert_eq!(next, parts.len());
        assert_eq!(sha.finalize(), want.finalize());
    }
}
