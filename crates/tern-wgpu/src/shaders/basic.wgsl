// Element-wise ops over one window of each buffer.
// p.sx / p.sy: first element of the operand inside its bound window.
// `p.one` is 1.0 at run time: multiplying the product by it keeps a fused
// multiply-add from changing the rounding of `alpha * x` (results stay bit
// identical to the CPU's separate multiply and add).
struct P {
    n: u32,
    sx: u32,
    sy: u32,
    alpha: f32,
    one: f32,
}
@group(0) @binding(0) var<uniform> p: P;

#ifdef COPY
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
#endif
#ifdef AXPY
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
#endif
#ifdef SCALE
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
#endif
#ifdef FILL
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
#endif

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    if (i >= p.n) {
        return;
    }
#ifdef AXPY
    y[p.sy + i] = y[p.sy + i] + (p.alpha * x[p.sx + i]) * p.one;
#endif
#ifdef SCALE
    y[p.sy + i] = y[p.sy + i] * p.alpha;
#endif
#ifdef FILL
    y[p.sy + i] = p.alpha;
#endif
#ifdef COPY
    y[p.sy + i] = x[p.sx + i];
#endif
}
