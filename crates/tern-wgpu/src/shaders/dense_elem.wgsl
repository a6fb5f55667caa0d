// Element-wise dense ops over one window of each operand.
// p.s0..s4: first element of each operand inside its bound window, in binding
// order; p.base: global index of the window's first element. `p.one` is 1.0 at
// run time: multiplying a product by it keeps a fused multiply-add from
// changing the rounding of the CPU's separate multiply and add.
struct P {
    n: u32,
    base: u32,
    s0: u32,
    s1: u32,
    s2: u32,
    s3: u32,
    s4: u32,
    // op parameters (meaning per variant)
    w0: u32,
    w1: u32,
    w2: u32,
    f0: f32,
    f1: f32,
    f2: f32,
    f3: f32,
    f4: f32,
    f5: f32,
    f6: f32,
    one: f32,
}
@group(0) @binding(0) var<uniform> p: P;

#ifdef DROPOUT
// w0, w1: seed low and high words; w2: keep threshold; f0: 1 / (1 - p).
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

fn hash32(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}
#endif

#ifdef GATE
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> u: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#endif

#ifdef GATE_BWD
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> u: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dg: array<f32>;
@group(0) @binding(5) var<storage, read_write> du: array<f32>;
#endif

#ifdef ADAMW
// f0: decay, f1: 1 - beta1, f2: beta2, f3: 1 - beta2, f4: sqrt(1 - beta2^t),
// f5: eps, f6: lr / (1 - beta1^t)
@group(0) @binding(1) var<storage, read_write> pr: array<f32>;
@group(0) @binding(2) var<storage, read> gr: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
#endif

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    if (i >= p.n) {
        return;
    }
#ifdef DROPOUT
    let h = hash32(hash32((p.base + i) ^ p.w0) ^ p.w1);
    var o = 0.0;
    if (h >= p.w2) {
        o = x[p.s0 + i] * p.f0;
    }
    y[p.s1 + i] = o;
#endif
#ifdef GATE_RELU2
    let r = max(g[p.s0 + i], 0.0);
    y[p.s2 + i] = (r * r) * u[p.s1 + i];
#endif
#ifdef GATE_SILU
    let gv = g[p.s0 + i];
    y[p.s2 + i] = (gv / (1.0 + exp(-gv))) * u[p.s1 + i];
#endif
#ifdef GATE_BWD
    let gv = g[p.s0 + i];
    let uv = u[p.s1 + i];
    let d = dy[p.s2 + i];
#endif
#ifdef GBWD_RELU2
    let r = max(gv, 0.0);
    dg[p.s3 + i] = ((2.0 * r) * uv) * d;
    du[p.s4 + i] = (r * r) * d;
#endif
#ifdef GBWD_SILU
    let s = 1.0 / (1.0 + exp(-gv));
    dg[p.s3 + i] = ((d * uv) * s) * (1.0 + (gv * (1.0 - s)) * p.one);
    du[p.s4 + i] = (d * gv) * s;
#endif
#ifdef ADAMW
    let gi = gr[p.s1 + i];
    var pi = pr[p.s0 + i] * p.f0;
    let mi = m[p.s2 + i] + ((gi - m[p.s2 + i]) * p.f1) * p.one;
    let vi = (v[p.s3 + i] * p.f2) * p.one + ((p.f3 * gi) * gi) * p.one;
    let denom = sqrt(vi) / p.f4 + p.f5;
    pi = pi - (p.f6 * (mi / denom)) * p.one;
    m[p.s2 + i] = mi;
    v[p.s3 + i] = vi;
    pr[p.s0 + i] = pi;
#endif
}
