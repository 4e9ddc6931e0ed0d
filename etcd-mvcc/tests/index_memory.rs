//! `Store::index_bytes` against the bytes really allocated: a counting
//! global allocator measures the Rust heap growth while keys are loaded
//! through the public API (RocksDB allocates with its own C++ allocator, so
//! the growth is the key index plus small transient buffers), and the
//! reported index bytes must agree within 5% (plus 64 KiB).
//!
//! Also checks the memory goal: at most 109 bytes of index per 64-byte key
//! with one version (half of etcd's ~218 B/key), for sequential prefix keys
//! and for random keys.

// A global allocator can only be written with `unsafe impl GlobalAlloc`;
// it only forwards to the system allocator and counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Mutex;

use etcd_mvcc::{Store, StoreOptions};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The tests measure a process-wide counter: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const KEYS: usize = 100_000;

/// 64-byte keys: a common prefix and a zero-padded counter.
fn sequential_key(i: usize) -> Vec<u8> {
    format!("/registry/benchmark/key-{i:040}").into_bytes()
}

/// 64 pseudo-random bytes (splitmix64), distinct for distinct `i`.
fn random_key(i: usize) -> Vec<u8> {
    let mut x = i as u64;
    let mut out = Vec::with_capacity(64);
    for _ in 0..8 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

/// Loads `KEYS` keys in transactions of 1000 puts; returns
/// (index_bytes, counted heap growth) and checks they agree.
fn load(key: fn(usize) -> Vec<u8>) -> (u64, i64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let keys: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    assert!(keys.iter().all(|k| k.len() == 64));
    let before_index = store.index_bytes();
    let before = LIVE.load(Ordering::SeqCst);
    for (n, batch) in keys.chunks(1000).enumerate() {
        let mut txn = store.write();
        for k in batch {
            txn.put(k, b"value-of-8", 0).unwrap();
        }
        txn.end(n as u64 + 1).unwrap();
    }
    let grown = (LIVE.load(Ordering::SeqCst) - before) as i64;
    let index = store.index_bytes() - before_index;
    assert_eq!(store.index_len(), KEYS);
    let diff = (index as i64 - grown).unsigned_abs();
    assert!(
        diff <= index / 20 + 64 * 1024,
        "index_bytes {index} vs counted heap growth {grown}"
    );

    // deleting every key and compacting gives the memory back
    let mut txn = store.write();
    txn.delete_range(b"\0", &[0]).unwrap();
    txn.delete_range(b"", b"\0").unwrap();
    txn.end(KEYS as u64).unwrap();
    let rev = store.current_revision();
    store.compact(rev, KEYS as u64 + 1).unwrap().wait();
    assert_eq!(store.index_len(), 0);
    assert_eq!(store.index_bytes(), 0);
    (index, grown)
}

#[test]
fn sequential_keys_fit_the_budget_and_are_counted_exactly() {
    let (index, grown) = load(sequential_key);
    let per_key = index as f64 / KEYS as f64;
    println!("sequential 64 B keys: index {per_key:.1} B/key, heap growth {grown}");
    assert!(per_key <= 109.0, "{per_key} B/key");
}

#[test]
fn random_keys_fit_the_budget_and_are_counted_exactly() {
    let (index, grown) = load(random_key);
    let per_key = index as f64 / KEYS as f64;
    println!("random 64 B keys: index {per_key:.1} B/key, heap growth {grown}");
    assert!(per_key <= 109.0, "{per_key} B/key");
}
