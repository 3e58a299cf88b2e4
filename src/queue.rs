//! A bounded hand-over between threads that never allocates once made: a
//! ring of fixed capacity, a mutex and a condition variable. std's channels
//! allocate the first time anyone waits on one (the channel its list of
//! waiters, the waiting thread a context of its own), at a moment nobody
//! can predict, which may be in the steady state. The encoder workers and
//! the sender take their work through this instead.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

pub struct Queue<T> {
    state: Mutex<State<T>>,
    /// An item came, or the queue closed: for those waiting to pop.
    changed: Condvar,
    /// An item left, or the queue closed: for those waiting to push.
    room: Condvar,
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
    /// Closes count it down; at zero the queue is closed: pushes are
    /// refused, and pops stop waiting once it is empty.
    open: usize,
}

/// What [`Queue::try_pop`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum TryPop<T> {
    Item(T),
    Empty,
    /// Closed and empty: nothing will come.
    Closed,
}

impl<T> Queue<T> {
    /// A queue for `capacity` items that closes after `closers` calls to `close`.
    pub fn new(capacity: usize, closers: usize) -> Self {
        Queue {
            state: Mutex::new(State { items: VecDeque::with_capacity(capacity), open: closers }),
            changed: Condvar::new(),
            room: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds an item to a queue whose capacity counts every item there can
    /// be: one more would grow the ring, which debug builds refuse.
    pub fn push(&self, item: T) {
        let mut state = self.lock();
        debug_assert!(state.items.len() < self.capacity, "a queue sized for {} items got one more", self.capacity);
        state.items.push_back(item);
        drop(state);
        self.changed.notify_one();
    }

    /// Adds an item unless the queue is full or closed, when it comes back.
    pub fn try_push(&self, item: T) -> Result<(), T> {
        let mut state = self.lock();
        if state.items.len() >= self.capacity || state.open == 0 {
            return Err(item);
        }
        state.items.push_back(item);
        drop(state);
        self.changed.notify_one();
        Ok(())
    }

    /// Adds an item, waiting for room until `deadline`; the item comes back
    /// if there is still none then, or once the queue is closed.
    pub fn push_until(&self, item: T, deadline: Instant) -> Result<(), T> {
        let mut state = self.lock();
        while state.items.len() >= self.capacity && state.open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(item);
            }
            state = self.room.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        if state.open == 0 {
            return Err(item);
        }
        state.items.push_back(item);
        drop(state);
        self.changed.notify_one();
        Ok(())
    }

    /// The oldest item, waiting for one; `None` once closed and empty.
    pub fn pop(&self) -> Option<T> {
        self.pop_until(None)
    }

    /// The oldest item, waiting for one until `deadline` (if any); `None`
    /// then, or once closed and empty.
    pub fn pop_until(&self, deadline: Option<Instant>) -> Option<T> {
        let mut state = self.lock();
        loop {
            if let Some(item) = state.items.pop_front() {
                drop(state);
                self.room.notify_one();
                return Some(item);
            }
            if state.open == 0 {
                return None;
            }
            state = match deadline {
                None => self.changed.wait(state).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
    }

    /// The oldest item, without waiting.
    pub fn try_pop(&self) -> TryPop<T> {
        let mut state = self.lock();
        match state.items.pop_front() {
            Some(item) => {
                drop(state);
                self.room.notify_one();
                TryPop::Item(item)
            }
            None if state.open == 0 => TryPop::Closed,
            None => TryPop::Empty,
        }
    }

    /// Items in the queue.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.lock().items.len()
    }

    /// Counts one of the closes down; the last wakes every waiter.
    pub fn close(&self) {
        let mut state = self.lock();
        state.open = state.open.saturating_sub(1);
        drop(state);
        self.changed.notify_all();
        self.room.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_full_or_closed_queue_gives_the_item_back() {
        let queue = Queue::new(2, 1);
        assert_eq!((queue.try_push(1), queue.try_push(2), queue.try_push(3)), (Ok(()), Ok(()), Err(3)));
        assert_eq!(queue.try_pop(), TryPop::Item(1));
        queue.close();
        assert_eq!(queue.try_push(4), Err(4));
        // What was queued before the close still comes out, then the end.
        assert_eq!((queue.pop(), queue.try_pop(), queue.pop()), (Some(2), TryPop::Closed, None));
    }

    #[test]
    fn an_empty_open_queue_waits_until_the_deadline() {
        let queue: Queue<u8> = Queue::new(1, 1);
        assert_eq!(queue.try_pop(), TryPop::Empty);
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(queue.pop_until(Some(deadline)), None);
        assert!(Instant::now() >= deadline);
    }

    #[test]
    fn a_push_waits_for_room_until_a_pop_or_the_deadline() {
        let queue = Queue::new(1, 1);
        queue.push(1);
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(queue.push_until(2, soon), Err(2));
        assert!(Instant::now() >= soon);
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| queue.push_until(3, Instant::now() + Duration::from_secs(60)));
            assert_eq!(queue.pop(), Some(1));
            assert_eq!(waiter.join().unwrap(), Ok(()));
        });
        assert_eq!(queue.try_pop(), TryPop::Item(3));
    }

    #[test]
    fn the_last_close_wakes_a_waiting_pop() {
        let queue: Queue<u8> = Queue::new(1, 2);
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| queue.pop());
            queue.close();
            queue.close();
            assert_eq!(waiter.join().unwrap(), None);
        });
    }
}
