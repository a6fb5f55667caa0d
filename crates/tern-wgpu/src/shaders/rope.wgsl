// NeoX rotary embedding, in place on one window of head rows of x
// ([rows, n_heads, head_dim] seen as [rows * n_heads, head_dim]).
//
// Accuracy: positions reach thousands of radians, where a float angle and the
// hardware sin/cos lose the phase. Instead the phase is kept in turns as a
// 64-bit binary fraction, computed with 32-bit integer arithmetic only:
//   freq_i = 1/(2 pi) * prod_{bit k of i} theta^(-2 * 2^k / head_dim)
// (the factors are 0.64 fixed-point values the host computes in f64),
// phase = frac(pos * freq_i), exact to 2^-32 turns. The phase is reduced to a
// quadrant and an offset within +-pi/4, where short Taylor series give sin and
// cos to f32 precision with only + - * (correctly rounded everywhere).
//
// One thread per (row, pair i): it computes the rotation once and applies it
// to every head of its row inside the window.
//#include rope_phase
struct P {
    // words 0,1: 1/(2 pi); words 2+2k, 3+2k: theta^(-2^(k+1)/head_dim); (lo, hi)
    fr: array<vec4<u32>, 7>,
    nrows: u32, // rows touched by this window
    half: u32,
    hd: u32,
    nh: u32,
    hr0: u32, // first head row of the window (absolute)
    hr1: u32, // one past the last head row of the window
    row0: u32, // first row touched (absolute)
    sx: u32,
    sp: u32,
    inv: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = gid.y * nwg.x * 64u + gid.x;
    if (g >= p.nrows * p.half) {
        return;
    }
    let rl = g / p.half;
    let i = g % p.half;
    let cs = rope_cs(i, pos[p.sp + rl]);
    let c = cs.x;
    var s = cs.y;
    if (p.inv != 0u) {
        s = -s;
    }
    let row = p.row0 + rl;
    let lo = max(p.hr0, row * p.nh);
    let hi = min(p.hr1, (row + 1u) * p.nh);
    for (var hr = lo; hr < hi; hr++) {
        let o = p.sx + (hr - p.hr0) * p.hd + i;
        let x1 = x[o];
        let x2 = x[o + p.half];
        x[o] = x1 * c - x2 * s;
        x[o + p.half] = x2 * c + x1 * s;
    }
}
