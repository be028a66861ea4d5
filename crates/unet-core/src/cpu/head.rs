//! The head: a 1x1 convolution to a few outputs (3 in the users' checkpoints), then the
//! sigmoid, or the probability map (the sigmoid of each pixel's largest logit).
//!
//! The convolution kernel holds vectors of output channels, of which 3 outputs fill 3 of 16
//! lanes, and spends a multiply-add on every input channel of every pixel. Here each logit is
//! a dot product along the pixel's channels, whole vectors of them, and the partial sums of
//! `LANES` logits are added across their lanes at once ([`Simd::sum_each`]). The activation is
//! read as stored (bf16 widened in registers) against f32 weights and bias: in bf16 the head
//! stays f32 (bf16 weights moved the w4 fixture's output from 7.5e-2 to 9.4e-2 off PyTorch's).

use std::cell::Cell;

use super::simd::{Compiled, Element, Kernel, Simd};
use crate::engine::Output;

/// Lanes of the widest vector ([`Simd::LANES`] of AVX-512): each output's weights are padded
/// with zeros to a multiple of it, so that every instruction set loads them as whole vectors.
const WIDEST: usize = 16;

/// The head's weights, per output over the activation's channels as stored.
pub struct Head {
    /// Input channels as stored (the layer's rounded up to the kernel's group; those past the
    /// layer's have zero weights).
    pub inputs: usize,
    pub outputs: usize,
    /// Output `o`'s weights at `o * stride..`, zeros from `inputs` to `stride`.
    weights: Vec<f32>,
    stride: usize,
    bias: Vec<f32>,
}

impl Head {
    /// `weight(input, output)` for the layer's `inputs`; `stored` input channels are read.
    pub fn new(
        (inputs, stored, outputs): (usize, usize, usize),
        weight: impl Fn(usize, usize) -> f32,
        bias: &[f32],
    ) -> Head {
        assert!(inputs <= stored && bias.len() == outputs);
        let stride = stored.next_multiple_of(WIDEST);
        let mut weights = vec![0.0; outputs * stride];
        for (o, row) in weights.chunks_exact_mut(stride).enumerate() {
            for (c, value) in row[..inputs].iter_mut().enumerate() {
                *value = weight(c, o);
            }
        }
        Head {
            inputs: stored,
            outputs,
            weights,
            stride,
            bias: bias.to_vec(),
        }
    }
}

/// One task: `rows` rows of `columns` pixels through the head. Pixel `(y, x)`'s `inputs`
/// values are at `input[y * row + x * inputs..]`; what it gives goes to value `y * columns +
/// x` of each of `maps`: its probability (one map), or each output's sigmoid (one map each).
/// Every read and write is checked against these slices: running it has no contract beyond
/// the kernel's instruction set.
#[derive(Clone, Copy)]
pub struct Rows<'a, E> {
    pub head: &'a Head,
    pub input: &'a [E],
    pub row: usize,
    pub rows: usize,
    pub columns: usize,
    pub output: Output,
    pub maps: &'a [&'a [Cell<f32>]],
}

