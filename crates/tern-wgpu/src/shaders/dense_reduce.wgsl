// Sums over one window: workgroup g adds the terms of elements
// [g per, min(n, (g + 1) per)) (each thread a strided run in blocks of 16,
// then a tree over the workgroup) and writes d[sd + g]. Levels of this kernel reduce any
// length to one value in a fixed order.
//   SQUARE: x^2   PLAIN: x   DOT3: (x y) z
struct P {
    n: u32,
    sx: u32,
    sd: u32,
    per: u32,
    groups: u32,
    sy: u32,
    sz: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
#ifdef DOT3
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> z: array<f32>;
@group(0) @binding(4) var<storage, read_write> d: array<f32>;
#endif
#ifndef DOT3
@group(0) @binding(2) var<storage, read_write> d: array<f32>;
#endif

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = wg.y * nwg.x + wg.x;
    if (g >= p.groups) {
        return;
    }
    let start = g * p.per;
    let end = min(p.n, start + p.per);
    // Runs of 16 terms summed apart, then added: a short pairwise level.
    var acc = 0.0;
    var run = 0.0;
    var cnt = 0u;
    for (var i = start + t; i < end; i += 256u) {
        let v = x[p.sx + i];
#ifdef SQUARE
        run += v * v;
#endif
#ifdef PLAIN
        run += v;
#endif
#ifdef DOT3
        run += (v * y[p.sy + i]) * z[p.sz + i];
#endif
        cnt += 1u;
        if (cnt == 16u) {
            acc += run;
            run = 0.0;
            cnt = 0u;
        }
    }
    acc += run;
    red[t] = acc;
    for (var s = 128u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (t < s) {
            red[t] += red[t + s];
        }
    }
    if (t == 0u) {
        d[p.sd + g] = red[0];
    }
}
