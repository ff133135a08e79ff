//! What the current thread holds on the heap, from jemalloc's per-thread counters: used to
//! measure what building an ONNX Runtime session leaves allocated. In the imgclass binary
//! jemalloc serves every allocation of the process, the C and C++ libraries' included; where it
//! does not (a binary with another malloc), there is no such figure.

use std::sync::OnceLock;

/// Bytes this thread has allocated and not freed itself since it started (`None` where jemalloc
/// is not the process's malloc). Memory freed by another thread is not subtracted, so read it
/// before and after work whose allocations stay on this thread.
pub fn thread_net_allocated() -> Option<u64> {
    static COUNTS: OnceLock<bool> = OnceLock::new();
    // Whether an allocation through malloc moves the counters.
    let counts = *COUNTS.get_or_init(|| {
        let before = read();
        let probe = std::hint::black_box(vec![0u8; 1 << 20]);
        let during = read();
        drop(probe);
        matches!((before, during), (Some(b), Some(d)) if d >= b + (1 << 20))
    });
    if counts {
        read()
    } else {
        None
    }
}

fn read() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use tikv_jemalloc_ctl::thread::{allocatedp, deallocatedp};
        let allocated = allocatedp::read().ok()?.get();
        let deallocated = deallocatedp::read().ok()?.get();
        Some(allocated.saturating_sub(deallocated))
    }
    #[cfg(not(target_os = "linux"))]
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_what_this_thread_holds_when_jemalloc_is_the_malloc() {
        // In the workspace's build jemalloc replaces malloc (the binary's allocator's feature);
        // a build of this crate alone keeps the system's, and has no figure.
        let Some(before) = super::thread_net_allocated() else {
            return;
        };
        let held = vec![1u8; 8 << 20];
        let during = super::thread_net_allocated().unwrap();
        assert!(during >= before + (8 << 20), "{before} → {during}");
        drop(held);
        assert!(super::thread_net_allocated().unwrap() < during);
    }
}