impl<E: Element> Compiled for Rows<'_, E> {
    type Elem = E;

    #[inline(always)]
    unsafe fn run<K: Kernel<Elem = E>>(self, kernel: K) {
        let Rows {
            head,
            input,
            row,
            rows,
            columns,
            output,
            maps,
        } = self;
        let (simd, lanes, inputs) = (kernel.simd(), K::Simd::LANES, head.inputs);
        let expected_maps = match output {
            Output::Probability => 1,
            Output::Sigmoid => head.outputs,
        };
        assert!(lanes <= WIDEST && maps.len() == expected_maps);
        assert!(maps.iter().all(|map| map.len() >= rows * columns));
        // Each output's logits of the `lanes` pixels in hand.
        let mut logits = vec![0.0f32; head.outputs * lanes];
        let mut sums = [simd.zero(); WIDEST];
        for y in 0..rows {
            for first in (0..columns).step_by(lanes) {
                let count = lanes.min(columns - first);
                let pixels = &input[y * row + first * inputs..][..count * inputs];
                for (o, of_output) in logits.chunks_exact_mut(lanes).enumerate() {
                    let weights = &head.weights[o * head.stride..][..head.stride];
                    for (i, sum) in sums[..lanes].iter_mut().enumerate() {
                        *sum = simd.zero();
                        let Some(pixel) = pixels.get(i * inputs..(i + 1) * inputs) else {
                            continue;
                        };
                        for c in (0..inputs).step_by(lanes) {
                            // SAFETY: `c + n <= inputs`, the pixel's length; the weights are
                            // padded to whole vectors of the widest lanes, which `lanes`
                            // divides (`c + lanes <= stride`).
                            unsafe {
                                let n = lanes.min(inputs - c);
                                let x = kernel.load_values(pixel.as_ptr().add(c), n);
                                let w = simd.load(weights.as_ptr().add(c));
                                *sum = simd.mul_add(x, w, *sum);
                            }
                        }
                    }
                    let sum = simd.add(simd.sum_each(&sums[..lanes]), simd.splat(head.bias[o]));
                    // SAFETY: `of_output` holds `lanes` values.
                    unsafe { simd.store_first(of_output.as_mut_ptr(), sum, lanes) };
                }
                let at = y * columns + first;
                match output {
                    // The largest logit's sigmoid is the largest sigmoid (the sigmoid is
                    // monotonic, in f32 too): a third of the exponentials.
                    Output::Probability => {
                        for (i, value) in maps[0][at..at + count].iter().enumerate() {
                            let logit = (0..head.outputs)
                                .map(|o| logits[o * lanes + i])
                                .fold(f32::MIN, f32::max);
                            value.set(sigmoid(logit));
                        }
                    }
                    Output::Sigmoid => {
                        for (map, logits) in maps.iter().zip(logits.chunks_exact(lanes)) {
                            for (value, &logit) in map[at..at + count].iter().zip(logits) {
                                value.set(sigmoid(logit));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The logistic function, `1 / (1 + e^-x)`, in f32.
fn sigmoid(logit: f32) -> f32 {
    1.0 / (1.0 + (-logit).exp())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::{Head, Rows};
    use crate::cpu::simd::Element;
    use crate::cpu::{Bf16Isa, F32Isa, Isa};
    use crate::engine::Output;

    /// A head of 3 outputs over 21 channels (whole vectors and a part, in either precision's
    /// group) and 37 pixels a row (whole vectors of pixels and a part) on every kernel this
    /// CPU has, against the same head summed in f64 from the stored values: each sigmoid and
    /// the probability map, which is exactly the largest of them.
    #[test]
    fn every_kernel_gives_the_heads_sums() {
        fn check<I: Isa>(tolerance: f64) {
            let (inputs, outputs, rows, columns, row) = (21, 3, 2, 37, 40 * 22);
            // Rounded up to bf16's pairs.
            let stored = 22;
            let value = |i: usize| ((i * 7919 + 13) % 251) as f64 / 125.0 - 1.0;
            let weight = |c: usize, o: usize| (value(c * 31 + o * 7) / 4.0) as f32;
            let bias: Vec<f32> = (0..outputs).map(|o| value(o * 3) as f32).collect();
            let head = Head::new((inputs, stored, outputs), weight, &bias);
            let input: Vec<I::Elem> = (0..rows * row)
                .map(|i| {
                    let channel = i % row % stored;
                    I::Elem::from_f32(if channel < inputs {
                        value(i) as f32
                    } else {
                        0.0
                    })
                })
                .collect();
            let expected: Vec<[f64; 3]> = (0..rows * columns)
                .map(|p| {
                    let pixel = &input[(p / columns) * row + (p % columns) * stored..];
                    std::array::from_fn(|o| {
                        let logit: f64 = (0..inputs)
                            .map(|c| f64::from(weight(c, o)) * f64::from(pixel[c].to_f32()))
                            .sum::<f64>()
                            + f64::from(bias[o]);
                        1.0 / (1.0 + (-logit).exp())
                    })
                })
                .collect();
            for isa in I::available() {
                let run = |output: Output, maps: usize| {
                    let mut values = vec![vec![f32::NAN; rows * columns]; maps];
                    let cells: Vec<&[Cell<f32>]> = values
                        .iter_mut()
                        .map(|map| Cell::from_mut(&mut map[..]).as_slice_of_cells())
                        .collect();
                    let task = Rows {
                        head: &head,
                        input: &input,
                        row,
                        rows,
                        columns,
                        output,
                        maps: &cells,
                    };
                    unsafe { isa.run(&task) };
                    values
                };
                let sigmoids = run(Output::Sigmoid, outputs);
                let map = run(Output::Probability, 1).remove(0);
                for (p, expected) in expected.iter().enumerate() {
                    for (o, &expected) in expected.iter().enumerate() {
                        let got = f64::from(sigmoids[o][p]);
                        assert!(
                            (got - expected).abs() <= tolerance,
                            "{} pixel {p} output {o}: {got} against {expected}",
                            isa.name()
                        );
                    }
                    let largest = (0..outputs)
                        .map(|o| sigmoids[o][p])
                        .fold(f32::MIN, f32::max);
                    assert_eq!(map[p], largest, "{} pixel {p}", isa.name());
                }
            }
        }
        check::<F32Isa>(1e-6);
        check::<Bf16Isa>(1e-6);
    }
}
