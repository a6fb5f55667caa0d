// Exact f32 helpers for the kernels that must match the CPU bit for bit.
//
// Vulkan's f32 division is not correctly rounded (it may be 2.5 ulp off), so
// every division whose result is checked exactly goes through `fdiv`: integer
// long division of the 24-bit significands with IEEE 754 round half to even,
// subnormal operands and results included. `+ - *` are correctly rounded on
// every Vulkan device, so only the division needs this.

const EXACT_QNAN: u32 = 0x7fc00000u;
const EXACT_INF: u32 = 0x7f800000u;

// |x| = m * 2^(e - 150) with m in [2^23, 2^24): the significand and biased
// exponent of a finite nonzero magnitude `a` (bits without the sign), with a
// subnormal normalized (its exponent then drops below 1).
struct ExactParts {
    m: u32,
    e: i32,
}

fn exact_parts(a: u32) -> ExactParts {
    let frac = a & 0x7fffffu;
    let e = i32(a >> 23u);
    if (e == 0) {
        let s = countLeadingZeros(frac) - 8u;
        return ExactParts(frac << s, 1 - i32(s));
    }
    return ExactParts(frac | 0x800000u, e);
}

// x / y correctly rounded (round half to even), as IEEE 754 binary32.
fn fdiv(x: f32, y: f32) -> f32 {
    let bx = bitcast<u32>(x);
    let by = bitcast<u32>(y);
    let sign = (bx ^ by) & 0x80000000u;
    let ax = bx & 0x7fffffffu;
    let ay = by & 0x7fffffffu;
    if (ax > EXACT_INF || ay > EXACT_INF || (ax == EXACT_INF && ay == EXACT_INF)
        || (ax == 0u && ay == 0u)) {
        return bitcast<f32>(EXACT_QNAN);
    }
    if (ax == EXACT_INF || ay == 0u) {
        return bitcast<f32>(sign | EXACT_INF);
    }
    if (ay == EXACT_INF || ax == 0u) {
        return bitcast<f32>(sign);
    }
    let px = exact_parts(ax);
    let py = exact_parts(ay);
    let my = py.m;
    // q = floor(mx * 2^26 / my) in (2^25, 2^27), r the remainder: one
    // quotient bit, then three 8-bit steps and one 2-bit step (r < my < 2^24,
    // so r << 8 never overflows).
    var q = px.m / my;
    var r = px.m - q * my;
    for (var i = 0u; i < 3u; i++) {
        let n = r << 8u;
        let d = n / my;
        r = n - d * my;
        q = (q << 8u) | d;
    }
    let n2 = r << 2u;
    let d2 = n2 / my;
    r = n2 - d2 * my;
    q = (q << 2u) | d2;
    // Leading bit of q at `lead` (25 or 26); the quotient is
    // q * 2^(ex - ey - 26), so its leading bit has biased exponent `be`.
    let lead = i32(31u - countLeadingZeros(q));
    let be = lead + px.e - py.e - 26 + 127;
    var shift: i32;
    var base: u32;
    if (be >= 1) {
        if (be >= 255) {
            return bitcast<f32>(sign | EXACT_INF);
        }
        shift = lead - 23;
        base = u32(be - 1) << 23u;
    } else {
        // Subnormal result: the last significand bit is 2^-149.
        shift = lead - 23 + 1 - be;
        base = 0u;
        if (shift > 27) {
            // below half of the smallest subnormal
            return bitcast<f32>(sign);
        }
    }
    let s = u32(shift);
    var m = q >> s;
    let rem = q & ((1u << s) - 1u);
    let half = 1u << (s - 1u);
    if (rem > half || (rem == half && (r != 0u || (m & 1u) == 1u))) {
        m = m + 1u;
    }
    // A carry out of the significand (m = 2^24) steps the exponent, and past
    // the largest finite value gives the infinity bits, as IEEE rounds.
    return bitcast<f32>(sign | (base + m));
}

// `f32(v)` rounded to nearest even for every i32 (the conversion's rounding
// is not pinned down on every device): both halves are exact in f32 and one
// correctly rounded addition joins them.
fn exact_i2f(v: i32) -> f32 {
    return f32(v & -256) + f32(v & 255);
}
