//! Values in whole cache lines. The allocator places a large `Vec` 16 bytes past a page
//! boundary, so every 64-byte row an AMX tile load reads straddled two cache lines: at 64
//! input channels, where weights and activations both sat that way, a 3x3 convolution ran at
//! half the rate it reaches when both start on a line (benches/RESULTS.md).

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use bytemuck::{Pod, Zeroable};

/// One 64-byte cache line, aligned as one.
#[derive(Clone, Copy, Zeroable, Pod)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A growable run of `E` that starts on a cache line; a slice of `E` otherwise.
pub struct Aligned<E> {
    lines: Vec<Line>,
    len: usize,
    element: PhantomData<E>,
}

impl<E> Default for Aligned<E> {
    fn default() -> Aligned<E> {
        Aligned {
            lines: Vec::new(),
            len: 0,
            element: PhantomData,
        }
    }
}

impl<E: Pod> Aligned<E> {
    /// `len` copies of `value`.
    pub fn filled(len: usize, value: E) -> Aligned<E> {
        let mut values = Aligned::default();
        values.resize(len, value);
        values
    }

    /// As `Vec::resize`: values past the old length are `value`, those before it are kept.
    pub fn resize(&mut self, len: usize, value: E) {
        let (old, kept_lines) = (self.len, self.lines.len());
        self.lines
            .resize((len * size_of::<E>()).div_ceil(64), Line::zeroed());
        self.len = len;
        // New lines are zeros already: with zeros, only the kept lines' tail is written again.
        let zeros = bytemuck::bytes_of(&value).iter().all(|&byte| byte == 0);
        let end = if zeros {
            len.min(kept_lines * size_of::<Line>() / size_of::<E>())
        } else {
            len
        };
        if end > old {
            self[old..end].fill(value);
        }
    }

    /// Values it holds without reallocating.
    pub fn capacity(&self) -> usize {
        self.lines.capacity() * size_of::<Line>() / size_of::<E>()
    }
}

impl<E: Pod> Deref for Aligned<E> {
    type Target = [E];

    fn deref(&self) -> &[E] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl<E: Pod> DerefMut for Aligned<E> {
    fn deref_mut(&mut self) -> &mut [E] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::Aligned;

    #[test]
    fn values_start_on_a_cache_line_and_keep_what_was_written() {
        let mut values = Aligned::filled(3, bf16::ONE);
        values[2] = bf16::from_f32(5.0);
        values.resize(100, bf16::ZERO);
        assert_eq!(values.as_ptr() as usize % 64, 0);
        assert_eq!(
            (values.len(), values[2], values[3]),
            (100, bf16::from_f32(5.0), bf16::ZERO)
        );
        assert!(values.capacity() >= 100);
        values.resize(1, bf16::ZERO);
        assert_eq!(&values[..], &[bf16::ONE]);
    }
}
