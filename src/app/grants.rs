//! The grants of the clients with a token, beside the clients (most have none): each
//! distinct grant once, in a slot counting its connections, and each such client's
//! slot in a small map (4 + 4 bytes an entry). A client without an entry is
//! anonymous (`Auth::anonymous`).

use std::collections::HashMap;
use std::rc::Rc;

use slab::Slab;

use crate::auth::Grant;

#[derive(Default)]
pub(super) struct Grants {
    /// Each grant in use, and how many connections use it.
    slots: Slab<(Rc<Grant>, u32)>,
    /// A grant's slot, by its address.
    slot_of_grant: HashMap<*const Grant, u32>,
    /// A client's slot, by client id.
    slot_of_client: HashMap<u32, u32>,
}

impl Grants {
    /// No client has a token: nothing to look up.
    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.slot_of_client.is_empty()
    }

    /// The grant of client `id`, if it has a token.
    #[inline]
    pub(super) fn get(&self, id: usize) -> Option<&Rc<Grant>> {
        if self.is_empty() {
            return None;
        }
        let slot = *self.slot_of_client.get(&(id as u32))?;
        self.slots.get(slot as usize).map(|(grant, _)| grant)
    }

    /// Gives client `id` (which has none) `grant`; true when no other client had it.
    pub(super) fn attach(&mut self, id: usize, grant: Rc<Grant>) -> bool {
        let (slot, new) = match self.slot_of_grant.get(&Rc::as_ptr(&grant)) {
            Some(&slot) => (slot, false),
            None => {
                let ptr = Rc::as_ptr(&grant);
                let slot = self.slots.insert((grant, 0)) as u32;
                self.slot_of_grant.insert(ptr, slot);
                (slot, true)
            }
        };
        if let Some((_, count)) = self.slots.get_mut(slot as usize) {
            *count += 1;
        }
        self.slot_of_client.insert(id as u32, slot);
        new
    }

    /// Takes client `id`'s grant away: the grant, and whether it was its last client.
    pub(super) fn detach(&mut self, id: usize) -> Option<(Rc<Grant>, bool)> {
        let slot = self.slot_of_client.remove(&(id as u32))? as usize;
        let (grant, count) = self.slots.get_mut(slot)?;
        *count -= 1;
        if *count > 0 {
            return Some((Rc::clone(grant), false));
        }
        let (grant, _) = self.slots.remove(slot);
        self.slot_of_grant.remove(&Rc::as_ptr(&grant));
        Some((grant, true))
    }

    /// The clients whose grant `pick` picks.
    pub(super) fn clients_where(&self, pick: impl Fn(&Grant) -> bool) -> Vec<usize> {
        let slots: Vec<u32> = self.slots.iter().filter(|(_, (g, _))| pick(g)).map(|(s, _)| s as u32).collect();
        if slots.is_empty() {
            return Vec::new();
        }
        self.slot_of_client.iter().filter(|(_, s)| slots.contains(s)).map(|(&id, _)| id as usize).collect()
    }

    /// Grants in use (distinct).
    pub(super) fn distinct(&self) -> usize {
        self.slots.len()
    }
}
