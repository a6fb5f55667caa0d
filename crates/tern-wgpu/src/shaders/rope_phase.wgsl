// RoPE's rotation by exact fixed-point phase (see rope.wgsl): `rope_cs(i,
// pos)` is (cos, sin) of pair i at position pos. Needs `p.fr` (words 0, 1:
// 1/(2 pi); words 2 + 2k, 3 + 2k: theta^(-2^(k+1)/head_dim), 0.64 fixed point
// as (lo, hi)).

fn word(n: u32) -> u32 {
    return p.fr[n / 4u][n % 4u];
}

// Full 32 x 32 -> 64-bit product as (lo, hi).
fn mulw(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = p01 + p10;
    let cm = select(0u, 0x10000u, mid < p01);
    let lo = p00 + (mid << 16u);
    let cl = select(0u, 1u, lo < p00);
    return vec2<u32>(lo, p11 + (mid >> 16u) + cm + cl);
}

// Product of two 0.64 fixed-point fractions (lo, hi), truncated to 0.64.
fn mul64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let hh = mulw(a.y, b.y);
    let hl = mulw(a.y, b.x);
    let lh = mulw(a.x, b.y);
    let ll = mulw(a.x, b.x).y;
    // carries out of the word below the result
    let s0 = hl.x + lh.x;
    var c = select(0u, 1u, s0 < hl.x);
    let s1 = s0 + ll;
    c += select(0u, 1u, s1 < s0);
    let r0 = hh.x + hl.y;
    var carry = select(0u, 1u, r0 < hh.x);
    let r1 = r0 + lh.y;
    carry += select(0u, 1u, r1 < r0);
    let r2 = r1 + c;
    carry += select(0u, 1u, r2 < r1);
    return vec2<u32>(r2, hh.y + carry);
}

fn rope_cs(i: u32, ps: u32) -> vec2<f32> {
    var f = vec2<u32>(word(0u), word(1u));
    for (var k = 0u; k < 12u; k++) {
        if (((i >> k) & 1u) != 0u) {
            f = mul64(f, vec2<u32>(word(2u + 2u * k), word(3u + 2u * k)));
        }
    }
    // phase in turns, 0.32 fixed point: frac(pos * f)
    let u = ps * f.y + mulw(ps, f.x).y;
    // nearest quarter turn and the signed offset from it (|offset| <= 1/8 turn)
    let quad = (u + 0x20000000u) >> 30u;
    let rem = bitcast<i32>(u - (quad << 30u));
    let a = f32(rem) * 1.4629180792671596e-9; // 2 pi / 2^32
    let a2 = a * a;
    let sa = a * (1.0 + a2 * (-0.16666666666666666 + a2 * (0.008333333333333333
        + a2 * (-0.0001984126984126984 + a2 * 2.7557319223985893e-6))));
    let ca = 1.0 + a2 * (-0.5 + a2 * (0.041666666666666664 + a2 * (-0.001388888888888889
        + a2 * (2.48015873015873e-5 + a2 * -2.755731922398589e-7))));
    var s = sa;
    var c = ca;
    if (quad == 1u) {
        s = ca;
        c = -sa;
    } else if (quad == 2u) {
        s = -sa;
        c = -ca;
    } else if (quad == 3u) {
        s = -ca;
        c = sa;
    }
    return vec2<f32>(c, s);
}
