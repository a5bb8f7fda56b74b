//! The synthetic stream of the pattern benchmark: events ~100 ms apart over
//! `keys` keys, of type A (10 %), B (30 %), C (10 %) or D (50 %).

/// `n` JSON lines, deterministic for `seed`.
pub fn lines(n: usize, keys: u64, seed: u64) -> impl Iterator<Item = String> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        // xorshift64*: a fixed, dependency-free generator keeps the stream identical everywhere.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(2685821657736338717)
    };
    let start: i64 = 1_522_540_800_000;
    (0..n).map(move |i| {
        let r = next();
        let key = r % keys;
        let kind = match (r >> 32) % 10 {
            0 => "A",
            1..=3 => "B",
            4 => "C",
            _ => "D",
        };
        let jitter = ((r >> 48) % 50) as i64;
        let ts = start + i as i64 * 100 + jitter;
        format!(
            "{{\"user\":{key},\"ts\":{ts},\"type\":\"{kind}\",\"amount\":{}.{:02}}}",
            (r >> 20) % 500,
            (r >> 8) % 100
        )
    })
}
