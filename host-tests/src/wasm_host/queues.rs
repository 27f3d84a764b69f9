//! Shared queues (`proxy_register/resolve/enqueue/dequeue_shared_queue`), as proxy-wasm-cpp-host
//! keeps them: one per (vm_id, name), FIFO, and `on_queue_ready` goes to the root context that
//! registered the name last.

use std::collections::{BTreeMap, VecDeque};

#[derive(Debug)]
struct Queue {
    /// Index of the VM whose root context is told about new items.
    owner: usize,
    root_context: u32,
    items: VecDeque<Vec<u8>>,
}

#[derive(Debug, Default)]
pub(crate) struct SharedQueues {
    ids: BTreeMap<(String, Vec<u8>), u32>,
    queues: BTreeMap<u32, Queue>,
    next_id: u32,
}

/// Where `on_queue_ready` must go after an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueOwner {
    pub vm: usize,
    pub root_context: u32,
}

impl SharedQueues {
    /// Registers (or takes over) a queue; the id is stable for its (vm_id, name).
    pub(crate) fn register(&mut self, vm_id: &str, name: &[u8], owner: QueueOwner) -> u32 {
        let key = (vm_id.to_owned(), name.to_vec());
        if let Some(&id) = self.ids.get(&key) {
            if let Some(queue) = self.queues.get_mut(&id) {
                queue.owner = owner.vm;
                queue.root_context = owner.root_context;
            }
            return id;
        }
        self.next_id += 1;
        let id = self.next_id;
        self.ids.insert(key, id);
        self.queues.insert(
            id,
            Queue {
                owner: owner.vm,
                root_context: owner.root_context,
                items: VecDeque::new(),
            },
        );
        id
    }

    pub(crate) fn resolve(&self, vm_id: &str, name: &[u8]) -> Option<u32> {
        self.ids.get(&(vm_id.to_owned(), name.to_vec())).copied()
    }

    /// Appends an item; `None` when no such queue.
    pub(crate) fn enqueue(&mut self, id: u32, value: &[u8]) -> Option<QueueOwner> {
        let queue = self.queues.get_mut(&id)?;
        queue.items.push_back(value.to_vec());
        Some(QueueOwner {
            vm: queue.owner,
            root_context: queue.root_context,
        })
    }

    /// The oldest item: `None` when no such queue, `Some(None)` when it is empty.
    pub(crate) fn dequeue(&mut self, id: u32) -> Option<Option<Vec<u8>>> {
        self.queues
            .get_mut(&id)
            .map(|queue| queue.items.pop_front())
    }

    pub(crate) fn len(&self, id: u32) -> usize {
        self.queues.get(&id).map_or(0, |queue| queue.items.len())
    }
}
