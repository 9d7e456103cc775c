//! The programs' hash tables seen from user space: how full each is, and the entries of
//! processes that exited, removed. Every table is bounded (most are LRUs), but a full LRU
//! recycles entries silently and a dead process's entries match whatever process later gets
//! its pid. So each table's fill is exported, and the entries keyed by a dead process go.
//!
//! aya has no call that reads keys without their types, so this module speaks `bpf(2)`
//! itself: batched lookups where the kernel has them for the map, keys one by one elsewhere.
#![allow(unsafe_code)]

use aya::maps::{Map, MapData};
use aya::Ebpf;
use sightline_common::table::{self, Owner, Table};
use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries read per batched lookup: a bucket must fit whole, and a few thousand keep the
/// syscalls per scan in the tens for the largest table.
const BATCH: usize = 4096;

/// How long after its exit a process's entries are swept: the records it left in the ring
/// buffer are decoded by then, and those may still need its sockets' entries.
const SWEEP_DELAY: Duration = Duration::from_secs(2);
/// Sweeps run at most this often, each for every exit due by then.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Every table's fill is counted this often.
const FILL_INTERVAL: Duration = Duration::from_secs(5);
/// How often the tables are counted when no record came since the last count.
const QUIET_FILL_INTERVAL: Duration = Duration::from_secs(60);
/// Exits waiting for their sweep; past it the oldest is dropped (its entries then age out
/// of their LRUs instead) and counted.
const MAX_PENDING_EXITS: usize = 65_536;

/// When the tables are counted and swept, and the exits waiting for their sweep.
pub struct Watch {
    tables: Tables,
    exits: VecDeque<(u32, Instant)>,
    last_sweep: Instant,
    last_fill: Option<Instant>,
    /// Records came since the last count.
    active: bool,
    /// Exits dropped because too many waited.
    pub exits_dropped: u64,
}

impl Watch {
    pub fn new(tables: Tables) -> Watch {
        Watch {
            tables,
            exits: VecDeque::new(),
            last_sweep: Instant::now(),
            last_fill: None,
            active: false,
            exits_dropped: 0,
        }
    }

    pub fn capacities(&self) -> [u64; table::COUNT as usize] {
        self.tables.capacities()
    }

    /// Process `tgid` ended: its entries go at a sweep after [`SWEEP_DELAY`].
    pub fn exited(&mut self, tgid: u32, now: Instant) {
        if self.exits.len() >= MAX_PENDING_EXITS {
            self.exits.pop_front();
            self.exits_dropped += 1;
        }
        self.exits.push_back((tgid, now));
    }

    /// Sweeps the exits that are due and counts the tables, when it is time to; returns what
    /// was found then. `active`: records came since the last tick. FLOWS is not walked: the
    /// kernel counts its entries itself, and it may hold hundreds of thousands.
    pub fn tick(&mut self, now: Instant, active: bool) -> Option<Scan> {
        self.active |= active;
        // Walking every bucket of every table is most of what an idle sightline does, and on
        // a quiet host the tables hardly change: counted every FILL_INTERVAL while records
        // come, every QUIET_FILL_INTERVAL otherwise.
        let interval = if self.active {
            FILL_INTERVAL
        } else {
            QUIET_FILL_INTERVAL
        };
        let fill_due = self
            .last_fill
            .is_none_or(|t| now.duration_since(t) >= interval);
        let sweep_due = now.duration_since(self.last_sweep) >= SWEEP_INTERVAL
            && self
                .exits
                .front()
                .is_some_and(|(_, at)| now.duration_since(*at) >= SWEEP_DELAY);
        if !fill_due && !sweep_due {
            return None;
        }
        let mut exited = HashSet::new();
        if sweep_due {
            self.last_sweep = now;
            while let Some((tgid, at)) = self.exits.front().copied() {
                if now.duration_since(at) < SWEEP_DELAY {
                    break;
                }
                self.exits.pop_front();
                // A live process under that pid is a newer one: its entries are its own.
                if !std::path::Path::new(&format!("/proc/{tgid}")).exists() {
                    exited.insert(tgid);
                }
            }
        }
        let scan = if fill_due {
            self.last_fill = Some(now);
            self.active = false;
            self.tables.scan(|t| t.map != "FLOWS", &exited)
        } else if exited.is_empty() {
            return None;
        } else {
            self.tables.scan(|t| t.owner != Owner::None, &exited)
        };
        Some(scan)
    }
}

