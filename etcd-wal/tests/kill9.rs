//! kill -9 of a real process: a child (this test binary re-executed with an
//! environment variable) appends from several threads and prints each
//! acknowledged index; the parent SIGKILLs it at a random-ish moment, reopens
//! the WAL and checks that every printed index is there. Three rounds, each
//! child continuing the log the previous one left.

use bytes::Bytes;
use etcd_wal::{Entry, HardState, Wal, WalOptions, WriteBatch};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ENV: &str = "ETCD_WAL_KILL9_DIR";

fn opts() -> WalOptions {
    WalOptions {
        segment_size: 128 * 1024,
        ..WalOptions::default()
    }
}

fn payload(index: u64) -> Bytes {
    Bytes::from(format!("{index:08}-").repeat(1 + (index % 40) as usize))
}

/// The child: runs only when re-executed by the parent.
#[test]
fn kill9_child() {
    let Ok(dir) = std::env::var(ENV) else { return };
    let (wal, rec) = Wal::open(Path::new(&dir), opts()).expect("child open");
    let wal = Arc::new(wal);
    let next = Arc::new(Mutex::new(rec.entries.last().map_or(0, |e| e.index) + 1));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (wal, next, out) = (wal.clone(), next.clone(), out.clone());
            std::thread::spawn(move || loop {
                let (last, ticket) = {
                    let mut n = next.lock().unwrap();
                    let first = *n;
                    let last = first + first % 3;
                    let batch = WriteBatch {
                        entries: (first..=last)
                            .map(|i| Entry {
                                index: i,
                                term: 1,
                                data: payload(i),
                            })
                            .collect(),
                        hard_state: Some(HardState {
                            term: 1,
                            vote: 1,
                            commit: first,
                        }),
                        snapshot: None,
                    };
                    let t = wal.append(batch).expect("append");
                    *n = last + 1;
                    (last, t)
                };
                ticket.wait().expect("wait");
                let mut o = out.lock().unwrap();
                writeln!(o, "acked {last}").unwrap();
                o.flush().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn kill9_acknowledged_entries_survive() {
    if std::env::var(ENV).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    Wal::create(&dir, opts(), b"kill9")
        .unwrap()
        .close()
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut total_acked = 0;
    for round in 0..3u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", "kill9_child", "--nocapture", "--test-threads=1"])
            .env(ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let acked = acked.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(n) = line
                        .strip_prefix("acked ")
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        acked.lock().unwrap().push(n);
                    }
                }
            })
        };
        // Kill after a number of acks that varies by round, or a deadline.
        let want = 200 + round * 150;
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked.lock().unwrap().len() < want as usize && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "round {round}: the child acknowledged nothing"
        );

        let (wal, rec) = Wal::open(&dir, opts()).unwrap();
        let last = rec.entries.last().map_or(0, |e| e.index);
        for (i, e) in rec.entries.iter().enumerate() {
            assert_eq!(
                e.index,
                i as u64 + 1,
                "round {round}: entries are contiguous from 1"
            );
            assert_eq!(
                e.data,
                payload(e.index),
                "round {round}: entry {} intact",
                e.index
            );
        }
        let max = *acked.iter().max().unwrap();
        assert!(
            last >= max,
            "round {round}: acknowledged index {max} lost (log ends at {last})"
        );
        total_acked += acked.len();
        wal.close().unwrap();
    }
    eprintln!("{total_acked} acknowledged batches checked across 3 SIGKILLs");
}
