//! The root context's workers: the one of the current configuration, and those of earlier
//! configurations of the same root context, kept (and ticked) until nothing can add to them and
//! they hold no event. Host-free, so the rule is tested natively.

use std::rc::Rc;

/// A worker's buffer, as far as retiring it is concerned.
pub trait Buffered {
    /// Events pushed and not yet sent or dropped (batches in flight included).
    fn buffered(&self) -> usize;
}

/// The current worker, and the retired ones still delivering.
pub struct Workers<W> {
    current: Option<Rc<W>>,
    retired: Vec<Rc<W>>,
}

impl<W> Default for Workers<W> {
    fn default() -> Self {
        Self {
            current: None,
            retired: Vec::new(),
        }
    }
}

impl<W: Buffered> Workers<W> {
    /// The worker new streams push into.
    pub fn current(&self) -> Option<&Rc<W>> {
        self.current.as_ref()
    }

    /// Every worker: the current one first, then the retired ones.
    pub fn iter(&self) -> impl Iterator<Item = &Rc<W>> {
        self.current.iter().chain(self.retired.iter())
    }

    /// A new configuration's worker takes over. The previous one is retired: it keeps
    /// delivering what it holds under the configuration it was taken with.
    pub fn replace(&mut self, worker: W) {
        if let Some(previous) = self.current.replace(Rc::new(worker)) {
            self.retired.push(previous);
        }
        self.prune();
    }

    /// Lets a retired worker go once nothing can reach it: no event buffered, and no stream
    /// still holding it. A stream in flight across the reconfiguration pushes its event into
    /// the worker it started with when it ends; were that worker gone, the event would be
    /// counted emitted and never sent nor dropped.
    pub fn prune(&mut self) {
        self.retired
            .retain(|w| Rc::strong_count(w) > 1 || w.buffered() > 0);
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use std::cell::Cell;

    use super::*;

    #[derive(Default)]
    struct Fake {
        config: u32,
        buffered: Cell<usize>,
    }

    impl Buffered for Fake {
        fn buffered(&self) -> usize {
            self.buffered.get()
        }
    }

    fn fake(config: u32) -> Fake {
        Fake {
            config,
            ..Fake::default()
        }
    }

    fn configs(workers: &Workers<Fake>) -> Vec<u32> {
        workers.iter().map(|w| w.config).collect()
    }

    #[test]
    fn an_idle_retired_worker_goes_at_once() {
        let mut workers = Workers::default();
        workers.replace(fake(1));
        workers.replace(fake(2));
        assert_eq!(configs(&workers), [2]);
        assert_eq!(workers.current().map(|w| w.config), Some(2));
    }

    #[test]
    fn a_retired_worker_stays_while_it_holds_events() {
        let mut workers = Workers::default();
        workers.replace(fake(1));
        if let Some(w) = workers.current() {
            w.buffered.set(3);
        }
        workers.replace(fake(2));
        assert_eq!(configs(&workers), [2, 1]);
        for w in workers.iter() {
            w.buffered.set(0);
        }
        workers.prune();
        assert_eq!(configs(&workers), [2]);
    }

    #[test]
    fn a_retired_worker_stays_while_a_stream_holds_it() {
        let mut workers = Workers::default();
        workers.replace(fake(1));
        // A stream started under configuration 1, still in flight, nothing buffered yet.
        let stream = workers.current().map(Rc::clone);
        workers.replace(fake(2));
        workers.prune();
        assert_eq!(
            configs(&workers),
            [2, 1],
            "the stream's worker is still ticked"
        );
        // The stream ends: its event goes into the worker it holds, which is still delivered.
        if let Some(stream) = stream {
            stream.buffered.set(1);
        }
        workers.prune();
        assert_eq!(configs(&workers), [2, 1]);
        // Sent: the worker goes.
        for w in workers.iter() {
            w.buffered.set(0);
        }
        workers.prune();
        assert_eq!(configs(&workers), [2]);
    }
}