/// One table's map: a descriptor of its own, so the table can be read after the loader has
/// handed its map to another owner.
struct Handle {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
    capacity: u64,
    /// The kernel answers batched lookups for this map (hash maps and LRUs do; a sockhash
    /// does not).
    batch: bool,
}

/// What one scan found: each table's entries (by `table` index; `None` where the table is
/// not scanned or could not be read) and how many entries of exited processes it removed.
#[derive(Debug, Default)]
pub struct Scan {
    pub fill: [Option<u64>; table::COUNT as usize],
    pub removed: u64,
}

pub struct Tables {
    handles: Vec<Option<Handle>>,
    /// Reused between scans: keys and values of one batch.
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl Tables {
    /// Finds every table of `table::ALL` among the loaded maps. Call it before any map is
    /// taken out of `ebpf`.
    pub fn new(ebpf: &Ebpf) -> Tables {
        let handles = table::ALL
            .iter()
            .map(|t| {
                let data = match ebpf.map(t.map)? {
                    Map::HashMap(d) | Map::LruHashMap(d) | Map::SockHash(d) => d,
                    _ => return None,
                };
                Handle::new(t, data)
            })
            .collect();
        Tables {
            handles,
            keys: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Each table's capacity, by `table` index (0 where the map was not found).
    pub fn capacities(&self) -> [u64; table::COUNT as usize] {
        std::array::from_fn(|i| self.handles[i].as_ref().map_or(0, |h| h.capacity))
    }

    /// Counts the entries of every table `wanted` picks, and removes from the tables keyed
    /// by process the entries of the processes in `exited`.
    pub fn scan(&mut self, wanted: impl Fn(&Table) -> bool, exited: &HashSet<u32>) -> Scan {
        let mut scan = Scan::default();
        for (i, t) in table::ALL.iter().enumerate() {
            if !wanted(t) {
                continue;
            }
            let Some(h) = &mut self.handles[i] else {
                continue;
            };
            let sweep = if t.owner == Owner::None || exited.is_empty() {
                None
            } else {
                Some((t.owner, exited))
            };
            if let Ok((n, removed)) = h.scan(sweep, &mut self.keys, &mut self.values) {
                scan.fill[i] = Some(n);
                scan.removed += removed;
            }
        }
        scan
    }
}

impl Handle {
    fn new(t: &Table, data: &MapData) -> Option<Handle> {
        let info = match data.info() {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(map = t.map, "no map info: {e}");
                return None;
            }
        };
        let fd = data.fd().as_fd().try_clone_to_owned().ok()?;
        Some(Handle {
            fd,
            key_size: info.key_size() as usize,
            value_size: info.value_size() as usize,
            capacity: u64::from(info.max_entries()),
            batch: true,
        })
    }

    /// The table's entries, less those removed for belonging to an exited process.
    fn scan(
        &mut self,
        sweep: Option<(Owner, &HashSet<u32>)>,
        keys: &mut Vec<u8>,
        values: &mut Vec<u8>,
    ) -> std::io::Result<(u64, u64)> {
        let mut walk = Walk {
            entries: 0,
            doomed: Vec::new(),
            sweep,
        };
        if self.batch {
            if let Err(e) = self.read_batched(keys, values, &mut walk) {
                // The map type has no batched lookup (the kernel says ENOTSUPP), or the
                // kernel predates it: keys one by one from now on, this scan included.
                tracing::debug!("batched lookup refused ({e}); reading keys one by one");
                self.batch = false;
                walk.entries = 0;
                walk.doomed.clear();
            }
        }
        if !self.batch {
            self.read_keys(&mut walk)?;
        }
        let mut removed = 0;
        for key in &walk.doomed {
            if self.delete(key).is_ok() {
                removed += 1;
            }
        }
        Ok((walk.entries.saturating_sub(removed), removed))
    }

    /// Every key, read in batches (with their values, which the kernel copies regardless).
    fn read_batched(
        &self,
        keys: &mut Vec<u8>,
        values: &mut Vec<u8>,
        walk: &mut Walk<'_>,
    ) -> std::io::Result<()> {
        // Grown, never shrunk: the buffers serve every table in turn, and zeroing megabytes
        // of values at each table was most of an idle sightline's work.
        for (buf, size) in [(&mut *keys, self.key_size), (&mut *values, self.value_size)] {
            if buf.len() < size * BATCH {
                buf.resize(size * BATCH, 0);
            }
        }
        let mut token = [0u8; 8];
        let mut first = true;
        // A table never holds more than its capacity; the bound keeps a table that changes
        // under the walk from holding the scan forever.
        let mut left = self.capacity + BATCH as u64;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { token.as_ptr() as u64 },
                out_batch: token.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: BATCH as u32,
                map_fd: self.fd.as_raw_fd() as u32,
                elem_flags: 0,
                flags: 0,
            };
            let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
            let done = match r {
                Ok(()) => false,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                Err(e) => return Err(e),
            };
            let got = (attr.count as usize).min(BATCH);
            for k in keys.chunks_exact(self.key_size).take(got) {
                walk.visit(k);
            }
            left = left.saturating_sub(got.max(1) as u64);
            if done || left == 0 {
                return Ok(());
            }
            first = false;
        }
    }

