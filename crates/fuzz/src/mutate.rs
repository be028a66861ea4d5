//! Mutations of seed files: what a damaged disk, a bad transfer or a crafted file does to
//! them. Offsets favour a file's first and last 4 KiB, where formats keep their headers and
//! directories (the middle is mostly compressed pixels).

/// Values that sit on boundaries: zero, one, signs, all bits, powers of two.
const INTERESTING: [u64; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 40,
    u64::MAX,
];

pub struct Mutator {
    state: u64,
}

impl Mutator {
    pub fn new(seed: u64) -> Mutator {
        Mutator {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// xorshift64*: fast, and the same cases for the same seed.
    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// An offset into `len` bytes: near the start, near the end, or anywhere.
    fn offset(&mut self, len: usize) -> usize {
        match self.below(4) {
            0 => self.below(len.min(4096)),
            1 => len - 1 - self.below(len.min(4096)),
            _ => self.below(len),
        }
    }

    /// One case: a seed with one to four mutations.
    pub fn case(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = seeds[self.below(seeds.len())].clone();
        for _ in 0..1 + self.below(4) {
            if bytes.is_empty() {
                break;
            }
            let at = self.offset(bytes.len());
            match self.below(8) {
                0 => bytes[at] ^= 1 << self.below(8),
                1 => bytes[at] = INTERESTING[self.below(5)] as u8,
                2 => {
                    // A 2-, 4- or 8-byte field, either byte order.
                    let width = [2, 4, 8][self.below(3)];
                    let value = INTERESTING[self.below(INTERESTING.len())];
                    let field = if self.below(2) == 0 {
                        value.to_le_bytes()
                    } else {
                        value.to_be_bytes()
                    };
                    let end = (at + width).min(bytes.len());
                    bytes[at..end].copy_from_slice(&field[..end - at]);
                }
                3 => bytes.truncate(at),
                4 => {
                    let end = (at + 1 + self.below(64)).min(bytes.len());
                    bytes.drain(at..end);
                }
                5 => {
                    let end = (at + 1 + self.below(64)).min(bytes.len());
                    let run = bytes[at..end].to_vec();
                    let to = self.offset(bytes.len());
                    bytes.splice(to..to, run);
                }
                6 => {
                    // A splice: this seed's start, another's end.
                    let other = &seeds[self.below(seeds.len())];
                    let from = self.below(other.len());
                    bytes.truncate(at);
                    bytes.extend_from_slice(&other[from..]);
                }
                _ => {
                    let end = (at + 1 + self.below(256)).min(bytes.len());
                    let value = INTERESTING[self.below(5)] as u8;
                    bytes[at..end].fill(value);
                }
            }
        }
        bytes
    }
}
