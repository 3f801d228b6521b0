fn main() {
    for (n, len) in [(10u16, 100usize), (4, 0), (7, 1), (10, 5000), (1000, 1024)] {
        let data: Vec<u8> = (0..len).map(|i| ((i * 7 + 13) % 256) as u8).collect();
        let c = walrusfs::encoding::EncodingConfig::new(n).unwrap();
        let t = std::time::Instant::now();
        let m = c.compute_metadata(&data).unwrap();
        let e = c.encode(&data).unwrap();
        assert_eq!(e.metadata, m);
        let root: String = m.metadata.root_hash().bytes().iter().map(|b| format!("{b:02x}")).collect();
        println!("{n} {len} {} {root} {:?}", m.blob_id, t.elapsed());
    }
}