    /// Every key, one by one.
    fn read_keys(&self, walk: &mut Walk<'_>) -> std::io::Result<()> {
        let mut key = vec![0u8; self.key_size];
        let mut next = vec![0u8; self.key_size];
        let mut first = true;
        for _ in 0..self.capacity {
            let mut attr = ElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                _pad: 0,
                key: if first { 0 } else { key.as_ptr() as u64 },
                value_or_next: next.as_mut_ptr() as u64,
                flags: 0,
            };
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(e) => return Err(e),
            }
            walk.visit(&next);
            std::mem::swap(&mut key, &mut next);
            first = false;
        }
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> std::io::Result<()> {
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value_or_next: 0,
            flags: 0,
        };
        bpf(BPF_MAP_DELETE_ELEM, &mut attr)
    }
}

/// What a walk over a table's keys keeps: how many there are, and the keys to remove.
struct Walk<'a> {
    entries: u64,
    doomed: Vec<Vec<u8>>,
    sweep: Option<(Owner, &'a HashSet<u32>)>,
}

impl Walk<'_> {
    fn visit(&mut self, key: &[u8]) {
        self.entries += 1;
        if let Some((owner, exited)) = self.sweep {
            if exited.contains(&owner_of(owner, key)) {
                self.doomed.push(key.to_vec());
            }
        }
    }
}

/// The process an entry's key names.
fn owner_of(owner: Owner, key: &[u8]) -> u32 {
    let word = |at: usize| {
        key.get(at..at + 4)
            .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    match owner {
        Owner::None => 0,
        Owner::Tgid => word(0),
        // `pid_tgid` is a u64 whose upper half is the tgid.
        Owner::PidTgid => word(4),
        Owner::At(at) => word(at),
    }
}

/// `union bpf_attr` for the element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next: u64,
    flags: u64,
}

/// `union bpf_attr` for the batch commands.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<()> {
    // SAFETY: `attr` is a `bpf_attr` layout for `cmd` whose pointers point at buffers that
    // live across the call and are as large as the map's key and value sizes require.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut A as *mut libc::c_void,
            std::mem::size_of::<A>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_belongs_to_the_process_its_key_names() {
        let conn = [7u32.to_ne_bytes(), 3i32.to_ne_bytes()].concat();
        assert_eq!(owner_of(Owner::Tgid, &conn), 7);
        let pid_tgid = ((42u64 << 32) | 43).to_ne_bytes();
        assert_eq!(owner_of(Owner::PidTgid, &pid_tgid), 42);
        assert_eq!(owner_of(Owner::PidTgid, &[1, 2]), 0);
        let mut inject = [0u8; 28];
        inject[24..].copy_from_slice(&9u32.to_ne_bytes());
        assert_eq!(owner_of(Owner::At(24), &inject), 9);
    }
}
