//! The Python names a checkpoint's pickle refers to, found by walking its opcodes (never by
//! running them), so that `convert` can name a checkpoint that would call something other
//! than PyTorch's tensor rebuilding, `os.system` say, when Python's `torch.load` unpickled it.

use std::io::Read;
use std::path::Path;

/// Pickled code is read at most this far: a state dict's pickle is a few hundred kB.
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Modules whose names a PyTorch checkpoint may call when unpickled; anything else is worth
/// a warning.
const EXPECTED_MODULES: [&str; 4] = ["torch", "collections", "numpy", "_codecs"];

/// `module.name` of every global the checkpoint's pickle names outside [`EXPECTED_MODULES`],
/// once each, in order. A file that cannot be read yields none (the reader reports it).
pub fn unexpected_globals(path: &Path) -> Vec<String> {
    let Some(pickle) = pickle_bytes(path) else {
        return Vec::new();
    };
    let mut found: Vec<String> = Vec::new();
    for name in globals(&pickle) {
        let module = name.split('.').next().unwrap_or("");
        if !EXPECTED_MODULES.contains(&module) && !found.contains(&name) {
            found.push(name);
        }
    }
    found
}

/// `archive/data.pkl` of a zip checkpoint, or the start of a legacy one (its pickles first).
fn pickle_bytes(path: &Path) -> Option<Vec<u8>> {
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    match zip::ZipArchive::new(&file) {
        Ok(mut archive) => {
            let index = (0..archive.len()).find(|&i| {
                archive
                    .by_index_raw(i)
                    .is_ok_and(|entry| entry.name().is_ok_and(|n| n.ends_with("data.pkl")))
            })?;
            archive
                .by_index(index)
                .ok()?
                .take(MAX_PICKLE_BYTES)
                .read_to_end(&mut bytes)
                .ok()?;
        }
        Err(_) => {
            std::fs::File::open(path)
                .ok()?
                .take(MAX_PICKLE_BYTES)
                .read_to_end(&mut bytes)
                .ok()?;
        }
    }
    Some(bytes)
}

/// The globals named by the pickle opcodes in `bytes` (consecutive pickles included), until
/// the bytes end or stop being pickle opcodes. `STACK_GLOBAL` takes its two names from the
/// last two strings pushed, which is how pickles of protocol 4 and later write them.
fn globals(bytes: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut strings: Vec<String> = Vec::new();
    let mut memo: std::collections::HashMap<u64, String> = std::collections::HashMap::new();
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let slice = bytes.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(slice)
    };
    let uint = |slice: &[u8]| slice.iter().rev().fold(0u64, |v, &b| (v << 8) | b as u64);
    let line = |at: &mut usize| -> Option<String> {
        let end = bytes.get(*at..)?.iter().position(|&b| b == b'\n')?;
        let text = String::from_utf8_lossy(&bytes[*at..*at + end]).into_owned();
        *at += end + 1;
        Some(text)
    };
    while let Some(&op) = bytes.get(at) {
        at += 1;
        let step: Option<()> = (|| {
            match op {
                // No argument.
                b'(' | b'.' | b'0' | b'2' | b'1' | b'N' | b')' | b']' | b'}' | b'a' | b'e'
                | b'b' | b'd' | b'l' | b't' | b'o' | b's' | b'u' | b'R' | 0x85 | 0x86 | 0x87
                | 0x88 | 0x89 | 0x81 | 0x92 | 0x8f | 0x90 | 0x91 | b'Q' | 0x97 | 0x98 => {}
                0x94 => {
                    // MEMOIZE: the top value under the next memo index.
                    if let Some(top) = strings.last() {
                        memo.insert(memo.len() as u64, top.clone());
                    }
                }
                0x93 => {
                    let name = strings.pop()?;
                    let module = strings.pop()?;
                    found.push(format!("{module}.{name}"));
                }
                // Fixed-size arguments.
                b'K' | 0x80 | 0x82 => {
                    take(&mut at, 1)?;
                }
                b'M' | 0x83 => {
                    take(&mut at, 2)?;
                }
                b'J' | 0x84 => {
                    take(&mut at, 4)?;
                }
                b'G' | 0x95 => {
                    take(&mut at, 8)?;
                }
                b'q' | b'r' => {
                    let index = uint(take(&mut at, if op == b'q' { 1 } else { 4 })?);
                    if let Some(top) = strings.last() {
                        memo.insert(index, top.clone());
                    }
                }
                b'h' | b'j' => {
                    let index = uint(take(&mut at, if op == b'h' { 1 } else { 4 })?);
                    strings.push(memo.get(&index).cloned().unwrap_or_default());
                }
                // Length-prefixed strings and bytes.
                b'X' | 0x8c | 0x8d | b'U' | b'T' => {
                    let width = match op {
                        0x8c | b'U' => 1,
                        0x8d => 8,
                        _ => 4,
                    };
                    let len = uint(take(&mut at, width)?) as usize;
                    let text = String::from_utf8_lossy(take(&mut at, len)?).into_owned();
                    strings.push(text);
                }
                b'C' | b'B' | 0x8e | 0x96 | 0x8a | 0x8b => {
                    let width = match op {
                        b'C' | 0x8a => 1,
                        b'B' | 0x8b => 4,
                        _ => 8,
                    };
                    let len = uint(take(&mut at, width)?) as usize;
                    take(&mut at, len)?;
                }
                // Newline-terminated arguments.
                b'I' | b'L' | b'F' | b'P' | b'g' | b'p' => {
                    line(&mut at)?;
                }
                b'S' | b'V' => strings.push(line(&mut at)?),
                b'c' | b'i' => {
                    let module = line(&mut at)?;
                    let name = line(&mut at)?;
                    found.push(format!("{module}.{name}"));
                }
                _ => return None,
            }
            Some(())
        })();
        if step.is_none() {
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::globals;

    #[test]
    fn globals_of_protocol_2_and_4_pickles() {
        // Protocol 2: GLOBAL 'posix system', then a tuple and REDUCE.
        let v2 = b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00ls\x85R.";
        assert_eq!(globals(v2), ["posix.system"]);
        // Protocol 4: two short strings, memoised, then STACK_GLOBAL.
        let v4 = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94.";
        assert_eq!(globals(v4), ["builtins.eval"]);
    }
}
