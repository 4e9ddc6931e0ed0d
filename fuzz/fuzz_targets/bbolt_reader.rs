//! bbolt files from untrusted hands (an etcd data directory or snapshot to
//! import): the reader must answer with data or an error, never panic,
//! loop or allocate without bound. Inputs are small pages (512 bytes) so
//! the fuzzer reaches branch and overflow pages; a valid seed file is
//! built by the writer when the input is short.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = if data.len() < 1024 {
        // Seed: a small valid file, with the input as every value, then
        // XORed into its pages after the metas (which stay valid, so the
        // damage reaches the tree walk).
        let mut w = etcd_bbolt::Writer::new(std::io::Cursor::new(Vec::new()), 512).unwrap();
        w.begin_bucket(b"key").unwrap();
        for i in 0u16..200 {
            w.put(&i.to_be_bytes(), data).unwrap();
        }
        let (out, _) = w.finish(1).unwrap();
        let mut bytes = out.into_inner();
        for (i, b) in data.iter().enumerate() {
            let at = 1024 + (i * 131) % (bytes.len() - 1024);
            bytes[at] ^= b;
        }
        bytes
    } else {
        data.to_vec()
    };
    if let Ok(r) = etcd_bbolt::Reader::from_bytes(bytes) {
        let _ = r.check();
        if let Ok(buckets) = r.buckets() {
            for b in buckets {
                let _ = r.for_each(&b, |_, _| Ok(()));
            }
        }
    }
});
