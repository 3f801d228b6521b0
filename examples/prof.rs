fn main() {
    let n: u16 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1000);
    let len: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(1024);
    let reps: usize = std::env::args().nth(3).map(|s| s.parse().unwrap()).unwrap_or(5);
    let data: Vec<u8> = (0..len).map(|i| ((i * 7 + 13) % 251) as u8).collect();
    let c = walrusfs::encoding::EncodingConfig::new(n).unwrap();
    for _ in 0..reps {
        let t = std::time::Instant::now();
        let m = c.compute_metadata(&data).unwrap();
        let a = t.elapsed();
        let t = std::time::Instant::now();
        let e = c.encode(&data).unwrap();
        let b = t.elapsed();
        assert_eq!(e.metadata.blob_id, m.blob_id);
        println!("id {:?} ({:.0} MB/s)  encode {:?} ({:.0} MB/s)", a, len as f64 / a.as_secs_f64() / 1e6, b, len as f64 / b.as_secs_f64() / 1e6);
    }
}
