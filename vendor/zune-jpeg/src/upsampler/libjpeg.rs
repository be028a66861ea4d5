//! PATCHED for wsi-unet: libjpeg's fancy upsampling (jdsample.c), rounded once as libjpeg
//! rounds, so that decoded 4:2:0 and 4:2:2 tiles match libjpeg-turbo (and so OpenSlide).
//! Upstream zune-jpeg rounds twice for 4:2:0 (vertical, then horizontal, `+2 >> 2` each),
//! which biases chroma up by about a level.

/// `h2v1_fancy_upsample`: `(3 * this + left + 1) >> 2` and `(3 * this + right + 2) >> 2`.
pub fn upsample_horizontal(
    input: &[i16], _ref: &[i16], _in_near: &[i16], _scratch: &mut [i16], output: &mut [i16]
) {
    let width = input.len();
    if width == 1 {
        output[0] = input[0];
        output[1] = input[0];
        return;
    }
    output[0] = input[0];
    output[1] = (input[0] * 3 + input[1] + 2) >> 2;
    for i in 1..width - 1 {
        let this = input[i] * 3;
        output[2 * i] = (this + input[i - 1] + 1) >> 2;
        output[2 * i + 1] = (this + input[i + 1] + 2) >> 2;
    }
    let last = width - 1;
    output[2 * last] = (input[last] * 3 + input[last - 1] + 1) >> 2;
    output[2 * last + 1] = input[last];
}

/// `h1v2_fancy_upsample`: `(3 * this + above + 1) >> 2` and `(3 * this + below + 2) >> 2`.
pub fn upsample_vertical(
    input: &[i16], in_near: &[i16], in_far: &[i16], _scratch_space: &mut [i16], output: &mut [i16]
) {
    let (top, bottom) = output.split_at_mut(input.len());
    for i in 0..input.len() {
        top[i] = (3 * input[i] + in_near[i] + 1) >> 2;
        bottom[i] = (3 * input[i] + in_far[i] + 2) >> 2;
    }
}

/// `h2v2_fancy_upsample`: column sums `3 * this + above` (upper row) or `3 * this + below`
/// (lower row), then `(3 * sum + left_sum + 8) >> 4` and `(3 * sum + right_sum + 7) >> 4`.
pub fn upsample_hv(
    input: &[i16], in_near: &[i16], in_far: &[i16], _scratch_space: &mut [i16], output: &mut [i16]
) {
    let width = input.len();
    let (top, bottom) = output.split_at_mut(output.len() / 2);
    for (out, other) in [(top, in_near), (bottom, in_far)] {
        let colsum = |i: usize| 3 * i32::from(input[i]) + i32::from(other[i]);
        if width == 1 {
            out[0] = ((colsum(0) * 4 + 8) >> 4) as i16;
            out[1] = ((colsum(0) * 4 + 7) >> 4) as i16;
            continue;
        }
        out[0] = ((colsum(0) * 4 + 8) >> 4) as i16;
        out[1] = ((colsum(0) * 3 + colsum(1) + 7) >> 4) as i16;
        for i in 1..width - 1 {
            let this = colsum(i) * 3;
            out[2 * i] = ((this + colsum(i - 1) + 8) >> 4) as i16;
            out[2 * i + 1] = ((this + colsum(i + 1) + 7) >> 4) as i16;
        }
        let last = width - 1;
        out[2 * last] = ((colsum(last) * 3 + colsum(last - 1) + 8) >> 4) as i16;
        out[2 * last + 1] = ((colsum(last) * 4 + 7) >> 4) as i16;
    }
}
